"""Probe (figures, not a test): the diffusion model through dynamo + openxla inside the pack's path.

Core's ``comfy_api.torch_helpers.set_torch_compile_wrapper(model, backend="openxla")`` attaches
``torch.compile`` through the APPLY_MODEL/diffusion-model wrappers; the pack's step boundaries,
host schedule and counters stay as they are. Prints per run: wall s, XLA compiles, executions,
host time per model call. Compare with the lazy rows of bench/RESULTS.md.

    .venv/bin/python bench/probe_openxla.py [--size tiny|sd15] [--px 128]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.setdefault("COMFY_TPU_ENABLE", "1")
os.environ.setdefault("COMFY_TPU_AUTOCAST_BF16", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--px", type=int, default=128)
    args = parser.parse_args()
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch
    import torch._dynamo

    from tpu_runtime import runtime
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from bench import tiny_model

    backend = runtime.current().backend
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    rows = ["| mode | steps | wall s | XLA compiles | executions | to-host | host ms/call | dynamo frames |",
            "|---|---|---|---|---|---|---|---|"]
    for mode in ("lazy", "openxla"):
        patcher = tiny_model.build_patcher(args.size, seed=0)
        if mode == "openxla":
            patcher = patcher.clone()
            set_torch_compile_wrapper(patcher, backend="openxla")
        for steps in (6, 12, 12):
            torch._dynamo.utils.counters.clear()
            before = backend.counters()
            start = time.perf_counter()
            with torch.inference_mode():
                nodes.common_ksampler(patcher, steps, steps, 7.0, "euler", "normal", pos, neg,
                                      {"samples": torch.zeros(1, 4, args.px // 8, args.px // 8)})
            wall = time.perf_counter() - start
            after = backend.counters()
            fig = runtime.current().run_history[-1]
            frames = sum(torch._dynamo.utils.counters["stats"].values()) if mode == "openxla" else 0
            rows.append(f"| {mode} | {steps} | {wall:.2f} | {after['compiles'] - before['compiles']} | "
                        f"{after['executions'] - before['executions']} | "
                        f"{after['transfers_to_host'] - before['transfers_to_host']} | "
                        f"{1000 * fig.host_trace_s / max(fig.model_calls, 1):.1f} | {frames} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
