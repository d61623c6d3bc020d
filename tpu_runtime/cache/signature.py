"""Execution signatures: what changes the compiled graphs of a sampling run, and nothing else.

Steps, the cfg value, the seed and the scheduler are *data* on the device (the schedule lives on the
host and enters each step as runtime values), so they are not part of the signature: a warm-up at
one step count serves every step count. What does change the graphs: the model's structure, the
padded latent shape and batch, the conditioning's token length, whether cfg runs an uncond pass,
the compute dtype, the sampler (its step update and model calls per step), the device mesh, the
execution mode (lazy and compiled trace different graphs), the controls in the conditioning (their
models, how they chain, whether they reach the uncond pass, whether a start/end range switches them
off for some steps; never their strength or range values, which are data or host decisions) and the
conditioning's layout (:mod:`.layout`: every conditioning tensor's shape and dtype, which options
``extra_conds`` sees), which a re-warm rebuilds. Signatures recorded before the layout was have none.

In replay execution the sampler decides only its own small graphs: the diffusion model's program
depends on every graph field but the sampler (:meth:`ExecutionSignature.model_program_key`), so one
program serves every sampler, and a new sampler's compile is its small graphs alone.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from tpu_runtime.cache.layout import ConditioningLayout

#: Fields that decide the graphs; the display fields below are for people only.
GRAPH_FIELDS = ("model_fingerprint", "latent_shape", "batch_size", "context_tokens", "uncond_pass",
                "compute_dtype", "sampler", "mesh", "execution", "controls", "conditioning")
#: Execution modes that compile the diffusion model as its own program, apart from the sampler's math.
SAMPLER_FREE_MODEL_PROGRAM = ("replay",)


class ExecutionSignature(BaseModel):
    """Frozen: usable as a dict key. Equality and hashing use the graph fields only."""

    model_config = ConfigDict(frozen=True)

    model_fingerprint: str
    latent_shape: tuple[int, ...]   # padded (C, H, W) of one latent
    batch_size: int
    context_tokens: tuple[int, ...]
    uncond_pass: bool
    compute_dtype: str
    sampler: str
    mesh: str = "single"
    execution: str = "lazy"
    controls: tuple[str, ...] = ()  # see control.control_layout
    conditioning: Optional[ConditioningLayout] = None  # None: recorded before layouts were
    # Display fields (the seed document's), not matched on:
    model_id: str = ""
    input_shape: tuple[int, ...] = ()   # the user's latent (B, C, H, W) before padding
    cfg_scale: float = 0.0
    scheduler: str = ""
    steps: int = 0

    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in GRAPH_FIELDS)

    def __hash__(self) -> int:
        return hash(self.key())

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ExecutionSignature) and self.key() == other.key()

    def key_without_conditioning(self) -> tuple:
        """The graph fields but the layout: how a signature asked without a layout (the public API's
        ``create_execution_signature``, an older warm set) names the recorded ones it stands for."""
        return tuple(getattr(self, name) for name in GRAPH_FIELDS if name != "conditioning")

    def model_program_key(self) -> Optional[tuple]:
        """What the diffusion model's own program depends on where it is compiled apart from the
        sampler's math (replay execution): every graph field but the sampler. None where each
        sampler's graphs hold their own copy of the model (lazy and compiled execution)."""
        if self.execution not in SAMPLER_FREE_MODEL_PROGRAM:
            return None
        return tuple(getattr(self, name) for name in GRAPH_FIELDS if name != "sampler")

    def short(self) -> str:
        shape = "x".join(str(d) for d in self.latent_shape)
        return (f"{self.model_id or self.model_fingerprint[:8]} {shape} b{self.batch_size} t{self.context_tokens} "
                f"{'cfg' if self.uncond_pass else 'nocfg'} {self.compute_dtype} {self.sampler} {self.mesh}"
                f"{'' if self.execution == 'lazy' else ' ' + self.execution}"
                f"{' +' + str(len(self.controls)) + ' control(s)' if self.controls else ''}")

    def differences(self, other: "ExecutionSignature") -> list[str]:
        """The graph fields that differ, in words: 'batch_size 1 -> 2'."""
        return [f"{name} {_text(getattr(other, name))} -> {_text(getattr(self, name))}" for name in GRAPH_FIELDS
                if getattr(self, name) != getattr(other, name)]


def _text(value: Any) -> str:
    return value.text() if isinstance(value, ConditioningLayout) else str(value)


def model_fingerprint(model: Any) -> str:
    """Architecture and parameter shapes/dtypes of a diffusion model (cheap: no weight data read)."""
    inner = getattr(model, "model", model)  # ModelPatcher -> BaseModel
    digest = hashlib.sha256(type(inner).__name__.encode())
    diffusion = getattr(inner, "diffusion_model", inner)
    digest.update(type(diffusion).__name__.encode())
    for name, parameter in diffusion.named_parameters():
        digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype}".encode())
    return digest.hexdigest()[:16]


def nearest(signature: ExecutionSignature, known: list[ExecutionSignature]) -> Optional[ExecutionSignature]:
    """The known signature that differs in the fewest graph fields (same model first)."""
    if not known:
        return None
    return min(known, key=lambda other: (other.model_fingerprint != signature.model_fingerprint,
                                         len(signature.differences(other))))


_FINGERPRINT_ATTR = "_comfy_tpu_fingerprint"


def cached_fingerprint(model: Any) -> str:
    """``model_fingerprint`` memoised on the model object itself (read on every run; it goes with the
    model when ComfyUI frees it)."""
    inner = getattr(model, "model", model)
    cached = vars(inner).get(_FINGERPRINT_ATTR) if hasattr(inner, "__dict__") else None
    if cached is None:
        cached = model_fingerprint(model)
        if hasattr(inner, "__dict__"):
            vars(inner)[_FINGERPRINT_ATTR] = cached
    return cached


def build_signature(model: Any, latent_shape: tuple[int, ...], padded_shape: tuple[int, ...],
                    context_tokens: tuple[int, ...], uncond_pass: bool, compute_dtype: str, sampler: str,
                    mesh: str = "single", cfg_scale: float = 0.0, scheduler: str = "", steps: int = 0,
                    execution: str = "lazy", controls: tuple[str, ...] = (),
                    conditioning: Optional[ConditioningLayout] = None) -> ExecutionSignature:
    """The one way signatures are made (by the sampling wrapper and by the public API alike)."""
    inner = getattr(model, "model", model)
    return ExecutionSignature(
        model_fingerprint=cached_fingerprint(model), latent_shape=tuple(padded_shape[1:]),
        batch_size=int(padded_shape[0]), context_tokens=tuple(sorted(set(context_tokens))),
        uncond_pass=uncond_pass, compute_dtype=compute_dtype, sampler=sampler, mesh=mesh, execution=execution,
        controls=tuple(controls), conditioning=conditioning,
        model_id=type(inner).__name__, input_shape=tuple(latent_shape), cfg_scale=float(cfg_scale),
        scheduler=scheduler, steps=int(steps))
