"""Probe (figures, not a test): the SD1.5-size UNet called directly, outside ComfyUI's sampler.

Separates what the XLA executable costs from what the pack's sampling path adds: eager CPU, lazy
(one mark_step a call), dynamo with ``openxla`` (aot_autograd) and ``openxla_eval`` (no aot). Found
the per-call conv-kernel transposes (``--hwio`` keeps kernels as HWIO twins, as the pack does) and
times the host side of a call (``--profile``, ``--skip-guard-eval``). Note: ComfyUI's UNet forward
mutates its default ``transformer_options``, so the second compiled call recaptures once here.

    PJRT_DEVICE=CPU .venv/bin/python bench/probe_unet_direct.py [--modes eager,lazy,openxla] [--calls 3] [--hwio]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

os.environ.setdefault("PJRT_DEVICE", "CPU")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def keep_conv_kernels_hwio(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.weight.detach().permute(2, 3, 1, 0).contiguous()

            def forward(x, module=module, kernel=kernel):
                return module._conv_forward(x, kernel.permute(3, 2, 0, 1), module.bias)

            module.forward = forward


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="eager,lazy,openxla,openxla_eval")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="sd15")
    parser.add_argument("--skip-guard-eval", action="store_true",
                        help="after the first call, dynamo runs no guards (torch.compiler.set_stance)")
    parser.add_argument("--profile", action="store_true", help="cProfile the host side of the last call")
    parser.add_argument("--hwio", action="store_true", help="conv kernels kept on the device as HWIO")
    parser.add_argument("--grad", default="inference", choices=["inference", "no_grad"])
    args = parser.parse_args()
    from bench.comfy_host import import_comfy

    import_comfy(load_pack=False)
    import torch
    import torch_xla
    import torch_xla.core.xla_model as xm
    import torch_xla.debug.metrics as met

    from bench import tiny_model

    unet = tiny_model.build_sd15_model(args.size, seed=0).diffusion_model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 4, args.px // 8, args.px // 8, generator=g)
    t = torch.full((args.batch,), 500.0)
    ctx = torch.randn(args.batch, 77, 768, generator=g)
    grad = torch.inference_mode if args.grad == "inference" else torch.no_grad
    print(f"threads {torch.get_num_threads()} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}", flush=True)
    for mode in args.modes.split(","):
        dev = torch.device("cpu") if mode == "eager" else xm.xla_device()
        with grad():
            model = unet.to(dev)
            if args.hwio and dev.type != "cpu":
                keep_conv_kernels_hwio(model)
            xs, ts, cs = x.to(dev), t.to(dev), ctx.to(dev)
        fn = model if mode in ("eager", "lazy") else torch.compile(model, backend=mode, dynamic=False)
        times = []
        for i in range(args.calls + 1):
            c0 = met.metric_data("CompileTime")[0] if met.metric_data("CompileTime") else 0
            profiler = cProfile.Profile() if args.profile and i == args.calls else None
            start = time.perf_counter()
            with grad():
                if profiler:
                    profiler.enable()
                fn(xs, ts, context=cs)
                if mode == "lazy":
                    torch_xla.sync()
                host = time.perf_counter() - start
                if profiler:
                    profiler.disable()
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
                    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
                if dev.type != "cpu":
                    xm.wait_device_ops()
            wall = time.perf_counter() - start
            c1 = met.metric_data("CompileTime")[0] if met.metric_data("CompileTime") else 0
            times.append(wall)
            if args.skip_guard_eval and i == 0 and mode not in ("eager", "lazy"):
                torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
            print(f"{mode} call {i}: {wall:.2f} s (host {1000 * host:.0f} ms, compiles {c1 - c0})", flush=True)
        steady = sorted(times[1:])[len(times[1:]) // 2]
        print(f"RESULT {mode}: first {times[0]:.1f} s, steady median {steady:.2f} s/call", flush=True)
        unet.to("cpu")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
