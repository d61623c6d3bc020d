"""torch_xla's side of attention: the blockwise loops as XLA While loops, and its Pallas flash kernel.

Why the private ``_scan_impl_pytree``: torch_xla's public ``scan`` goes through AOTAutograd, which cannot
nest one scan inside another (measured on 2.9.0: "element 0 of tensors does not require grad"); its
forward-only implementation nests, and 2.9.0 is torch_xla's last release, so it will not move."""
from __future__ import annotations

import torch

from tpu_runtime.execution.attention import blockwise
from tpu_runtime.execution.attention.layout import HeadsCall

#: The Pallas flash kernel's tile: sequences and head dims are padded to a multiple of it.
FLASH_TILE = 128


def xla_scan(fn, carry: tuple, xs: tuple) -> tuple:
    """``blockwise``'s scan as one XLA While loop (the body traced once)."""
    from torch_xla.experimental.scan import _scan_impl_pytree

    return _scan_impl_pytree(fn, carry, xs)


def blockwise_attention(call: HeadsCall) -> torch.Tensor:
    """Memory-bounded attention for XLA tensors."""
    return blockwise.attention(call, xla_scan)


def flash_attention(call: HeadsCall) -> torch.Tensor:
    """torch_xla's Pallas flash kernel (a TPU only): head dims padded to the tile, padded keys kept out
    by segment ids, a mask as its additive bias ``ab``."""
    from torch_xla.experimental.custom_kernel import flash_attention as pallas_flash

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
    out = pallas_flash(q, k, v, False, sm_scale=call.scale, ab=ab, **segments)
    return out[:, :, :q_tokens, :dim].to(call.q.dtype)
