"""Eager PyTorch's meaning for two calls torch_xla 2.9 handles otherwise, while a VAE is traced.

* Eager PyTorch clamps ``x[:, :, -2:]`` on a dim of size 1 to the whole dim; torch_xla raises ``Value out
  of range (expected to be in range of [-1, 0], but got -2)``. Wan's causal video VAE does exactly that
  on every one-frame chunk (its feature cache keeps the last ``CACHE_T = 2`` frames): out-of-range
  negative starts are clamped as eager PyTorch does.
* ``interpolate(mode="nearest-exact")`` (Wan's upsampler) has no XLA lowering: it runs on the CPU, a
  device-to-host transfer in the middle of the trace. For integer upscale factors it picks the same
  source pixels as ``"nearest"`` (``floor((i + 0.5) / s)`` = ``floor(i / s)``), which XLA lowers.

Under :class:`EagerSemantics` the module's Python runs unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_GETITEM = torch.Tensor.__getitem__


def clamp_index(shape: torch.Size, index: Any) -> Any:
    """``index`` with each slice's negative start below ``-size`` of its dim made ``None`` (the dim's start).
    Indexes with an Ellipsis, None, tensors or booleans are left as given (their dims are not simple)."""
    items = index if isinstance(index, tuple) else (index,)
    if any(item is Ellipsis or item is None or isinstance(item, (torch.Tensor, bool, list)) for item in items):
        return index
    clamped, changed = [], False
    for dim, item in enumerate(items):
        if (isinstance(item, slice) and isinstance(item.start, int) and dim < len(shape)
                and item.start < -shape[dim]):
            item, changed = slice(None, item.stop, item.step), True
        clamped.append(item)
    if not changed:
        return index
    return tuple(clamped) if isinstance(index, tuple) else clamped[0]


def integer_upscale(scale_factor: Any) -> bool:
    """Whether an ``interpolate`` scale factor (a number or one per dim) is a whole number >= 1 everywhere."""
    factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,)
    return bool(factors) and all(isinstance(f, (int, float)) and f >= 1 and float(f).is_integer() for f in factors)


class EagerSemantics(TorchFunctionMode):
    """Slices clamped and nearest-exact integer upscales as nearest (see the module's docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is _GETITEM and len(args) == 2 and isinstance(args[0], torch.Tensor):
            args = (args[0], clamp_index(args[0].shape, args[1]))
        elif func is F.interpolate:
            args = list(args)
            mode = args[3] if len(args) > 3 else kwargs.get("mode", "nearest")
            scale = args[2] if len(args) > 2 else kwargs.get("scale_factor")
            size = args[1] if len(args) > 1 else kwargs.get("size")
            if mode == "nearest-exact" and size is None and integer_upscale(scale):
                if len(args) > 3:
                    args[3] = "nearest"
                else:
                    kwargs["mode"] = "nearest"
        return func(*args, **kwargs)
