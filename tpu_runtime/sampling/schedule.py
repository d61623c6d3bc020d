"""The sigma schedule, computed on the host.

Once a model is loaded, its ``model_sampling`` buffers live on the XLA device, and ComfyUI's
schedulers then run dozens of tiny graphs and read each value back (../BASELINE: ~41 of 56 graph
executions of a run). We keep a host copy of each ``model_sampling`` module, taken while it is still
on the CPU, and hand that copy to ComfyUI's own scheduler code.
"""
from __future__ import annotations

import copy
import logging
import weakref

import torch

log = logging.getLogger("comfy_tpu")

def _on_host(module: torch.nn.Module) -> bool:
    return all(buffer.device.type == "cpu" for buffer in module.buffers())


class HostSchedules:
    """Host copies of the models' ``model_sampling`` modules, held weakly: they go with their model."""

    def __init__(self) -> None:
        self._copies: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()

    def remember(self, model_sampling) -> None:
        """Take the host copy now, if the module is still on the CPU (free)."""
        if (isinstance(model_sampling, torch.nn.Module) and model_sampling not in self._copies
                and _on_host(model_sampling)):
            self._copies[model_sampling] = copy.deepcopy(model_sampling)

    def host_model_sampling(self, model_sampling):
        """A CPU twin of ``model_sampling`` (the module itself while it is on the CPU)."""
        if not isinstance(model_sampling, torch.nn.Module):
            return model_sampling
        cached = self._copies.get(model_sampling)
        if cached is not None:
            return cached
        if _on_host(model_sampling):
            self.remember(model_sampling)
            return model_sampling
        log.info("comfy-tpu: copying %s's schedule buffers from the device once (seen only after loading)",
                 type(model_sampling).__name__)
        twin = copy.deepcopy(model_sampling).to("cpu")
        self._copies[model_sampling] = twin
        return twin
