"""Host-side values that enter the device as data.

ComfyUI's samplers index the sigma schedule with the step number (``sigmas[i]``) and branch on it
(``if sigmas[i + 1] == 0``). With the schedule on the XLA device, each index is baked into a new
graph and each branch is a device-to-host sync. :class:`HostTensor` keeps the schedule on the host:
arithmetic among host values stays on the host (so branches read host values), and the moment a host
value meets a device tensor it is uploaded as a runtime parameter, never a compile-time constant. The
per-step graph is therefore the same for every step index, step count and sigma value.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_map


def _device_of(values: Any) -> Optional[torch.device]:
    """The first device other than the host among the arguments of an op (torch_xla's, or ``cpu:0``: a
    torchax program's output kept on the JAX device, ``backends.torchax_resident``)."""
    for leaf in tree_flatten(values)[0]:
        if isinstance(leaf, torch.Tensor) and not _on_host(leaf):
            return leaf.device
    return None


def _on_host(tensor: torch.Tensor) -> bool:
    """Whether a tensor's values are in host memory: ComfyUI's ``cpu`` (a host tensor has no device index)."""
    return tensor.device.type == "cpu" and tensor.device.index is None


def upload(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Send host values to the device as runtime data.

    torch_xla shares one device buffer between 0-d uploads of equal value, which changes the
    graph's inputs whenever two sigmas-derived values coincide; a 1-element upload viewed back as
    0-d is never shared, so the graph stays the same.
    """
    value = _plain(value)
    if value.dim() == 0:
        return value.reshape(1).to(device).view(())
    return value.to(device)


def _plain(value: Any) -> Any:
    return value.as_subclass(torch.Tensor) if isinstance(value, HostTensor) else value


class HostTensor(torch.Tensor):
    """A CPU tensor of host-known values (the sigma schedule and what is computed from it)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            device = _device_of((args, kwargs))
            if device is not None:
                # Meets a device tensor: upload the host values as data, compute on the device.
                args, kwargs = tree_map(lambda v: upload(v, device) if isinstance(v, HostTensor) else v,
                                        (args, kwargs))
                return func(*args, **kwargs)
            result = func(*args, **kwargs)
            if func is torch.Tensor.to and isinstance(result, torch.Tensor) and result.device.type != "cpu":
                # Moved to the device: keep the host values alongside (see DeviceTwin).
                return _twin(result, _plain(args[0]))
            # Host-only math stays host-tagged.
            return tree_map(_tag_if_host, result)


def _tag_if_host(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and not isinstance(value, HostTensor) and _on_host(value):
        return value.as_subclass(HostTensor)
    return value


def as_host(tensor: torch.Tensor) -> HostTensor:
    """The host values as a HostTensor: free for host tensors and twins, else one transfer."""
    if isinstance(tensor, HostTensor):
        return tensor
    known = host_copy(tensor)
    if known is None:
        known = tensor.detach().to("cpu")
    return known.as_subclass(HostTensor)


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop the host tag."""
    return _plain(tensor)



#: Reads of a tensor's values into Python: a DeviceTwin answers them from its host copy.
_HOST_READS = {torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
               torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__format__, torch.Tensor.__repr__}


class DeviceTwin(torch.Tensor):
    """A device tensor that still knows its host values (the schedule, the input latent).

    ComfyUI moves the schedule and the latent to the device and later reads them back
    (``float(sigmas[0])``, ``count_nonzero(latent_image) > 0``, ``sigmas.cpu()``): each a
    device-to-host sync. A twin mirrors every op that involves only twins (and Python values) on its
    host copy, so such reads are answered on the host with no transfer. Ops that mix in ordinary
    tensors return ordinary tensors; random ops are never mirrored.
    """

    _host: Optional[torch.Tensor]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            leaves = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)]
            twins_only = all(isinstance(v, DeviceTwin) and v._host is not None for v in leaves)
            if twins_only and func in _HOST_READS:
                return func(*tree_map(_host_of, args), **tree_map(_host_of, kwargs))
            if twins_only and func in (torch.Tensor.cpu, torch.Tensor.to) and _targets_cpu(args, kwargs):
                return func(*tree_map(_host_of, args), **tree_map(_host_of, kwargs)).clone()
            name = getattr(func, "__name__", "")
            random = "rand" in name or "normal" in name or "bernoulli" in name
            written = written_tensors(func, args, kwargs)
            in_place = bool(written)
            if twins_only and not random and not in_place:
                # Computed on the host only; the device side is a fresh upload (device data, never a
                # pending op): a pending op on these small tensors would be materialised at the next
                # step boundary and, with shapes that follow the step count, compile a new graph.
                host_result = func(*tree_map(_host_of, args), **tree_map(_host_of, kwargs))
                if isinstance(host_result, torch.Tensor):
                    return _twin(upload(host_result, leaves[0].device), host_result)
                # Metadata (device, shape, dtype...): the device tensor's own answer.
                return func(*tree_map(_plain_twin, args), **tree_map(_plain_twin, kwargs))
            device_args, device_kwargs = tree_map(_plain_twin, (args, kwargs))
            result = func(*device_args, **device_kwargs)
            if twins_only and in_place and not random:
                func(*tree_map(_host_of, args), **tree_map(_host_of, kwargs))  # mirror it on the host
                if not isinstance(result, torch.Tensor):
                    return result
                return args[0] if written[0] is args[0] else kwargs["out"]  # the twin, not a plain view of it
            for tensor in written:  # a change we cannot mirror: forget the host copy
                if isinstance(tensor, DeviceTwin):
                    tensor._host = None
            return result


#: Python's in-place operator methods (the data model's ``__i<op>__`` and item assignment): they
#: write ``self`` whatever ATen op implements them, and have no ATen schema of their own name.
_PYTHON_IN_PLACE = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__imatmul__", "__itruediv__",
                    "__ifloordiv__", "__imod__", "__ipow__", "__ilshift__", "__irshift__", "__iand__", "__ixor__",
                    "__ior__"}


@functools.lru_cache(maxsize=None)
def _schema_writes(name: str) -> Optional[tuple[bool, bool]]:
    """(writes ``self``, writes an ``out=`` argument) over the overloads of ``aten::<name>``, read from
    the schemas' alias annotations (``Tensor(a!)``); None where ATen has no op of that name."""
    try:
        schemas = torch._C._jit_get_schemas_for_operator(f"aten::{name}")
    except RuntimeError:
        schemas = []
    if not schemas:
        return None
    written = {argument.name for schema in schemas for argument in schema.arguments
               if argument.alias_info is not None and argument.alias_info.is_write}
    return "self" in written, bool(written - {"self"})


def written_tensors(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors a call writes in place: ``self`` for an in-place op (``add_``, ``copy_``,
    ``index_put_``, ``transpose_``, ``x[i] = v``, ``x += y``), the ``out=`` tensors for an out variant.

    ATen's schemas decide. A Python-level function with no ATen op of its name (``nn.init.trunc_normal_``)
    goes by PyTorch's naming convention for in-place functions (a trailing ``_``): missing its write
    would leave a twin's host copy stale."""
    name = getattr(func, "__name__", "")
    writes = _schema_writes(name)
    if writes is None:
        writes = (name.endswith("_") and not name.endswith("__"), False)
    writes_self, writes_out = writes
    written: list[torch.Tensor] = []
    if (writes_self or name in _PYTHON_IN_PLACE) and args and isinstance(args[0], torch.Tensor):
        written.append(args[0])
    if writes_out and kwargs.get("out") is not None:
        written.extend(leaf for leaf in tree_flatten(kwargs["out"])[0] if isinstance(leaf, torch.Tensor))
    return written


def device_twin(value: torch.Tensor, device: torch.device) -> DeviceTwin:
    """Host values sent to the device as data (:func:`upload`), keeping their host copy."""
    host = _plain(value)
    return _twin(upload(host, device), host)


def without_twins(values: Any) -> Any:
    """``values`` (nested lists, tuples, dicts) with every DeviceTwin as an ordinary device tensor: for
    code traced once and replayed, where math on a twin's host copy would be baked in as a constant.
    Without a twin among them, ``values`` themselves (containers keep their identity)."""
    if not any(isinstance(leaf, DeviceTwin) for leaf in tree_flatten(values)[0]):
        return values
    return tree_map(_plain_twin, values)


def _twin(device_tensor: torch.Tensor, host_tensor: torch.Tensor) -> DeviceTwin:
    twin = device_tensor.as_subclass(DeviceTwin)
    twin._host = host_tensor
    return twin


def _host_of(value: Any) -> Any:
    """The host side of an argument: twins by their host copy, device arguments by the CPU."""
    if isinstance(value, DeviceTwin):
        return value._host
    if isinstance(value, torch.device) and value.type != "cpu":
        return torch.device("cpu")
    if isinstance(value, str) and value.startswith("xla"):
        return "cpu"
    return value


def _plain_twin(value: Any) -> Any:
    return value.as_subclass(torch.Tensor) if isinstance(value, DeviceTwin) else value


def _targets_cpu(args: tuple, kwargs: dict) -> bool:
    if args and args[0] is not None and len(args) == 1 and not kwargs:
        return True  # tensor.cpu()
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


def host_copy(tensor: torch.Tensor) -> Optional[torch.Tensor]:
    """The host values of a tensor without a transfer, or None when only the device has them."""
    if isinstance(tensor, DeviceTwin):
        return tensor._host
    if tensor.device.type == "cpu":
        return tensor
    return None
