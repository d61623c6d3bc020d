"""Program outputs kept on the JAX device as torch tensors, for the ComfyUI code that runs between programs.

Why: under torchax a ControlNet's model runs as its own JAX program, and ComfyUI's own Python then merges
its outputs (``ControlBase.control_merge``: ``x *= strength``, a dtype cast, the chain's sum) before they
enter the diffusion model's program. Brought back to the host, a ControlNet would cost a device-to-host
transfer (a host sync) per output per model call; kept on the device, the merge runs there, each op
dispatched asynchronously by JAX (a few element-wise ops a call), and the diffusion model's program takes
the merged arrays as they are: the model call's only transfer to the host stays its own output.

A :class:`ResidentTensor` is a torch tensor (shape, dtype, the pack's device ``cpu:0``) whose values are a
JAX array. Any op on it runs on the device through torchax's ops (``torchax.default_env()``), with Python
scalars and 0-d host tensors (a strength) as JAX's weakly typed scalars: data, never a constant of a
compiled op, so a new strength compiles nothing. What asks for host values (``.cpu()``, ``.to("cpu")``,
``.item()``, ``.numpy()``, or an op mixing in a host tensor of more than one value, as a model running
eagerly on the host would) gets them: one counted transfer to the host.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map

#: The pack's device for the torchax backend (see ``backends.torchax``): a resident tensor reports it.
RESIDENT_DEVICE = torch.device("cpu", 0)

_TO_OPS = {"to", "_to_copy"}


class ResidentOps:
    """What resident tensors share: torchax's environment, the backend's counters, how to read values back."""

    def __init__(self, env: Any, counts: dict[str, int], fetch: Callable[[Any], torch.Tensor]) -> None:
        self.env = env
        self.counts = counts  # the backend's: "device_ops", "transfers_to_host"
        self.fetch = fetch  # a JAX array -> a CPU tensor of its values

    def wrap(self, array: Any) -> "ResidentTensor":
        return ResidentTensor(array, self)

    def to_host(self, tensor: "ResidentTensor") -> torch.Tensor:
        self.counts["transfers_to_host"] = self.counts.get("transfers_to_host", 0) + 1
        return self.fetch(tensor._array)


class ResidentTensor(torch.Tensor):
    """A torch tensor whose values are a JAX array on the device (see the module doc)."""

    _array: Any
    _ops: ResidentOps

    @staticmethod
    def __new__(cls, array: Any, ops: ResidentOps) -> "ResidentTensor":
        from torchax.ops import mappings

        tensor = torch.Tensor._make_wrapper_subclass(cls, tuple(array.shape), dtype=mappings.j2t_dtype(array.dtype),
                                                     device=RESIDENT_DEVICE)
        tensor._array = array
        tensor._ops = ops
        return tensor

    def __repr__(self) -> str:  # no host read for a repr (a debugger, a log line)
        return f"ResidentTensor(shape={tuple(self.shape)}, dtype={self.dtype}, on the JAX device)"

    def jax(self) -> Any:
        return self._array

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        return self._ops.to_host(self).numpy()

    def tolist(self) -> Any:
        return self._ops.to_host(self).tolist()

    def item(self) -> Any:
        return self._ops.to_host(self).item()

    def cpu(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._ops.to_host(self)

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_flatten((args, kwargs))[0]
        ops = next(leaf._ops for leaf in leaves if isinstance(leaf, ResidentTensor))
        name = func.overloadpacket.__name__
        if name in _TO_OPS:
            return _to(ops, func, args, kwargs)
        if func is torch.ops.aten.detach.default or func is torch.ops.aten.alias.default:
            return ops.wrap(args[0]._array)
        if any(isinstance(leaf, torch.Tensor) and not isinstance(leaf, ResidentTensor) and leaf.dim() > 0
               for leaf in leaves):
            return _on_host(ops, func, args, kwargs)
        return _on_device(ops, func, args, kwargs)


def _to(ops: ResidentOps, func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """``to`` / ``_to_copy``: a dtype change stays on the device; a move to ComfyUI's ``cpu`` reads the values."""
    tensor = args[0]
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    for value in args[1:]:
        if isinstance(value, torch.dtype):
            dtype = value
        elif isinstance(value, (torch.device, str)):
            device = value
    if device is not None and torch.device(device) != RESIDENT_DEVICE:
        host = ops.to_host(tensor)
        return host.to(device=device, dtype=dtype or host.dtype)
    if dtype is None or dtype == tensor.dtype:
        return tensor if func.overloadpacket.__name__ == "to" else ops.wrap(tensor._array)
    from torchax.ops import mappings

    ops.counts["device_ops"] = ops.counts.get("device_ops", 0) + 1
    return ops.wrap(tensor._array.astype(mappings.t2j_dtype(dtype)))


def _on_device(ops: ResidentOps, func: Any, args: tuple, kwargs: dict) -> Any:
    """The op through torchax's ops, on the device; results (and tensors written in place) stay resident."""
    import torchax

    env = ops.env
    twins: dict[int, tuple[ResidentTensor, Any]] = {}

    def to_torchax(value: Any) -> Any:
        if isinstance(value, ResidentTensor):
            twin = torchax.tensor.Tensor(value._array, env)
            twins[id(twin)] = (value, twin)
            return twin
        if isinstance(value, torch.Tensor):  # 0-d host value (a strength): a weakly typed scalar, data
            return value.as_subclass(torch.Tensor).item()
        return value

    call_args, call_kwargs = tree_map(to_torchax, (args, kwargs))
    with env:
        result = func(*call_args, **call_kwargs)
    ops.counts["device_ops"] = ops.counts.get("device_ops", 0) + 1
    for original, twin in twins.values():  # in place: the op replaced the twin's array
        if twin._elem is not original._array:
            original._array = twin._elem

    def back(value: Any) -> Any:
        if isinstance(value, torchax.tensor.Tensor):
            known = twins.get(id(value))
            return known[0] if known is not None else ops.wrap(value._elem)
        if isinstance(value, torchax.view.View):
            return ops.wrap(value.torch()._elem)
        return value

    return tree_map(back, result)


def _on_host(ops: ResidentOps, func: Any, args: tuple, kwargs: dict) -> Any:
    """An op that mixes resident values with host tensors (a model running eagerly on the host): on the host,
    each resident operand read back once; an operand written in place there cannot be kept resident."""
    host_args, host_kwargs = tree_map(lambda v: ops.to_host(v) if isinstance(v, ResidentTensor) else v, (args, kwargs))
    if func._schema.is_mutable and isinstance(args[0], ResidentTensor):
        raise RuntimeError(f"comfy-tpu: {func} writes a device-resident tensor with host values; "
                           "call .cpu() on it first")
    return func(*host_args, **host_kwargs)
