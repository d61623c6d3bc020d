"""Does the pack's torchax backend run on the torch of the interpreter running this? (``make check-newest-torch``)

Runs a tiny SD1.5 and a tiny Flux (bench/tiny_zoo.py, random weights, ComfyUI's own classes) through
``nodes.common_ksampler`` with ``COMFY_TPU_BACKEND=torchax`` on JAX's CPU device, in two processes on one JAX
cache folder, and checks, per family: the model ran as a JAX program (executions counted, no host fallback),
parity with ComfyUI stock on the same weights within 1e-3, a second run compiles nothing; and that the
restarted process loads its programs from JAX's persistent cache (no compile). Prints the versions and figures
as one JSON line per process; exits 1 naming what failed.

    /path/to/venv/bin/python scripts/check_torchax_stack.py [--backend auto]   # needs ComfyUI (COMFYUI_PATH), the pack

``--backend auto`` starts the pack with ``COMFY_TPU_BACKEND=auto`` and checks that it took torchax (what it does
off a TPU on a torch torch_xla has no release for). The pack's start line is printed for each process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "STACK-RESULT "
FAMILIES = ("sd15", "flux")
TOLERANCE = 1e-3


def _child() -> dict:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the pack's start line, as ComfyUI shows it
    sys.path.insert(0, PACK)
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import importlib.metadata

    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime

    state = runtime.current()
    if state is None or not state.decision.on or state.backend is None or state.backend.name != "torchax":
        reason = state.decision.reason if state is not None else "the pack did not start"
        return {"error": f"the torchax backend is not on: {reason}"}
    backend = state.backend
    result: dict = {"torch": torch.__version__, "torchax": importlib.metadata.version("torchax"),
                    "jax": importlib.metadata.version("jax"), "families": {}}

    def sample(patcher, name: str):
        fam = tiny_zoo.family(name)
        latent = {"samples": torch.zeros(tiny_zoo.latent_shape(name, size=64))}
        start = time.perf_counter()
        with torch.inference_mode():
            out = nodes.common_ksampler(patcher, 42, 3, fam.cfg, "euler", "normal", tiny_zoo.conditioning(name, 1),
                                        tiny_zoo.conditioning(name, 2), latent)[0]["samples"]
        return out, time.perf_counter() - start

    for name in FAMILIES:
        reference, _ = sample(tiny_zoo.build_patcher(name, seed=0, load_device=torch.device("cpu")), name)
        patcher = tiny_zoo.build_patcher(name, seed=0)
        before = backend.counters()
        seconds = backend.compile_seconds()
        first, first_wall = sample(patcher, name)
        middle = backend.counters()
        second, second_wall = sample(patcher, name)
        after = backend.counters()
        result["families"][name] = {
            "executions": middle["executions"] - before["executions"],
            "first_run_compiles": middle["compiles"] - before["compiles"],
            "first_run_compile_s": round(backend.compile_seconds() - seconds, 3),
            "first_run_wall_s": round(first_wall, 3),
            "second_run_compiles": after["compiles"] - middle["compiles"],
            "second_run_wall_s": round(second_wall, 3),
            "parity": max((first.float() - reference.float()).abs().max().item(),
                          (second.float() - reference.float()).abs().max().item()),
            "cache_hits": middle["persistent_cache_hits"] - before["persistent_cache_hits"],
        }
    result["compile_s"] = round(backend.compile_seconds(), 3)
    return result


def _problems(result: dict, restarted: bool) -> list[str]:
    if "error" in result:
        return [result["error"]]
    found = []
    for name, row in result["families"].items():
        if row["executions"] <= 0:
            found.append(f"{name}: no JAX program ran (the model fell back to the host)")
        if row["parity"] > TOLERANCE:
            found.append(f"{name}: parity {row['parity']:.2e} > {TOLERANCE}")
        if row["second_run_compiles"]:
            found.append(f"{name}: the second run compiled {row['second_run_compiles']} programs")
        if restarted and row["first_run_compiles"]:
            found.append(f"{name}: after a restart {row['first_run_compiles']} programs compiled (cache not loaded)")
    return found


def main() -> int:
    if sys.argv[1:] == ["--child"]:
        print(PREFIX + json.dumps(_child()), flush=True)
        return 0
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "torchax"
    failed = []
    with tempfile.TemporaryDirectory(prefix="comfy-tpu-stack-") as cache_dir:
        env = {**os.environ, "PJRT_DEVICE": "CPU", "COMFY_TPU_ENABLE": "1", "COMFY_TPU_BACKEND": backend,
               "COMFY_TPU_CACHE_DIR": cache_dir, "COMFY_TPU_AUTOCAST_BF16": "0"}
        for phase in ("first process", "restarted process"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env=env, cwd=PACK,
                                 capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith(PREFIX)]
            if out.returncode or not lines:
                print(f"{phase}: failed (exit {out.returncode}):\n{out.stderr[-4000:]}", flush=True)
                return 1
            result = json.loads(lines[-1][len(PREFIX):])
            for line in out.stderr.splitlines():
                if "comfy-tpu: TPU path" in line or "placeholders while torchax loads" in line:
                    print(f"{phase}: {line.strip()}", flush=True)
            print(f"{phase}: {json.dumps(result)}", flush=True)
            failed += [f"{phase}: {p}" for p in _problems(result, phase == "restarted process")]
    for line in failed:
        print(f"FAILED {line}")
    if not failed:
        print(f"OK: the torchax backend runs on torch {result['torch']} (torchax {result['torchax']}, "
              f"jax {result['jax']}; COMFY_TPU_BACKEND={backend})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
