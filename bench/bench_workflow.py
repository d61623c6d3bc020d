"""A whole txt2img prompt through the server: time of each part (text encode, sample, VAE decode) and the
host's share, with the VAE and CLIP-L on the host (before: ``COMFY_TPU_VAE=host``,
``COMFY_TPU_TEXT_ENCODERS=host``) and on the device (after: ``device``; the default ``auto`` picks the
device on a TPU only).

Tiny diffusion model (1 step), ComfyUI's full-size SD1.5 VAE and CLIP-L with random weights, PJRT CPU:
each setting gets a fresh server; its first prompt compiles, the second (another seed and prompt text,
same size) is the warm figure. Encode and decode seconds are the pack's own (``/tpu/stats``
``workflow_parts``, timed around ComfyUI's calls); sample = the prompt's execution time (ComfyUI's
execution_start .. execution_success) less those two. "host share": the seconds of parts that ran
on the host over the prompt's.

    python bench/bench_workflow.py [size]
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.server import ComfyServer  # noqa: E402
from tests.test_vae_device import ENV, workflow  # noqa: E402


def _execution_seconds(entry: dict) -> float:
    stamps = {name: data.get("timestamp") for name, data in entry["status"].get("messages", [])}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def _prompt(server: ComfyServer, seed: int, text: str, size: int) -> dict:
    before = server.get("/tpu/stats")["workflow_parts"]
    entry = server.run_prompt(workflow(seed, text, size), timeout=1800)
    assert entry["status"]["status_str"] == "success", server.log()[-3000:]
    after = server.get("/tpu/stats")["workflow_parts"]
    total = _execution_seconds(entry)
    parts = {part: (after[part]["seconds"] - before[part]["seconds"], after[part]["where"])
             for part in ("text_encoders", "vae")}
    sample = total - sum(seconds for seconds, _ in parts.values())
    on_host = sum(seconds for seconds, where in parts.values() if where == "host")
    return {"total": total, "encode": parts["text_encoders"], "decode": parts["vae"], "sample": sample,
            "host_share": on_host / total}


def main(size: int) -> None:
    print("| setting | prompt | encode s (where) | sample s | decode s (where) | prompt s | host share |")
    print("|---|---|---|---|---|---|---|")
    for label, extra in (("host (before)", {"COMFY_TPU_VAE": "host", "COMFY_TPU_TEXT_ENCODERS": "host"}),
                         ("device (after)", {"COMFY_TPU_VAE": "device", "COMFY_TPU_TEXT_ENCODERS": "device"})):
        tmp = Path(tempfile.mkdtemp(prefix="bench-workflow-"))
        server = ComfyServer(tmp, env={**ENV, "COMFY_TPU_CACHE_DIR": str(tmp / "cache"), **extra})
        try:
            server.wait_ready()
            for name, seed, text in (("first", 11, "a photo of a cat"),
                                     ("second", 12, "a watercolor of a lighthouse at dusk")):
                run = _prompt(server, seed, text, size)
                print(f"| {label} | {name} | {run['encode'][0]:.2f} ({run['encode'][1]}) | {run['sample']:.2f} | "
                      f"{run['decode'][0]:.2f} ({run['decode'][1]}) | {run['total']:.2f} | "
                      f"{run['host_share']:.0%} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
