"""Weights split over the mesh's ``model`` axis under torchax: JAX ``NamedSharding`` on each weight's twin.

Under torch_xla a weight's split is marked on its device tensor (``xs.mark_sharding``). Under torchax
ComfyUI's weights stay host tensors and the device holds their twins (``backends.torchax.WeightTwins``), so
the split the plan gives a weight (``weight_shard.Placement``: the same Megatron-style plan, the same hooks
in ComfyUI's loading and LoRA patching) is recorded here by the tensor's identity, and its twin is uploaded
with ``NamedSharding(mesh, PartitionSpec(*spec))``: ``jax.device_put`` of a host array with that sharding
sends each device its part only, so no device ever holds the whole weight. The model's program takes the
split twins as they are; JAX's partitioner (GSPMD) places the collectives.

What a device holds is read from the twins' own shards (``addressable_shards``), not from the plan.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch

Spec = tuple[Optional[str], ...]


class WeightSplits:
    """The split of each weight (by identity, weakly) and the JAX sharding its twin is uploaded with."""

    def __init__(self, mesh_of: Callable[[], Any]) -> None:
        self._mesh_of = mesh_of  # the backend's current JAX mesh (auto mode may re-plan it)
        self._specs: dict[int, tuple[Any, Spec]] = {}  # id -> (weakref, spec)

    def mark(self, tensor: torch.Tensor, spec: Spec) -> None:
        key = id(tensor)

        def forget(ref: Any, key: int = key) -> None:
            entry = self._specs.get(key)
            if entry is not None and entry[0] is ref:
                del self._specs[key]

        self._specs[key] = (weakref.ref(tensor, forget), tuple(spec))

    def spec(self, tensor: torch.Tensor) -> Optional[Spec]:
        entry = self._specs.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def sharding(self, tensor: torch.Tensor) -> Optional[Any]:
        """The ``NamedSharding`` of a weight with a recorded split (None: the caller's default, replicated)."""
        spec, mesh = self.spec(tensor), self._mesh_of()
        if spec is None or mesh is None:
            return None
        from jax.sharding import NamedSharding, PartitionSpec

        return NamedSharding(mesh, PartitionSpec(*spec))

    def describe(self, tensor: torch.Tensor) -> str:
        """A recorded split in words ("" when the weight is whole): what ``tensor_sharding`` answers."""
        spec = self.spec(tensor)
        return "" if spec is None else "(" + ", ".join(str(axis) for axis in spec) + ")"

    def __len__(self) -> int:
        return len(self._specs)


def bytes_per_device(array: Any, devices: list[Any]) -> list[int]:
    """Bytes of ``array`` on each of ``devices``, read from its shards (0 where it has none)."""
    held = {device: 0 for device in devices}
    for shard in array.addressable_shards:
        if shard.device in held:
            held[shard.device] += int(shard.data.nbytes)
    return [held[device] for device in devices]
