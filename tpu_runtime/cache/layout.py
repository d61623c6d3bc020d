"""The conditioning's layout: what a run fed the model besides the latent, as shapes and kinds.

A diffusion model's graphs depend on the shapes and dtypes of every conditioning tensor (the
cross-attention tokens, ``pooled_output``, reference latents, attention masks...) and on the options
that steer ComfyUI's ``extra_conds`` (present or not, an area's ints, a flag), never on the tensors'
values or a float option's value (Flux's ``guidance``: data on the device). A signature records this
layout, so a re-warm after a restart can rebuild zeros of exactly those shapes and send them through
ComfyUI's own path (:func:`rebuild`), whatever the model family.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict

#: Conditioning entries ComfyUI adds itself or that signatures record elsewhere (controls: ``controls``).
SKIPPED_OPTIONS = ("uuid", "cross_attn", "control", "control_apply_to_uncond")
#: The float a re-warm gives an option recorded without an example (never 0 or 1: those trace constants).
FLOAT_STAND_IN = 0.5


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorSpec":
        return cls(shape=tuple(int(d) for d in tensor.shape), dtype=str(tensor.dtype).removeprefix("torch."))

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=getattr(torch, self.dtype))

    def text(self) -> str:
        return "x".join(str(d) for d in self.shape) + ("" if self.dtype == "float32" else f" {self.dtype}")


class OptionSpec(BaseModel):
    """One option of a cond. ``kind``: tensor, tensors (a list of them), float, value (JSON: ints, bools,
    strings, None and lists of those) or object (anything else: a re-warm cannot rebuild it).
    ``example`` (a float option's value) is replayed by a re-warm but not compared: floats are data."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: str
    tensors: tuple[TensorSpec, ...] = ()
    value: Optional[str] = None
    example: Optional[float] = None

    def _key(self) -> tuple:
        return self.name, self.kind, self.tensors, self.value

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, OptionSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def rebuilt(self) -> Any:
        if self.kind == "tensor":
            return self.tensors[0].zeros()
        if self.kind == "tensors":
            return [spec.zeros() for spec in self.tensors]
        if self.kind == "float":
            return self.example if self.example is not None else FLOAT_STAND_IN
        if self.kind == "value":
            return json.loads(self.value) if self.value is not None else None
        raise ValueError(f"option {self.name!r} held a {self.value} object, which a re-warm cannot rebuild")

    def text(self) -> str:
        if self.kind in ("tensor", "tensors"):
            return f"{self.name} {'+'.join(spec.text() for spec in self.tensors)}"
        return self.name if self.kind == "float" else f"{self.name}={self.value}"


class CondSpec(BaseModel):
    """One cond of a conditioning list: its cross-attention tensor and its options."""

    model_config = ConfigDict(frozen=True)

    cross_attn: Optional[TensorSpec] = None
    options: tuple[OptionSpec, ...] = ()

    def text(self) -> str:
        parts = [self.cross_attn.text() if self.cross_attn else "no cross_attn"] + [o.text() for o in self.options]
        return ", ".join(parts)


class ConditioningLayout(BaseModel):
    """The positive conds' and (when cfg runs an uncond pass) the negative conds' layouts."""

    model_config = ConfigDict(frozen=True)

    positive: tuple[CondSpec, ...] = ()
    negative: tuple[CondSpec, ...] = ()

    def unreproducible(self) -> Optional[str]:
        """Why :func:`rebuild` cannot rebuild this layout (None when it can)."""
        objects = [o.name for cond in self.positive + self.negative for o in cond.options if o.kind == "object"]
        if objects:
            return f"its conditioning held objects a re-warm cannot rebuild: {', '.join(sorted(set(objects)))}"
        if not self.positive:
            return "its conditioning recorded no positive cond"
        return None

    def text(self) -> str:
        negative = "; ".join(c.text() for c in self.negative) or "none"
        return f"positive [{'; '.join(c.text() for c in self.positive)}] negative [{negative}]"


def _option(name: str, value: Any) -> OptionSpec:
    if isinstance(value, torch.Tensor):
        return OptionSpec(name=name, kind="tensor", tensors=(TensorSpec.of(value),))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return OptionSpec(name=name, kind="tensors", tensors=tuple(TensorSpec.of(v) for v in value))
    if isinstance(value, float):
        return OptionSpec(name=name, kind="float", example=value)
    try:
        return OptionSpec(name=name, kind="value", value=json.dumps(value, sort_keys=True))
    except (TypeError, ValueError):
        return OptionSpec(name=name, kind="object", value=type(value).__name__)


def cond_spec(cond: dict) -> CondSpec:
    """The layout of one cond as ComfyUI's guider holds it (``convert_cond``: the options plus
    ``cross_attn``)."""
    cross_attn = cond.get("cross_attn")
    options = []
    for name, value in sorted(cond.items()):
        if name in SKIPPED_OPTIONS or (name == "model_conds" and not value):
            continue
        options.append(_option(name, value))
    return CondSpec(cross_attn=TensorSpec.of(cross_attn) if isinstance(cross_attn, torch.Tensor) else None,
                    options=tuple(options))


def layout_of(conds: dict[str, list], uncond_pass: bool) -> ConditioningLayout:
    """The layout of a guider's ``original_conds`` (``{"positive": [cond dict, ...], "negative": ...}``);
    the negative ones only where cfg runs an uncond pass (else the model never sees them)."""
    def specs(name: str) -> tuple[CondSpec, ...]:
        return tuple(cond_spec(c) for c in conds.get(name) or [] if isinstance(c, dict))

    return ConditioningLayout(positive=specs("positive"), negative=specs("negative") if uncond_pass else ())


def comfy_form(conditioning: Optional[list]) -> list[dict]:
    """ComfyUI's ``[[cross_attn, {options}], ...]`` as the guider's cond dicts (what ``convert_cond``
    makes), for :func:`layout_of`."""
    out = []
    for tensor, options in conditioning or []:
        cond = dict(options)
        if tensor is not None:
            cond["cross_attn"] = tensor
        out.append(cond)
    return out


def rebuild_conds(specs: tuple[CondSpec, ...]) -> list:
    """Zeros of the recorded shapes in ComfyUI's ``[[cross_attn, {options}], ...]`` form."""
    return [[spec.cross_attn.zeros() if spec.cross_attn else None,
             {option.name: option.rebuilt() for option in spec.options}] for spec in specs]


def rebuild(layout: ConditioningLayout) -> tuple[list, list]:
    """(positive, negative) conditioning of the layout's shapes (zeros: the graphs see shapes only).
    Without a recorded negative (no uncond pass) the negative is the positive's twin: never sampled."""
    reason = layout.unreproducible()
    if reason:
        raise ValueError(reason)
    positive = rebuild_conds(layout.positive)
    return positive, rebuild_conds(layout.negative) if layout.negative else rebuild_conds(layout.positive)
