"""Attention parity at <= 2k tokens (#30): each implementation, reached through ComfyUI's own hook
(``attention_pytorch(..., transformer_options={"optimized_attention_override": router})``), against
ComfyUI's attention on the host in fp32 on the same inputs. Self- and cross-attention, with and without
masks (bool key padding, additive 2-d and 4-d), head dims that are not a multiple of 128, GQA.

The blockwise loop runs natively (torch_xla While loops on PJRT CPU; ``jax.lax.scan`` under torchax);
JAX's Pallas TPU flash kernel in Pallas's TPU interpret mode. Bounds: 1e-5 fp32; 2e-3 bf16 for outputs
below 1 in size, doubled for each power of two the largest output reaches above that (rounding the
exact result to bf16 costs up to half a bf16 step, 2^-9 of the value's power of two)."""
from __future__ import annotations

import importlib.util
import math
from typing import NamedTuple, Optional

import pytest
import torch

from tpu_runtime.execution.attention import blockwise, layout, route

BOUND = {torch.float32: 1e-5, torch.bfloat16: 2e-3}
HOOK = "optimized_attention_override"


class Case(NamedTuple):
    name: str
    q_tokens: int
    k_tokens: int
    heads: int
    dim: int
    mask: Optional[str] = None  # "keys" (bool, batch x 1 x k), "2d" (additive q x k), "4d" (additive, every head)
    kv_heads: Optional[int] = None  # GQA: fewer key/value heads (passed in head layout, skip_reshape)


CASES = [
    Case("self", 256, 256, 2, 40),
    Case("cross", 256, 77, 2, 64),
    Case("self-keys-mask", 300, 300, 2, 40, "keys"),
    Case("cross-keys-mask", 200, 77, 3, 64, "keys"),
    Case("self-2d-mask", 130, 130, 2, 32, "2d"),
    Case("cross-4d-mask", 120, 77, 2, 72, "4d"),
    Case("gqa", 160, 160, 4, 64, None, kv_heads=2),
    Case("self-2k", 2048, 2048, 2, 64),
    Case("cross-2k-keys-mask", 2048, 77, 2, 64, "keys"),
]
BATCH = 2


def _inputs(case: Case, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(hash(case.name) % 2**31)
    kv_heads = case.kv_heads or case.heads
    if case.kv_heads:
        shapes = [(BATCH, case.heads, case.q_tokens, case.dim)] + [(BATCH, kv_heads, case.k_tokens, case.dim)] * 2
    else:
        shapes = [(BATCH, case.q_tokens, case.heads * case.dim)] + [(BATCH, case.k_tokens, case.heads * case.dim)] * 2
    q, k, v = (torch.randn(shape, generator=gen).to(dtype) for shape in shapes)
    mask = None
    if case.mask == "keys":
        mask = torch.rand((BATCH, 1, case.k_tokens), generator=gen) > 0.3
        mask[..., 0] = True  # every query sees a key
    elif case.mask == "2d":
        mask = torch.randn((case.q_tokens, case.k_tokens), generator=gen).to(dtype)
    elif case.mask == "4d":
        mask = torch.randn((BATCH, case.heads, case.q_tokens, case.k_tokens), generator=gen).to(dtype)
    return q, k, v, mask


def _reference(comfy_attention, case: Case, q, k, v, mask) -> torch.Tensor:
    """ComfyUI's attention_pytorch on the host in fp32 (GQA: its key/value heads repeated, as 0.33 does)."""
    q, k, v = (t.float() for t in (q, k, v))
    mask = mask if mask is None or mask.dtype == torch.bool else mask.float()
    if case.kv_heads:
        group = case.heads // case.kv_heads
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
        return comfy_attention(q, k, v, case.heads, mask=mask, skip_reshape=True)
    return comfy_attention(q, k, v, case.heads, mask=mask)


def _through_the_hook(comfy_attention, router, case: Case, q, k, v, mask):
    return comfy_attention(q, k, v, case.heads, mask=mask, skip_reshape=bool(case.kv_heads),
                           transformer_options={HOOK: router})


def _run_xla(comfy_attention, implementation: str, case: Case, q, k, v, mask) -> torch.Tensor:
    import torch_xla

    device = torch_xla.device()
    router = route.router_for(implementation, "torch_xla", "CPU")
    with torch.inference_mode():  # as ComfyUI samples (tensors made outside it cannot be viewed inside on XLA)
        moved = [None if t is None else t.to(device) for t in (q, k, v, mask)]
        return _through_the_hook(comfy_attention, router, case, *moved).cpu()


def _run_torchax(comfy_attention, implementation: str, case: Case, q, k, v, mask) -> torch.Tensor:
    import jax
    import torchax
    from tpu_runtime.backends.torchax import host_array, host_tensor

    env = torchax.default_env()
    router = route.router_for(implementation, "torchax", "CPU")
    given = [t for t in (q, k, v, mask) if t is not None]

    def program(*arrays):
        with torch.inference_mode(False), torch.no_grad(), env:
            tensors = [torchax.tensor.Tensor(a, env) for a in arrays]
            return _through_the_hook(comfy_attention, router, case, *tensors[:3],
                                     tensors[3] if mask is not None else None).jax()

    return host_tensor(jax.jit(program)(*[host_array(t) for t in given]))


def _run_eager(comfy_attention, implementation: str, case: Case, q, k, v, mask) -> torch.Tensor:
    """The blockwise loop as Python (the algorithm alone, no device loop)."""
    call = layout.to_heads(q, k, v, case.heads, mask=mask, skip_reshape=bool(case.kv_heads))
    return layout.from_heads(blockwise.attention(call), call)


RUNNERS = {"blockwise-eager": _run_eager, "blockwise-torch_xla": _run_xla, "blockwise-torchax": _run_torchax,
           "flash-torchax": _run_torchax}


@pytest.fixture(scope="module")
def comfy_attention(comfy):
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch


#: Every (runner, case, dtype) but Pallas flash in bf16 at 2k tokens: that kernel runs in fp32 whatever its inputs
#: (``backends/torchax_attention``: the Pallas kernels run in fp32), so its 2k case is checked in fp32 only (interpret mode: ~1 min a case here).
PARITY_CASES = [(runner, case, dtype) for runner in RUNNERS for case in CASES
                for dtype in (torch.float32, torch.bfloat16)
                if not (runner == "flash-torchax" and dtype == torch.bfloat16 and case.q_tokens >= 2048)]


@pytest.mark.parametrize("runner,case,dtype", PARITY_CASES,
                         ids=[f"{r}-{c.name}-{'fp32' if d == torch.float32 else 'bf16'}" for r, c, d in PARITY_CASES])
def test_parity_with_comfyuis_attention(comfy_attention, runner, case, dtype):
    if runner.endswith("torchax") and importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (the comfy-tpu[torchax] extra)")
    q, k, v, mask = _inputs(case, dtype)
    expected = _reference(comfy_attention, case, q, k, v, mask)
    out = RUNNERS[runner](comfy_attention, runner.split("-")[0], case, q, k, v, mask)
    assert out.shape == expected.shape and out.dtype == dtype
    error = (out.float() - expected).abs().max().item()
    # bf16: rounding the exact result alone costs half a bf16 step, which grows with the value.
    binade = 2.0 ** max(0, math.ceil(math.log2(expected.abs().max().item())))
    bound = BOUND[dtype] * (binade if dtype == torch.bfloat16 else 1.0)
    assert error <= bound, f"{runner} {case.name} {dtype}: max abs {error:.3g} > {bound:.3g}"


def test_host_tensors_keep_comfyuis_attention(comfy_attention):
    """A model run eagerly on the host (a replay fallback) gets ComfyUI's SDPA, whatever the setting."""
    case = CASES[1]
    q, k, v, mask = _inputs(case, torch.float32)
    out = _through_the_hook(comfy_attention, route.router_for("blockwise", "torch_xla", "CPU"), case, q, k, v, mask)
    assert torch.equal(out, comfy_attention(q, k, v, case.heads, mask=mask))


def test_sampling_calls_get_the_router_of_their_setting(comfy, backend):
    """``attach`` installs the router for the setting in force (and a model's own override of it)."""
    from tpu_runtime import runtime
    from tpu_runtime.sampling.attach import attach
    from tpu_runtime.settings.run_options import OPTIONS_KEY

    state = runtime.current()
    plain, forced = {}, {"transformer_options": {OPTIONS_KEY: {"attention": "blockwise"}}}
    attach(plain, state)
    attach(forced, state)
    device_type = backend.device_type()
    assert plain["transformer_options"][HOOK] is route.router_for(state.options.attention, backend.name, device_type)
    assert forced["transformer_options"][HOOK] is route.router_for("blockwise", backend.name, device_type)
