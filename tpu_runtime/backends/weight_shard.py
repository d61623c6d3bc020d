"""Which dimension of each weight is split over the mesh's ``model`` axis, read from the model's modules.

A model bigger than one chip must never exist whole on any chip, so its weights are split over the
``model`` axis as ComfyUI loads them (``Placement``, driven by ``patches.py``). Where to split comes
from the model's own structure, Megatron-style, with one rule for every family built from
``comfy.ops`` Linear and Conv layers (no per-family table):

* Layers are grouped by their nearest ancestor holding at least two of them: an attention block
  (q, k, v, out), an MLP (``Sequential`` of in and out projections), a DiT block (Flux's single
  stream block: ``linear1``, ``linear2``, its modulation).
* In a group the first layer reads the group's input width. A later layer that writes that width
  back, reading what an earlier layer of the group wrote (no wider than it), is **row-parallel**
  (its input dimension is split: its partial sums meet in one all-reduce), provided it narrows
  (in > out) or is the last such layer of its group (the out projection after square q, k, v).
* Every other layer is **column-parallel** (its output dimension and bias are split), so an
  attention block splits by heads and an MLP by its hidden units, and the pair column -> row
  needs no gathered weight.
* A split dimension must divide by the axis size; otherwise the other one, else the layer stays
  whole. Other tensors (embeddings, positional tables, modulation vectors) of at least
  ``MIN_SPLIT_ELEMENTS`` are split on their largest dividing dimension; smaller ones (norm
  scales, row-parallel biases) are replicated: the bound "1/M of the weights per chip" holds up to them.

Pure (torch only, no torch_xla): the backend marks the shardings.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

if TYPE_CHECKING:
    from tpu_runtime.backends.xla import Backend

log = logging.getLogger("comfy_tpu")

#: A tensor's partition: per dimension, the mesh axis it is split over, or None (whole).
Spec = tuple[Optional[str], ...]
MODEL_AXIS = "model"
#: Tensors outside Linear/Conv layers are split from this many elements up (smaller: replicated).
MIN_SPLIT_ELEMENTS = 1 << 14
#: Buffers the pack adds itself; they are placed with their layer's weight (kernel_layout).
OWN_BUFFERS = ("comfy_tpu_hwio_kernel",)


def _projection(module: torch.nn.Module) -> Optional[tuple[int, int]]:
    """(in, out) width of a Linear or Conv layer (comfy.ops layers subclass torch's), else None."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1:
        return module.in_channels, module.out_channels
    return None


def _split_dim(shape: torch.Size, preferred: list[int], size: int) -> Optional[int]:
    for dim in preferred:
        if dim < len(shape) and shape[dim] % size == 0 and shape[dim] >= size:
            return dim
    return None


def _spec(rank: int, dim: Optional[int]) -> Optional[Spec]:
    if dim is None:
        return None
    return tuple(MODEL_AXIS if d == dim else None for d in range(rank))


@dataclass
class WeightPlan:
    """Per tensor name (as ``named_parameters``/``named_buffers`` give it): its split, None = whole."""

    model_axis: int
    specs: dict[str, Optional[Spec]] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # layer name -> "column" / "row" / "whole"

    def spec(self, name: str) -> Optional[Spec]:
        return self.specs.get(name)

    def counts(self) -> dict[str, int]:
        split = sum(1 for spec in self.specs.values() if spec is not None)
        return {"split": split, "whole": len(self.specs) - split,
                "column_layers": sum(1 for r in self.roles.values() if r == "column"),
                "row_layers": sum(1 for r in self.roles.values() if r == "row")}


def _groups(layers: list[tuple[str, tuple[int, int]]]) -> dict[str, list[tuple[str, tuple[int, int]]]]:
    """Layers by their nearest ancestor (module path) holding at least two of them, in module order."""
    under: dict[str, int] = {}
    for name, _ in layers:
        parts = name.split(".")
        for cut in range(len(parts)):
            prefix = ".".join(parts[:cut])
            under[prefix] = under.get(prefix, 0) + 1
    groups: dict[str, list] = {}
    for name, widths in layers:
        parts = name.split(".")
        owner = next((".".join(parts[:cut]) for cut in range(len(parts) - 1, -1, -1)
                      if under[".".join(parts[:cut])] >= 2), "")
        groups.setdefault(owner, []).append((name, widths))
    return groups


def _row_layers(group: list[tuple[str, tuple[int, int]]]) -> set[str]:
    """The row-parallel layers of one group (see the module docstring)."""
    width = group[0][1][0]
    candidates, widest_before = [], 0
    for index, (name, (inner, outer)) in enumerate(group):
        if index and outer == width and inner <= widest_before:
            candidates.append((name, inner, outer))
        widest_before = max(widest_before, outer)
    return {name for position, (name, inner, outer) in enumerate(candidates)
            if inner > outer or position == len(candidates) - 1}


def plan_weights(model: torch.nn.Module, model_axis: int) -> WeightPlan:
    """The split of every parameter and buffer of ``model`` over a ``model`` axis of ``model_axis``."""
    plan = WeightPlan(model_axis)
    if model_axis <= 1:
        return plan
    layers = [(name, widths) for name, module in model.named_modules()
              if name and (widths := _projection(module)) is not None]
    rows = set().union(*(_row_layers(group) for group in _groups(layers).values())) if layers else set()
    modules = dict(model.named_modules())
    for name, _ in layers:
        module = modules[name]
        row = name in rows
        weight_dim = _split_dim(module.weight.shape, [1, 0] if row else [0, 1], model_axis)
        plan.roles[name] = "whole" if weight_dim is None else ("row" if weight_dim == 1 else "column")
        plan.specs[f"{name}.weight"] = _spec(module.weight.dim(), weight_dim)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            plan.specs[f"{name}.bias"] = _spec(1, 0) if weight_dim == 0 else None
    for name, tensor in _tensors(model):
        if name in plan.specs or name.rsplit(".", 1)[-1] in OWN_BUFFERS:
            continue
        dims = sorted(range(tensor.dim()), key=lambda d: -tensor.shape[d])
        big = tensor.numel() >= MIN_SPLIT_ELEMENTS and tensor.is_floating_point()
        plan.specs[name] = _spec(tensor.dim(), _split_dim(tensor.shape, dims, model_axis)) if big else None
    return plan


def _tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from ((name, buffer) for name, buffer in model.named_buffers() if buffer is not None)


def twin_spec(weight_spec: Optional[Spec], permutation: tuple[int, ...]) -> Optional[Spec]:
    """The split of ``weight.permute(*permutation)`` given the weight's."""
    return None if weight_spec is None else tuple(weight_spec[d] for d in permutation)


@dataclass
class ModelPlacement:
    """One model's plan, its layers' specs by object (for the kernel twins), and what a chip holds."""

    plan: WeightPlan
    layer_specs: "weakref.WeakKeyDictionary[torch.nn.Module, Optional[Spec]]"
    bytes_total: int = 0
    bytes_per_device: list[int] = field(default_factory=list)
    bytes_whole: int = 0  # bytes of tensors left whole (replicated on every chip)


class Placement:
    """Splits a diffusion model's weights over the ``model`` axis as they land on the device.

    Holds, weakly per model, the plan (made once from the module structure) and the last measure of
    bytes per device; the backend marks and measures."""

    def __init__(self, backend: "Backend") -> None:
        self.backend = backend
        self._models: "weakref.WeakKeyDictionary[torch.nn.Module, ModelPlacement]" = weakref.WeakKeyDictionary()
        self._names: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
        self.marked = 0  # tensors marked so far (tests read it)

    @property
    def model_axis(self) -> int:
        return self.backend.model_axis()

    @property
    def on(self) -> bool:
        return self.model_axis > 1

    def placement(self, model: torch.nn.Module) -> ModelPlacement:
        """``model``'s plan, made on first use (and again if the mesh's 'model' axis changed), logged once."""
        found = self._models.get(model)
        if found is None or found.plan.model_axis != self.model_axis:
            plan = plan_weights(model, self.model_axis)
            modules = dict(model.named_modules())
            layer_specs: Any = weakref.WeakKeyDictionary()
            for name in plan.roles:
                layer_specs[modules[name]] = plan.specs.get(f"{name}.weight")
            found = self._models[model] = ModelPlacement(plan, layer_specs)
            counts = plan.counts()
            log.info("comfy-tpu: %s weights split over model=%d: %d column- and %d row-parallel layers, "
                     "%d tensors split, %d small ones whole", type(model).__name__, self.model_axis,
                     counts["column_layers"], counts["row_layers"], counts["split"], counts["whole"])
        return found

    def _held(self, tensor: torch.Tensor) -> bool:
        """Whether a tensor of a model placed on the device is the backend's to split: a device tensor, or any
        weight where the backend keeps weights on the host and splits their device twins (torchax)."""
        return getattr(self.backend, "weights_on_host", False) is True or self.backend.is_device(tensor.device)

    def shard(self, model: torch.nn.Module, name: str, tensor: torch.Tensor) -> bool:
        """Mark one device tensor of ``model`` with its planned split (if it has one and is not split yet)."""
        if not self.on or not self._held(tensor):
            return False
        spec = self.placement(model).plan.spec(name)
        if spec is None or self.backend.tensor_sharding(tensor):
            return False
        self.backend.shard_tensor(tensor, spec)
        self.marked += 1
        return True

    def shard_model(self, model: torch.nn.Module, label: str = "") -> None:
        """Mark every device weight of ``model`` not yet split as planned, then measure what a chip holds."""
        if not self.on:
            return
        placement = self.placement(model)
        for name, tensor in _tensors(model):
            self.shard(model, name, tensor)
        if label:
            self._names[model] = label
        self.measure(model, placement)

    def bring_to_host(self, model: torch.nn.Module) -> int:
        """Replace every split device tensor of ``model`` by a host copy read from its parts, before ComfyUI
        moves the model off the device (its ``.to(cpu)`` then has nothing left to gather). Returns how many."""
        if not self.on or getattr(self.backend, "weights_on_host", False) is True:
            return 0  # torchax: the weights are host tensors already (only their twins are split)
        moved = 0
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, tensor in list(table.items()):
                    if tensor is None or not self.backend.is_device(tensor.device) or not self.backend.tensor_sharding(tensor):
                        continue
                    host = self.backend.gather_on_host(tensor.detach())
                    table[name] = (torch.nn.Parameter(host, requires_grad=tensor.requires_grad)
                                   if isinstance(tensor, torch.nn.Parameter) else host)
                    moved += 1
        return moved

    def twin_spec(self, layer: torch.nn.Module, permutation: tuple[int, ...]) -> Optional[Spec]:
        """The split of a conv layer's kernel twin, ``weight.permute(*permutation)``, when the layer's
        model was placed (None: whole)."""
        if not self.on:
            return None
        for placement in self._models.values():
            if layer in placement.layer_specs:
                return twin_spec(placement.layer_specs[layer], permutation)
        return None

    def measure(self, model: torch.nn.Module, placement: Optional[ModelPlacement] = None) -> ModelPlacement:
        """Bytes each device holds of ``model``'s device tensors (kernel twins included), from their shardings."""
        placement = placement or self.placement(model)
        devices = self.backend.device_total()
        per_device, total, whole = [0] * devices, 0, 0
        for _, tensor in _tensors(model):
            if not self._held(tensor):
                continue
            nbytes = tensor.numel() * tensor.element_size()
            total += nbytes
            held = self.backend.device_bytes(tensor)
            if len(set(held)) == 1 and held[0] == nbytes:
                whole += nbytes
            for index, count in enumerate(held):
                per_device[index] += count
        placement.bytes_total, placement.bytes_per_device, placement.bytes_whole = total, per_device, whole
        return placement

    def remeasure(self, model: torch.nn.Module) -> None:
        """After ComfyUI moved a placed ``model`` (an offload, an unload): what the chips hold of it now, so
        the free memory ComfyUI is told does not still count it."""
        found = self._models.get(model)
        if found is not None:
            self.measure(model, found)

    def held_per_chip(self) -> int:
        """Bytes of placed models' weights on the busiest chip, as last measured (no new measure: cheap)."""
        totals = [0] * self.backend.device_total()
        for placement in list(self._models.values()):
            for index, count in enumerate(placement.bytes_per_device[:len(totals)]):
                totals[index] += count
        return max(totals, default=0)

    def figures(self) -> list[dict[str, Any]]:
        """Per placed model still alive: its weight bytes and the bytes each chip holds now (kernel twins
        and patched weights included), measured from the tensors' shardings (stats)."""
        out = []
        for model, placement in list(self._models.items()):
            self.measure(model, placement)
            if not placement.bytes_total:
                continue  # offloaded: nothing of it is on the chips now
            out.append({"model": self._names.get(model) or type(model).__name__, "model_axis": placement.plan.model_axis,
                        "weight_bytes": placement.bytes_total, "bytes_per_chip": placement.bytes_per_device,
                        "whole_bytes": placement.bytes_whole, **placement.plan.counts()})
        return out


def auto_model_axis(weight_bytes: int, free_per_chip: Optional[int], devices: int) -> tuple[int, str]:
    """(model axis, the plan in words) for auto mode."""
    size = choose_model_axis(weight_bytes, free_per_chip, devices)
    gib = 2**30
    if free_per_chip is None:
        return 1, "a chip's free memory is unknown (set COMFY_TPU_HBM_PER_CHIP_GIB, or COMFY_TPU_MESH=data=D,model=M)"
    words = (f"weights {weight_bytes / gib:.2f} GiB, a chip's free memory {free_per_chip / gib:.2f} GiB: "
             f"mesh data={devices // size},model={size}, {weight_bytes / size / gib:.2f} GiB of weights a chip")
    return size, words


def choose_model_axis(weight_bytes: int, free_per_chip: Optional[int], devices: int, headroom: float = 0.7) -> int:
    """Auto mode: the smallest ``model`` axis (a divisor of ``devices``) under which a chip's share of the
    weights fits in ``headroom`` of its free memory (activations and programs need the rest); 1 when the
    weights fit one chip or the free memory is unknown; ``devices`` when no smaller axis fits."""
    if free_per_chip is None or free_per_chip <= 0 or devices <= 1:
        return 1
    for size in (d for d in range(1, devices + 1) if devices % d == 0):
        if weight_bytes / size <= headroom * free_per_chip:
            return size
    return devices
