"""The torchax backend's block programs: a block jitted on its own, and a model call's jaxpr cut at its
block calls into a chain of JAX programs (what ``execution.block_functions`` runs a model call as).

On torchax a model call is ``jax.jit`` of the model's functional call; JAX traces the model's Python
and XLA compiles the unrolled graph, so both grow with depth. While JAX traces the call once
(``jax.make_jaxpr``), every block of a kind calls its kind's :class:`BlockFunction` (``jax.jit`` of the
block with its call tensors and weights as arguments): JAX traces it once per call key (its own trace
cache), and the model's jaxpr holds one ``jit`` equation per block call, named :data:`BLOCK_NAME`.
:class:`JaxChain` cuts that jaxpr there: the equations between two block calls are a *glue* program
(structurally equal glue programs share one jitted program), each block call runs its kind's program,
and a call runs the steps in order on device arrays, dropping each value after its last reader.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ContextManager, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from tpu_runtime.execution.call_keys import call_with_views

log = logging.getLogger("comfy_tpu")

#: The ``name`` of a block function's ``jit`` equation in the model's jaxpr (how the chain finds block calls).
BLOCK_NAME = "comfy_tpu_block"


class BlockNotJittable(ValueError):
    """This block cannot be a program of its own (the message says why); its kind runs inline."""


def is_device_tensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a torchax tensor (device data while JAX traces), not a host tensor."""
    import torchax

    return isinstance(tensor, torchax.tensor.Tensor)


class BlockFunction:
    """One kind's block at one call key: ``jax.jit`` of the block over (its call tensors, its weights), the
    weights bound into ``member``'s slots while JAX traces it (every member of the kind is built alike)."""

    def __init__(self, name: str, member: torch.nn.Module, template: list, spec: Any, positions: list[int],
                 slots: list[tuple[dict, str]], on_trace: Callable[[], None]) -> None:
        import jax
        import torchax

        self.out_spec: Any = None
        self.output_count = 0
        self.written: list[tuple[int, int]] = []  # (call tensor index, output index) of inputs written in place
        input_count = len(positions)
        original = type(member).forward.__get__(member)
        tensor_type = torchax.tensor.Tensor

        def block(arrays: list[Any]) -> list[Any]:
            on_trace()
            env = torchax.default_env()
            views = [tensor_type(array, env) for array in arrays]
            output = call_with_views(original, template, spec, positions, slots, views)
            leaves, out_spec = tree_flatten(output)
            if not all(isinstance(leaf, tensor_type) for leaf in leaves):
                raise BlockNotJittable("it returns values that are not device tensors")
            # torchax writes in place by replacing a tensor's array: such an input is an output too.
            written = [i for i, view in enumerate(views[:input_count]) if view._elem is not arrays[i]]
            self.out_spec, self.output_count = out_spec, len(leaves)
            self.written = [(i, len(leaves) + n) for n, i in enumerate(written)]
            return [leaf._elem for leaf in leaves] + [views[i]._elem for i in written]

        block.__name__ = block.__qualname__ = name
        self.jitted = jax.jit(block)

    def __call__(self, tensors: list[torch.Tensor], weights: list[torch.Tensor]) -> Any:
        """The block's result for these torchax tensors (inside the model's trace: a ``jit`` equation)."""
        import torchax

        if not all(is_device_tensor(t) for t in tensors + weights):
            raise BlockNotJittable("its inputs or weights include host tensors the trace would bake in")
        outputs = self.jitted([t._elem for t in tensors + weights])
        for index, position in self.written:  # written in place inside the block: so is the caller's tensor
            tensors[index]._elem = outputs[position]
        env = tensors[0]._env if tensors else torchax.default_env()
        leaves = [torchax.tensor.Tensor(array, env) for array in outputs[:self.output_count]]
        return tree_unflatten(leaves, self.out_spec)


class ChainPrograms:
    """The jitted programs of one model's chains: equal glue jaxprs share one, each block jaxpr has one."""

    def __init__(self) -> None:
        self.glue: dict[str, Any] = {}      # a glue jaxpr's text -> its jitted program
        self.blocks: dict[int, Any] = {}    # id(block's closed jaxpr) -> (that jaxpr, its jitted program)

    def glue_program(self, jaxpr: Any) -> Any:
        import jax
        from jax.extend.core import ClosedJaxpr, jaxpr_as_fun

        text = str(jaxpr)  # printed with canonical names: equal glue prints alike
        program = self.glue.get(text)
        if program is None:
            program = self.glue[text] = jax.jit(jaxpr_as_fun(ClosedJaxpr(jaxpr, [])))
        return program

    def block_program(self, closed: Any) -> Any:
        import jax
        from jax.extend.core import jaxpr_as_fun

        entry = self.blocks.get(id(closed))
        if entry is None:
            entry = self.blocks[id(closed)] = (closed, jax.jit(jaxpr_as_fun(closed)))  # keeps ``closed`` alive
        return entry[1]


def make_chain(traced: Callable[[list[Any]], list[Any]], arrays: list[Any], installed: ContextManager,
               programs: ChainPrograms) -> "JaxChain":
    """``traced`` traced once with ``installed`` (the blocks as their functions), its jaxpr cut into a chain."""
    import jax

    with installed:
        closed = jax.make_jaxpr(traced)(arrays)
    chain = JaxChain(closed, programs)
    chain.wait_each_step = _cpu_mesh(arrays)
    return chain


def _cpu_mesh(arrays: list[Any]) -> bool:
    """Whether ``arrays`` span several devices of JAX's CPU client. There, programs with collectives that are
    dispatched ahead of each other share the client's few threads: a chain of 57 block programs under a
    ``data=2,model=2`` mesh on a 2-core host stopped in a collective's rendezvous (devices waiting for
    threads held by later programs; JAX aborts the process after 40 s). One program at a time avoids it; a
    TPU runs each device's programs in order on the device and needs no wait."""
    devices = {device for array in arrays for device in getattr(getattr(array, "sharding", None), "device_set", ())}
    return len(devices) > 1 and all(device.platform == "cpu" for device in devices)


class JaxChain:
    """A model call's jaxpr cut at its block calls: glue programs and block programs, run in order."""

    def __init__(self, closed: Any, programs: ChainPrograms) -> None:
        from jax.extend.core import DebugInfo, Jaxpr, Literal

        jaxpr = closed.jaxpr
        self._consts = list(zip(jaxpr.constvars, closed.consts))
        self._invars = list(jaxpr.invars)
        self._outvars = list(jaxpr.outvars)
        self._literal = Literal
        segments: list[tuple[str, list]] = []
        current: list = []
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("jit", "pjit") and str(eqn.params.get("name", "")).startswith(BLOCK_NAME):
                if current:
                    segments.append(("glue", current))
                segments.append(("block", [eqn]))
                current = []
            else:
                current.append(eqn)
        if current:
            segments.append(("glue", current))
        self.block_steps = sum(1 for kind, _ in segments if kind == "block")
        #: Arguments of block programs that are the call's own arrays (a block's weights), split over the mesh
        #: on the first call: a program is compiled for its arguments' shardings, so these stay split in it.
        self.split_weight_arguments: Optional[int] = None
        self.wait_each_step = False  # wait for each program before the next (``_cpu_mesh``)
        # Backwards: what each step must hand on (read by a later step, or the call's output), and what it
        # reads for the last time (dropped after it: a whole program's buffers are reused by XLA, a chain
        # holding every block's activations to the end of the call would not free them).
        live = {v for v in self._outvars if not isinstance(v, Literal)}
        steps: list[tuple[Any, list, list, list]] = []
        for kind, eqns in reversed(segments):
            if kind == "block":
                eqn = eqns[0]
                inputs, slots = list(eqn.invars), list(eqn.outvars)
                outputs = [v for v in slots if v in live]
                program = programs.block_program(eqn.params["jaxpr"])
            else:
                made = {v for eqn in eqns for v in eqn.outvars}
                inputs = list(dict.fromkeys(v for eqn in eqns for v in eqn.invars
                                            if not isinstance(v, Literal) and v not in made))
                outputs = slots = [v for eqn in eqns for v in eqn.outvars if v in live]
                if not outputs:
                    continue  # nothing it computes is read later
                sub = Jaxpr(constvars=[], invars=inputs, outvars=outputs, eqns=eqns,
                            effects=frozenset().union(*(eqn.effects for eqn in eqns)),
                            debug_info=DebugInfo("jit", "comfy_tpu_glue", None, None))
                program = programs.glue_program(sub)
            live -= set(outputs)
            read = list(dict.fromkeys(v for v in inputs if not isinstance(v, Literal)))
            last_reads = [v for v in read if v not in live]
            live |= set(read)
            kept = set(outputs)  # a block's results no later step reads are not kept (None)
            steps.append((program, inputs, [v if v in kept else None for v in slots], last_reads))
        steps.reverse()
        self._steps = steps
        invars = set(self._invars)
        self._block_weights = [v for kind, eqns in segments if kind == "block" for v in eqns[0].invars
                               if not isinstance(v, Literal) and v in invars]

    def __call__(self, arrays: list[Any]) -> list[Any]:
        import jax

        env: dict[Any, Any] = dict(self._consts)
        env.update(zip(self._invars, arrays))
        literal = self._literal

        def read(v: Any) -> Any:
            return v.val if isinstance(v, literal) else env[v]

        if self.split_weight_arguments is None:
            self.split_weight_arguments = sum(1 for v in self._block_weights if _split(env[v]))

        for program, inputs, outputs, last_reads in self._steps:
            results = program(*[read(v) for v in inputs])
            if self.wait_each_step:
                jax.block_until_ready(results)
            for var in last_reads:
                del env[var]
            for var, value in zip(outputs, results):
                if var is not None:
                    env[var] = value
        return [read(v) for v in self._outvars]


def _split(array: Any) -> bool:
    """Whether a JAX array is split over several devices (not whole on each)."""
    sharding = getattr(array, "sharding", None)
    return sharding is not None and len(sharding.device_set) > 1 and not sharding.is_fully_replicated


def whole_or_chain(traced: Callable[[list[Any]], list[Any]], make: Callable[[list[Any]], Optional[Any]]
                   ) -> Callable[[list[Any]], list[Any]]:
    """What runs in place of ``jax.jit(traced)``: ``make(arrays)``'s chain, made at the first call, or
    ``jax.jit(traced)`` where it makes none."""
    import jax

    made: list[Any] = []

    def run(arrays: list[Any]) -> list[Any]:
        if not made:
            made.append(make(arrays) or jax.jit(traced))
        return made[0](arrays)

    return run
