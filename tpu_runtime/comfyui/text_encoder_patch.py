"""Text encoders (CLIP-L, CLIP-G, T5-XXL, umt5) on the device (``COMFY_TPU_TEXT_ENCODERS=device``, torch_xla).

ComfyUI has no hook around a text encoder. ``text_encoder_device()`` answers the XLA device, so ComfyUI's
``CLIP`` loads its weights there through ``load_models_gpu`` (counted in the device's memory, freed on
unload). ``SDClipModel.forward`` (patched through ``Patches``) makes the call of its CLIP transformer a
program: ComfyUI's tokenizer already pads every chunk to 77 tokens, so the shapes are (chunks, 77) and a
new prompt replays the same program. The one input that would differ per prompt, the index of each
chunk's end token (``num_tokens``, which ComfyUI turns into a Python list index that a trace would bake
in), goes in as a device tensor: the program gathers the pooled output with it. The hidden states and
pooled outputs come back to the host in one transfer. A prompt over 75 tokens (several chunks) runs at
a power-of-two chunk count (``token_buckets``).

T5 and umt5 (``comfy.text_encoders.t5.T5``, under the same ``SDClipModel``): their tokenizers pad to a
minimum length only, so the call runs at the next :data:`token_buckets.TOKEN_STEP` multiple with the
added keys masked out (always with a mask: an all-ones one where ComfyUI gives none, which means the
same), the result cut back: a new prompt compiles nothing within a bucket. ComfyUI builds the token mask
from a Python list on the weights' device and multiplies the host result by it (umt5's
``zero_out_masked``); the mask is kept as the host tensor of that same list, so nothing comes back but
the program's outputs.

Re-warm after a restart (``COMFY_TPU_REWARM``): each call that compiled a program is recorded, per
encoder class and weight layout, with its whole form (the options and token shapes: ``cache/call_form.py``)
in the cache dir (``cache/part_shapes.py``, the VAE's file). At an encoder's first call in a new process
the recorded calls are made once with blank tokens, so a prompt in any recorded bucket compiles nothing.
A failure there is logged once; the user's call goes on as without it.

What stays where stock ComfyUI puts it (said once): a CLIP object with an encoder that is neither (LLMs:
not programs yet), masked-output CLIP variants, textual-inversion embeddings of another kind than plain
vectors.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import torch

from tpu_runtime.cache import call_form
from tpu_runtime.cache.part_shapes import PartShape, layout_key
from tpu_runtime.comfyui import encoder_tokens
from tpu_runtime.comfyui.calls import Call, positional_names
from tpu_runtime.comfyui.model_axis import auto_model_axis_for
from tpu_runtime.execution import token_buckets
from tpu_runtime.execution.call_keys import NotReplayable

if TYPE_CHECKING:
    from tpu_runtime.comfyui.patches import Patches
    from tpu_runtime.execution.device_parts import DeviceParts
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")

#: CLIPTextModel_.forward's parameters in ComfyUI 0.3.75 .. 0.33 (the form this was written against).
TRANSFORMER_CALL = ("input_tokens", "attention_mask", "embeds", "num_tokens", "intermediate_output",
                    "final_layer_norm_intermediate", "dtype", "embeds_info")
#: CLIP.__init__'s parameters in ComfyUI 0.3.75 (0.33 adds state_dict before model_options): a fallback, the names are
#: read from the signature.
CLIP_INIT = ("self", "target", "embedding_directory", "no_init", "tokenizer_data", "parameters", "model_options")
#: T5.forward's parameters in ComfyUI 0.3.75 .. 0.33 (the rest are keywords for its T5Stack).
T5_CALL = ("input_ids", "attention_mask", "embeds", "num_tokens")


def install(patches: "Patches", state: "PackState", parts: "DeviceParts", host_device: Any, on_device: bool) -> None:
    """Patch the CLIP encoders' call (timed on the host; a program on the device when ``on_device``)."""
    import comfy.sd
    import comfy.sd1_clip

    if on_device:
        patches.set("comfy.sd.CLIP", "__init__", _clip_init(comfy.sd.CLIP.__init__, state, parts, host_device))
    patches.set("comfy.sd1_clip.SDClipModel", "forward",
                _clip_forward(comfy.sd1_clip.SDClipModel.forward, state, parts))


def encoders(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformers of every ``SDClipModel`` in a CLIP object's model (one per encoder)."""
    import comfy.sd1_clip

    return [m.transformer for m in model.modules() if isinstance(m, comfy.sd1_clip.SDClipModel)]


def device_encoder_types() -> tuple[type, ...]:
    """The transformer classes whose calls run as programs: ComfyUI's CLIP and T5 (T5-XXL, umt5)."""
    import comfy.clip_model
    import comfy.text_encoders.t5

    return comfy.clip_model.CLIPTextModel, comfy.text_encoders.t5.T5


def _clip_init(original: Callable, state: "PackState", parts: "DeviceParts", host_device: Any) -> Callable:
    """``CLIP.__init__`` that keeps a CLIP with encoders other than CLIP and T5 transformers on the host, and
    makes one for the device under a mesh with a 'model' axis on the host (its weights then reach the chips
    split, each chip its part only, at ComfyUI's load: ``weight_shard.Placement``, as the diffusion model's).
    In auto mode (``COMFY_TPU_SPMD=auto``) a text encoder that does not fit one chip gives the mesh its
    'model' axis, as a diffusion model does (``model_axis.auto_model_axis_for``)."""
    kinds = device_encoder_types()

    def init(self, *args, **kwargs):
        call = Call.of(original, (self, *args), kwargs, fallback=CLIP_INIT)
        options = call.get("model_options") or {}
        if state.backend.model_axis() > 1 and "initial_device" not in options and call.get("no_init") is not True:
            # ComfyUI would make a CLIP that fits the chips' (M x one chip's) memory on the device, whole on
            # every chip before its load splits it: made on the host instead, it is loaded split.
            call.set("model_options", {**options, "initial_device": host_device})
        result = call.forward(original)
        patcher = getattr(self, "patcher", None)
        if patcher is None or not state.backend.is_device(patcher.load_device):
            return result
        others = sorted({type(t).__name__ for t in encoders(self.cond_stage_model)
                         if not isinstance(t, kinds)})
        if others:
            if state.notices.first_time("text encoder on host", tuple(others)):
                log.info("comfy-tpu: text encoders %s stay on the host (device programs are for CLIP "
                         "and T5 transformers)", ", ".join(others))
            patcher.load_device = host_device
            if any(p.device.type != torch.device(host_device).type for p in self.cond_stage_model.parameters()):
                self.cond_stage_model.to(host_device)
            return result
        for transformer in encoders(self.cond_stage_model):
            parts.load_for_device(transformer)
        if not any(state.backend.is_device(p.device) for p in self.cond_stage_model.parameters()):
            auto_model_axis_for(state, patcher)  # made on the host: not loaded yet
        return result

    init.__wrapped__ = original
    return init


def _clip_forward(original: Callable, state: "PackState", parts: "DeviceParts") -> Callable:
    """``SDClipModel.forward`` with its transformer's call (CLIP or T5) run as a program when it is on the device."""
    import comfy.clip_model
    import comfy.text_encoders.t5

    backend = state.backend

    def forward(self, *args, **kwargs):
        transformer = getattr(self, "transformer", None)
        own_forward = transformer is not None and "forward" in vars(transformer)
        clip = (isinstance(transformer, comfy.clip_model.CLIPTextModel) and not own_forward
                and not getattr(self, "zero_out_masked", False) and not getattr(self, "return_attention_masks", False)
                and getattr(getattr(transformer, "text_projection", None), "weight", None) is not None)
        t5 = isinstance(transformer, comfy.text_encoders.t5.T5) and not own_forward
        weight = _embedding_weight(transformer)
        on_device = weight is not None and (backend.is_device(weight.device) or (
            backend.traces_functions and parts.loaded_for_device(transformer)))  # torchax: host tensors
        if not (clip or t5) or not on_device:
            with parts.timed("text_encoders", "device" if on_device else "host"):
                return original(self, *args, **kwargs)
        programs = parts.programs(transformer, f"text encoder {type(self).__name__}")
        make = _program_call if clip else _t5_program_call
        ids = encoder_tokens.TokenIds()
        vars(transformer)["forward"] = make(transformer, programs, state, parts, ids)
        vars(self)["process_tokens"] = encoder_tokens.process_tokens(
            type(self).process_tokens.__get__(self), transformer.get_input_embeddings(), ids)
        try:
            with parts.timed("text_encoders", "device"):
                if parts.first_use(transformer) and parts.rewarm:
                    _rewarm(transformer, programs, state, parts, make)
                return original(self, *args, **kwargs)
        finally:
            vars(transformer).pop("forward", None)
            vars(self).pop("process_tokens", None)

    forward.__wrapped__ = original
    return forward


def _embedding_weight(transformer: Any) -> Any:
    try:
        return transformer.get_input_embeddings().weight
    except AttributeError:
        return None


def _as_comfyui(given: Call, method: Callable, holder: encoder_tokens.TokenIds, embedding: torch.nn.Module,
                ids: Any) -> Any:
    """The transformer's own call, lazily on the device (the stand-in embeddings replaced by the lookup)."""
    if ids is not None:
        given.set("embeds", holder.looked_up(embedding, ids))
    return given.forward(method)


def _rewarm(transformer: torch.nn.Module, programs: Any, state: "PackState", parts: "DeviceParts",
            make: Callable) -> None:
    """Make the calls this encoder (its class and weight layout) compiled in earlier sessions, with blank
    tokens, before its first call in this process. A failure is logged once and ends the re-warm only."""
    try:
        layout = layout_key(programs.layout())
    except NotReplayable:
        return
    recorded = [entry for entry in parts.shapes.recorded(type(transformer).__name__, layout, earlier_only=True)
                if entry.method == _kind(make) and entry.call]
    if not recorded or programs.lazy_reason is not None:
        return
    holder = encoder_tokens.TokenIds()
    call = make(transformer, programs, state, parts, holder)
    device = transformer.get_input_embeddings().weight.device

    def blank(form: call_form.TensorForm) -> torch.Tensor:
        tensor = torch.zeros(form.shape, dtype=form.dtype)
        tensor = tensor.to(device) if form.on_device else tensor
        if form.marked:  # the stand-in embeddings of a prompt of token ids: the program looks up blank ids
            holder.hold(torch.zeros(form.shape[:2], dtype=torch.long), tensor)
        return tensor

    try:
        for entry in recorded:
            args, kwargs = call_form.decode(entry.call, blank)
            call(*args, **kwargs)
            if programs.lazy_reason is not None:
                raise NotReplayable(programs.lazy_reason)
    except Exception as exc:  # noqa: BLE001 - the user's call runs as it would without the re-warm
        programs.lazy_reason = None
        if state.notices.first_time("text encoder rewarm", programs.name):
            log.warning("comfy-tpu: re-warm of %s failed (%s: %s); its calls compile when they come", programs.name,
                        type(exc).__name__, str(exc)[:300])
        return
    log.info("comfy-tpu: re-warmed %d %s call(s) recorded in earlier sessions", len(recorded), programs.name)


def _kind(make: Callable) -> str:
    return "clip" if make is _program_call else "t5"


def _record(transformer: torch.nn.Module, kind: str, args: tuple, kwargs: dict, embeds: torch.Tensor,
            stand_in: bool, programs: Any, parts: "DeviceParts") -> None:
    """A call that compiled a program: its form, for a later session's re-warm (nothing when it holds a
    value the form cannot keep). ``stand_in``: ``embeds`` stand for token ids (``encoder_tokens``)."""
    device = transformer.get_input_embeddings().weight.device
    form = call_form.encode(args, kwargs, lambda tensor: tensor.device == device,
                            marked=embeds if stand_in else None)
    if form is None or programs.lazy_reason is not None:
        return
    parts.shapes.record(PartShape(module=type(transformer).__name__, layout=layout_key(programs.layout()),
                                  method=kind, shape=tuple(embeds.shape), dtype=str(embeds.dtype).removeprefix("torch."),
                                  call=form))


def _program_call(transformer: torch.nn.Module, programs: Any, state: "PackState", parts: "DeviceParts",
                  holder: encoder_tokens.TokenIds) -> Callable:
    """The CLIP transformer's call as a program per (chunk bucket, tokens) shape, from the token ids where
    the prompt is ids only; lazily on the device when it cannot be one (an embedding of another kind, a
    host read)."""
    method = type(transformer).forward.__get__(transformer)
    names = positional_names(transformer.text_model.forward) or TRANSFORMER_CALL
    embedding = transformer.get_input_embeddings()

    def call(*args, **kwargs):
        given = Call(args, kwargs, names, fallback=TRANSFORMER_CALL)
        embeds, num_tokens, mask = given.get("embeds"), given.get("num_tokens"), given.get("attention_mask")
        ids = holder.of(embeds)
        if (programs.lazy_reason is not None or embeds is None or num_tokens is None or given.get("embeds_info")
                or given.get("input_tokens") is not None):
            return _as_comfyui(given, method, holder, embedding, ids)
        device = embedding.weight.device
        chunks, length = embeds.shape[0], embeds.shape[1]
        batch = token_buckets.chunk_bucket(chunks)  # blank chunks up to a power of two, cut off after
        ends = torch.tensor([int(n) - 1 for n in num_tokens] + [0] * (batch - chunks), dtype=torch.long).to(device)
        first = (token_buckets.pad_dim(ids, batch, 0).to(device) if ids is not None
                 else token_buckets.pad_dim(given.get("embeds"), batch, 0))
        if mask is not None:
            mask = token_buckets.pad_dim(mask, batch, 0, 1).to(device)
            given.set("attention_mask", mask)
        given.set("num_tokens", [length] * batch)  # a fixed trace; the real ends gather the pooled output
        tensors = [first, ends] + ([mask] if mask is not None else [])
        static = repr((given.get("intermediate_output"), given.get("final_layer_norm_intermediate", True),
                       given.get("dtype", torch.float32), mask is None, ids is not None))

        def function(views: list[torch.Tensor]):
            first, ends = views[0], views[1]
            if mask is not None:
                given.set("attention_mask", views[2])
            given.set("embeds", embedding(first, out_dtype=torch.float32) if ids is not None else first)
            hidden, intermediate, _, _ = given.forward(method)
            pooled = hidden[torch.arange(batch, device=hidden.device), ends]
            return hidden, intermediate, transformer.text_projection(pooled), pooled

        try:
            traces = programs.traces
            outputs = programs.run(("clip", static), function, tensors)
            if programs.traces != traces:
                _record(transformer, "clip", args, kwargs, embeds, ids is not None, programs, parts)
        except NotReplayable as exc:
            _lazy_from_now(programs, state, exc)
            return call(*args, **kwargs)
        return tuple(token_buckets.cut_dim(output, chunks, 0) for output in outputs)

    return call


def _t5_program_call(transformer: torch.nn.Module, programs: Any, state: "PackState", parts: "DeviceParts",
                     holder: encoder_tokens.TokenIds) -> Callable:
    """T5's call as a program per (batch, length bucket): the ids (or embeddings) padded to the bucket, the
    added keys masked out, the result cut back; lazily on the device when it cannot be a program."""
    method = type(transformer).forward.__get__(transformer)
    names = positional_names(method) or T5_CALL
    embedding = transformer.get_input_embeddings()

    def call(*args, **kwargs):
        given = Call(args, kwargs, names, fallback=T5_CALL)
        embeds, mask = given.get("embeds"), given.get("attention_mask")
        ids = holder.of(embeds)
        if programs.lazy_reason is not None or embeds is None or given.get("input_ids") is not None:
            return _as_comfyui(given, method, holder, embedding, ids)
        device = embedding.weight.device
        batch, length = embeds.shape[0], embeds.shape[1]
        bucket = token_buckets.length_bucket(length)
        if mask is None:  # all keys seen: an all-ones mask means the same, and keeps one program per bucket
            mask = torch.ones(batch, length, dtype=torch.long)
        mask = token_buckets.pad_dim(mask.to(dtype=torch.long), bucket, 1).to(device)  # padded on the host
        first = (token_buckets.pad_dim(ids, bucket, 1).to(device) if ids is not None
                 else token_buckets.pad_dim(given.get("embeds"), bucket, 1))
        given.set("attention_mask", mask)
        static = repr((given.get("intermediate_output"), given.get("final_layer_norm_intermediate", True),
                       given.get("dtype", torch.float32), ids is not None))

        def function(views: list[torch.Tensor]):
            first, mask = views
            given.set("attention_mask", mask)
            # A fresh tensor either way: T5's blocks add to their input in place (``x += ...``).
            given.set("embeds", embedding(first, out_dtype=torch.float32) if ids is not None else first.clone())
            return given.forward(method)

        try:
            traces = programs.traces
            outputs = programs.run(("t5", static), function, [first, mask])
            if programs.traces != traces:
                _record(transformer, "t5", args, kwargs, embeds, ids is not None, programs, parts)
        except NotReplayable as exc:
            _lazy_from_now(programs, state, exc)
            return call(*args, **kwargs)
        return tuple(token_buckets.cut_dim(output, length, 1) for output in outputs)

    return call


def _lazy_from_now(programs: Any, state: "PackState", exc: Exception) -> None:
    """An encoder whose call cannot be a program runs lazily on the device from now on (said once)."""
    programs.lazy_reason = str(exc)
    if state.notices.first_time("text encoder lazy", programs.name, str(exc)):
        log.warning("comfy-tpu: %s runs lazily on the device (no program): %s", programs.name, exc)
