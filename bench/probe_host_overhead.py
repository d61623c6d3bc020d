"""Probe (figures, not a test): host time a call of the SD1.5-size UNet under dynamo + openxla.

A small latent keeps device time negligible, so wall time a call ~ host time. Variants switch off
one source of per-call work each, to find what dominates.

    PJRT_DEVICE=CPU .venv/bin/python bench/probe_host_overhead.py --variant default|no_inline|skip_guards|no_data_check
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("PJRT_DEVICE", "CPU")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="default")
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--size", default="sd15")
    args = parser.parse_args()
    from tpu_runtime.comfy_host import import_comfy

    import_comfy(load_pack=False)
    import torch
    import torch._dynamo
    import torch_xla
    import torch_xla.core.xla_model as xm
    from torch_xla._dynamo import config as xla_dynamo_config

    from tpu_runtime import tiny_model

    if args.variant == "no_inline":
        torch._dynamo.config.inline_inbuilt_nn_modules = False
    if args.variant == "no_data_check":
        xla_dynamo_config.skip_input_data_check = True
    unet = tiny_model.build_sd15_model(args.size, seed=0).diffusion_model.eval()
    g = torch.Generator().manual_seed(1)
    dev = xm.xla_device()
    with torch.inference_mode():
        model = unet.to(dev)
        x = torch.randn(2, 4, args.px // 8, args.px // 8, generator=g).to(dev)
        t = torch.full((2,), 500.0).to(dev)
        ctx = torch.randn(2, 77, 768, generator=g).to(dev)
        options: dict = {"patches": {}}
        fn = torch.compile(model, backend="openxla", dynamic=False)
        start = time.perf_counter()
        fn(x, t, context=ctx, transformer_options=options)
        xm.wait_device_ops()
        print(f"{args.variant}: first call {time.perf_counter() - start:.1f} s", flush=True)
        if args.variant == "skip_guards":
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
        hosts, walls = [], []
        for _ in range(args.calls):
            start = time.perf_counter()
            out = fn(x, t, context=ctx, transformer_options=options)
            hosts.append(time.perf_counter() - start)
            xm.wait_device_ops()
            walls.append(time.perf_counter() - start)
        hosts.sort(), walls.sort()
        print(f"RESULT {args.variant}: host ms/call median {1000 * hosts[len(hosts) // 2]:.1f} "
              f"(min {1000 * hosts[0]:.1f}), wall ms/call median {1000 * walls[len(walls) // 2]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
