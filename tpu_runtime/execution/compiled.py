"""Compiled execution: the diffusion model captured once by dynamo, replayed every step.

Lazy mode re-runs the model's Python every step to trace its graph (tens to hundreds of ms of host
time a call); on a TPU, whose UNet step takes ~10-20 ms, that host time would set the pace. Here the
model goes through ``backend.compile_module`` (dynamo + torch_xla's openxla backend): after the first
capture a call costs a guard check and one graph launch.

It attaches the way core's ``comfy_api.torch_helpers`` does: during one ``apply_model`` call the
base model's ``diffusion_model`` is swapped for a :class:`CompiledDiffusionModel`. What differs:

* ``transformer_options["sample_sigmas"]`` (the whole schedule) is held back from the captured
  region: its length is the step count, and dynamo guards on it, so every new step count would be a
  new capture. A model that needs it fails its capture and runs lazily (see below).
* the step boundary is taken just before the captured graph runs (``before_call``), so the graph's
  inputs are already materialised: torch_xla's bridge would otherwise sync them itself, blocking.
* a model dynamo cannot capture well (an exception, or more graph breaks than allowed) runs lazily
  from then on, named once in the log with the reason; the run it happened in completes.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from tpu_runtime.execution.stand_in import STEP_DEPENDENT_OPTIONS, ModelStandIn, StandIns

log = logging.getLogger("comfy_tpu")


class CompiledDiffusionModel(ModelStandIn):
    """Stands in for a base model's ``diffusion_model`` while it runs compiled (or its fallback)."""

    CANNOT = "run compiled"

    def __init__(self, module: torch.nn.Module, backend, model_name: str, graph_break_limit: int) -> None:
        super().__init__(module, backend, model_name)
        self._graph_break_limit = graph_break_limit
        # Kept out of ``_modules``: the captured module wraps ``inner``, which is already a child.
        self.__dict__["_compiled"] = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.before_call is not None:
            self.before_call()
        if self.fallback_reason is not None:
            return self.inner(*args, **kwargs)
        options = kwargs.get("transformer_options")
        if isinstance(options, dict):
            kwargs["transformer_options"] = {k: v for k, v in options.items() if k not in STEP_DEPENDENT_OPTIONS}
        before = self._backend.compiler_counters()
        try:
            if self._compiled is None:
                self.__dict__["_compiled"] = self._backend.compile_module(self.inner)
            graph_calls = getattr(self._compiled, "graph_calls", None)
            output = self._compiled(*args, **kwargs)
        except Exception as exc:  # re-raised, or the model falls back to lazy with the error in a warning
            if before["dynamo_frames"] == self._backend.compiler_counters()["dynamo_frames"]:
                raise  # no capture was attempted: the model's own error, not the compiler's
            kwargs["transformer_options"] = options
            try:
                output = self.inner(*args, **kwargs)
            except Exception:  # re-raised below
                # The model's own error (it fails uncompiled too). Dynamo has marked the code it
                # was capturing as never to be captured again: reset it, or every later model of
                # this class would run uncaptured.
                self._backend.reset_compiler()
                raise
            self._fall_back(_describe(exc))
            return output
        after = self._backend.compiler_counters()
        breaks = after["dynamo_graph_breaks"] - before["dynamo_graph_breaks"]
        if breaks > self._graph_break_limit:
            self._fall_back(f"{breaks} graph breaks when captured (limit {self._graph_break_limit}, "
                            "COMFY_TPU_COMPILED_GRAPH_BREAK_LIMIT)")
        elif graph_calls is not None and self._compiled.graph_calls == graph_calls:
            self._fall_back("dynamo ran it without a captured graph (it skips code whose capture failed before)")
        return output

def _describe(exc: BaseException) -> str:
    """The compiler's error and, where it wraps one, the error underneath (the useful part)."""
    root = exc
    while getattr(root, "inner_exception", None) or root.__cause__:
        root = getattr(root, "inner_exception", None) or root.__cause__
    lines = [line for line in str(root).strip().splitlines() if line.strip()]
    text = f"{type(root).__name__}: {lines[0] if lines else 'no message'}"
    return text if root is exc else f"{type(exc).__name__} <- {text}"


class CompiledModels(StandIns):
    """One :class:`CompiledDiffusionModel` per diffusion module: its captures live as long as it does."""

    def __init__(self, backend) -> None:
        super().__init__(backend, lambda module, name: CompiledDiffusionModel(module, backend, name, 0),
                         "_comfy_tpu_compiled")

    def for_module(self, module: torch.nn.Module, model_name: str, graph_break_limit: int) -> CompiledDiffusionModel:
        entry = super().for_module(module, model_name)
        entry._graph_break_limit = graph_break_limit
        return entry
