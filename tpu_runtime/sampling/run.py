"""One sampling run on the device: what it is, who is told about it, its signature."""
from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

from tpu_runtime.backends import metrics
from tpu_runtime.sampling.control import control_layout
from tpu_runtime.execution.host_values import HostTensor
from tpu_runtime.execution.pacing import StepPacer
from tpu_runtime.settings.run_options import RunOptions
from tpu_runtime.cache.layout import layout_of
from tpu_runtime.cache.signature import ExecutionSignature, build_signature

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

#: Device-to-host transfers a run may make: the result.
EXPECTED_TRANSFERS = 1


class RunObserver:
    """Told about each sampling run on the device (the compilation cache listens here)."""

    def before_run(self, run: "SamplingRun", patcher: Any) -> None: ...
    def after_run(self, run: "SamplingRun") -> None: ...


@dataclass(eq=False)
class SamplingRun:
    state: "PackState"
    options: RunOptions
    host_sigmas: Optional[HostTensor]
    model_name: str
    user_shape: tuple[int, ...] = ()  # the latent's shape before padding to a bucket
    signature: Optional[ExecutionSignature] = None
    pacer: Optional[StepPacer] = None
    pacers: list[StepPacer] = field(default_factory=list)
    figures: Optional[metrics.RunFigures] = None
    load_figures: metrics.RunFigures = field(default_factory=metrics.RunFigures)  # the model load's share
    notes: list[str] = field(default_factory=list)
    controlled: bool = False  # the conditioning holds a ControlNet or T2I-Adapter (see ..control)

    @property
    def backend(self) -> Any:
        return self.state.backend


# The run in progress in this thread (or task). ComfyUI calls the wrappers nested inside each other and
# passes them nothing of ours, so the inner ones find their run here; a context variable, not a global.
_RUN: contextvars.ContextVar[Optional[SamplingRun]] = contextvars.ContextVar("comfy_tpu_run", default=None)


def current_run() -> Optional[SamplingRun]:
    return _RUN.get()


def padded_shape(shape: tuple[int, ...], options: RunOptions) -> tuple[int, ...]:
    """The bucket a latent of ``shape`` is padded to (itself with padding off, or for 1-3-D latents)."""
    from tpu_runtime.sampling import padding

    if not options.shape_padding or len(shape) < 4:
        return shape
    height, width = padding.padded_hw(shape[-2], shape[-1], options.shape_padding_multiple)
    return (*shape[:-2], height, width)


def sampler_function_name(sampler: Any) -> str:
    """What signatures call a sampler: its k-diffusion function's name (``sample_euler``)."""
    function = getattr(sampler, "sampler_function", None)
    return getattr(function, "__name__", type(sampler).__name__)


def run_signature(guider: Any, sampler: Any, user_shape: tuple[int, ...], padded: tuple[int, ...],
                  options: RunOptions, steps: int, mesh: str = "single") -> ExecutionSignature:
    """The signature of the run a guider is about to make, with its conditioning's layout (what a
    re-warm rebuilds)."""
    original = getattr(guider, "original_conds", {}) or {}
    tokens = []
    for conds in original.values():
        for cond in conds:
            cross_attn = cond.get("cross_attn") if isinstance(cond, dict) else None
            if isinstance(cross_attn, torch.Tensor) and cross_attn.dim() >= 2:
                tokens.append(int(cross_attn.shape[1]))
    cfg = getattr(guider, "cfg", 1.0)
    uncond = "negative" in original and not math.isclose(float(cfg), 1.0)
    model_dtype = guider.model_patcher.model_dtype()
    dtype = "bfloat16" if options.autocast_bf16 else str(model_dtype).removeprefix("torch.")
    return build_signature(guider.model_patcher, user_shape, padded, tuple(tokens) or (0,), uncond, dtype,
                           sampler_function_name(sampler), cfg_scale=float(cfg), steps=steps, mesh=mesh,
                           execution=options.execution,
                           controls=control_layout(original), conditioning=layout_of(original, uncond))
