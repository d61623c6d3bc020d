"""Both backends side by side (figures for bench/RESULTS.md, not a test): restart cost, host cost, speed,
parity. Each backend runs in its own processes (one backend per process, as in ComfyUI).

Per backend:

* **first-run compile s**: a fresh process with an empty cache dir samples the demo's tiny SD1.5-architecture
  UNet (256x256, euler, 8 steps, cfg 7, fp32); XLA compile seconds of the process (torch_xla: CompileTime;
  torchax: JAX's backend-compile events, which also time persistent-cache loads) and, for torchax, with
  JAX's tracing and lowering;
* **after a restart**: a second process with the cache dir kept, the same run;
* **host ms/step**: bench_step_host's method (SD1.5 topology at 32 channels, 64x64, euler, cfg 7, 8 steps,
  device idle while the host works, best of 3), replay execution;
* **s/step**: SD1.5's UNet at its real size (320 channels) at ``--sd15-px``, euler, cfg 7, after a warm-up;
* **parity**: max |backend - eager CPU| on the same weights for those runs;
* **the host's share of a step** (``--share``): SD1.5's UNet topology at 32 channels at SD1.5's and SDXL's
  latent sizes (512 and 1024 px: 64x64 and 128x128 latents), euler, cfg 7; per step: the device's compute
  (host blocked on it), and what the device sits idle through: torchax's upload of the call's tensors, the
  output's trip back, and the rest of the host's work (the sampler's math, ComfyUI's Python, dispatch);
  torch_xla replay's host work measured as bench_step_host does (the device idle while the host works).

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_backends.py [--sd15-px 512] [--sd15-steps 3]
    PJRT_DEVICE=CPU .venv/bin/python bench/bench_backends.py --share [--share-px 512,1024] [--share-steps 4]
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
BACKENDS = ("torch_xla", "torchax")
PREFIX = "BENCH-RESULT "


def _child(phase: str, args: argparse.Namespace) -> dict:
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    from bench import tiny_model
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)

    def sample(patcher, steps: int, px: int, seed: int = 42):
        latent = {"samples": torch.zeros(1, 4, px // 8, px // 8)}
        start = time.perf_counter()
        with torch.inference_mode():
            out = nodes.common_ksampler(patcher, seed, steps, 7.0, "euler", "normal", pos, neg, latent)[0]["samples"]
        return out, time.perf_counter() - start

    def program_s() -> float:
        more = getattr(backend, "program_seconds", None)
        return more() if more else backend.compile_seconds()

    if phase == "restart":
        model = tiny_model.build_patcher("tiny", seed=0)
        wall = sample(model, 8, 256)[1]
        counters = backend.counters()
        return {"compile_s": backend.compile_seconds(), "program_s": program_s(), "wall_s": wall,
                "compiles": counters["compiles"], "cache_hits": counters["persistent_cache_hits"],
                "cache_misses": counters["persistent_cache_misses"]}
    if phase == "host":
        overrides = {"model_channels": 32}
        cpu = tiny_model.build_patcher("sd15", seed=0, load_device=torch.device("cpu"), overrides=overrides)
        reference, _ = sample(cpu, 8, 64)
        from bench.bench_step_host import DeviceIdleMeter

        meter = DeviceIdleMeter(backend)  # torch_xla: waits for the device after each dispatch, timed
        model = tiny_model.build_patcher("sd15", seed=0, overrides=overrides)
        sample(model, 2, 64)
        out, _ = sample(model, 8, 64)
        best = None
        for _ in range(3):
            meter.on, meter.wait_s, before = True, 0.0, _device_wait(backend)
            _, wall = sample(model, 8, 64)
            meter.on = False
            host_ms = (wall - meter.wait_s - (_device_wait(backend) - before)) * 1000 / 8
            best = host_ms if best is None else min(best, host_ms)
        return {"host_ms": best, "diff": (out.float() - reference.float()).abs().max().item()}
    if phase == "share":
        return {str(px): _share(backend, sample, tiny_model, px, args.share_steps) for px in args.share_px}
    if phase == "sd15":
        cpu = tiny_model.build_patcher("sd15", seed=0, load_device=torch.device("cpu"))
        reference, eager_wall = sample(cpu, args.sd15_steps, args.sd15_px)
        del cpu
        model = tiny_model.build_patcher("sd15", seed=0)
        seconds = backend.compile_seconds()
        _, first_wall = sample(model, 1, args.sd15_px)
        first_compile = backend.compile_seconds() - seconds
        out, wall = sample(model, args.sd15_steps, args.sd15_px)
        return {"s_per_step": wall / args.sd15_steps, "eager_s_per_step": eager_wall / args.sd15_steps,
                "first_call_wall_s": first_wall, "first_compile_s": first_compile,
                "diff": (out.float() - reference.float()).abs().max().item()}
    raise ValueError(phase)


def _share(backend, sample, tiny_model, px: int, steps: int) -> dict:
    """Per step at ``px``: wall ms, device compute ms, and the host's parts while the device idles (best of 2)."""
    from bench.bench_step_host import DeviceIdleMeter

    meter = DeviceIdleMeter(backend) if backend.name != "torchax" else None
    model = tiny_model.build_patcher("sd15", seed=0, overrides={"model_channels": 32})
    sample(model, 2, px)  # compiles
    best = None
    for _ in range(2):
        if meter is not None:
            meter.on, meter.wait_s = True, 0.0
        parts = {name: getattr(backend, name, 0.0) for name in ("device_wait_s", "upload_s", "fetch_s")}
        wall = sample(model, steps, px)[1]
        if meter is not None:
            meter.on = False
        spent = {name: getattr(backend, name, 0.0) - before for name, before in parts.items()}
        device = meter.wait_s if meter is not None else spent["device_wait_s"]
        row = {"wall_ms": wall * 1000 / steps, "device_ms": device * 1000 / steps,
               "upload_ms": spent["upload_s"] * 1000 / steps, "fetch_ms": spent["fetch_s"] * 1000 / steps}
        row["host_other_ms"] = row["wall_ms"] - row["device_ms"] - row["upload_ms"] - row["fetch_ms"]
        row["host_share"] = 1 - row["device_ms"] / row["wall_ms"]
        best = row if best is None or row["wall_ms"] < best["wall_ms"] else best
    return best


def _device_wait(backend) -> float:
    """Host seconds blocked on the device so far, as torchax counts them (its programs' compute)."""
    return getattr(backend, "device_wait_s", 0.0)


def _run(backend: str, phase: str, cache_dir: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "COMFY_TPU_ENABLE": "1", "COMFY_TPU_AUTOCAST_BF16": "0",
           "COMFY_TPU_BACKEND": backend, "COMFY_TPU_CACHE_DIR": cache_dir, "COMFY_TPU_EXECUTION": "replay"}
    command = [sys.executable, os.path.abspath(__file__), "--child", phase, "--sd15-px", str(args.sd15_px),
               "--sd15-steps", str(args.sd15_steps), "--share-px", ",".join(map(str, args.share_px)),
               "--share-steps", str(args.share_steps)]
    out = subprocess.run(command, env=env, cwd=PACK, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(PREFIX)]
    if out.returncode or not lines:
        raise RuntimeError(f"{backend} {phase} failed:\n{out.stderr[-3000:]}")
    result = json.loads(lines[-1][len(PREFIX):])
    print(backend, phase, result, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", default=None)
    parser.add_argument("--sd15-px", type=int, default=512)
    parser.add_argument("--sd15-steps", type=int, default=3)
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--share", action="store_true", help="only the host's share of a step, per backend")
    parser.add_argument("--share-px", type=lambda text: [int(v) for v in text.split(",")], default=[512, 1024])
    parser.add_argument("--share-steps", type=int, default=4)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, PACK)
        print(PREFIX + json.dumps(_child(args.child, args)), flush=True)
        return 0
    if args.share:
        return _print_share({backend: _run(backend, "share", tempfile.mkdtemp(), args) for backend in BACKENDS})
    rows = {}
    for backend in BACKENDS:
        cache_dir = tempfile.mkdtemp(prefix=f"comfy-tpu-bench-{backend}-")
        rows[backend] = {"first": _run(backend, "restart", cache_dir, args),
                         "restart": _run(backend, "restart", cache_dir, args),
                         "host": _run(backend, "host", tempfile.mkdtemp(), args)}
        if not args.skip_sd15:
            rows[backend]["sd15"] = _run(backend, "sd15", tempfile.mkdtemp(), args)
    print(json.dumps(rows, indent=1))
    lines = [f"\n### Backends side by side ({platform.machine()}, {os.cpu_count()} cores, PJRT/JAX CPU, fp32, replay)\n",
             "| figure | torch_xla | torchax |", "|---|---|---|"]

    def row(label: str, value) -> None:
        lines.append(f"| {label} | {value(rows['torch_xla'])} | {value(rows['torchax'])} |")

    row("first-run XLA compile s, fresh process (demo model)", lambda r: f"{r['first']['compile_s']:.2f}")
    row("  with tracing and lowering (torchax: JAX's trace)", lambda r: f"{r['first']['program_s']:.2f}")
    row("after a restart, cache kept: XLA compile s", lambda r: f"{r['restart']['compile_s']:.2f}")
    row("  with tracing and lowering", lambda r: f"{r['restart']['program_s']:.2f}")
    row("restart / first (XLA compile s)",
        lambda r: f"{r['restart']['compile_s'] / max(r['first']['compile_s'], 1e-9):.0%}")
    row("persistent cache hits / misses after the restart",
        lambda r: f"{r['restart']['cache_hits']} / {r['restart']['cache_misses']}")
    row("host ms/step (SD1.5 topology, 32 ch, 64 px)", lambda r: f"{r['host']['host_ms']:.1f}")
    row("max abs diff vs eager CPU (that run)", lambda r: f"{r['host']['diff']:.1e}")
    if not args.skip_sd15:
        row(f"s/step, SD1.5 UNet at {args.sd15_px} px (eager CPU)",
            lambda r: f"{r['sd15']['s_per_step']:.2f} ({r['sd15']['eager_s_per_step']:.2f})")
        row("  first call (compile s)", lambda r: f"{r['sd15']['first_call_wall_s']:.1f} ({r['sd15']['first_compile_s']:.1f})")
        row("  max abs diff vs eager CPU", lambda r: f"{r['sd15']['diff']:.1e}")
    print("\n".join(lines))
    return 0


def _print_share(rows: dict) -> int:
    print(json.dumps(rows, indent=1))
    lines = [f"\n### The host's share of a step ({platform.machine()}, {os.cpu_count()} cores, PJRT/JAX CPU, fp32, "
             "replay; SD1.5 topology at 32 channels, euler, cfg 7: 2 rows a call)\n",
             "| latent (px) | backend | ms/step | device compute | upload in | output back | other host work "
             "| host share (device idle) |", "|---|---|---|---|---|---|---|---|"]
    for px in next(iter(rows.values())):
        for backend, by_px in rows.items():
            r = by_px[px]
            moved = (f"{r['upload_ms']:.2f} | {r['fetch_ms']:.2f}" if backend == "torchax"
                     else "(in its step graph) | (at the end of a run)")
            lines.append(f"| {int(px) // 8}x{int(px) // 8} ({px}) | {backend} | {r['wall_ms']:.1f} | {r['device_ms']:.1f} "
                         f"| {moved} | {r['host_other_ms']:.1f} | {r['host_share']:.0%} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
