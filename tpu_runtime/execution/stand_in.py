"""A stand-in for a base model's ``diffusion_model`` during one ``apply_model`` call: what compiled and
replay execution share (the swap itself is in ``sampling.model_call``).

The stand-in forwards attribute reads to the real module (ComfyUI reads ``dtype`` and config values
from it), takes the step boundary right before the model runs (``before_call``), and remembers why the
model runs lazily when it cannot run its way (said once in the log). One stand-in of a kind lives in
the real module's ``__dict__``: it and what it captured go when ComfyUI unloads the model.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable, Optional

import torch

log = logging.getLogger("comfy_tpu")

#: transformer_options entries the captured or replayed call must not see (their shape follows the step count).
STEP_DEPENDENT_OPTIONS = ("sample_sigmas",)


class ModelStandIn(torch.nn.Module):
    """Stands in for a base model's ``diffusion_model`` while it runs captured or replayed (or lazily)."""

    #: How the fallback line says what the model could not do ("run compiled", "be replayed").
    CANNOT = "run"

    def __init__(self, module: torch.nn.Module, backend, model_name: str) -> None:
        super().__init__()
        self.inner = module
        self._backend = backend
        self._model_name = model_name
        self.fallback_reason: Optional[str] = None
        self.before_call: Optional[Callable[[], None]] = None

    def __getattr__(self, name: str) -> Any:
        # ComfyUI reads attributes of the diffusion model (``dtype`` in ``get_dtype``, config values).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        # torch_xla runs such a model lazily; torchax, whose device is not torch's, eagerly on the host.
        log.warning("comfy-tpu: %s cannot %s (%s); it runs %s from now on", self._model_name, self.CANNOT,
                    reason, self._backend.fallback_runs)


class StandIns:
    """The stand-ins of one kind, one per diffusion module, found again on the module itself."""

    def __init__(self, backend, make: Callable[[torch.nn.Module, str], ModelStandIn], attribute: str) -> None:
        self._backend = backend
        self._make = make
        self._attribute = attribute
        self._entries: "weakref.WeakSet[ModelStandIn]" = weakref.WeakSet()

    def for_module(self, module: torch.nn.Module, model_name: str) -> Any:
        # Kept in the module's __dict__ (not a child module, not a registry holding it alive): the
        # entry and what it captured go when the model is unloaded and collected.
        entry = module.__dict__.get(self._attribute)
        if entry is None or entry._backend is not self._backend:
            entry = self._make(module, model_name)
            module.__dict__[self._attribute] = entry
            self._entries.add(entry)
        return entry

    def entries(self) -> list[Any]:
        return list(self._entries)

    def fallbacks(self) -> dict[str, str]:
        """Models that run lazily although this kind of execution is on, with why."""
        return {entry._model_name: entry.fallback_reason for entry in self.entries() if entry.fallback_reason}
