"""CLIP text encoders (CLIP-L, CLIP-G) on the device (``COMFY_TPU_TEXT_ENCODERS=device``, torch_xla).

ComfyUI has no hook around a text encoder. ``text_encoder_device()`` answers the XLA device, so ComfyUI's
``CLIP`` loads its weights there through ``load_models_gpu`` (counted in the device's memory, freed on
unload). ``SDClipModel.forward`` (patched through ``Patches``) makes the call of its CLIP transformer a
program: ComfyUI's tokenizer already pads every chunk to 77 tokens, so the shapes are (chunks, 77) and a
new prompt replays the same program. The one input that would differ per prompt, the index of each
chunk's end token (``num_tokens``, which ComfyUI turns into a Python list index that a trace would bake
in), goes in as a device tensor: the program gathers the pooled output with it. The hidden states and
pooled outputs come back to the host in one transfer.

What stays where stock ComfyUI puts it (said once): a CLIP object with an encoder that is not a CLIP
transformer (T5, umt5, LLMs: not programs yet), masked-output CLIP variants, textual-inversion
embeddings of another kind than plain vectors.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import torch

from tpu_runtime.comfyui.calls import Call, positional_names
from tpu_runtime.execution.call_keys import NotReplayable

if TYPE_CHECKING:
    from tpu_runtime.comfyui.patches import Patches
    from tpu_runtime.execution.device_parts import DeviceParts
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")

#: CLIPTextModel_.forward's parameters in ComfyUI 0.3.75 .. 0.33 (the form this was written against).
TRANSFORMER_CALL = ("input_tokens", "attention_mask", "embeds", "num_tokens", "intermediate_output",
                    "final_layer_norm_intermediate", "dtype", "embeds_info")


def install(patches: "Patches", state: "PackState", parts: "DeviceParts", host_device: Any, on_device: bool) -> None:
    """Patch the CLIP encoders' call (timed on the host; a program on the device when ``on_device``)."""
    import comfy.sd
    import comfy.sd1_clip

    if on_device:
        patches.set("comfy.sd.CLIP", "__init__", _clip_init(comfy.sd.CLIP.__init__, state, host_device))
    patches.set("comfy.sd1_clip.SDClipModel", "forward",
                _clip_forward(comfy.sd1_clip.SDClipModel.forward, state, parts))


def encoders(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformers of every ``SDClipModel`` in a CLIP object's model (one per encoder)."""
    import comfy.sd1_clip

    return [m.transformer for m in model.modules() if isinstance(m, comfy.sd1_clip.SDClipModel)]


def _clip_init(original: Callable, state: "PackState", host_device: Any) -> Callable:
    """``CLIP.__init__`` that keeps a CLIP with encoders other than CLIP transformers on the host."""
    import comfy.clip_model

    def init(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        patcher = getattr(self, "patcher", None)
        if patcher is None or not state.backend.is_device(patcher.load_device):
            return result
        others = sorted({type(t).__name__ for t in encoders(self.cond_stage_model)
                         if not isinstance(t, comfy.clip_model.CLIPTextModel)})
        if others:
            if state.notices.first_time("text encoder on host", tuple(others)):
                log.info("comfy-tpu: text encoders %s stay on the host (device programs are for CLIP "
                         "transformers)", ", ".join(others))
            patcher.load_device = host_device
            if any(p.device.type != torch.device(host_device).type for p in self.cond_stage_model.parameters()):
                self.cond_stage_model.to(host_device)
        return result

    init.__wrapped__ = original
    return init


def _clip_forward(original: Callable, state: "PackState", parts: "DeviceParts") -> Callable:
    """``SDClipModel.forward`` with its CLIP transformer's call run as a program when it is on the device."""
    import comfy.clip_model

    backend = state.backend

    def forward(self, *args, **kwargs):
        transformer = getattr(self, "transformer", None)
        plain = (isinstance(transformer, comfy.clip_model.CLIPTextModel) and "forward" not in vars(transformer)
                 and not getattr(self, "zero_out_masked", False) and not getattr(self, "return_attention_masks", False))
        weight = getattr(getattr(transformer, "text_projection", None), "weight", None)
        if not plain or weight is None or not backend.is_device(weight.device):
            where = "device" if weight is not None and backend.is_device(weight.device) else "host"
            with parts.timed("text_encoders", where):
                return original(self, *args, **kwargs)
        programs = parts.programs(transformer, f"text encoder {type(self).__name__}")
        vars(transformer)["forward"] = _program_call(transformer, programs, state)
        try:
            with parts.timed("text_encoders", "device"):
                return original(self, *args, **kwargs)
        finally:
            vars(transformer).pop("forward", None)

    forward.__wrapped__ = original
    return forward


def _program_call(transformer: torch.nn.Module, programs: Any, state: "PackState") -> Callable:
    """The CLIP transformer's call as a program per (chunks, tokens) shape; lazily on the device when it
    cannot be one (an embedding of another kind, a host read)."""
    method = type(transformer).forward.__get__(transformer)
    names = positional_names(transformer.text_model.forward) or TRANSFORMER_CALL

    def call(*args, **kwargs):
        if programs.lazy_reason is not None:
            return method(*args, **kwargs)
        given = Call(args, kwargs, names, fallback=TRANSFORMER_CALL)
        embeds, num_tokens, mask = given.get("embeds"), given.get("num_tokens"), given.get("attention_mask")
        if embeds is None or num_tokens is None or given.get("embeds_info") or given.get("input_tokens") is not None:
            return method(*args, **kwargs)
        batch, length = embeds.shape[0], embeds.shape[1]
        ends = torch.tensor([int(n) - 1 for n in num_tokens], dtype=torch.long).to(embeds.device)
        given.set("num_tokens", [length] * batch)  # a fixed trace; the real ends gather the pooled output
        tensors = [embeds, ends] + ([mask] if mask is not None else [])
        static = repr((given.get("intermediate_output"), given.get("final_layer_norm_intermediate", True),
                       given.get("dtype", torch.float32), mask is None))

        def function():
            hidden, intermediate, _, _ = given.forward(method)
            pooled = hidden[torch.arange(batch, device=hidden.device), ends]
            return hidden, intermediate, transformer.text_projection(pooled), pooled

        try:
            return programs.run(("clip", static), function, tensors)
        except NotReplayable as exc:
            programs.lazy_reason = str(exc)
            if state.notices.first_time("text encoder lazy", programs.name, str(exc)):
                log.warning("comfy-tpu: %s runs lazily on the device (no program): %s", programs.name, exc)
            return method(*args, **kwargs)

    return call
