"""Text encoders with weights split over a 'model' axis: bytes per device, parity, compiles, transfers, seconds.

    python -m bench.bench_encoder_shard [--backends torch_xla,torchax] [--meshes none,data=2,model=2,data=1,model=4]

Per backend and mesh, in a fresh process with its own cache dir on 4 CPU devices (``none``: one device, no
SPMD: the baseline): Flux's text encoders (tiny CLIP-L + T5, ComfyUI's own classes, fp32 random weights)
encode two prompts of different T5 lengths in one bucket (``tests/cases_text_encoders_spmd.py``). Prints a
markdown table: the CLIP model's weight bytes and the bytes the busiest device holds (from the backend's
shardings), the largest distance to ComfyUI's encode on the host, compiles and device-to-host transfers of
each encode, and each encode's seconds (on the PJRT CPU devices: the same two cores, so not TPU figures).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.child import run_child  # noqa: E402

DEVICES = 4


def measure(backend: str, mesh: str) -> dict:
    env = {"COMFY_TPU_TEXT_ENCODERS": "device", "COMFY_TPU_BACKEND": backend}
    if mesh == "none":
        env["COMFY_TPU_SPMD"] = "off"
    else:
        env.update(COMFY_TPU_SPMD="on", COMFY_TPU_MESH=mesh)
        env.update({"CPU_NUM_DEVICES": str(DEVICES)} if backend == "torch_xla"
                   else {"XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"})
    return run_child("cases_text_encoders_spmd:flux_encode_split", timeout=900, env=env)


def row(backend: str, mesh: str, run: dict) -> str:
    weights = run["weights"].values()
    total = sum(w["bytes"] for w in weights)
    busiest = max(sum(w["per_device"][d] for w in weights) for d in range(len(next(iter(weights))["per_device"])))
    diff = max(max(encode["diff"].values()) for encode in run["runs"])
    per_encode = lambda key, form="{}": " / ".join(form.format(encode[key]) for encode in run["runs"])  # noqa: E731
    return (f"| {backend} | {mesh} | {total / 1e6:.2f} MB | {busiest / 1e6:.2f} MB ({busiest / total:.3f}) | "
            f"{diff:.1e} | {per_encode('compiles')} | {per_encode('transfers_to_host')} | "
            f"{per_encode('seconds', '{:.2f}')} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="torch_xla,torchax")
    parser.add_argument("--meshes", default="none;data=2,model=2;data=1,model=4",
                        help="';'-separated meshes ('none': one device, no SPMD)")
    args = parser.parse_args()
    print("| backend | mesh | CLIP weights | busiest device holds (share) | max diff to host | compiles (1st / 2nd) "
          "| transfers (1st / 2nd) | seconds (1st / 2nd) |")
    print("|---|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        for mesh in args.meshes.split(";"):
            print(row(backend, mesh, measure(backend, mesh)), flush=True)


if __name__ == "__main__":
    main()
