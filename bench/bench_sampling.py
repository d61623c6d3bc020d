"""Sampling benchmark (figures, not a test): XLA vs eager CPU through ComfyUI's own KSampler.

Per sampler x step count on the tiny model, and for an SD1.5-size UNet (random weights, 320
channels): new XLA compiles, graph executions, device-to-host transfers, wall seconds, the host's
tracing time per model call, and eager CPU for the same run. Prints a Markdown table.

    PJRT_DEVICE=CPU COMFY_TPU_ENABLE=1 .venv/bin/python bench/bench_sampling.py [--sd15] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.setdefault("COMFY_TPU_ENABLE", "1")
os.environ.setdefault("COMFY_TPU_AUTOCAST_BF16", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "lcm", "ddim",
            "uni_pc"]


def run_once(nodes, backend, patcher, pos, neg, steps, sampler, size, seed):
    import torch

    from tpu_runtime import runtime

    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    before = backend.counters() if backend else None
    history = len(runtime.current().run_history)
    start = time.perf_counter()
    with torch.inference_mode():
        out = nodes.common_ksampler(patcher, seed, steps, 7.0, sampler, "normal", pos, neg, latent)[0]["samples"]
    wall = time.perf_counter() - start
    if backend is None:
        return out, {"wall": wall}
    after = backend.counters()
    figures = runtime.current().run_history[-1] if len(runtime.current().run_history) > history else None
    calls = max(figures.model_calls, 1) if figures else 1
    return out, {"wall": wall, "compiles": after["compiles"] - before["compiles"],
                 "executions": after["executions"] - before["executions"],
                 "transfers": after["transfers_to_host"] - before["transfers_to_host"],
                 "compile_s": figures.compile_s if figures else 0.0,
                 "trace_ms": 1000 * figures.host_trace_s / calls if figures else 0.0, "calls": calls}


def bench_model(nodes, backend, size_name, size, samplers, step_counts, out):
    import torch

    from bench import tiny_model

    xla = tiny_model.build_patcher(size_name, seed=0)
    cpu = tiny_model.build_patcher(size_name, seed=0, load_device=torch.device("cpu"))
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    out.append(f"\n### {size_name} UNet, {size}x{size}, cfg 7 (cond + uncond batched: 2 rows)\n")
    out.append("| sampler | steps | new compiles | compile s | executions | to-host | XLA wall s | eager wall s "
               "| XLA/eager | host trace ms/call | max abs diff |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for sampler in samplers:
        for steps in step_counts:
            result, fig = run_once(nodes, backend, xla, pos, neg, steps, sampler, size, seed=steps)
            reference, ref = run_once(nodes, None, cpu, pos, neg, steps, sampler, size, seed=steps)
            diff = (result - reference).abs().max().item()
            out.append(f"| {sampler} | {steps} | {fig['compiles']} | {fig['compile_s']:.1f} | {fig['executions']} | "
                       f"{fig['transfers']} | {fig['wall']:.2f} | {ref['wall']:.2f} | "
                       f"{fig['wall'] / ref['wall']:.2f} | {fig['trace_ms']:.1f} | {diff:.1e} |")
            print(out[-1], flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sd15", action="store_true", help="also the SD1.5-size UNet (slow on a CPU)")
    parser.add_argument("--quick", action="store_true", help="euler and dpmpp_2m only")
    args = parser.parse_args()

    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch
    import torch_xla

    from tpu_runtime import runtime

    backend = runtime.current().backend
    out = ["# Sampling benchmark", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; torch "
           f"{torch.__version__}, torch_xla {torch_xla.__version__}; PJRT {os.environ['PJRT_DEVICE']}; "
           f"autocast bf16 {os.environ['COMFY_TPU_AUTOCAST_BF16']}. ComfyUI's own `nodes.common_ksampler`; each "
           "row is one run, in the order shown, in one process (a sampler's first row includes its compiles). "
           "Eager = the same ComfyUI and weights with the model on the CPU. On PJRT CPU the 'device' is these "
           "same cores, so XLA/eager shows overhead, not TPU speed."]
    samplers = ["euler", "dpmpp_2m"] if args.quick else SAMPLERS
    bench_model(nodes, backend, "tiny", 128, samplers, (6, 12, 20), out)
    if args.sd15:
        bench_model(nodes, backend, "sd15", 256, ["euler"], (2, 4), out)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
