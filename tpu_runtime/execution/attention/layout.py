"""ComfyUI's attention call form (``q, k, v, heads, mask=None, ..., skip_reshape, skip_output_reshape``)
turned into one head layout every implementation takes, and its result turned back.

Why: ComfyUI passes q/k/v either as ``(batch, tokens, heads * dim)`` or, with ``skip_reshape``, as
``(batch, heads, tokens, dim)``; masks come as 2-, 3- or 4-d, bool or additive; GQA models (0.33's
``enable_gqa``) pass fewer key/value heads. Implementations should see one form only."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch


class HeadsCall(NamedTuple):
    """One attention call in ``(batch, heads, tokens, dim)`` form; ``mask`` is additive (or None),
    broadcastable to ``(batch, heads, q_tokens, k_tokens)``; k/v carry as many heads as q."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: Optional[torch.Tensor]
    scale: float
    heads: int
    skip_output_reshape: bool


def _split_heads(t: torch.Tensor, batch: int, dim_head: int) -> torch.Tensor:
    return t.reshape(batch, t.shape[1], -1, dim_head).transpose(1, 2)


def to_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None,
             attn_precision: Any = None, skip_reshape: bool = False, skip_output_reshape: bool = False,
             scale: Optional[float] = None, **kwargs: Any) -> HeadsCall:
    """The call in head layout, taking ComfyUI's arguments in its order. ``attn_precision`` needs nothing:
    every implementation here keeps its softmax statistics in fp32. Other keywords ComfyUI passes
    (``transformer_options``, ``enable_gqa``: the head counts tell) are not needed."""
    if skip_reshape:
        batch, _, _, dim_head = q.shape
    else:
        batch, _, width = q.shape
        dim_head = width // heads
        q, k, v = (_split_heads(t, batch, dim_head) for t in (q, k, v))
    if k.shape[1] != q.shape[1]:  # GQA: each key/value head serves a group of query heads
        if q.shape[1] % k.shape[1]:
            raise ValueError(f"attention: {q.shape[1]} query heads do not group over {k.shape[1]} key heads")
        group = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    if mask is not None:
        if mask.ndim == 2:  # as ComfyUI's attention_pytorch: (q, k), then (batch, q, k)
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return HeadsCall(q, k, v, mask, float(scale) if scale is not None else dim_head ** -0.5, q.shape[1],
                     skip_output_reshape)


def from_heads(out: torch.Tensor, call: HeadsCall) -> torch.Tensor:
    """The result in the form ComfyUI asked for: ``(batch, heads, tokens, dim)`` with
    ``skip_output_reshape``, else ``(batch, tokens, heads * dim)``."""
    if call.skip_output_reshape:
        return out
    batch, heads, tokens, dim_head = out.shape
    return out.transpose(1, 2).reshape(batch, tokens, heads * dim_head)


def sdpa(call: HeadsCall) -> torch.Tensor:
    """PyTorch SDPA on the head-layout call (what XLA lowers as written: the scores are materialized)."""
    return torch.nn.functional.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=call.mask,
                                                            scale=call.scale)
