"""Host work per sampling step, per execution mode (figures, not a test).

One process, one model (same weights in every mode), ComfyUI's own ``nodes.common_ksampler``, euler,
cfg 7 (cond and uncond batched: 2 rows a model call). The device is kept idle while the host works:
the bench waits for the device after every dispatch (each step boundary, captured-graph launch and
replayed program), so host time per step = wall time minus the time spent blocked on the device.
Eager CPU is timed the same way (its wall time is its dispatch and its compute, which at narrow
channels is mostly dispatch). The model defaults to SD1.5's exact UNet topology at 32 base channels,
64x64 px, where a step's wall time is host work; ``--channels 320 --px 512`` is the real SD1.5 size.

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_step_host.py [--channels 32] [--px 64] [--steps 8]
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
os.environ.setdefault("COMFY_TPU_MANUAL_WARMUP", "1")
os.environ.setdefault("COMFY_TPU_CACHE_DIR", tempfile.mkdtemp(prefix="comfy-tpu-bench-"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = ("lazy", "compiled", "replay")


class DeviceIdleMeter:
    """Waits for the device after every dispatch (while on) and adds up the time spent waiting."""

    def __init__(self, backend) -> None:
        self.backend, self.on, self.wait_s = backend, False, 0.0
        boundary, compile_module, run_program = backend.step_boundary, backend.compile_module, backend.run_program

        def step_boundary() -> None:
            boundary()
            self._wait()

        def compile_and_wait(module):
            captured = compile_module(module)

            def call(*args, **kwargs):
                output = captured(*args, **kwargs)
                self._wait()
                return output

            return call

        def run_and_wait(program, inputs):
            outputs = run_program(program, inputs)
            self._wait()
            return outputs

        backend.step_boundary, backend.compile_module, backend.run_program = (step_boundary, compile_and_wait,
                                                                              run_and_wait)

    def _wait(self) -> None:
        if self.on:
            start = time.perf_counter()
            self.backend.wait_device()
            self.wait_s += time.perf_counter() - start

    def device_s(self) -> float:
        """Seconds blocked on the device: the meter's waits, plus a backend's own (:func:`own_device_s`)."""
        return self.wait_s + own_device_s(self.backend)


def own_device_s(backend) -> float:
    """Seconds a backend's ``run_program`` spends in the program itself: torchax waits for its outputs inside the
    call (``device_wait_s``) and JAX's CPU client may run the program inside the jitted call (``dispatch_s``,
    which also holds JAX's own dispatch); counted as host work, they would make the model's compute look like
    host time. torch_xla dispatches without waiting (none: the meter's waits are its device time)."""
    return float(getattr(backend, "device_wait_s", 0.0)) + float(getattr(backend, "dispatch_s", 0.0))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (the best is kept)")
    parser.add_argument("--modes", default=",".join(MODES), help="execution modes to time (torchax runs replay)")
    args = parser.parse_args()

    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    from bench import tiny_model
    from tpu_runtime import runtime

    state = runtime.current()
    meter = DeviceIdleMeter(state.backend)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    latent = {"samples": torch.zeros(1, 4, args.px // 8, args.px // 8)}
    overrides = {"model_channels": args.channels}

    def sample(patcher, steps: int, seed: int = 42):
        start = time.perf_counter()
        with torch.inference_mode():
            out = nodes.common_ksampler(patcher, seed, steps, 7.0, "euler", "normal", pos, neg, latent)[0]["samples"]
        return out, time.perf_counter() - start

    cpu = tiny_model.build_patcher("sd15", seed=0, load_device=torch.device("cpu"), overrides=overrides)
    sample(cpu, 1)
    reference, _ = sample(cpu, args.steps)
    eager_ms = min(sample(cpu, args.steps)[1] for _ in range(args.repeats)) * 1000 / args.steps
    del cpu
    xla = tiny_model.build_patcher("sd15", seed=0, overrides=overrides)
    saved = state.options
    rows = {}
    for mode in args.modes.split(","):
        state.options = saved.model_copy(update={"execution": mode})
        sample(xla, 2)  # compiles
        out, _ = sample(xla, args.steps)
        best = None
        for _ in range(args.repeats):
            own_waits = own_device_s(state.backend)
            meter.on, meter.wait_s = True, 0.0
            _, wall = sample(xla, args.steps)
            meter.on = False
            host = (wall - (meter.device_s() - own_waits)) * 1000 / args.steps
            best = host if best is None else min(best, host)
        rows[mode] = {"host_ms": best, "diff": (out.float() - reference.float()).abs().max().item()}
        print(mode, rows[mode], flush=True)
    state.options = saved
    lines = [f"\n### Host work per step: SD1.5 UNet topology at {args.channels} base channels, {args.px}x{args.px}, "
             f"euler, cfg 7 (2 rows a call), {args.steps} steps; {platform.machine()}, {os.cpu_count()} cores, "
             f"PJRT CPU, fp32, device idle while the host works (best of {args.repeats})\n",
             "| mode | host ms/step | / eager CPU | max abs diff vs eager |", "|---|---|---|---|",
             f"| eager CPU (dispatch and compute) | {eager_ms:.1f} | 1.00 | - |"]
    for mode, row in rows.items():
        lines.append(f"| {mode} | {row['host_ms']:.1f} | {row['host_ms'] / eager_ms:.2f} | {row['diff']:.1e} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
