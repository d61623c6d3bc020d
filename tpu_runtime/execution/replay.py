"""Replay execution: the diffusion model traced once per call shape, then replayed as its own program.

Lazy mode re-runs the model's Python every step to trace its graph, and fuses the sampler's math into
that graph, so every sampler gets its own copy of the model's graph to compile (minutes on a TPU for
a large model). Here the model's graph is cut off at both ends: the step boundary comes right before
the model call (the sampler's math and the call's input preparation form one small graph), the model
is traced once per call key and compiled as a program whose parameters are the call's tensors and the
model's weights, and every later call with that key runs the program directly (one list of device
handles, one launch; no Python of the model). The model's graph is the same whatever the sampler,
scheduler, cfg value, step count or denoise, so a new sampler compiles only its own small graph.

It attaches as compiled mode does: during one ``apply_model`` call the base model's
``diffusion_model`` is swapped for a :class:`ReplayedDiffusionModel`.

What a key holds, and when a call runs lazily instead: see :func:`call_key` and
:meth:`ReplayedDiffusionModel.forward`. The Python of the model must be a function of the call's
inputs and weights; anything that could make it otherwise (a device value read on the host while
tracing, the model writing its inputs, other packs' per-call patches, a partly loaded model) makes
that model run lazily, said once in the log.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from tpu_runtime.backends.xla import ReplayUnsupported
from tpu_runtime.execution.call_keys import (  # noqa: F401  (re-exported: tests import them from here)
    CHAIN, HOST_VALUES_IN_KEY, IGNORED_OPTIONS, PER_CALL_PATCHES, NotReplayable, _distinct, _layout, _Program,
    autocast_state, call_key, call_with_views, weight_slots)
from tpu_runtime.execution.block_programs import BlockPrograms
from tpu_runtime.execution.host_values import without_twins
from tpu_runtime.execution.block_functions import FunctionBlockPrograms
from tpu_runtime.execution.program_chain import ChainRecorder
from tpu_runtime.execution.stand_in import STEP_DEPENDENT_OPTIONS, ModelStandIn, StandIns

log = logging.getLogger("comfy_tpu")


class ReplayedDiffusionModel(ModelStandIn):
    """Stands in for a base model's ``diffusion_model`` while it runs replayed (or its fallback)."""

    CANNOT = "be replayed"

    def __init__(self, module: torch.nn.Module, backend, model_name: str, own_wrappers: str,
                 on_compiled: Callable[[float], None] = lambda seconds: None) -> None:
        super().__init__(module, backend, model_name)
        self._own_wrappers = own_wrappers
        self._on_compiled = on_compiled  # told the compile seconds of each new program
        self.__dict__["_programs"] = {}
        self.__dict__["_weights"] = None  # [(owner's parameter or buffer dict, name)] of every weight
        self.__dict__["_hooked_layers"] = None  # layers that can carry weight or bias functions
        #: Set by the wrapper each call: what ComfyUI's patcher swapped into the model (object patches).
        self.model_token: Any = None
        self.__dict__["_slots_token"] = None
        self.__dict__["_full_options"] = None  # this call's transformer_options, before the key's cuts
        #: Entered around a trace (the conv kernel twins): a replay reads the weights it was traced with.
        self.trace_context: Callable[[torch.nn.Module], Any] = lambda module: contextlib.nullcontext()
        self.traces = 0  # calls traced (first call of each key): tests and stats read it
        self.replays = 0
        #: Set by the wrapper each call (``COMFY_TPU_BLOCK_PROGRAMS`` resolved, ``block_programs.resolve``): the
        #: least blocks of a kind that make the model's calls chains of programs with its repeated blocks
        #: compiled once (``execution.program_chain``) instead of one program; 0: never.
        self.block_programs = 0
        self.__dict__["_blocks"] = None  # (model token, BlockPrograms) of the model as last seen
        #: Set for the length of a model call on a ControlNet's stand-in where the backend can keep a
        #: program's outputs on the device (torchax: ``resident_outputs``); torch_xla's always are.
        self.resident_outputs = False
        #: Set for the length of a model call on a ControlNet's stand-in where the backend holds inputs on the
        #: device (torchax: ``held_input``): the keyword inputs a run passes unchanged to every call (its hint),
        #: uploaded once while their host tensor lives instead of at every call.
        self.held_inputs: tuple[str, ...] = ()

    def _weight_slots(self) -> list[tuple[dict, str]]:
        """Every parameter and buffer of the model as (its owner's parameter or buffer dict, name): read
        afresh at each call (two dict lookups each), so a weight ComfyUI replaced (a LoRA patched in
        or out, a reload) is the one the program gets."""
        if self._weights is None:
            self.__dict__["_weights"] = weight_slots(self.inner)
        return self._weights

    def _current_weights(self) -> list[torch.Tensor]:
        if self._slots_token != self.model_token:  # modules were swapped in or out: find the weights again
            self.__dict__["_weights"] = None
            self.__dict__["_slots_token"] = self.model_token
        return [table[name] for table, name in self._weight_slots()]

    def _layer_functions(self) -> tuple:
        """The weight and bias functions ComfyUI's layers carry now (LoRA's low-VRAM patches, a user's
        own): run inside the model's Python, so they are part of what a program was traced with."""
        if self._hooked_layers is None:
            self.__dict__["_hooked_layers"] = [m for m in self.inner.modules() if hasattr(m, "weight_function")]
        found = []
        for index, layer in enumerate(self._hooked_layers):
            own = vars(layer)
            weight_functions, bias_functions = own.get("weight_function"), own.get("bias_function")
            if weight_functions or bias_functions:
                found.append((index, tuple(map(id, weight_functions or ())), tuple(map(id, bias_functions or ()))))
        return tuple(found)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # Twins as plain device data, before the boundary materialises the call's inputs (as the diffusion
        # model's wrapper does): a twin's host copy read while tracing would be a constant of the program,
        # and a ControlNet's timestep (a twin's upload) was otherwise read from the tensor it came from.
        args, kwargs = without_twins((args, kwargs))
        if self.before_call is not None:
            self.before_call()  # the step boundary: the call's inputs are device data from here
        if self.fallback_reason is not None:
            with self.trace_context(self.inner):
                return self.inner(*args, **kwargs)
        if self.held_inputs:
            kwargs = self._with_held_inputs(kwargs)
        options = kwargs.get("transformer_options")
        self.__dict__["_full_options"] = options
        if isinstance(options, dict):
            kwargs["transformer_options"] = {k: v for k, v in options.items() if k not in STEP_DEPENDENT_OPTIONS}
        data_tensor = self._backend.data_tensor
        try:
            key, tensors = call_key(args, kwargs, self._own_wrappers, data_tensor)
            # The mesh: the inputs' shardings follow it (auto mode may re-plan it while the process runs).
            key = (key, self.model_token, self._layer_functions(), self._backend.mesh_description(),
                   self.block_programs, autocast_state(self._backend))
            weights = self._current_weights()
            entry = self._programs.get(key)
            if entry is None or not entry.fits(weights, self._backend):
                self.__dict__["_weights"] = None  # buffers may have come since (kernel twins): look again
                weights = self._current_weights()
                blocks = self._block_programs() if self.block_programs else None
                if blocks and not self._backend.traces_functions:
                    return self._trace_chain(blocks, key, args, kwargs, tensors, weights,
                                             _layout(weights, self._backend))
                if self._backend.traces_functions:
                    return self._trace_function(key, args, kwargs, tensors, weights, _layout(weights, self._backend),
                                                blocks or None)
                return self._trace(key, args, kwargs, tensors, weights, _layout(weights, self._backend))
        except NotReplayable as exc:
            self._fall_back(str(exc))
            kwargs["transformer_options"] = options
            with self.trace_context(self.inner):
                return self.inner(*args, **kwargs)
        self.replays += 1
        if entry.positions == CHAIN:  # recorded as a chain of programs (repeated blocks)
            return entry.program.run(self._backend, tensors + weights)
        return entry.output(self._run(entry.program, tensors + weights))

    def _with_held_inputs(self, kwargs: dict) -> dict:
        """``kwargs`` with each of ``held_inputs`` as the backend's device-resident copy of it."""
        hold = getattr(self._backend, "held_input", None)
        if hold is None:
            return kwargs
        return {**kwargs, **{name: hold(kwargs[name]) for name in self.held_inputs
                             if isinstance(kwargs.get(name), torch.Tensor)}}

    def _run(self, program: Any, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The backend runs the program; its outputs stay on the device when ``resident_outputs`` asks."""
        if self.resident_outputs:
            return self._backend.run_program(program, inputs, resident=True)
        return self._backend.run_program(program, inputs)

    def _block_programs(self) -> Any:
        """The model's repeated blocks as shared programs (found again when modules were swapped in or out)."""
        known = self._blocks
        if known is None or known[0] != (self.model_token, self.block_programs):
            if self._backend.traces_functions:  # torchax: the model's jaxpr cut into a chain of JAX programs
                blocks = FunctionBlockPrograms(self.inner, self._backend, self._model_name, self._own_wrappers,
                                               self.block_programs)
            else:
                blocks = BlockPrograms(self.inner, self._backend, self._model_name, self._own_wrappers,
                                       self._on_compiled, self.block_programs)
            known = ((self.model_token, self.block_programs), blocks)
            self.__dict__["_blocks"] = known
        return known[1]

    def _trace_chain(self, blocks, key, args, kwargs, tensors, weights, layout) -> Any:
        """First call of a key with repeated blocks: run the model lazily, its blocks as their shared programs
        and the work between them as glue programs, recorded as a chain that later calls replay."""
        backend = self._backend
        transfers = backend.counters()["transfers_to_host"]
        compile_start = backend.compile_seconds()
        recorder = ChainRecorder(backend, tensors + weights)
        try:
            with blocks.installed(recorder), self.trace_context(self.inner):
                output = self.inner(*args, **kwargs)
        except Exception as exc:  # the pack's recording failed, or the model needs what the key leaves out
            if _not_a_trace_failure(exc):
                raise
            log.debug("comfy-tpu: recording %s as a chain of programs failed", self._model_name, exc_info=True)
            self._fall_back(f"its call could not be recorded as a chain of programs ({type(exc).__name__}: "
                            f"{str(exc)[:300]}); COMFY_TPU_BLOCK_PROGRAMS=off replays it whole")
            full = self._full_options
            call_kwargs = kwargs if full is None else {**kwargs, "transformer_options": full}
            with self.trace_context(self.inner):
                return self.inner(*args, **call_kwargs)
        if backend.counters()["transfers_to_host"] != transfers:
            self._fall_back("its Python reads device values while it runs (a host sync in the model)")
            return output
        try:
            chain = recorder.finish(output)
        except NotReplayable as exc:
            self._fall_back(str(exc))
            return output
        self._on_compiled(backend.compile_seconds() - compile_start)
        self._programs[key] = _Program(chain, chain.out_spec, layout, tuple(map(id, weights)), CHAIN)
        self.traces += 1
        self.replays += 1
        return tree_unflatten([recorder.values[index] for index in chain.output_indices], chain.out_spec)

    def _trace(self, key, args, kwargs, tensors, weights, layout) -> Any:
        """First call of a key: trace the model lazily, compile its graph as a program, run it."""
        transfers = self._backend.counters()["transfers_to_host"]
        try:
            with self.trace_context(self.inner):
                output = self.inner(*args, **kwargs)
        except Exception as exc:  # re-raised below when the model fails with its whole options too
            full = self._full_options
            if full is None or full is kwargs.get("transformer_options"):
                raise
            with self.trace_context(self.inner):  # the model needs what the key leaves out: run it lazily
                output = self.inner(*args, **{**kwargs, "transformer_options": full})
            self._fall_back(f"it needs transformer_options the program cannot hold ({type(exc).__name__}: {exc})")
            return output
        if self._backend.counters()["transfers_to_host"] != transfers:
            self._fall_back("its Python reads device values while it runs (a host sync in the model)")
            return output  # computed lazily: it joins the next graph
        out_leaves, out_spec = tree_flatten(output)
        if not all(isinstance(leaf, torch.Tensor) for leaf in out_leaves):
            self._fall_back("it returns values that are not tensors")
            return output
        distinct, positions = _distinct(out_leaves)
        compile_start = self._backend.compile_seconds()
        try:
            program = self._backend.capture_program(distinct, tensors + weights)
        except ReplayUnsupported as exc:
            self._fall_back(str(exc))
            return output
        self._on_compiled(self._backend.compile_seconds() - compile_start)
        del output, out_leaves, distinct  # the trace is dropped: the program computes the result
        entry = _Program(program, out_spec, layout, tuple(map(id, weights)), positions)
        self._programs[key] = entry
        self.traces += 1
        self.replays += 1
        return entry.output(self._backend.run_program(program, tensors + weights))

    def _trace_function(self, key, args, kwargs, tensors, weights, layout, blocks=None) -> Any:
        """First call of a key on a backend that makes programs from functions (torchax): the model's
        functional call (its call tensors and weights as the program's arguments, the weights bound
        into their slots while the backend traces it), compiled and run. A model the backend cannot
        trace (its Python reads a value, an op it lacks) runs on the host from then on."""
        leaves, spec = tree_flatten((args, kwargs))
        positions = [index for index, leaf in enumerate(leaves) if any(leaf is tensor for tensor in tensors)]
        template = [None if index in positions else leaf for index, leaf in enumerate(leaves)]
        slots, inner, out_specs = self._weight_slots(), self.inner, []

        def function(views: list[torch.Tensor]) -> list[torch.Tensor]:
            output = call_with_views(inner, template, spec, positions, slots, views)
            out_leaves, out_spec = tree_flatten(output)
            if not all(isinstance(leaf, torch.Tensor) or leaf is None for leaf in out_leaves):
                raise NotReplayable("it returns values that are not tensors")
            # None among the outputs (a T2I-Adapter's levels without features) is kept out of the program.
            kept, places = [], []
            for leaf in out_leaves:
                places.append(None if leaf is None else len(kept))
                if leaf is not None:
                    kept.append(leaf)
            out_specs.append((out_spec, places))
            return kept

        compile_start = self._backend.compile_seconds()
        program = self._backend.capture_function(function, tensors + weights, len(weights),
                                                 split=blocks.chain if blocks else None)
        try:
            outputs = self._run(program, tensors + weights)  # traced and compiled here
        except Exception as exc:  # the model runs on the host from now on (or fails there with its own error)
            if _not_a_trace_failure(exc):
                raise
            log.debug("comfy-tpu: tracing %s failed", self._model_name, exc_info=True)
            self._fall_back(f"the backend cannot trace it ({type(exc).__name__}: {str(exc)[:300]})")
            full = self._full_options
            call_kwargs = kwargs if full is None else {**kwargs, "transformer_options": full}
            return self.inner(*args, **call_kwargs)
        self._on_compiled(self._backend.compile_seconds() - compile_start)
        out_spec, places = out_specs[-1]
        entry = _Program(program, out_spec, layout, tuple(map(id, weights)), places)
        self._programs[key] = entry
        self.traces += 1
        self.replays += 1
        return entry.output(outputs)



def _not_a_trace_failure(exc: BaseException) -> bool:
    """Errors that say nothing about whether the model can be traced (the user's interrupt, the device out
    of memory): they end the run as they would without the pack, instead of sending the model to the host."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "InterruptProcessingException"
            or "RESOURCE_EXHAUSTED" in str(exc))


class ReplayedModels(StandIns):
    """One :class:`ReplayedDiffusionModel` per diffusion module: its programs live as long as it does."""

    def __init__(self, backend, own_wrappers: str) -> None:
        super().__init__(backend, lambda module, name: ReplayedDiffusionModel(module, backend, name, own_wrappers,
                                                                              self._count_compile),
                         "_comfy_tpu_replayed")
        #: Compile seconds of every model program so far: a run's share of its compile seconds that
        #: belongs to the model (shared by every sampler), not to the sampler's own small graphs.
        self.program_compile_s = 0.0

    def _count_compile(self, seconds: float) -> None:
        self.program_compile_s += seconds

    def figures(self) -> dict[str, int]:
        entries = self.entries()
        return {"programs": sum(len(e._programs) for e in entries), "traces": sum(e.traces for e in entries),
                "replays": sum(e.replays for e in entries)}

    def block_figures(self) -> dict[str, int]:
        """Repeated blocks run as shared programs, all models: kinds, programs, traces, block calls."""
        totals: dict[str, int] = {}
        for entry in self.entries():
            if entry._blocks is not None:
                for name, value in entry._blocks[1].figures().items():
                    totals[name] = totals.get(name, 0) + value
        return totals
