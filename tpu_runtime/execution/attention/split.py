"""How an attention call in head layout ``(batch, heads, tokens, dim)`` splits over an SPMD mesh: its
batch over the mesh's ``data`` axis, its heads over ``model``.

Why: under SPMD the batch is split over ``data`` (``batch_shard``) and the q/k/v projections over
``model`` by their output features, that is by heads (``weight_shard``). Attention is independent per
row and per head, so each device can run it on its own rows and heads with no communication. A kernel
XLA's partitioner cannot see into (a Pallas call) must be told so (``shard_map`` under torchax,
torch_xla's ``partition_spec``); plain ops are annotated so the partitioner keeps that split through
the blockwise loops. A dimension the axis does not divide stays whole (every device of that axis then
computes it: correct, only redundant)."""
from __future__ import annotations

from typing import Mapping, Optional

Spec = tuple[Optional[str], ...]
DATA, MODEL = "data", "model"


def heads_spec(axes: Mapping[str, int], batch: int, heads: int) -> Spec:
    """The partition of a ``(batch, heads, tokens, dim)`` tensor: ``data`` on the batch and ``model`` on
    the heads where the mesh has that axis (over one device) and it divides them; tokens and dim whole."""

    def axis(name: str, size: int) -> Optional[str]:
        ways = axes.get(name, 1)
        return name if ways > 1 and size % ways == 0 else None

    return (axis(DATA, batch), axis(MODEL, heads), None, None)


def is_split(spec: Spec) -> bool:
    """The spec splits something (else the call runs as on one device)."""
    return any(name is not None for name in spec)


def mask_spec(spec: Spec, mask_shape: tuple[int, ...], q_shape: tuple[int, ...]) -> Spec:
    """The split of a 4-d mask broadcastable to q's scores: along ``spec``'s batch and heads where the
    mask has them (a size-1 dim is whole on every device: broadcast there, never materialized here)."""
    return tuple(name if dim < 2 and mask_shape[dim] == q_shape[dim] else None for dim, name in enumerate(spec))
