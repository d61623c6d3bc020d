"""What a new sampler costs after a warm-up, per execution mode (figures, not a test).

For each mode, a fresh process: a warm-up with euler through the public API (``tpu_manager.warmup``),
then the first run of each other sampler. Prints XLA's compile seconds (``CompileTime``) for each, and
its share of the warm-up's. The model is the 2-level tiny UNet by default (``--channels N``: SD1.5's
whole UNet topology at N base channels).

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_replay.py [--modes replay,lazy] [--channels 32 --px 64]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLERS = ["euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "lcm", "ddim", "uni_pc"]


def child(mode: str, channels: int, px: int, steps: int) -> dict:
    os.environ.update(PJRT_DEVICE="CPU", COMFY_TPU_ENABLE="1", COMFY_TPU_AUTOCAST_BF16="0", COMFY_TPU_EXECUTION=mode,
                      COMFY_TPU_CACHE_DIR=tempfile.mkdtemp(prefix="comfy-tpu-bench-"))
    sys.path.insert(0, PACK)
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    import tpu_runtime
    from bench import tiny_model
    from tpu_runtime import runtime

    backend = runtime.current().backend
    size, overrides = ("sd15", {"model_channels": channels}) if channels else ("tiny", None)
    patcher = tiny_model.build_patcher(size, seed=0, overrides=overrides)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    seconds, start = backend.compile_seconds(), time.perf_counter()
    warm = tpu_runtime.tpu_manager.warmup(patcher, px, px, cfg=7.0, sampler_name="euler", positive=pos, negative=neg)
    result = {"warmup": {"graphs": warm.graphs_compiled, "compile_s": backend.compile_seconds() - seconds,
                         "wall_s": time.perf_counter() - start}, "samplers": {}}
    latent = {"samples": torch.zeros(1, 4, px // 8, px // 8)}
    for sampler in SAMPLERS:
        seconds, compiles, start = backend.compile_seconds(), backend.counters()["compiles"], time.perf_counter()
        with torch.inference_mode():
            nodes.common_ksampler(patcher, 1, steps, 7.0, sampler, "normal", pos, neg, latent)
        result["samplers"][sampler] = {"graphs": backend.counters()["compiles"] - compiles,
                                       "compile_s": backend.compile_seconds() - seconds,
                                       "wall_s": time.perf_counter() - start}
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="replay,lazy")
    parser.add_argument("--channels", type=int, default=0)
    parser.add_argument("--px", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.channels, args.px, args.steps)), flush=True)
        return 0
    results = {}
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--channels", str(args.channels), "--px",
                              str(args.px), "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        results[mode] = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
        print(mode, json.dumps(results[mode]), flush=True)
    model = f"SD1.5 UNet topology at {args.channels} base channels" if args.channels else "tiny 2-level UNet"
    modes = list(results)
    lines = [f"\n### A new sampler after a euler warm-up: {model}, {args.px}x{args.px}, cfg 7, first run of "
             f"{args.steps} steps; {platform.machine()}, {os.cpu_count()} cores, PJRT CPU, fp32, one fresh process a mode\n",
             "| | " + " | ".join(f"{m}: graphs | {m}: compile s | {m}: % of warm-up" for m in modes) + " |",
             "|---|" + "---|---|---|" * len(modes),
             "| warm-up (euler) | " + " | ".join(f"{results[m]['warmup']['graphs']} | "
                                                 f"{results[m]['warmup']['compile_s']:.2f} | 100" for m in modes) + " |"]
    for sampler in SAMPLERS:
        cells = []
        for m in modes:
            run, warm_s = results[m]["samplers"][sampler], results[m]["warmup"]["compile_s"]
            cells.append(f"{run['graphs']} | {run['compile_s']:.2f} | {100 * run['compile_s'] / warm_s:.0f}")
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
