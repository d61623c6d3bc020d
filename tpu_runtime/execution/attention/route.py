"""The function installed as ComfyUI's ``transformer_options["optimized_attention_override"]``: it takes
ComfyUI's call (``func, q, k, v, heads, mask=None, ...``) and runs the chosen implementation.

One router per (setting, backend, device, mesh), so its identity (part of a replayed program's call key)
changes only when the setting or the SPMD mesh does. Under SPMD the router hands the backend's mesh to
the kernels, which split each call by rows and heads over it (``split``)."""
from __future__ import annotations

import collections
import functools
import logging
from typing import Any, Callable

import torch

from tpu_runtime.comfyui import attention as comfy_attention
from tpu_runtime.execution.attention import choice, layout

log = logging.getLogger("comfy_tpu")


def comfy_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
    """ComfyUI's own SDPA attention (what XLA lowers well at short lengths)."""
    return comfy_attention.attention_pytorch(*args, **kwargs)


def _kernels(backend: str) -> dict[str, Callable[[layout.HeadsCall, Any], torch.Tensor]]:
    if backend == "torchax":
        from tpu_runtime.backends import torchax_attention as kernels
    else:
        from tpu_runtime.execution.attention import xla_kernels as kernels
    return {"blockwise": kernels.blockwise_attention, "flash": kernels.flash_attention}


def on_device(backend: str, tensor: torch.Tensor) -> bool:
    """The tensor belongs to a device program (not a model run eagerly on the host as a fallback)."""
    if backend == "torchax":
        from tpu_runtime.backends.torchax_attention import is_torchax_tensor

        return is_torchax_tensor(tensor)
    return tensor.device.type == "xla"


class AttentionRouter:
    """Runs each attention call with the implementation ``choice.choose`` names for it."""

    def __init__(self, setting: choice.Setting, backend: str, device_type: str, mesh: Any = None) -> None:
        self.setting, self.backend, self.device_type, self.mesh = setting, backend, device_type, mesh
        self._said: set[str] = set()
        self.calls_on_mesh = 0  # calls handed to a kernel with the mesh (tests read it)
        #: Device calls per implementation run (tests read it). Inside a jitted or traced program a
        #: call is counted when it is traced: it counts the attention sites put into programs (not
        #: while dynamo captures a model in compiled execution: there it is not counted).
        self.calls: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        on_mesh = "" if self.mesh is None else ", on a mesh"
        return f"AttentionRouter({self.setting}, {self.backend}, {self.device_type}{on_mesh})"

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``func`` (the attention ComfyUI would have run) is not used: ComfyUI's CPU default asks for free
        memory and loops in Python, which XLA cannot take."""
        q, k = args[0], args[1]
        if not on_device(self.backend, q):
            return comfy_sdpa(*args, **kwargs)
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        skip_reshape = args[6] if len(args) > 6 else kwargs.get("skip_reshape", False)
        token_dim = 2 if skip_reshape else 1
        picked = choice.choose(self.setting, self.backend, self.device_type, q.shape[token_dim],
                               k.shape[token_dim], mask is not None)
        if picked.note and picked.note not in self._said:
            self._said.add(picked.note)
            log.warning("comfy-tpu: attention %s: %s", self.setting, picked.note)
        if not torch.compiler.is_compiling():  # a count dynamo traced would be a guard: a recompile each call
            self.calls[picked.implementation] += 1
        if picked.implementation == "sdpa":
            return comfy_sdpa(*args, **kwargs)
        call = layout.to_heads(*args, **kwargs)
        self.calls_on_mesh += self.mesh is not None
        return layout.from_heads(_kernels(self.backend)[picked.implementation](call, self.mesh), call)


def router_for(setting: choice.Setting, backend: str, device_type: str, mesh: Any = None) -> AttentionRouter:
    """The one router for these values; ``mesh``: the backend's SPMD mesh (``Backend.spmd_mesh``), or None."""
    return _router(setting, backend, device_type, mesh)


@functools.lru_cache(maxsize=None)
def _router(setting: choice.Setting, backend: str, device_type: str, mesh: Any) -> AttentionRouter:
    return AttentionRouter(setting, backend, device_type, mesh)
