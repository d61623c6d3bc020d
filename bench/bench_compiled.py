"""Execution-mode benchmark (figures, not a test): compiled (dynamo + openxla) vs lazy vs eager CPU.

One process, one model (same weights in every mode), ComfyUI's own ``nodes.common_ksampler``, euler,
cfg 7 (cond + uncond batched: 2 rows a model call). For each mode:

* first run (2 steps): wall seconds, XLA compiles and compile seconds, dynamo frames and graphs;
* steady run (N steps, pipelined as in normal use): seconds per step, and the ratio to eager;
* host run (N steps, device idle): the bench waits for the device after every dispatch (each step
  boundary and each captured-graph launch), so host and device never overlap; host time per step =
  wall time minus the time spent blocked on the device.

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_compiled.py [--size sd15] [--px 256] [--steps 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.setdefault("COMFY_TPU_ENABLE", "1")
os.environ.setdefault("COMFY_TPU_AUTOCAST_BF16", "0")
os.environ.setdefault("COMFY_TPU_MANUAL_WARMUP", "1")  # no automatic warm-up: the first run is measured
os.environ.setdefault("COMFY_TPU_CACHE_DIR", tempfile.mkdtemp(prefix="comfy-tpu-bench-"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="sd15", choices=["tiny", "sd15"])
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--layouts", default="native,hwio", help="conv kernel layouts to run (COMFY_TPU_CONV_KERNEL_LAYOUT)")
    args = parser.parse_args()

    from bench.bench_step_host import DeviceIdleMeter
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    from tpu_runtime import runtime
    from bench import tiny_model

    backend = runtime.current().backend
    meter = DeviceIdleMeter(backend)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    latent = {"samples": torch.zeros(1, 4, args.px // 8, args.px // 8)}

    def sample(patcher, steps: int, seed: int = 42) -> tuple[torch.Tensor, float, dict]:
        before = backend.counters()
        compile_s = backend.compile_seconds()
        start = time.perf_counter()
        with torch.inference_mode():
            out = nodes.common_ksampler(patcher, seed, steps, 7.0, "euler", "normal", pos, neg, latent)[0]["samples"]
        wall = time.perf_counter() - start
        after = backend.counters()
        delta = {k: after[k] - before[k] for k in after}
        delta["compile_s"] = backend.compile_seconds() - compile_s
        return out, wall, delta

    rows: dict[str, dict] = {}
    print(f"building the {args.size} UNet ...", flush=True)
    cpu = tiny_model.build_patcher(args.size, seed=0, load_device=torch.device("cpu"))
    first_wall = time.perf_counter()
    sample(cpu, 1)
    rows["eager CPU"] = {"first": time.perf_counter() - first_wall}
    reference, wall, _ = sample(cpu, args.steps)
    rows["eager CPU"]["step_s"] = wall / args.steps
    del cpu

    xla = tiny_model.build_patcher(args.size, seed=0)
    saved = runtime.current().options
    runs = [(mode, layout) for layout in args.layouts.split(",") for mode in ("lazy", "compiled")]
    for mode, layout in runs:
        runtime.current().options = saved.model_copy(update={"execution": mode, "conv_kernel_layout": layout})
        print(f"{mode}, {layout} kernels: first run ...", flush=True)
        _, first, first_delta = sample(xla, 2)
        out, wall, delta = sample(xla, args.steps, seed=43)
        out, wall, delta = sample(xla, args.steps)
        meter.on, meter.wait_s = True, 0.0
        _, idle_wall, _ = sample(xla, args.steps)
        meter.on = False
        rows[(mode, layout)] = {"first": first, "first_delta": first_delta, "step_s": wall / args.steps, "delta": delta,
                      "host_ms": 1000 * (idle_wall - meter.wait_s) / args.steps,
                      "diff": (out.float() - reference.float()).abs().max().item(),
                      "trace_ms": 1000 * runtime.current().run_history[-2].host_trace_s / max(runtime.current().run_history[-2].model_calls, 1)}
        print(rows[(mode, layout)], flush=True)
    runtime.current().options = saved

    eager = rows["eager CPU"]["step_s"]
    lines = [f"\n### Execution modes: {args.size} UNet, {args.px}x{args.px}, batch 1, cfg 7 (2 rows a call), euler, "
             f"{args.steps} steps; {platform.machine()}, {os.cpu_count()} cores, PJRT CPU, fp32\n",
             "| mode | conv kernels | s/step | / eager | host ms/step (device idle) | first run s (2 steps) | XLA compiles | "
             "XLA compile s | dynamo frames | dynamo graphs | graph breaks | executions/run | to-host/run | "
             "max abs diff vs eager |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| eager CPU | OIHW | {eager:.2f} | 1.00 | - | {rows['eager CPU']['first']:.1f} | - | - | - | - | - | - | - | - |"]
    for mode, layout in runs:
        r = rows[(mode, layout)]
        f, d = r["first_delta"], r["delta"]
        lines.append(f"| {mode} | {layout} | {r['step_s']:.2f} | {r['step_s'] / eager:.2f} | {r['host_ms']:.1f} | {r['first']:.1f} | "
                     f"{f['compiles']} | {f['compile_s']:.1f} | {f['dynamo_frames']} | {f['dynamo_graphs']} | "
                     f"{f['dynamo_graph_breaks']} | {d['executions']} | {d['transfers_to_host']} | {r['diff']:.1e} |")
    for mode, layout in runs:
        r = rows[(mode, layout)]
        lines.append(f"\n{mode}, {layout} kernels, steady runs after the first: {r['delta']['compiles']} XLA compiles, "
                     f"{r['delta']['dynamo_frames']} dynamo frames; pacer host time per call (pipelined run) "
                     f"{r['trace_ms']:.1f} ms.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
