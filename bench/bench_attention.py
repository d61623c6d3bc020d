"""Attention at real sizes, per backend and implementation (figures, not a test; issue #30).

For one attention call and one ComfyUI Wan block (``WanAttentionBlock``, width 40 x 128) at 4,608
(Flux 1024²: 4,096 + 512), 16,900 (Flux 2048²) and 75,600 tokens (Wan 2.1 720p, 81 frames), bf16, batch 1:
the largest tensor, the largest one that is not the inputs/output re-laid, and whether a seq x seq tensor
exists, in the program each backend hands XLA before backend optimization (torch_xla: the HLO of the
traced graph; torchax: ``jax.jit(...).lower(...).as_text()``). Then the seconds of one attention call at
4,608 tokens here (first call = compile + run; warm = median of ``--repeat``), each implementation.
XLA:CPU is not the target: these times say nothing about a TPU.

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_attention.py [--tokens 4608,16900,75600] [--repeat 2] [--no-time]
        [--no-audit] [--flash-tpu-interpret] [--only torchax-flash]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS, DIM, CONTEXT, WAN_FFN = 40, 128, 512, 13824
FLUX_HEADS = 24
IMPLEMENTATIONS = ("sdpa", "blockwise", "flash")


def _audit_line(label: str, text: str, tokens: int, io: int) -> str:
    from tpu_runtime.execution.attention import program_audit

    audit = program_audit.audit(text, tokens, [io])
    return (f"| {label} | {audit.largest} | {audit.largest_inner} | "
            f"{'yes: ' + str(audit.seq_by_seq[-1]) if audit.seq_by_seq else 'no'} |")


def _xla_call(implementation: str, tokens: int, heads: int, zeros: bool = True):
    import torch
    import torch_xla

    from tpu_runtime.execution.attention import route

    device = torch_xla.device()
    if zeros:
        q, k, v = (torch.zeros(1, tokens, heads * DIM, dtype=torch.bfloat16, device=device) + i for i in range(3))
    else:
        q, k, v = (torch.randn(1, tokens, heads * DIM).bfloat16().to(device) for _ in range(3))
    return route.router_for(implementation, "torch_xla", "CPU")(None, q, k, v, heads, transformer_options={})


def _jax_program(function):
    import jax
    import torch
    import torchax

    env = torchax.default_env()

    def program(*arrays):
        with torch.inference_mode(False), torch.no_grad(), env:
            return function(*[torchax.tensor.Tensor(a, env) for a in arrays]).jax()

    return jax.jit(program)


def _jax_attention(implementation: str, heads: int):
    from tpu_runtime.execution.attention import route

    router = route.router_for(implementation, "torchax", "CPU")
    return _jax_program(lambda q, k, v: router(None, q, k, v, heads, transformer_options={}))


def _spec(shape, dtype):
    import jax

    from tpu_runtime.backends.torchax import host_array
    import torch

    return jax.ShapeDtypeStruct(tuple(shape), host_array(torch.zeros((), dtype=dtype)).dtype)


def _wan_block():
    import torch
    import comfy.ops
    from comfy.ldm.wan.model import WanAttentionBlock

    settings = {"operations": comfy.ops.disable_weight_init, "device": "meta", "dtype": torch.bfloat16}
    return WanAttentionBlock("t2v_cross_attn", HEADS * DIM, WAN_FFN, HEADS, operation_settings=settings)


def _block_shapes(tokens: int):
    import torch

    return [((1, tokens, HEADS * DIM), torch.bfloat16), ((1, 6, HEADS * DIM), torch.bfloat16),
            ((1, tokens, 1, DIM // 2, 2, 2), torch.float32), ((1, CONTEXT, HEADS * DIM), torch.bfloat16)]


def audits(tokens_list: list[int]) -> None:
    import torch
    import torch_xla

    from tpu_runtime.execution.attention import route

    print("| program | largest tensor | largest inner tensor | seq x seq tensor |")
    print("|---|---|---|---|")
    for tokens in tokens_list:
        heads = HEADS if tokens > 20000 else FLUX_HEADS
        io = tokens * heads * DIM
        for implementation in IMPLEMENTATIONS:
            shape = f"{tokens:,} x {heads} x {DIM}"
            if implementation != "flash":  # torch_xla's Pallas kernel is TPU-only (there: one custom call)
                with torch.inference_mode():
                    out = _xla_call(implementation, tokens, heads)
                    print(_audit_line(f"torch_xla {implementation}, call {shape}", torch_xla._XLAC._get_xla_tensors_hlo([out]),
                                      tokens, io))
            spec = _spec((1, tokens, heads * DIM), torch.bfloat16)
            text = _jax_attention(implementation, heads).lower(spec, spec, spec).as_text()
            print(_audit_line(f"torchax {implementation}{' (interpret)' if implementation == 'flash' else ''}, call {shape}",
                              text, tokens, io))
        block = _wan_block()
        names = [name for name, _ in block.named_parameters()]
        for implementation in ("sdpa", "blockwise"):
            options = {"optimized_attention_override": route.router_for(implementation, "torch_xla", "CPU")}
            device = torch_xla.device()
            with torch.inference_mode():
                weights = {n: torch.zeros(p.shape, dtype=p.dtype, device=device) for n, p in block.named_parameters()}
                inputs = [torch.zeros(s, dtype=d, device=device) for s, d in _block_shapes(tokens)]
                out = torch.func.functional_call(block, weights, tuple(inputs), {"transformer_options": options})
                print(_audit_line(f"torch_xla {implementation}, Wan block {tokens:,}", torch_xla._XLAC._get_xla_tensors_hlo([out]),
                                  tokens, tokens * HEADS * DIM))
            options = {"optimized_attention_override": route.router_for(implementation, "torchax", "CPU")}

            def run(*tensors, options=options):
                return torch.func.functional_call(block, dict(zip(names, tensors[4:])), tensors[:4],
                                                  {"transformer_options": options})

            specs = [_spec(s, d) for s, d in _block_shapes(tokens)] + [_spec(p.shape, p.dtype) for p in block.parameters()]
            print(_audit_line(f"torchax {implementation}, Wan block {tokens:,}", _jax_program(run).lower(*specs).as_text(),
                              tokens, tokens * HEADS * DIM))
        sys.stdout.flush()


def times(tokens: int, repeat: int, tpu_interpret: bool = False, only: str = "") -> None:
    import jax
    import numpy as np
    import torch

    print(f"\n| {tokens:,} tokens x {FLUX_HEADS} heads x {DIM}, bf16 | first call (compile + run) s | warm s |")
    print("|---|---|---|")
    for implementation in ("sdpa", "blockwise") if only != "torchax-flash" else ():
        with torch.inference_mode():
            runs = []
            for _ in range(1 + repeat):
                start = time.perf_counter()
                _xla_call(implementation, tokens, FLUX_HEADS, zeros=False).cpu()
                runs.append(time.perf_counter() - start)
        print(f"| torch_xla {implementation} | {runs[0]:.2f} | {statistics.median(runs[1:]):.2f} |")
        sys.stdout.flush()
    arrays = [jax.numpy.asarray(np.random.randn(1, tokens, FLUX_HEADS * DIM).astype(np.float32)).astype(jax.numpy.bfloat16)
              for _ in range(3)]
    for implementation in IMPLEMENTATIONS if only != "torchax-flash" else ("flash",):
        if implementation == "flash" and not tpu_interpret:
            program, label = _generic_flash(FLUX_HEADS), "torchax flash (Pallas generic interpreter: the kernel as XLA ops)"
        else:
            program = _jax_attention(implementation, FLUX_HEADS)
            label = "torchax flash (Pallas TPU interpret mode)" if implementation == "flash" else f"torchax {implementation}"
        runs = []
        for _ in range(1 + (repeat if implementation != "flash" else 1)):
            start = time.perf_counter()
            jax.block_until_ready(program(*arrays))
            runs.append(time.perf_counter() - start)
        print(f"| {label} | {runs[0]:.2f} | {statistics.median(runs[1:]):.2f} |")
        sys.stdout.flush()


def _generic_flash(heads: int):
    """The torchax flash kernel as the pack runs it on a mesh off a TPU: Pallas's generic interpreter (TPU
    interpret mode simulates the chip call by call: at 4,608 tokens it did not finish in 33 min here)."""
    import functools

    from torchax import interop

    from tpu_runtime.backends.torchax_attention import pallas_flash
    from tpu_runtime.execution.attention import layout

    def attention(q, k, v):
        call = layout.to_heads(q, k, v, heads)
        kernel = functools.partial(pallas_flash, scale=call.scale, simulate_tpu=False)
        return layout.from_heads(interop.call_jax(kernel, call.q, call.k, call.v, None).to(q.dtype), call)

    return _jax_program(attention)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="4608,16900,75600")
    parser.add_argument("--time-tokens", type=int, default=4608)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-time", action="store_true")
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--flash-tpu-interpret", action="store_true",
                        help="time torchax flash in Pallas's TPU interpret mode (slow) instead of its generic interpreter")
    parser.add_argument("--only", choices=["torchax-flash"], default="", help="time only this row")
    args = parser.parse_args()
    os.environ.update(PJRT_DEVICE="CPU", COMFY_TPU_ENABLE="1", COMFY_TPU_CACHE_DIR=tempfile.mkdtemp(prefix="comfy-tpu-bench-"))
    sys.path.insert(0, PACK)
    from bench.comfy_host import import_comfy

    import_comfy(load_pack=False)
    if not args.no_audit:
        audits([int(n) for n in args.tokens.split(",")])
    if not args.no_time:
        times(args.time_tokens, args.repeat, args.flash_tpu_interpret, args.only)


if __name__ == "__main__":
    main()
