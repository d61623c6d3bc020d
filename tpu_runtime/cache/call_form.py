"""A module call's form (its arguments: tensors by shape, the rest by value) as JSON, and back.

A text encoder's program key holds the call's options (ComfyUI's layer choice, dtype, whether a mask is
given) and tensor shapes, all known only when ComfyUI makes the call. To compile the same program after a
restart (``cache/part_shapes.py``), the call is recorded in this form and made again with blank tensors
of the recorded shapes. Only plain values are kept (None, bool, int, float, str, lists, str-keyed dicts,
torch dtypes, tensors); a call holding anything else is not recorded.
"""
from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple, Optional

import torch


class TensorForm(NamedTuple):
    """What a recorded tensor was."""

    shape: tuple[int, ...]
    dtype_name: str
    on_device: bool
    marked: bool  # the one tensor the caller asked to find again

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype_name)


class _Unrecordable(Exception):
    pass


def encode(args: tuple, kwargs: dict, on_device: Callable[[torch.Tensor], bool],
           marked: Optional[torch.Tensor] = None) -> Optional[str]:
    """The call's form as canonical JSON; None when it holds a value this form cannot keep. ``marked``: one
    tensor of the call the caller wants to find again (a text encoder's stand-in embeddings)."""

    def value(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return {"tensor": list(item.shape), "dtype": str(item.dtype).removeprefix("torch."),
                    "device": bool(on_device(item)), "marked": item is marked}
        if isinstance(item, torch.dtype):
            return {"torch_dtype": str(item).removeprefix("torch.")}
        if item is None or isinstance(item, (bool, int, float, str)):
            return item
        if isinstance(item, (list, tuple)):
            return {"list": [value(x) for x in item], "tuple": isinstance(item, tuple)}
        if isinstance(item, dict) and all(isinstance(key, str) for key in item):
            return {"dict": {key: value(x) for key, x in item.items()}}
        raise _Unrecordable(type(item).__name__)

    try:
        return json.dumps({"args": [value(a) for a in args], "kwargs": {k: value(v) for k, v in kwargs.items()}},
                          sort_keys=True)
    except _Unrecordable:
        return None


def decode(text: str, make: Callable[[TensorForm], torch.Tensor]) -> tuple[list, dict]:
    """The call ``encode`` recorded, each tensor made by ``make`` from its form. Raises ``ValueError`` on a
    form it cannot read."""

    def value(item: Any) -> Any:
        if isinstance(item, dict):
            if "tensor" in item:
                return make(TensorForm(tuple(item["tensor"]), item["dtype"], bool(item["device"]), bool(item["marked"])))
            if "torch_dtype" in item:
                found = getattr(torch, item["torch_dtype"], None)
                if not isinstance(found, torch.dtype):
                    raise ValueError(f"unknown dtype {item['torch_dtype']!r}")
                return found
            if "list" in item:
                items = [value(x) for x in item["list"]]
                return tuple(items) if item.get("tuple") else items
            if "dict" in item:
                return {key: value(x) for key, x in item["dict"].items()}
            raise ValueError(f"unknown entry {sorted(item)}")
        return item

    try:
        form = json.loads(text)
        return [value(a) for a in form["args"]], {k: value(v) for k, v in form["kwargs"].items()}
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable call form ({type(exc).__name__}: {exc})") from exc
