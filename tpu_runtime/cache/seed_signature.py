"""``create_execution_signature`` in both spellings: the pack's (``model, width, height, ...``) and
the seed document's (``model_id, input_shape, batch_size, cfg_scale, scheduler, steps, dtype``).

The seed's cache key names a model by id and gives the latent's ``(B, C, H, W)``; the pack's
signature needs the model's structure (its fingerprint) and a pixel size. This module turns the one
into the other, once, at the API boundary (:class:`SignatureRequest` checks the arguments), and then
lets the manager build the signature as it does for every sampling run. Only the graph fields
(``signature.GRAPH_FIELDS``) decide whether a signature is cached; ``cfg_scale`` (beyond "is it 1"),
``scheduler`` and ``steps`` are carried for people to read.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tpu_runtime.cache.signature import ExecutionSignature, cached_fingerprint

#: Short dtype names people write, as the signature spells them (``str(torch.bfloat16)`` minus ``torch.``).
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp32": "float32", "float": "float32", "fp16": "float16",
                  "half": "float16"}


class SignatureRequest(BaseModel):
    """The arguments of ``create_execution_signature``, in either spelling, checked together."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, protected_namespaces=())

    model: Any = Field(None, description="A ComfyUI model (ModelPatcher), as the MODEL socket carries it.")
    model_id: Any = Field(None, description="The seed's name for the model: a ModelPatcher, the model's class "
                                            "name (e.g. 'SDXL', 'BaseModel') or its fingerprint.")
    width: Optional[int] = Field(None, gt=0, description="Image width in pixels.")
    height: Optional[int] = Field(None, gt=0, description="Image height in pixels.")
    input_shape: Optional[tuple[int, int, int, int]] = Field(
        None, description="The seed's latent shape (B, C, H, W): 8 pixels per latent cell.")
    batch_size: Optional[int] = Field(None, gt=0)
    cfg_scale: float = 7.0
    scheduler: str = "normal"
    sampler: Optional[str] = Field(None, description="A ComfyUI sampler name (default euler).")
    steps: int = Field(20, gt=0)
    dtype: Optional[str] = Field(None, description="Compute dtype, e.g. 'bfloat16', 'bf16' or torch.bfloat16.")
    context_tokens: int = Field(77, gt=0, description="The conditioning's token length.")

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_name(cls, value: Any) -> Any:
        if value is None:
            return None
        name = str(value).removeprefix("torch.").lower()
        name = _DTYPE_ALIASES.get(name, name)
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise ValueError(f"{value!r} is not a torch dtype (e.g. 'bfloat16', 'float32')")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "SignatureRequest":
        if self.model is None and self.model_id is None:
            raise ValueError("give the model (model=...) or model_id=...")
        if self.model is not None and self.model_id is not None and not isinstance(self.model_id, str) \
                and self.model_id is not self.model:
            raise ValueError("model and model_id name different models")
        if self.input_shape is not None:
            batch, _, height, width = self.input_shape
            if min(self.input_shape) <= 0:
                raise ValueError(f"input_shape {self.input_shape} has a dimension <= 0")
            for name, given, implied in (("width", self.width, width * 8), ("height", self.height, height * 8),
                                         ("batch_size", self.batch_size, batch)):
                if given is not None and given != implied:
                    raise ValueError(f"{name}={given} disagrees with input_shape {self.input_shape} "
                                     f"(which means {name}={implied})")
        elif self.width is None or self.height is None:
            raise ValueError("give width and height (pixels) or input_shape (B, C, H, W latent)")
        return self

    def pixel_size(self) -> tuple[int, int, int]:
        """(width, height, batch_size)."""
        if self.input_shape is not None:
            batch, _, height, width = self.input_shape
            return width * 8, height * 8, batch
        return self.width, self.height, self.batch_size or 1

    def sampler_and_scheduler(self) -> tuple[str, str]:
        """The seed's example passes ``scheduler="euler"``, a sampler name: read as the sampler when
        no sampler is given and it names no ComfyUI scheduler."""
        from tpu_runtime.comfyui.samplers import sampler_names, scheduler_names

        if self.sampler is None and self.scheduler in sampler_names() and self.scheduler not in scheduler_names():
            return self.scheduler, "normal"
        return self.sampler or "euler", self.scheduler


def build(request: SignatureRequest, manager: Any) -> ExecutionSignature:
    """The signature a sampling run with these arguments would have."""
    width, height, batch = request.pixel_size()
    sampler, scheduler = request.sampler_and_scheduler()
    model = request.model if request.model is not None else request.model_id
    if isinstance(model, str):
        model = resolve_model_id(model, manager)
    if isinstance(model, ExecutionSignature):
        return _from_recorded(model, request, manager, width, height, batch, sampler, scheduler)
    signature = manager.create_execution_signature(model, width, height, batch, request.cfg_scale, scheduler,
                                                   sampler, request.steps, request.dtype, request.context_tokens)
    if request.input_shape is not None and signature.input_shape[1] != request.input_shape[1]:
        raise ValueError(f"input_shape {request.input_shape} has {request.input_shape[1]} latent channels; "
                         f"this model's latents have {signature.input_shape[1]}")
    return signature


def resolve_model_id(model_id: str, manager: Any) -> Any:
    """A model named by class name or fingerprint: the loaded ComfyUI model on the device, else (for
    a model ComfyUI has unloaded) a signature recorded for it, which carries its fingerprint."""
    from tpu_runtime.comfyui.samplers import loaded_patchers

    loaded: dict[str, Any] = {}
    for patcher in loaded_patchers():
        inner = getattr(patcher, "model", None)
        if not hasattr(inner, "diffusion_model") \
                or not manager.backend.is_device(getattr(patcher, "load_device", None)):
            continue
        fingerprint = cached_fingerprint(patcher)
        if model_id in (type(inner).__name__, fingerprint):
            loaded.setdefault(fingerprint, patcher)
    recorded: dict[str, ExecutionSignature] = {}
    for signature in manager.registry.known():
        if model_id in (signature.model_id, signature.model_fingerprint):
            recorded.setdefault(signature.model_fingerprint, signature)
    for found in (loaded, recorded):
        if len(found) == 1:
            return next(iter(found.values()))
        if len(found) > 1:
            raise ValueError(f"model_id {model_id!r} names {len(found)} different models (fingerprints "
                             f"{', '.join(sorted(found))}): pass one fingerprint, or the model itself")
    raise ValueError(f"model_id {model_id!r} names no model loaded on the device and none with a recorded "
                     f"signature: pass the model (a ModelPatcher) instead")


def _from_recorded(template: ExecutionSignature, request: SignatureRequest, manager: Any, width: int, height: int,
                   batch: int, sampler: str, scheduler: str) -> ExecutionSignature:
    """Signature of a model that is not loaded, from one recorded for it: the fields below as
    :meth:`TPUManager.create_execution_signature` makes them, any other (the fingerprint, the
    model id) the recorded signature's."""
    from tpu_runtime.comfyui.sampler_calls import sampler_function_name
    from tpu_runtime.sampling import padded_shape

    channels = request.input_shape[1] if request.input_shape else (
        template.input_shape[1] if len(template.input_shape) == 4 else template.latent_shape[0])
    user_shape = (batch, channels, height // 8, width // 8)
    padded = padded_shape(user_shape, manager.options)
    dtype = request.dtype or ("bfloat16" if manager.options.autocast_bf16 else template.compute_dtype)
    return template.model_copy(update=dict(
        latent_shape=tuple(padded[1:]), batch_size=int(padded[0]), context_tokens=(request.context_tokens,),
        uncond_pass=not math.isclose(request.cfg_scale, 1.0), compute_dtype=dtype,
        sampler=sampler_function_name(sampler), mesh=manager.mesh, input_shape=user_shape, conditioning=None,
        cfg_scale=float(request.cfg_scale), scheduler=scheduler, steps=request.steps))
