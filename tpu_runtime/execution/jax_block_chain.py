"""Repeated blocks traced once and compiled once on torchax: a model call as a chain of JAX programs.

On torchax a model call is ``jax.jit`` of the model's functional call; JAX traces the model's Python
and XLA compiles the unrolled graph, so both grow with depth (tiny Flux 1+2 -> 19+38 blocks: 2.6 ->
9.9 s compile). Here, while JAX traces the call once (``jax.make_jaxpr``), every member of a kind of
repeated block (``repeated_blocks``) calls one ``jax.jit`` function per (kind, call key) with its own
weights as arguments: JAX traces the block's Python once per key (its trace cache), and the model's
jaxpr holds one ``jit`` equation per block call. That jaxpr is then cut at those equations into a
chain: the equations between two block calls are a *glue* program (structurally equal glue programs
share one compiled program), and each block call runs its kind's jitted function. A call runs the
chain step by step on device arrays (one dispatch a step); XLA compiles each block kind once, and
the glue programs are small, so the compile does not grow with depth.

What ComfyUI threads through the loop stays the model's own Python, traced once: ``patches_replace``
replacements call the block inside their own code (the block still runs its program, keyed by its index,
as the torch_xla block programs do), ControlNet residuals are call inputs added in the glue, LoRA weights
are new arrays of the same shapes (nothing compiles), and ``transformer_options`` reach the block as
they were when its key was traced (``block_index`` left out of the key unless per-call patches are
present). A kind whose block cannot be jitted on its own (it returns non-tensors, holds host tensors)
runs inline in the model's trace from then on, named in the debug log; a call whose chain cannot be
made compiles as one whole program, as with block programs off.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from tpu_runtime.execution.block_programs import INDEX_OPTIONS, _layer_functions
from tpu_runtime.execution.call_keys import NotReplayable, call_key
from tpu_runtime.execution.repeated_blocks import BlockGroup, describe, find_repeated_blocks
from tpu_runtime.execution.stand_in import STEP_DEPENDENT_OPTIONS

log = logging.getLogger("comfy_tpu")

#: The ``name`` of a block function's ``jit`` equation in the model's jaxpr (how the chain finds block calls).
BLOCK_NAME = "comfy_tpu_block"


def _every_tensor(tensor: torch.Tensor) -> bool:
    return True


class _BlockFunction:
    """One kind's block at one call key: a ``jax.jit`` function of (the call's tensors, the weights)."""

    def __init__(self, name: str, member: torch.nn.Module, template: list, spec: Any, positions: list[int],
                 input_count: int, on_trace: Callable[[], None]) -> None:
        self.name = name
        self.out_spec: Any = None
        self.written: list[tuple[int, int]] = []  # (call tensor index, output index) of inputs written in place
        self.output_count = 0
        slots = _weight_slots(member)
        original = type(member).forward.__get__(member)

        def block(arrays: list[Any]) -> list[Any]:
            on_trace()
            import torchax

            env = torchax.default_env()
            views = [torchax.tensor.Tensor(array, env) for array in arrays]
            bound = list(template)
            for index, view in zip(positions, views[:input_count]):
                bound[index] = view
            args, kwargs = tree_unflatten(bound, spec)
            saved = [table[key] for table, key in slots]
            for (table, key), view in zip(slots, views[input_count:]):
                table[key] = view
            try:
                output = original(*args, **kwargs)
            finally:
                for (table, key), tensor in zip(slots, saved):
                    table[key] = tensor
            leaves, out_spec = tree_flatten(output)
            if not all(isinstance(leaf, torchax.tensor.Tensor) for leaf in leaves):
                raise NotReplayable("it returns values that are not device tensors")
            written = [i for i, view in enumerate(views[:input_count]) if view._elem is not arrays[i]]
            self.out_spec, self.output_count = out_spec, len(leaves)
            self.written = [(i, len(leaves) + n) for n, i in enumerate(written)]
            return [leaf._elem for leaf in leaves] + [views[i]._elem for i in written]

        block.__name__ = block.__qualname__ = name
        import jax

        self.jitted = jax.jit(block)


class _Kind:
    def __init__(self, group: BlockGroup) -> None:
        self.group = group
        self.functions: dict[Any, _BlockFunction] = {}
        self.off: Optional[str] = None


class JaxBlockPrograms:
    """The repeated blocks of one diffusion model on torchax, each kind traced and compiled once per key."""

    def __init__(self, module: torch.nn.Module, backend, model_name: str, own_wrappers: str,
                 least_blocks: int = 2) -> None:
        self._backend = backend
        self._model_name = model_name
        self._own_wrappers = own_wrappers
        groups = find_repeated_blocks(module)
        self.groups = groups if any(len(g.members) >= least_blocks for g in groups) else []
        self._kinds = [_Kind(group) for group in self.groups]
        self._glue: dict[str, Any] = {}  # a glue jaxpr's text -> its jitted program (shared when equal)
        self._runners: dict[int, Any] = {}  # id(block jaxpr) -> its jitted program
        self._names = 0
        self.traces = 0
        self.block_calls = 0
        self.chains = 0
        self.whole = 0  # calls compiled whole because their chain could not be made
        found = describe(self.groups)
        if found:
            log.info("comfy-tpu: %s: repeated blocks traced and compiled once per kind (torchax): %s",
                     model_name, found)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def figures(self) -> dict[str, int]:
        return {"block_kinds": len(self._kinds), "block_programs": sum(len(k.functions) for k in self._kinds),
                "block_traces": self.traces, "block_calls": self.block_calls,
                "block_kinds_off": sum(1 for k in self._kinds if k.off is not None),
                "glue_programs": len(self._glue), "block_chains": self.chains, "block_chains_whole": self.whole}

    # -- the model's trace -------------------------------------------------------------------------
    def chain(self, traced: Callable[[list[Any]], list[Any]]) -> Callable[[list[Any]], list[Any]]:
        """What runs in place of ``jax.jit(traced)``: on its first call the model is traced with its blocks
        as their functions and cut into a :class:`JaxChain`; every call runs that chain."""
        import jax

        made: list[Any] = []

        def run(arrays: list[Any]) -> list[Any]:
            if not made:
                made.append(self._make_chain(traced, arrays) or jax.jit(traced))
            return made[0](arrays)

        return run

    def _make_chain(self, traced: Callable, arrays: list[Any]) -> Optional["JaxChain"]:
        import jax

        with self._installed():
            closed = jax.make_jaxpr(traced)(arrays)
        try:
            chain = JaxChain(closed, self._glue_program, self._block_program)
        except Exception as exc:  # noqa: BLE001 - the pack's own extra work: the call compiles whole instead
            log.warning("comfy-tpu: %s: its call could not be cut into block programs (%s: %s); it compiles as one "
                        "program", self._model_name, type(exc).__name__, str(exc)[:300])
            self.whole += 1
            return None
        if not chain.block_steps:
            self.whole += 1
            return None
        self.chains += 1
        self.block_calls += chain.block_steps
        return chain

    def _glue_program(self, jaxpr: Any) -> Any:
        import jax
        from jax.extend.core import ClosedJaxpr, jaxpr_as_fun

        text = str(jaxpr)
        program = self._glue.get(text)
        if program is None:
            program = self._glue[text] = jax.jit(jaxpr_as_fun(ClosedJaxpr(jaxpr, [])))
        return program

    def _block_program(self, closed: Any) -> Any:
        import jax
        from jax.extend.core import jaxpr_as_fun

        entry = self._runners.get(id(closed))
        if entry is None:
            entry = self._runners[id(closed)] = (closed, jax.jit(jaxpr_as_fun(closed)))  # keeps ``closed`` alive
        return entry[1]

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        patched = []
        try:
            for kind in self._kinds:
                if kind.off is not None:
                    continue
                for member in kind.group.members:
                    member.__dict__["forward"] = self._block_call(kind, member)
                    patched.append(member)
            yield
        finally:
            for member in patched:
                member.__dict__.pop("forward", None)

    def _block_call(self, kind: _Kind, member: torch.nn.Module) -> Callable[..., Any]:
        original = type(member).forward.__get__(member)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if kind.off is not None:
                return original(*args, **kwargs)
            try:
                return self._run(kind, member, args, kwargs)
            except NotReplayable as exc:
                self._kind_off(kind, str(exc))
            except Exception as exc:  # noqa: BLE001 - the block's own trace failed: it runs inline (and fails there if it must)
                self._kind_off(kind, f"{type(exc).__name__}: {str(exc)[:300]}")
            return original(*args, **kwargs)

        return forward

    def _run(self, kind: _Kind, member: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        import torchax

        options = kwargs.get("transformer_options")
        patched = isinstance(options, dict) and any(options.get(name) for name in ("patches", "patches_replace"))
        left_out = STEP_DEPENDENT_OPTIONS + (() if patched else INDEX_OPTIONS)
        key, tensors = call_key(args, kwargs, self._own_wrappers, _every_tensor, patches_by_identity=True,
                                left_out=left_out)
        weights = _weights(member)
        if not all(isinstance(t, torchax.tensor.Tensor) for t in tensors + weights):
            raise NotReplayable("its inputs or weights include host tensors the trace would bake in")
        key = (key, _layer_functions(member), options.get("block_index") if patched else None)
        function = kind.functions.get(key)
        if function is None:
            leaves, spec = tree_flatten((args, kwargs))
            positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
            template = [None if i in positions else leaf for i, leaf in enumerate(leaves)]
            self._names += 1
            function = _BlockFunction(f"{BLOCK_NAME}_{self._names}", member, template, spec, positions,
                                      len(tensors), self._traced)
            kind.functions[key] = function
        outputs = function.jitted([t._elem for t in tensors + weights])
        for index, position in function.written:  # written in place inside the block: so is the caller's tensor
            tensors[index]._elem = outputs[position]
        env = tensors[0]._env if tensors else torchax.default_env()
        leaves = [torchax.tensor.Tensor(array, env) for array in outputs[:function.output_count]]
        return tree_unflatten(leaves, function.out_spec)

    def _traced(self) -> None:
        self.traces += 1

    def _kind_off(self, kind: _Kind, reason: str) -> None:
        kind.off = reason
        log.debug("comfy-tpu: %s: blocks %s run inline in the model's program: %s", self._model_name,
                  kind.group.kind, reason)


class JaxChain:
    """A model call's jaxpr cut at its block calls: glue programs and block programs, run in order."""

    def __init__(self, closed: Any, glue_program: Callable[[Any], Any], block_program: Callable[[Any], Any]) -> None:
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
        # Liveness, backwards: what each step must hand on to the steps after it (or the call's outputs).
        live = {v for v in self._outvars if not isinstance(v, Literal)}
        steps: list[tuple[Any, list, list, list]] = []
        for kind, eqns in reversed(segments):
            defined = [v for eqn in eqns for v in eqn.outvars if v in live]
            used = []
            seen = set()
            for eqn in eqns:
                for v in eqn.invars:
                    if not isinstance(v, Literal) and v not in seen:
                        seen.add(v)
                        used.append(v)
            # Values this step reads for the last time: dropped after it (a whole program's buffers are
            # reused by XLA; a chain holding every block's activations to the end would not free them).
            if kind == "block":
                eqn = eqns[0]
                inputs, slots = list(eqn.invars), list(eqn.outvars)
                outputs = [v for v in slots if v in live]
                program = block_program(eqn.params["jaxpr"])
            else:
                made = {v for eqn in eqns for v in eqn.outvars}
                inputs, outputs = [v for v in used if v not in made], defined
                slots = defined
                if not defined:
                    continue  # nothing it computes is read later
                sub = Jaxpr(constvars=[], invars=inputs, outvars=defined, eqns=eqns,
                            effects=frozenset().union(*(eqn.effects for eqn in eqns)),
                            debug_info=DebugInfo("jit", "comfy_tpu_glue", None, None))
                program = glue_program(sub)
            live -= set(outputs)
            read = list(dict.fromkeys(v for v in inputs if not isinstance(v, Literal)))
            last_reads = [v for v in read if v not in live]
            live |= set(read)
            kept = set(outputs)  # a block's results no later step reads are not kept (None)
            steps.append((program, inputs, [v if v in kept else None for v in slots], last_reads))
        steps.reverse()
        self._steps = steps
        self.block_steps = sum(1 for kind, _ in segments if kind == "block")

    def __call__(self, arrays: list[Any]) -> list[Any]:
        env: dict[Any, Any] = dict(self._consts)
        env.update(zip(self._invars, arrays))
        literal = self._literal

        def read(v: Any) -> Any:
            return v.val if isinstance(v, literal) else env[v]

        for program, inputs, outputs, last_reads in self._steps:
            results = program(*[read(v) for v in inputs])
            for var in last_reads:
                del env[var]
            for var, value in zip(outputs, results):
                if var is not None:
                    env[var] = value
        return [read(v) for v in self._outvars]


def _weight_slots(member: torch.nn.Module) -> list[tuple[dict, str]]:
    """The block's parameters and buffers as (owner's table, name), in :func:`_weights`' order."""
    found, seen = [], set()
    for module in member.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    found.append((table, name))
    return found


def _weights(member: torch.nn.Module) -> list[torch.Tensor]:
    return [table[name] for table, name in _weight_slots(member)]
