"""Repeated blocks compiled once: one program per block kind and call signature, run once per block
with that block's weights as its arguments (torch_xla).

XLA's compile time grows with the unrolled graph: a 19 + 38 block Flux compiled as one program costs
several times a 1 + 2 block one. While a model call is recorded as a chain of programs
(``program_chain``), each member of a kind of repeated block (``repeated_blocks``) runs as a program of
its own: the first call of a (kind, call key) traces that block lazily and compiles its graph, with the
block's inputs and weights as the program's parameters; every other block of the kind runs that program
on its own weights. The recorded chain is what later calls replay (no Python of the model), with the
weights read afresh each call, so a LoRA patched in or out is seen and a weight of another shape or
sharding records again. ControlNet residuals added per block index and the layers between blocks are
the chain's glue programs.

Inputs a block writes in place (Flux's blocks add to ``img`` in place) are outputs of its program too.
``transformer_options["block_index"]`` is left out of the key unless per-call patches are present
(ComfyUI's blocks read it only to look their patches up), so every block of a kind shares a program.
A kind that cannot be a program (its Python reads a device value, it returns non-tensors, it writes its
weights) runs inside the glue graphs, named in the debug log.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils._pytree import tree_flatten

from tpu_runtime.backends.xla import ReplayUnsupported
from tpu_runtime.execution.program_chain import ChainRecorder
from tpu_runtime.execution.repeated_blocks import BlockGroup, describe, find_repeated_blocks
from tpu_runtime.execution.call_keys import NotReplayable, _distinct, _layout, _Program, autocast_state, call_key
from tpu_runtime.execution.stand_in import STEP_DEPENDENT_OPTIONS

log = logging.getLogger("comfy_tpu")

#: Left out of a block's key when no per-call patch could look the block up by it.
INDEX_OPTIONS = ("block_index",)


#: ``auto`` runs block programs for a model with a kind of at least this many blocks (real Flux, SD3, Wan,
#: SDXL's deepest transformer stack); below it one whole-model program compiles about as fast.
AUTO_LEAST_BLOCKS = 4


def resolve(mode: str, backend) -> int:
    """The least member count of a kind that ``COMFY_TPU_BLOCK_PROGRAMS`` (auto, on, off) runs as shared
    programs on ``backend`` (torch_xla: this module; torchax: ``block_functions``); 0: none (off). The same
    on one device and under SPMD (a mesh's 'data' and 'model' axes: each program is compiled for the
    shardings of the values it is run on, tests/test_block_programs_spmd.py)."""
    if mode == "off":
        return 0
    return 2 if mode == "on" else AUTO_LEAST_BLOCKS


class _TracedLazily(Exception):
    """The block's trace ran but cannot be a program: its lazily computed ``output`` is the call's result."""

    def __init__(self, output: Any, reason: str) -> None:
        super().__init__(reason)
        self.output = output
        self.reason = reason


class _Kind:
    """One kind of block: its programs (by call key) and what is known of sharing them."""

    def __init__(self, group: BlockGroup) -> None:
        self.group = group
        self.programs: dict[Any, _Program] = {}
        self.off: Optional[str] = None       # why this kind runs lazily, if it does


class BlockPrograms:
    """The repeated blocks of one diffusion model, each kind run as shared programs."""

    def __init__(self, module: torch.nn.Module, backend, model_name: str, own_wrappers: str,
                 on_compiled: Callable[[float], None] = lambda seconds: None, least_blocks: int = 2) -> None:
        self._backend = backend
        self._on_compiled = on_compiled  # told the compile seconds of each new block program
        self._layouts: dict[int, tuple[tuple, tuple]] = {}  # member id -> (its weights' ids, their layout)
        self._recorder: Optional[ChainRecorder] = None
        self._model_name = model_name
        self._own_wrappers = own_wrappers
        groups = find_repeated_blocks(module)
        # A model with one kind this deep runs every repeated kind as programs; else none (one whole program).
        self.groups = groups if any(len(g.members) >= least_blocks for g in groups) else []
        self._kinds = [_Kind(group) for group in self.groups]
        self.traces = 0
        self.block_calls = 0
        found = describe(self.groups)
        if found:
            log.info("comfy-tpu: %s: repeated blocks compiled once per kind: %s", model_name, found)

    def __bool__(self) -> bool:
        return bool(self.groups)

    @contextlib.contextmanager
    def installed(self, recorder: ChainRecorder) -> Iterator[None]:
        """While ``recorder`` records one model call, every member's ``forward`` is its block program's step."""
        patched = []
        self._recorder = recorder
        try:
            for kind in self._kinds:
                if kind.off is not None:
                    continue
                for member_index, member in zip(kind.group.indices, kind.group.members):
                    member.__dict__["forward"] = self._block_call(kind, member_index, member)
                    patched.append(member)
            yield
        finally:
            self._recorder = None
            for member in patched:
                member.__dict__.pop("forward", None)

    def figures(self) -> dict[str, int]:
        return {"block_kinds": len(self._kinds), "block_programs": sum(len(k.programs) for k in self._kinds),
                "block_traces": self.traces, "block_calls": self.block_calls,
                "block_kinds_off": sum(1 for k in self._kinds if k.off is not None),
                # Weights each kind's programs take split over the mesh (a program is compiled for its
                # parameters' shardings: these stay split over the 'model' axis inside the block).
                "block_weights_split": sum(_split(entry.weight_layout) for k in self._kinds
                                           for entry in k.programs.values())}

    # -- one block's call --------------------------------------------------------------------------
    def _block_call(self, kind: _Kind, index: int, member: torch.nn.Module) -> Callable[..., Any]:
        original = type(member).forward.__get__(member)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if kind.off is not None:
                return original(*args, **kwargs)
            try:
                return self._run(kind, index, member, original, args, kwargs)
            except _TracedLazily as traced:  # computed by the trace (which may have written its inputs)
                self._kind_off(kind, traced.reason)
                return traced.output
            except NotReplayable as exc:  # before the block ran
                self._kind_off(kind, str(exc))
                return original(*args, **kwargs)

        return forward

    def _run(self, kind: _Kind, index: int, member: torch.nn.Module, original: Callable[..., Any],
             args: tuple, kwargs: dict) -> Any:
        backend, recorder = self._backend, self._recorder
        options = kwargs.get("transformer_options")
        patched = isinstance(options, dict) and any(options.get(name) for name in ("patches", "patches_replace"))
        left_out = STEP_DEPENDENT_OPTIONS + (() if patched else INDEX_OPTIONS)
        key, tensors = call_key(args, kwargs, self._own_wrappers, backend.data_tensor, patches_by_identity=True,
                                left_out=left_out)
        key = (key, _layer_functions(member), backend.mesh_description(), index if patched else None,
               autocast_state(backend))
        weights = _weights(member)
        layout = self._layout(member, weights)
        try:
            recorder.cut(tensors)  # the work that makes the block's inputs: the chain's glue program
        except ReplayUnsupported as exc:
            raise NotReplayable(str(exc)) from exc
        entry = kind.programs.get(key)
        inputs = tensors + weights
        sources = recorder.sources(inputs)
        first_inputs = inputs
        if entry is None or entry.weight_layout != layout:
            entry = self._trace(kind, original, args, kwargs, key, tensors, weights, layout)
            first_inputs = backend.traced_inputs(entry.program, inputs)  # the trace may have written some
        self.block_calls += 1
        outputs = recorder.block(entry.program, sources, first_inputs)
        for input_index, position in entry.written:
            backend.replace_data(tensors[input_index], outputs[position])
        return entry.output(outputs)

    def _trace(self, kind: _Kind, original, args, kwargs, key, tensors, weights, layout) -> _Program:
        """First call of a key: trace the block lazily and compile its graph; inputs it writes in place are
        outputs of the program too (the trace is dropped: the program computes the result)."""
        backend = self._backend
        transfers = backend.counters()["transfers_to_host"]
        input_ids = backend.tensor_ids(tensors + weights)  # before the trace: a write renews an id
        output = original(*args, **kwargs)
        if backend.counters()["transfers_to_host"] != transfers:
            raise _TracedLazily(output, "its Python reads device values while it runs")
        leaves, spec = tree_flatten(output)
        if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
            raise _TracedLazily(output, "it returns values that are not tensors")
        if any(backend.written_inputs(weights)):
            raise _TracedLazily(output, "it writes its weights in place")
        written = [index for index, pending in enumerate(backend.written_inputs(tensors)) if pending]
        distinct, positions = _distinct(leaves + [tensors[index] for index in written])
        compile_start = backend.compile_seconds()
        try:
            program = backend.capture_program(distinct, tensors + weights, input_ids=input_ids)
        except ReplayUnsupported as exc:
            raise _TracedLazily(output, str(exc)) from exc
        self._on_compiled(backend.compile_seconds() - compile_start)
        del output, distinct
        entry = _Program(program, spec, layout, tuple(map(id, weights)), positions[:len(leaves)])
        entry.written = list(zip(written, positions[len(leaves):]))
        kind.programs[key] = entry
        self.traces += 1
        return entry

    def _layout(self, member: torch.nn.Module, weights: list[torch.Tensor]) -> tuple:
        """The weights' shapes, dtypes and shardings, looked at again only when one of them was replaced."""
        ids = tuple(map(id, weights))
        known = self._layouts.get(id(member))
        if known is None or known[0] != ids:
            known = (ids, _layout(weights, self._backend))
            self._layouts[id(member)] = known
        return known[1]

    def _kind_off(self, kind: _Kind, reason: str) -> None:
        kind.off = reason
        log.debug("comfy-tpu: %s: blocks %s run as part of the model's lazy graph: %s", self._model_name,
                  kind.group.kind, reason)


def _split(layout: tuple) -> int:
    """How many weights of a layout (``call_keys._layout``: shape, dtype, sharding) are split over devices."""
    return sum(1 for _, _, sharding in layout if "devices=" in sharding)


def _weights(member: torch.nn.Module) -> list[torch.Tensor]:
    """The block's parameters and buffers now (read afresh: ComfyUI replaces them when it patches)."""
    found, seen = [], set()
    for module in member.modules():
        for table in (module._parameters, module._buffers):
            for tensor in table.values():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    found.append(tensor)
    return found


def _layer_functions(member: torch.nn.Module) -> tuple:
    """The weight and bias functions the block's layers carry now (LoRA's low-VRAM patches), by identity."""
    found = []
    for index, layer in enumerate(member.modules()):
        own = vars(layer)
        weight_functions, bias_functions = own.get("weight_function"), own.get("bias_function")
        if weight_functions or bias_functions:
            found.append((index, tuple(map(id, weight_functions or ())), tuple(map(id, bias_functions or ()))))
    return tuple(found)
