"""Splitting the diffusion model's input batch over the SPMD mesh's 'data' axis.

ComfyUI evaluates cond and uncond rows in one ``apply_model`` call (the pack fixes that batching),
so the rows of that call are what is split across chips; the weights stay replicated. A row count
that does not divide by the axis size is padded with copies of the last row, and the padded rows are
cropped from the output: every chip keeps working and the graph shape stays fixed, instead of falling
back to one device. Rows are independent in the model (no batch statistics), so copies change nothing.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("comfy_tpu")

def padded_rows(rows: int, ways: int) -> int:
    """The smallest multiple of ``ways`` that holds ``rows``."""
    return -(-rows // ways) * ways


def pad_rows(value: Any, rows: int, target: int) -> Any:
    """Pad every tensor in ``value`` (lists, tuples and dicts too) whose dim 0 is ``rows`` up to ``target``."""
    if isinstance(value, torch.Tensor):
        if target == rows or value.dim() == 0 or value.shape[0] != rows:
            return value
        return torch.cat([value, value[-1:].expand(target - rows, *value.shape[1:])])
    if isinstance(value, (list, tuple)):
        return type(value)(pad_rows(item, rows, target) for item in value)
    if isinstance(value, dict):
        return {key: pad_rows(item, rows, target) for key, item in value.items()}
    return value


def _is_plain_device_tensor(value: Any, rows: int) -> bool:
    from tpu_runtime.execution.host_values import DeviceTwin, HostTensor

    return (isinstance(value, torch.Tensor) and not isinstance(value, (DeviceTwin, HostTensor))
            and value.device.type != "cpu" and value.dim() > 0 and value.shape[0] == rows)


def sharded_apply(backend, executor, x: torch.Tensor, t, c_concat=None, c_crossattn=None, control=None,
                  transformer_options={}, *, notices=None, **kwargs):
    """Run ``apply_model`` with its batch split over the mesh (padded to a multiple, cropped after).
    ``notices`` (the pack's :class:`~tpu_runtime.state.Notices`) has the padding logged once per shape."""
    ways = backend.shard_count()
    rows = int(x.shape[0])
    target = padded_rows(rows, ways)
    if target != rows and (notices is None or notices.first_time("batch padding", rows, target, ways)):
        log.info("comfy-tpu: the model's batch of %d row(s) (cond and uncond together) does not divide over "
                 "%d devices: padded to %d rows, the extra rows are cropped from the result", rows, ways, target)
    x, t, c_concat, c_crossattn, control, kwargs = pad_rows((x, t, c_concat, c_crossattn, control, kwargs),
                                                            rows, target)
    for value in (x, c_concat, c_crossattn, *kwargs.values()):
        if _is_plain_device_tensor(value, target):
            backend.shard_batch(value)
    output = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    return output[:rows] if target != rows else output
