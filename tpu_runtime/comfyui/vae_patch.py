"""ComfyUI's VAE on the device (``COMFY_TPU_VAE=device``, torch_xla).

ComfyUI has no hook around a VAE. Its ``VAE`` is made for the device ``vae_device()`` answers (the
pack's patches answer the XLA device), so ComfyUI's own ``load_models_gpu`` uploads the weights once and
counts them in the device's memory, and unloading frees them. Every decode and encode path of
``comfy.sd.VAE`` (``decode``, ``decode_tiled``, ``encode``, ``encode_tiled``, and the tiled retry after an
out-of-memory error) calls ``first_stage_model.decode``/``encode`` on a tensor it moved to the device;
during those four methods (patched through ``Patches``) the model's ``decode``/``encode`` are stand-ins
that run it as a program per input shape (a tile shape is a program) and hand back host tensors, so the
image comes back in one transfer and ComfyUI's ``.to(output_device)`` has nothing left to move.

Failures: a call that cannot be a program runs lazily on the device (said once); anything else that
fails sends this VAE to the host (ComfyUI's own decode, on the device ComfyUI would have used), logged
once, and the user's prompt goes on. An out-of-memory error on the device is raised as ComfyUI's own
``OOM_EXCEPTION``, so ComfyUI's fallback to a tiled decode runs as it does on a GPU.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.utils._pytree import tree_flatten

from tpu_runtime.cache.part_shapes import PartShape, layout_key
from tpu_runtime.comfyui.calls import Call
from tpu_runtime.execution.call_keys import NotReplayable
from tpu_runtime.execution.module_programs import with_tensors
from tpu_runtime.execution.trace_fixes import EagerSemantics

if TYPE_CHECKING:
    from tpu_runtime.comfyui.patches import Patches
    from tpu_runtime.execution.device_parts import DeviceParts
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")

VAE_METHODS = ("decode", "decode_tiled", "encode", "encode_tiled")
MODEL_METHODS = ("decode", "encode")


def install(patches: "Patches", state: "PackState", parts: "DeviceParts", host_device: Any) -> None:
    """Patch the VAE's decode/encode paths: programs for a VAE on the device, timing for one on the host."""
    import comfy.sd

    for name in VAE_METHODS:
        original = getattr(comfy.sd.VAE, name, None)
        if original is not None:
            patches.set("comfy.sd.VAE", name, _on_device(original, name, state, parts, host_device))


def _on_device(original: Callable, method: str, state: "PackState", parts: "DeviceParts",
               host_device: Any) -> Callable:
    backend = state.backend

    def vae_call(self, *args, **kwargs):
        model = getattr(self, "first_stage_model", None)
        if model is None or not backend.is_device(getattr(self, "device", None)):
            with parts.timed("vae", "host"):
                return original(self, *args, **kwargs)
        try:
            with parts.timed("vae", "device"), _stand_ins(model, parts, state):
                return original(self, *args, **kwargs)
        except Exception as exc:
            if _not_a_device_failure(exc):
                raise
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            if state.notices.first_time("vae to host", type(self.first_stage_model).__name__, reason):
                log.error("comfy-tpu: the VAE's %s failed on the device (%s); this VAE runs on the host from now on",
                          method, reason, exc_info=log.isEnabledFor(logging.DEBUG))
            parts.fell_back("vae", reason)
            _send_to_host(self, host_device)
            with parts.timed("vae", "host"):
                return original(self, *args, **kwargs)

    vae_call.__wrapped__ = original
    return vae_call


class _stand_ins:
    """The model's ``decode``/``encode`` as program stand-ins (instance attributes), for one VAE call."""

    def __init__(self, model: torch.nn.Module, parts: "DeviceParts", state: "PackState") -> None:
        self._model, self._parts, self._state = model, parts, state
        self._installed: list[str] = []

    def __enter__(self) -> None:
        model = self._model
        programs = self._parts.programs(model, f"VAE {type(model).__name__}")
        for name in MODEL_METHODS:
            if name in vars(model) or not callable(getattr(type(model), name, None)):
                continue  # someone else's instance attribute (or no such method): left alone
            vars(model)[name] = _program_call(getattr(type(model), name).__get__(model), name, programs, self._state,
                                              self._parts)
            self._installed.append(name)

    def __exit__(self, *exc: Any) -> None:
        for name in self._installed:
            vars(self._model).pop(name, None)


def _rewarm(model: torch.nn.Module, programs: Any, parts: "DeviceParts") -> None:
    """Compile the shapes this VAE (its class and weight layout) compiled in earlier sessions, at its first
    call in this process, its weights loaded (``cache/part_shapes.py``). A failure is logged and ends the
    re-warm only."""
    try:
        recorded = parts.shapes.recorded(type(model).__name__, layout_key(programs.layout()))
    except NotReplayable:
        return
    recorded = [entry for entry in recorded if entry.method in vars(model)]
    if not recorded:
        return
    device = next(iter(programs.weights()), torch.zeros(())).device
    try:
        with torch.inference_mode():
            for entry in recorded:
                vars(model)[entry.method](torch.zeros(entry.shape, dtype=getattr(torch, entry.dtype)).to(device))
    except Exception as exc:  # noqa: BLE001 - the user's call runs as it would without the re-warm
        log.warning("comfy-tpu: re-warm of VAE %s shapes failed (%s: %s); its calls compile when they come",
                    type(model).__name__, type(exc).__name__, str(exc)[:300])
        return
    log.info("comfy-tpu: re-warmed %d VAE %s shape(s) recorded in earlier sessions", len(recorded),
             type(model).__name__)


def _record(model: Any, name: str, args: tuple, kwargs: dict, programs: Any, parts: "DeviceParts") -> None:
    """A newly compiled single-tensor call of ``model``'s ``name``: its shape, for a later session's re-warm."""
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor) or programs.lazy_reason is not None:
        return
    parts.shapes.record(PartShape(module=type(model).__name__, layout=layout_key(programs.layout()), method=name,
                                  shape=tuple(args[0].shape), dtype=str(args[0].dtype).removeprefix("torch.")))


def _program_call(method: Callable, name: str, programs: Any, state: "PackState",
                  parts: "DeviceParts") -> Callable:
    """``method`` run as a program per call shape; lazily on the device once it cannot be one."""
    import comfy.model_management as mm

    def traced(*args, **kwargs):
        # Out of inference mode: torch_xla's group norm fails on an inference-mode input with weights loaded
        # outside it ("Cannot set version_counter for inference tensor"); nothing here needs autograd.
        with torch.inference_mode(False), torch.no_grad(), EagerSemantics():
            return method(*args, **kwargs)

    def call(*args, **kwargs):
        if programs.lazy_reason is not None:
            return traced(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        static = tuple(repr(leaf) for leaf in leaves if not isinstance(leaf, torch.Tensor))
        if not all(state.backend.data_tensor(tensor) for tensor in tensors):
            # A host tensor among the inputs (a newer ComfyUI's output buffer for chunked VAEs): this call
            # runs lazily on the device, its results written where ComfyUI asked.
            if state.notices.first_time("vae host input", programs.name):
                log.info("comfy-tpu: %s: a call with host tensors among its inputs runs lazily on the device",
                         programs.name)
            return traced(*args, **kwargs)
        if parts.first_use(method.__self__) and parts.rewarm:
            _rewarm(method.__self__, programs, parts)
        try:
            traces = programs.traces
            result = programs.run((name, static, len(leaves)), lambda views: _call_with(traced, args, kwargs, views),
                                  tensors)
            if programs.traces != traces:
                _record(method.__self__, name, args, kwargs, programs, parts)
            return result
        except NotReplayable as exc:
            programs.lazy_reason = str(exc)
            if state.notices.first_time("vae lazy", programs.name, str(exc)):
                log.warning("comfy-tpu: %s runs lazily on the device (no program): %s", programs.name, exc)
            return traced(*args, **kwargs)
        except Exception as exc:
            if "RESOURCE_EXHAUSTED" in str(exc):  # ComfyUI's own tiled retry, as after a GPU's OOM
                raise mm.OOM_EXCEPTION(str(exc)) from exc
            raise

    return call


def _call_with(method: Callable, args: tuple, kwargs: dict, tensors: list[torch.Tensor]) -> Any:
    """``method`` called with the call's tensors replaced, in order, by ``tensors`` (a trace's views)."""
    args, kwargs = with_tensors((args, kwargs), tensors)
    return method(*args, **kwargs)


def _send_to_host(vae: Any, host_device: Any) -> None:
    """Unload the VAE from the device and make it a host VAE (where stock ComfyUI puts it)."""
    import comfy.model_management as mm

    for loaded in list(getattr(mm, "current_loaded_models", [])):
        if getattr(loaded, "model", None) is vae.patcher:
            try:
                loaded.model_unload()
            finally:
                mm.current_loaded_models.remove(loaded)
    vae.patcher.load_device = host_device
    vae.device = host_device
    vae.first_stage_model.to(host_device)


def _not_a_device_failure(exc: BaseException) -> bool:
    """The user's interrupt and ComfyUI's own out-of-memory error end the call as they would without the pack."""
    import comfy.model_management as mm

    return (isinstance(exc, (MemoryError, mm.OOM_EXCEPTION)) or type(exc).__name__ == "InterruptProcessingException")


def vae_dtype(original: Callable, is_xla: Callable[[Any], bool]) -> Callable:
    """``model_management.vae_dtype``: fp32 for the XLA device unless ComfyUI's flags say otherwise (the
    pack answers ``should_use_bf16`` yes for the device, which would make every VAE bf16)."""
    import comfy.model_management as mm

    def choose(*args, **kwargs):
        device = Call.of(original, args, kwargs, fallback=("device", "allowed_dtypes")).get("device")
        flagged = any(getattr(mm.args, flag, False) for flag in ("fp16_vae", "bf16_vae", "fp32_vae"))
        if is_xla(device) and not flagged:
            return torch.float32
        return original(*args, **kwargs)

    return choose
