"""Attention at Wan 2.1 720p size (#30): 75,600 tokens x 40 heads x 128, bf16, batch 1. The program
each backend hands XLA (torch_xla's HLO of the traced graph; JAX's lowered StableHLO, before any
backend optimization) holds no seq x seq tensor, and no intermediate over 256 MiB besides the
inputs and output themselves (re-laid out or padded to whole blocks); it compiles here. SDPA's program
is audited the same way, so the audit is seen to find the scores it is looking for. Inside ComfyUI's
own Wan block (``WanAttentionBlock``, real width 5120 = 40 x 128) no tensor has a seq x seq extent,
and every tensor over 256 MiB is a per-token activation (x, q/k/v, the FFN hidden: at most the FFN's
13,824 values a token; that hidden alone is 2 GiB at this length, whatever the attention); the block's
program compiles here too."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from tpu_runtime.execution.attention import program_audit, route

# Its tests have XLA compile the programs they audit: in a fresh process with its own cache dir, so a graph an
# earlier test compiled cannot stand in for one that would not compile (tests/fresh_process.py).
pytestmark = pytest.mark.fresh_process

TOKENS, HEADS, DIM = 21 * 45 * 80, 40, 128
LIMIT = 256 << 20
CONTEXT = 512  # Wan's text context
WAN_FFN = 13824


def _needs_torchax():
    if importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (the comfy-tpu[torchax] extra)")


def _check_attention(text: str, implementation: str) -> program_audit.Audit:
    audit = program_audit.audit(text, TOKENS, [TOKENS * HEADS * DIM])
    print(implementation, "largest", audit.largest, "largest inner", audit.largest_inner)
    assert audit.seq_by_seq == (), [str(s) for s in audit.seq_by_seq]
    assert audit.largest_inner.nbytes <= LIMIT, str(audit.largest_inner)
    return audit


def _xla_attention_graph(implementation: str):
    import torch_xla

    device = torch_xla.device()
    router = route.router_for(implementation, "torch_xla", "CPU")
    q, k, v = (torch.zeros(1, TOKENS, HEADS * DIM, dtype=torch.bfloat16, device=device) + i for i in range(3))
    return router(None, q, k, v, HEADS, transformer_options={})


def _jax_lowered(function, *specs):
    import jax
    import torchax

    env = torchax.default_env()

    def program(*arrays):
        with torch.inference_mode(False), torch.no_grad(), env:
            return function(*[torchax.tensor.Tensor(a, env) for a in arrays]).jax()

    return jax.jit(program).lower(*specs)


def _bf16_spec(*shape):
    import jax
    import jax.numpy as jnp

    return jax.ShapeDtypeStruct(shape, jnp.bfloat16)


def test_torch_xla_blockwise_program_is_memory_bounded_and_compiles(comfy):
    import torch_xla

    with torch.inference_mode():
        out = _xla_attention_graph("blockwise")
        _check_attention(torch_xla._XLAC._get_xla_tensors_hlo([out]), "torch_xla blockwise")
        torch_xla._XLAC._xla_warm_up_cache([out], [])  # compiles (nothing runs)


def test_torch_xla_sdpa_program_holds_the_scores(comfy):
    import torch_xla

    with torch.inference_mode():
        out = _xla_attention_graph("sdpa")
        audit = program_audit.audit(torch_xla._XLAC._get_xla_tensors_hlo([out]), TOKENS, [TOKENS * HEADS * DIM])
    assert audit.largest.dims[-2:] == (TOKENS, TOKENS) and audit.largest.nbytes > 400 << 30


@pytest.mark.parametrize("implementation", ["blockwise", "flash"])
def test_torchax_program_is_memory_bounded_and_compiles(comfy, implementation):
    """flash: JAX's Pallas kernel as interpret mode lowers it off a TPU (on a TPU it is one Mosaic call)."""
    _needs_torchax()
    router = route.router_for(implementation, "torchax", "CPU")
    spec = _bf16_spec(1, TOKENS, HEADS * DIM)
    lowered = _jax_lowered(lambda q, k, v: router(None, q, k, v, HEADS, transformer_options={}), spec, spec, spec)
    _check_attention(lowered.as_text(), f"torchax {implementation}")
    lowered.compile()


def _wan_block(device):
    import comfy.ops
    from comfy.ldm.wan.model import WanAttentionBlock

    settings = {"operations": comfy.ops.disable_weight_init, "device": device, "dtype": torch.bfloat16}
    return WanAttentionBlock("t2v_cross_attn", HEADS * DIM, WAN_FFN, HEADS, operation_settings=settings)


def _check_block(text: str, label: str) -> None:
    found = program_audit.shapes(text)
    big = sorted((s for s in found if s.nbytes > LIMIT), key=lambda s: s.nbytes)
    print(label, "largest", big[-1] if big else None)
    assert not [s for s in found if sum(d >= TOKENS for d in s.dims) >= 2]
    # Per-token activations (x, q/k/v in blocks, the FFN hidden): at most the FFN's width per token,
    # padding included; attention scores would be TOKENS x HEADS per token.
    wider = [str(s) for s in big if math.prod(s.dims) > TOKENS * WAN_FFN * 1.1]
    assert not wider, wider


def _block_inputs(make):
    """x, e, freqs (Wan's rope: batch x tokens x 1 x dim/2 x 2 x 2, fp32), context."""
    return (make((1, TOKENS, HEADS * DIM), torch.bfloat16), make((1, 6, HEADS * DIM), torch.bfloat16),
            make((1, TOKENS, 1, DIM // 2, 2, 2), torch.float32), make((1, CONTEXT, HEADS * DIM), torch.bfloat16))


def test_inside_comfyuis_wan_block_torch_xla(comfy):
    import torch_xla

    device = torch_xla.device()
    block = _wan_block("meta")
    options = {"optimized_attention_override": route.router_for("blockwise", "torch_xla", "CPU")}
    with torch.inference_mode():
        weights = {name: torch.zeros(p.shape, dtype=p.dtype, device=device) for name, p in block.named_parameters()}
        inputs = _block_inputs(lambda shape, dtype: torch.zeros(shape, dtype=dtype, device=device))
        out = torch.func.functional_call(block, weights, inputs, {"transformer_options": options})
        _check_block(torch_xla._XLAC._get_xla_tensors_hlo([out]), "torch_xla Wan block")
        torch_xla._XLAC._xla_warm_up_cache([out], [])  # compiles (nothing runs)


def test_inside_comfyuis_wan_block_torchax(comfy):
    _needs_torchax()
    import jax

    block = _wan_block("meta")
    names = [name for name, _ in block.named_parameters()]
    options = {"optimized_attention_override": route.router_for("blockwise", "torchax", "CPU")}
    from tpu_runtime.backends.torchax import host_array

    def run(*tensors):
        weights = dict(zip(names, tensors[4:]))
        return torch.func.functional_call(block, weights, tensors[:4], {"transformer_options": options})

    specs = [jax.ShapeDtypeStruct(shape, host_array(torch.zeros((), dtype=dtype)).dtype)
             for shape, dtype in _block_inputs(lambda shape, dtype: (shape, dtype))]
    specs += [jax.ShapeDtypeStruct(tuple(p.shape), host_array(torch.zeros((), dtype=p.dtype)).dtype)
              for p in block.parameters()]
    lowered = _jax_lowered(run, *specs)
    _check_block(lowered.as_text(), "torchax Wan block")
    lowered.compile()
