"""Device programs for one module's calls (a VAE's decode/encode, a text encoder): traced once per call
shape, replayed after, every result back to the host in one transfer.

The diffusion model's replay (``replay.py``) is built around ``apply_model`` and its transformer options;
the VAE and the text encoders are called once per prompt with plain tensors, so they need only the core
of it: the backend's ``capture_program`` / ``run_program``, keyed by the call's shapes, dtypes and the
non-tensor arguments (which the trace bakes in). A call whose Python reads a device value while it is
traced cannot be a program: that module then runs lazily on the device (its own Python, every call),
said once in the log.

On a backend that makes programs from functions (torchax: ``traces_functions``) the call is traced as a
function of its tensors and the module's weights (bound into their slots while JAX traces it, as the
diffusion model's replay does): one jitted program per key, the weights uploaded once (the backend's
twins), the outputs back to the host when it runs. A call it cannot trace runs on the host (where
torchax keeps ComfyUI's tensors), said once.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Hashable, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from tpu_runtime.backends.xla import ReplayUnsupported
from tpu_runtime.execution.call_keys import NotReplayable, _layout, weight_slots, weights_bound

log = logging.getLogger("comfy_tpu")


class CallPrograms:
    """The programs of one module's calls (a key per call form and shape), with its figures."""

    def __init__(self, backend: Any, module: torch.nn.Module, name: str) -> None:
        self._backend = backend
        self._module = module
        self.name = name
        self._programs: dict[Hashable, tuple[Any, Any, list[Optional[int]]]] = {}
        self.traces = 0
        self.replays = 0
        #: Why this module runs lazily (its own Python on the device each call) instead; None: programs.
        self.lazy_reason: Optional[str] = None

    def slots(self) -> list[tuple[dict, str]]:
        """Every parameter and buffer as (its owner's parameter or buffer dict, name), each tensor once."""
        return weight_slots(self._module)

    def weights(self) -> list[torch.Tensor]:
        """Every parameter and buffer, read afresh each call: a reload (new tensors) runs the same program."""
        return [table[name] for table, name in self.slots()]

    def layout(self) -> tuple:
        """The weights' shapes, dtypes and shardings (a program is for one layout)."""
        return _layout(self.weights(), self._backend)

    def run(self, key: Hashable, function: Callable[[list[torch.Tensor]], Any], tensors: list[torch.Tensor]) -> Any:
        """``function(tensors)`` (which computes from the tensors it is given and the module's weights) as a
        program: traced and compiled the first time its key is seen, replayed after. Returns its outputs
        as host tensors (one transfer for all of them on torch_xla). Raises :class:`NotReplayable` before
        running anything when the call cannot be a program; a trace that turns out unusable returns its
        lazy result instead."""
        backend = self._backend
        if any(not isinstance(t, torch.Tensor) or not backend.data_tensor(t) for t in tensors):
            raise NotReplayable("an input is not on the device")
        weights = self.weights()
        full_key = (key, tuple((tuple(t.shape), t.dtype) for t in tensors), _layout(weights, backend))
        backend.step_boundary()  # the call's inputs become device data (the latent's upload, an embedding lookup)
        entry = self._programs.get(full_key)
        if entry is None and backend.traces_functions:
            return self._trace_function(full_key, function, tensors)
        if entry is None:
            return self._trace(full_key, function, tensors, weights)
        program, spec, positions = entry
        self.replays += 1
        return _rebuild(backend.all_to_host(backend.run_program(program, tensors + weights)), spec, positions)

    def _trace_function(self, full_key: Hashable, function: Callable[[list[torch.Tensor]], Any],
                        tensors: list[torch.Tensor]) -> Any:
        """First call of a key on torchax: ``function`` traced over (tensors, weights) by the backend."""
        backend, slots, count = self._backend, self.slots(), len(tensors)
        weights = [table[name] for table, name in slots]
        forms: list[tuple[Any, list[Optional[int]]]] = []

        def traced(views: list[torch.Tensor]) -> list[torch.Tensor]:
            with weights_bound(slots, views[count:]):
                output = function(views[:count])
            leaves, spec = tree_flatten(output)
            if not all(leaf is None or isinstance(leaf, torch.Tensor) for leaf in leaves):
                raise NotReplayable("it returns values that are not tensors")
            kept, positions = [], []
            for leaf in leaves:
                positions.append(None if leaf is None else len(kept))
                if leaf is not None:
                    kept.append(leaf)
            forms.append((spec, positions))
            return kept

        start = time.perf_counter()
        program = backend.capture_function(traced, tensors + weights, len(weights))
        try:
            outputs = backend.run_program(program, tensors + weights)  # traced and compiled here
        except Exception as exc:
            if isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc):
                raise
            log.debug("comfy-tpu: %s: tracing failed", self.name, exc_info=True)
            self.lazy_reason = f"the backend cannot trace it ({type(exc).__name__}: {str(exc)[:300]})"
            log.warning("comfy-tpu: %s runs on the host (no program): %s", self.name, self.lazy_reason)
            return function(tensors)
        spec, positions = forms[-1]
        self._programs[full_key] = (program, spec, positions)
        self.traces += 1
        self.replays += 1
        log.debug("comfy-tpu: %s: program %d traced and compiled (%.1f s)", self.name, len(self._programs),
                  time.perf_counter() - start)
        return _rebuild(backend.all_to_host(outputs), spec, positions)

    def _trace(self, full_key: Hashable, function: Callable[[list[torch.Tensor]], Any], tensors: list[torch.Tensor],
               weights: list[torch.Tensor]) -> Any:
        backend = self._backend
        transfers = backend.counters()["transfers_to_host"]
        output = function(tensors)
        leaves, spec = tree_flatten(output)
        positions: list[Optional[int]] = []
        distinct: list[torch.Tensor] = []
        for leaf in leaves:
            if leaf is None:
                positions.append(None)
                continue
            if not isinstance(leaf, torch.Tensor):
                return self._lazy(output, "it returns values that are not tensors")
            index = next((i for i, known in enumerate(distinct) if known is leaf), None)
            if index is None:
                distinct.append(leaf)
                index = len(distinct) - 1
            positions.append(index)
        if backend.counters()["transfers_to_host"] != transfers:
            return self._lazy(output, "its Python reads device values while it runs (a host sync)")
        # Under SPMD (weights split over 'model'), a result would leave the program split: its gather is
        # made part of the program, so each transfer compiles nothing.
        distinct = [backend.replicated(leaf) for leaf in distinct]
        start = time.perf_counter()
        try:
            program = backend.capture_program(distinct, tensors + weights)
        except ReplayUnsupported as exc:
            return self._lazy(output, str(exc))
        del output, leaves, distinct  # the trace is dropped: the program computes the result
        self._programs[full_key] = (program, spec, positions)
        self.traces += 1
        self.replays += 1
        log.debug("comfy-tpu: %s: program %d traced and compiled (%.1f s)", self.name, len(self._programs),
                  time.perf_counter() - start)
        return _rebuild(backend.all_to_host(backend.run_program(program, tensors + weights)), spec, positions)

    def _lazy(self, output: Any, reason: str) -> Any:
        self.lazy_reason = reason
        log.warning("comfy-tpu: %s runs lazily on the device (no program): %s", self.name, reason)
        return output

    def figures(self) -> dict[str, int]:
        return {"programs": len(self._programs), "traces": self.traces, "replays": self.replays}


def with_tensors(tree: Any, tensors: list[torch.Tensor]) -> Any:
    """``tree`` (a call's ``(args, kwargs)``) with its tensor leaves replaced, in order, by ``tensors``."""
    leaves, spec = tree_flatten(tree)
    replacements = iter(tensors)
    return tree_unflatten([next(replacements) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves], spec)


def _rebuild(values: list[torch.Tensor], spec: Any, positions: list[Optional[int]]) -> Any:
    return tree_unflatten([None if index is None else values[index] for index in positions], spec)
