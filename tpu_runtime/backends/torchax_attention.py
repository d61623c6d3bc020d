"""The torchax backend's attention: ``blockwise``'s loops as ``jax.lax.scan`` and JAX's Pallas TPU flash
kernel, both called from the torch code the model runs (its tensors are torchax tensors over JAX arrays).

Why here: with ``backends/torchax.py`` this is the one place the pack imports JAX; both are imported
only when the torchax backend runs. Off a TPU the Pallas kernel runs in Pallas's TPU interpret mode
(``pltpu.force_tpu_interpret_mode``; JAX >= 0.10 ignores the old environment variable): slow, for tests."""
from __future__ import annotations

from typing import Any, Callable

import torch

from tpu_runtime.execution.attention import blockwise
from tpu_runtime.execution.attention.layout import HeadsCall

#: The Pallas flash kernel's tile: sequences and head dims are padded to a multiple of it.
FLASH_TILE = 128


def is_torchax_tensor(tensor: Any) -> bool:
    """A tensor of a torchax program (a JAX array seen as a torch tensor)."""
    import torchax.tensor

    return isinstance(tensor, torchax.tensor.Tensor)


def jax_scan(fn: Callable, carry: tuple, xs: tuple) -> tuple:
    """``blockwise``'s scan as ``jax.lax.scan``: the torch body traced once, on torchax tensors."""
    import jax
    from torchax import interop

    return interop.call_jax(jax.lax.scan, fn, carry, xs)


def blockwise_attention(call: HeadsCall) -> torch.Tensor:
    """Memory-bounded attention for torchax tensors."""
    return blockwise.attention(call, jax_scan)


def _pad(array: Any, axis: int, length: int, value: float = 0.0) -> Any:
    import jax.numpy as jnp

    extra = length - array.shape[axis]
    if extra <= 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return jnp.pad(array, widths, constant_values=value)


def pallas_flash(q: Any, k: Any, v: Any, mask: Any, scale: float) -> Any:
    """JAX's Pallas TPU flash attention on ``(batch, heads, tokens, dim)`` arrays: head dims and
    sequences padded to the tile, padded keys kept out by segment ids, a mask as the bias ``ab``
    (divided by the scale, which the kernel applies after it; broadcast to ``batch x heads x q x k``:
    a mask that size is seq x seq already). Interpret mode off a TPU."""
    import contextlib

    import jax
    import jax.numpy as jnp
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas

    batch, heads, q_tokens, dim = q.shape
    k_tokens = k.shape[2]
    # fp32 in the kernel: given bf16 it weights v in bf16, 2.0e-3 to 7.0e-3 off ComfyUI's attention at
    # <= 300 tokens (measured); fp32 meets 2e-3. On a TPU this costs MXU passes: a speed to measure there.
    q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
    round_up = blockwise._round_up
    q_len, k_len, width = round_up(q_tokens, FLASH_TILE), round_up(k_tokens, FLASH_TILE), round_up(dim, FLASH_TILE)
    q, k, v = (_pad(t, 3, width) for t in (q, k, v))
    q, k, v = _pad(q, 2, q_len), _pad(k, 2, k_len), _pad(v, 2, k_len)
    segments = None
    if k_len != k_tokens:
        segments = pallas.SegmentIds(q=jnp.ones((batch, q_len), jnp.int32),
                                     kv=jnp.broadcast_to((jnp.arange(k_len) < k_tokens).astype(jnp.int32), (batch, k_len)))
    ab = None
    if mask is not None:
        # The kernel scales after adding the bias: (q k^T + ab) * scale.
        ab = jnp.broadcast_to(mask.astype(jnp.float32) / scale, (batch, heads, q_tokens, k_tokens))
        ab = _pad(_pad(ab, 3, k_len, blockwise.PAD_SCORE), 2, q_len)
    on_tpu = jax.devices()[0].platform == "tpu"
    with contextlib.nullcontext() if on_tpu else pltpu.force_tpu_interpret_mode():
        out = pallas.flash_attention(q, k, v, ab=ab, segment_ids=segments, sm_scale=scale)
    return out[:, :, :q_tokens, :dim]


def flash_attention(call: HeadsCall) -> torch.Tensor:
    """The Pallas kernel on a torchax call (its output back in q's dtype)."""
    from torchax import interop

    out = interop.call_jax(pallas_flash, call.q, call.k, call.v, call.mask, call.scale)
    return out.to(call.q.dtype)
