"""A model call as a chain of programs: the graphs between repeated blocks, and one shared program per
block kind, replayed without the model's Python (torch_xla).

``ReplayedDiffusionModel`` replays a model call as one program; with block programs on, its first call
of a key is recorded as a chain instead. While the model's Python runs lazily, every repeated block's
call (``block_programs``) cuts the pending graph: the work that makes the block's inputs is captured as
a *glue* program and run, then the block's program runs on the block's own weights. What follows the
last block is the last glue program. Each program reads its parameters from one list of values: the
call's tensors and the model's weights first, then every program's outputs in order, so a replay is a
loop over the steps (a list of device handles and one launch each), the same for every later call.

A glue graph's device data that is none of those values is a constant the trace made (kept, as a
whole-model replay keeps them). Inputs a step writes in place (Flux's blocks add to ``img``; a
ControlNet residual is added to a block's output) are outputs of that step too: later steps read the
new value by its new index, so a replay needs no write-back.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from tpu_runtime.backends.xla import ReplayUnsupported
from tpu_runtime.execution.call_keys import NotReplayable, _distinct


class _Step:
    """One program of the chain. ``sources``: per program input, an index into the chain's values or a
    constant tensor (a block program's inputs); None: the program's parameters index the values directly
    (a glue program, captured over every value known when it ran)."""

    __slots__ = ("program", "sources")

    def __init__(self, program: Any, sources: Optional[list[Union[int, torch.Tensor]]]) -> None:
        self.program = program
        self.sources = sources


class ProgramChain:
    """A recorded model call: its steps, and where each output leaf is among the values."""

    def __init__(self, steps: list[_Step], output_indices: list[int], out_spec: Any) -> None:
        self.steps = steps
        self.output_indices = output_indices
        self.out_spec = out_spec

    def run(self, backend, inputs: list[torch.Tensor]) -> Any:
        """The call's result for ``inputs`` (the call's tensors, then the model's weights, in the recorded order)."""
        values = list(inputs)
        for step in self.steps:
            if step.sources is None:
                values.extend(backend.run_program(step.program, values))
            else:
                values.extend(backend.run_program(step.program, [values[s] if isinstance(s, int) else s
                                                                 for s in step.sources]))
        return tree_unflatten([values[index] for index in self.output_indices], self.out_spec)


class ChainRecorder:
    """Records a :class:`ProgramChain` while the model runs lazily once (the first call of a key)."""

    def __init__(self, backend, inputs: list[torch.Tensor]) -> None:
        self._backend = backend
        self.values: list[torch.Tensor] = list(inputs)
        self._index: dict[int, int] = {}
        for index, tensor_id in enumerate(backend.tensor_ids(inputs)):
            self._index.setdefault(tensor_id, index)
        self.steps: list[_Step] = []

    def _add(self, outputs: list[torch.Tensor]) -> list[int]:
        start = len(self.values)
        for offset, (tensor, tensor_id) in enumerate(zip(outputs, self._backend.tensor_ids(outputs))):
            self._index[tensor_id] = start + offset
        self.values.extend(outputs)
        return list(range(start, start + len(outputs)))

    def cut(self, tensors: list[torch.Tensor]) -> None:
        """Capture and run the pending work that computes ``tensors`` (a glue program), so that each of them
        is device data, one of the chain's values."""
        backend = self._backend
        pending, _ = _distinct([t for t, p in zip(tensors, backend.written_inputs(tensors)) if p])
        if not pending:
            return
        program = backend.capture_program(pending, self.values, input_ids=self._known_ids())
        outputs = backend.run_program(program, backend.traced_inputs(program, self.values))
        for tensor, output in zip(pending, outputs):
            backend.replace_data(tensor, output)  # the lazy tensor holds the output (and its id) from now on
        self._add(list(outputs))
        self.steps.append(_Step(program, None))

    def _known_ids(self) -> list[Optional[int]]:
        """Per value, the id it is known by (None: a repeat of another value; never a graph's id, which is -1
        for device data no tensor owns, such as constants the trace uploaded)."""
        ids: list[Optional[int]] = [None] * len(self.values)
        for tensor_id, index in self._index.items():
            ids[index] = tensor_id
        return ids

    def sources(self, inputs: list[torch.Tensor]) -> list[Union[int, torch.Tensor]]:
        """Where a block's ``inputs`` (device data, after :meth:`cut`) are among the values; asked before the
        block is traced (a write renews a tensor's id). An unknown one is a constant the trace made."""
        found: list[Union[int, torch.Tensor]] = []
        for tensor, tensor_id in zip(inputs, self._backend.tensor_ids(inputs)):
            index = self._index.get(tensor_id)
            found.append(index if index is not None else tensor)
        return found

    def block(self, program: Any, sources: list[Union[int, torch.Tensor]],
              first_inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run a block's program as the chain's next step: its inputs from ``sources`` (:meth:`sources`);
        ``first_inputs``: what this run reads (the data as traced, when the block's trace wrote some)."""
        outputs = list(self._backend.run_program(program, first_inputs))
        self._add(outputs)
        self.steps.append(_Step(program, sources))
        # The model gets aliases: it may write them in place (a ControlNet residual), the values keep the
        # data later steps' first runs read.
        return [self._backend.alias(output) for output in outputs]

    def finish(self, output: Any) -> ProgramChain:
        """The chain that computes ``output`` (the model's result): its pending tail is the last glue program."""
        leaves, spec = tree_flatten(output)
        if not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
            raise NotReplayable("it returns values that are not tensors")
        try:
            self.cut(leaves)
        except ReplayUnsupported as exc:
            raise NotReplayable(str(exc)) from exc
        indices = [self._index.get(tensor_id) for tensor_id in self._backend.tensor_ids(leaves)]
        if any(index is None for index in indices):
            raise NotReplayable("it returns a tensor that is none of its inputs, weights or results")
        return ProgramChain(self.steps, indices, spec)
