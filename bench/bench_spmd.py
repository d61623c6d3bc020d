"""SPMD benchmark (figures, not a test): images/second at batch 1, 4 and 8 on 1 vs 4 XLA devices.

SPMD is process-wide and chosen before any XLA device exists, so each configuration runs in its own
child process with a fresh COMFY_TPU_CACHE_DIR (no re-warm of older signatures): one PJRT CPU device,
then ``CPU_NUM_DEVICES=4`` with the batch split over them. Per batch: one warm-up run (compiles), then
timed runs through ComfyUI's own ``nodes.common_ksampler`` (tiny model, cfg 7, euler). Prints Markdown.

On a CPU host the "devices" share the same cores: this shows that sharding is correct and what it
costs, not how a TPU scales (each TPU chip brings its own compute and memory).

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_spmd.py [--steps 10] [--repeats 3] [--size 128]
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

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = (1, 4, 8)


def child(steps: int, repeats: int, size: int) -> None:
    sys.path.insert(0, PACK_DIR)
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    import tpu_runtime
    from tpu_runtime import runtime
    from bench import tiny_model

    backend = runtime.current().backend
    patcher = tiny_model.build_patcher("tiny", seed=0)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    for batch in BATCHES:
        def run(seed: int) -> None:
            latent = {"samples": torch.zeros(batch, 4, size // 8, size // 8)}
            with torch.inference_mode():
                nodes.common_ksampler(patcher, seed, steps, 7.0, "euler", "normal", pos, neg, latent)

        before = backend.counters()
        start = time.perf_counter()
        run(0)
        first_s = time.perf_counter() - start
        warm = backend.counters()
        start = time.perf_counter()
        for seed in range(1, repeats + 1):
            run(seed)
        wall = time.perf_counter() - start
        after = backend.counters()
        print("ROW " + json.dumps(dict(
            batch=batch, first_s=first_s, first_compiles=warm["compiles"] - before["compiles"], wall=wall,
            images_per_s=batch * repeats / wall, steady_compiles=after["compiles"] - warm["compiles"],
            transfers_per_run=(after["transfers_to_host"] - warm["transfers_to_host"]) / repeats,
            mesh=tpu_runtime.get_tpu_stats()["spmd"]["mesh"])), flush=True)


def run_child(devices: int, args) -> list[dict]:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "COMFY_TPU_ENABLE": "1", "COMFY_TPU_AUTOCAST_BF16": "0",
           "COMFY_TPU_CACHE_DIR": tempfile.mkdtemp(prefix="comfy-tpu-bench-spmd-"), "CPU_NUM_DEVICES": str(devices),
           "COMFY_TPU_SPMD": "auto"}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps),
                          "--repeats", str(args.repeats), "--size", str(args.size)], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return [json.loads(line[4:]) for line in out.stdout.splitlines() if line.startswith("ROW ")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.repeats, args.size)
        return
    print(f"\n### tiny UNet, {args.size}x{args.size}, euler {args.steps} steps, cfg 7, {args.repeats} timed runs "
          f"per row; {platform.machine()}, {os.cpu_count()} cores, load average at start "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| devices | mesh | batch | first run s (compiles) | steady s/run | images/s | compiles after warm-up "
          "| to-host per run | images/s vs 1 device |")
    print("|---|---|---|---|---|---|---|---|---|")
    single = {row["batch"]: row for row in run_child(1, args)}
    sharded = {row["batch"]: row for row in run_child(4, args)}
    for devices, rows in ((1, single), (4, sharded)):
        for batch in BATCHES:
            row = rows[batch]
            ratio = row["images_per_s"] / single[batch]["images_per_s"]
            print(f"| {devices} | {row['mesh']} | {batch} | {row['first_s']:.1f} ({row['first_compiles']}) | "
                  f"{row['wall'] / args.repeats:.2f} | {row['images_per_s']:.2f} | {row['steady_compiles']} | "
                  f"{row['transfers_per_run']:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
