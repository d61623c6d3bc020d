"""Warm seconds per run with and without a ControlNet (figures, not a test; issue #17).

One fresh process: the tiny SD1.5-architecture UNet and a cldm ControlNet of its shape (random
weights), through ComfyUI's own ``nodes.common_ksampler`` with the ControlNet applied by
``ControlNetApplyAdvanced``. Each configuration runs once to warm up, then ``--repeat`` times at other
strengths (0.8, 0.7, ...); prints the median wall seconds of the warm runs, the last run's counters (with
the host's time per model call between step boundaries, the device's wait excluded) and
the compiles of all warm runs, and eager CPU's seconds.

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_control.py [--steps 8 --px 128 --repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--px", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mode", default="replay")
    args = parser.parse_args()
    os.environ.update(PJRT_DEVICE="CPU", COMFY_TPU_ENABLE="1", COMFY_TPU_AUTOCAST_BF16="0",
                      COMFY_TPU_EXECUTION=args.mode, COMFY_TPU_CACHE_DIR=tempfile.mkdtemp(prefix="comfy-tpu-bench-"))
    sys.path.insert(0, PACK)
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    from bench import tiny_control, tiny_model
    from tpu_runtime import runtime

    backend = runtime.current().backend
    devices = {"xla": None, "cpu": torch.device("cpu")}
    models = {name: tiny_model.build_patcher("tiny", seed=0, load_device=device) for name, device in devices.items()}
    controls = {name: tiny_control.sd15_controlnet(load_device=device) for name, device in devices.items()}
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    image = tiny_control.hint_image(size=args.px)
    latent = {"samples": torch.zeros(1, 4, args.px // 8, args.px // 8)}
    figures = {}
    for device in devices:
        for with_control in (False, True):
            seconds, counts = [], []
            for index in range(args.repeat + 1):
                strength = 0.9 - 0.1 * index
                cpos, cneg = (nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, controls[device], image,
                                                                               strength, 0.0, 1.0)
                              if with_control else (pos, neg))
                before, start = backend.counters(), time.perf_counter()
                with torch.inference_mode():
                    nodes.common_ksampler(models[device], 1, args.steps, 7.0, "euler", "normal", cpos, cneg, latent)
                elapsed, after = time.perf_counter() - start, backend.counters()
                if index:  # the first run warms up
                    seconds.append(elapsed)
                    counts.append({k: after[k] - before[k] for k in ("compiles", "executions", "transfers_to_host")})
                    run = runtime.current().run_history[-1] if device == "xla" else None
                    # host time between step boundaries (the device's wait excluded) per model call
                    counts[-1]["host_ms_per_call"] = round(1000 * run.host_trace_s / max(run.model_calls, 1), 1) \
                        if run is not None else None
            figures[f"{device} {'with' if with_control else 'without'} ControlNet"] = {
                "median_s": round(statistics.median(seconds), 3), "runs_s": [round(s, 3) for s in seconds],
                "counters": ({**counts[-1], "compiles_in_warm_runs": sum(c["compiles"] for c in counts)}
                             if device == "xla" else None)}
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "steps": args.steps, "px": args.px,
                      "mode": args.mode, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
