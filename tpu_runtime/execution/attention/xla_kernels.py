"""torch_xla's side of attention: the blockwise loops as XLA While loops, and its Pallas flash kernel.

Why the private ``_scan_impl_pytree``: torch_xla's public ``scan`` goes through AOTAutograd, which cannot
nest one scan inside another (measured on 2.9.0: "element 0 of tensors does not require grad"); its
forward-only implementation nests, and 2.9.0 is torch_xla's last release, so it will not move."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from tpu_runtime.execution.attention import blockwise, split
from tpu_runtime.execution.attention.layout import HeadsCall

#: The Pallas flash kernel's tile: sequences and head dims are padded to a multiple of it.
FLASH_TILE = 128


def xla_scan(fn, carry: tuple, xs: tuple) -> tuple:
    """``blockwise``'s scan as one XLA While loop (the body traced once)."""
    from torch_xla.experimental.scan import _scan_impl_pytree

    return _scan_impl_pytree(fn, carry, xs)


def blockwise_attention(call: HeadsCall, mesh: Any = None) -> torch.Tensor:
    """Memory-bounded attention for XLA tensors; under SPMD q, k, v and the result are annotated with
    their split by rows and heads, which XLA's partitioner keeps through the loops given products that
    keep those dims apart (torch_xla's manual sharding, its ``shard_map``, fails on the loops:
    ``Check failed: !IsManual()``)."""
    spec = _spec(call, mesh)
    if spec is None:
        return blockwise.attention(call, xla_scan)
    import torch_xla.distributed.spmd as xs

    for t in (call.q, call.k, call.v):
        xs.mark_sharding(t, mesh, spec)
    out = blockwise.attention(call, xla_scan, dot_general_matmul)
    xs.mark_sharding(out, mesh, spec)
    return out


def dot_general_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 4-d tensors as one XLA dot with batch dims (batch, heads). Why: torch_xla lowers a
    4-d matmul as a 3-d one over batch x heads merged, and that merge keeps only the leading dim's split
    (on 4 CPU devices every score block's q, k and v were all-gathered over the other axis: model=4 with
    batch first, data=2 with heads first; measured)."""
    import torch_xla

    return torch_xla._XLAC._xla_dot_general(a, b, (([3], [2]), ([0, 1], [0, 1])), preferred_element_type=a.dtype)


def _spec(call: HeadsCall, mesh: Any) -> Optional[split.Spec]:
    """The call's split over torch_xla's ``mesh`` (``split.heads_spec``), or None when it splits nothing."""
    if mesh is None:
        return None
    spec = split.heads_spec(dict(zip(mesh.axis_names, mesh.mesh_shape)), call.q.shape[0], call.q.shape[1])
    return spec if split.is_split(spec) else None


def _pallas_flash() -> Callable[..., torch.Tensor]:
    """torch_xla's Pallas flash kernel (imports JAX; runs on a TPU only)."""
    from torch_xla.experimental.custom_kernel import flash_attention as pallas_flash

    return pallas_flash


def flash_attention(call: HeadsCall, mesh: Any = None) -> torch.Tensor:
    """torch_xla's Pallas flash kernel (a TPU only): head dims padded to the tile, padded keys kept out
    by segment ids, a mask as its additive bias ``ab``. Under SPMD its ``partition_spec`` and ``mesh``
    (torch_xla's own ``shard_map`` around the kernel, which XLA's partitioner cannot split): each
    device runs it on its own rows and heads; q, k, v, the bias and the segment ids are split alike."""
    q, k, v = call.q, call.k, call.v
    batch, heads, q_tokens, dim = q.shape
    k_tokens = k.shape[2]
    q, k, v = q.float(), k.float(), v.float()  # as under torchax: a bf16 kernel misses 2e-3 parity
    q_len, k_len = (blockwise._round_up(n, FLASH_TILE) for n in (q_tokens, k_tokens))
    width = blockwise._round_up(dim, FLASH_TILE)
    q, k, v = (blockwise._pad(t, 3, width) for t in (q, k, v))
    q, k, v = blockwise._pad(q, 2, q_len), blockwise._pad(k, 2, k_len), blockwise._pad(v, 2, k_len)
    segments = {}
    if k_len != k_tokens:
        segments = {"q_segment_ids": torch.ones((batch, q_len), dtype=torch.float32, device=q.device),
                    "kv_segment_ids": (torch.arange(k_len, device=q.device) < k_tokens).float().expand(batch, k_len)}
    ab = None
    if call.mask is not None:
        # The kernel (JAX's, under torch_xla) scales after adding the bias: (q k^T + ab) * scale.
        ab = (call.mask.float() / call.scale).expand(batch, heads, q_tokens, k_tokens)
        ab = blockwise._pad(blockwise._pad(ab, 3, k_len, blockwise.PAD_SCORE), 2, q_len)
    spec = _spec(call, mesh)
    placement = {} if spec is None else {"partition_spec": spec, "mesh": mesh}
    out = _pallas_flash()(q, k, v, False, sm_scale=call.scale, ab=ab, **segments, **placement)
    return out[:, :, :q_tokens, :dim].to(call.q.dtype)
