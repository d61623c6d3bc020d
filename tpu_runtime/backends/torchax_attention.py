"""The torchax backend's attention: ``blockwise``'s loops as ``jax.lax.scan`` and JAX's Pallas TPU flash
kernel, both called from the torch code the model runs (its tensors are torchax tensors over JAX arrays).

Why here: with ``backends/torchax.py`` this is the one place the pack imports JAX; both are imported
only when the torchax backend runs. Off a TPU the Pallas kernel runs in Pallas's TPU interpret mode
(``pltpu.force_tpu_interpret_mode``; JAX >= 0.10 ignores the old environment variable): slow, for tests."""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from tpu_runtime.execution.attention import blockwise, split
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


def blockwise_attention(call: HeadsCall, mesh: Any = None) -> torch.Tensor:
    """Memory-bounded attention for torchax tensors; on a mesh inside ``shard_map`` (left to XLA's
    partitioner, ``model=4`` all-gathered every score block's heads: measured)."""
    from torchax import interop

    def local(q: Any, k: Any, v: Any, mask: Any) -> Any:
        part = call._replace(q=q, k=k, v=v, mask=mask, heads=q.shape[1])
        return blockwise.attention(part, jax_scan)

    if _spec(call, mesh) is None:
        return local(call.q, call.k, call.v, call.mask)
    return interop.call_jax(functools.partial(on_mesh, interop.jax_view(local), mesh=mesh),
                            call.q, call.k, call.v, call.mask)


def _spec(call: HeadsCall, mesh: Any) -> Any:
    """The call's split over ``mesh`` (``split.heads_spec``), or None when it splits nothing."""
    if mesh is None:
        return None
    spec = split.heads_spec(dict(mesh.shape), call.q.shape[0], call.q.shape[1])
    return spec if split.is_split(spec) else None


def on_mesh(local: Callable, q: Any, k: Any, v: Any, mask: Any, *, mesh: Any) -> Any:
    """``local(q, k, v, mask)`` on JAX arrays, run by each device of ``mesh`` on its own rows and heads
    (``shard_map``); a mask splits along the rows and heads it has (a size-1 dim goes whole to each)."""
    import jax
    from jax.sharding import PartitionSpec

    spec = split.heads_spec(dict(mesh.shape), *q.shape[:2])
    specs = [PartitionSpec(*spec)] * 3
    arrays = (q, k, v)
    if mask is not None:
        arrays += (mask,)
        specs.append(PartitionSpec(*split.mask_spec(spec, mask.shape, q.shape)))

    def per_device(*given: Any) -> Any:
        return local(*given[:3], given[3] if len(given) > 3 else None)

    return jax.shard_map(per_device, mesh=mesh, in_specs=tuple(specs), out_specs=specs[0],
                         check_vma=False)(*arrays)


def _pad(array: Any, axis: int, length: int, value: float = 0.0) -> Any:
    import jax.numpy as jnp

    extra = length - array.shape[axis]
    if extra <= 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, extra)
    return jnp.pad(array, widths, constant_values=value)


def pallas_flash(q: Any, k: Any, v: Any, mask: Any, scale: float, simulate_tpu: bool = True) -> Any:
    """JAX's Pallas TPU flash attention on ``(batch, heads, tokens, dim)`` arrays: head dims and
    sequences padded to the tile, padded keys kept out by segment ids, a mask as the bias ``ab``
    (divided by the scale, which the kernel applies after it; broadcast to ``batch x heads x q x k``:
    a mask that size is seq x seq already). Off a TPU interpreted: by default in Pallas's TPU interpret
    mode (it simulates the TPU's memories); ``simulate_tpu=False``: Pallas's generic interpreter (the
    kernel as plain XLA ops), which a ``shard_map`` needs: under one over 4 JAX CPU devices the TPU
    simulator stopped in its buffer allocation, no progress in 90 s (measured)."""
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
    interpret = pltpu.force_tpu_interpret_mode() if simulate_tpu else pltpu.force_tpu_interpret_mode(True)
    with contextlib.nullcontext() if on_tpu else interpret:
        out = pallas.flash_attention(q, k, v, ab=ab, segment_ids=segments, sm_scale=scale)
    return out[:, :, :q_tokens, :dim]


def flash_attention(call: HeadsCall, mesh: Any = None) -> torch.Tensor:
    """The Pallas kernel on a torchax call (its output back in q's dtype); ``mesh``: the backend's JAX
    mesh under SPMD, else None."""
    from torchax import interop

    if _spec(call, mesh) is None:
        out = interop.call_jax(functools.partial(pallas_flash, scale=call.scale), call.q, call.k, call.v, call.mask)
    else:  # XLA's partitioner cannot split a kernel call: each device runs it on its own rows and heads
        local = functools.partial(pallas_flash, scale=call.scale, simulate_tpu=False)
        out = interop.call_jax(functools.partial(on_mesh, local, mesh=mesh), call.q, call.k, call.v, call.mask)
    return out.to(call.q.dtype)
