"""Repeated blocks traced once and compiled once on a backend that makes programs from functions
(torchax): a model call run as a chain of programs, each block kind one program per call key.

On torchax a model call is ``jax.jit`` of the model's functional call, so JAX's trace and XLA's compile
both grow with depth (tiny Flux 1+2 -> 19+38 blocks: 2.7 -> 12.3 s compile here). With block programs
on, while JAX traces the call once, each member of a kind of repeated block (``repeated_blocks``) calls
its kind's block function for the call key (``backends.torchax_blocks.BlockFunction``: ``jax.jit`` of
the block over its call tensors and weights, traced once per key), and the call's jaxpr is cut at
those calls into a chain of glue programs and block programs (``backends.torchax_blocks.JaxChain``).

What ComfyUI threads through the loop is the model's own Python, traced once: ControlNet residuals
(computed on the host under torchax) are call inputs added in the glue; LoRA weights are new arrays of
the same shapes (nothing traces or compiles again); ``transformer_options`` reach a block as they were
when its key was traced (``block_index`` left out of the key unless per-call patches are present, as in
``block_programs``); a call with ``patches_replace`` is not replayed at all (the model runs as before).
A kind whose block cannot be jitted on its own runs inline in the model's trace from then on (debug
log); a call whose jaxpr cannot be cut compiles as one whole program (a warning).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils._pytree import tree_flatten

from tpu_runtime.execution.block_programs import INDEX_OPTIONS, _layer_functions
from tpu_runtime.execution.call_keys import autocast_state, call_key, weight_slots
from tpu_runtime.execution.repeated_blocks import BlockGroup, describe, find_repeated_blocks
from tpu_runtime.execution.stand_in import STEP_DEPENDENT_OPTIONS

log = logging.getLogger("comfy_tpu")


def _every_tensor(tensor: torch.Tensor) -> bool:
    """On torchax every tensor of a block's call is device data (a torchax tensor while JAX traces)."""
    return True


class _Kind:
    def __init__(self, group: BlockGroup) -> None:
        self.group = group
        self.functions: dict[Any, Any] = {}  # call key -> the backend's block function
        self.off: Optional[str] = None       # why this kind runs inline, if it does


class FunctionBlockPrograms:
    """The repeated blocks of one diffusion model, each kind traced and compiled once per call key."""

    def __init__(self, module: torch.nn.Module, backend, model_name: str, own_wrappers: str,
                 least_blocks: int = 2) -> None:
        from tpu_runtime.backends import torchax_blocks

        self._blocks = torchax_blocks  # the backend's side: block functions, the chain
        self._backend = backend  # its autocast is part of a block's key (a block keeps the casts it was traced with)
        self._model_name = model_name
        self._own_wrappers = own_wrappers
        groups = find_repeated_blocks(module)
        # A model with one kind this deep runs every repeated kind as programs; else none (one whole program).
        self.groups = groups if any(len(g.members) >= least_blocks for g in groups) else []
        self._kinds = [_Kind(group) for group in self.groups]
        self._programs = torchax_blocks.ChainPrograms()
        self._names = 0
        self.traces = 0
        self.block_calls = 0
        self.chains = 0
        self.whole = 0  # calls compiled whole because their chain could not be made
        self._chains: list[Any] = []  # the chains made (their figures)
        found = describe(self.groups)
        if found:
            log.info("comfy-tpu: %s: repeated blocks traced and compiled once per kind: %s", model_name, found)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def figures(self) -> dict[str, int]:
        return {"block_kinds": len(self._kinds), "block_programs": sum(len(k.functions) for k in self._kinds),
                "block_traces": self.traces, "block_calls": self.block_calls,
                "block_kinds_off": sum(1 for k in self._kinds if k.off is not None),
                "glue_programs": len(self._programs.glue), "block_chains": self.chains,
                "block_chains_whole": self.whole,
                "block_weights_split": sum(chain.split_weight_arguments or 0 for chain in self._chains)}

    def chain(self, traced: Callable[[list[Any]], list[Any]]) -> Callable[[list[Any]], list[Any]]:
        """What runs in place of ``jax.jit(traced)`` (``capture_function``'s ``split``): at the first call the
        model is traced with its blocks as their functions and cut into a chain; every call runs it."""
        return self._blocks.whole_or_chain(traced, lambda arrays: self._make_chain(traced, arrays))

    def _make_chain(self, traced: Callable, arrays: list[Any]) -> Any:
        try:
            chain = self._blocks.make_chain(traced, arrays, self._installed(), self._programs)
        except Exception as exc:  # noqa: BLE001 - the pack's own extra work: the call compiles whole instead
            if type(exc).__name__ == "InterruptProcessingException":
                raise
            log.warning("comfy-tpu: %s: its call could not be cut into block programs (%s: %s); it compiles as one "
                        "program", self._model_name, type(exc).__name__, str(exc)[:300])
            self.whole += 1
            return None
        if not chain.block_steps:
            self.whole += 1
            return None
        self.chains += 1
        self._chains.append(chain)
        self.block_calls += chain.block_steps
        return chain

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        """While JAX traces the model call, every member's ``forward`` calls its kind's block function."""
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
            if kind.off is None:
                try:
                    return self._run(kind, member, args, kwargs)
                except Exception as exc:  # noqa: BLE001 - its own trace failed: it runs inline (and fails there if it must)
                    if type(exc).__name__ == "InterruptProcessingException":
                        raise
                    self._kind_off(kind, f"{type(exc).__name__}: {str(exc)[:300]}")
            return original(*args, **kwargs)

        return forward

    def _run(self, kind: _Kind, member: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        options = kwargs.get("transformer_options")
        patched = isinstance(options, dict) and any(options.get(name) for name in ("patches", "patches_replace"))
        left_out = STEP_DEPENDENT_OPTIONS + (() if patched else INDEX_OPTIONS)
        key, tensors = call_key(args, kwargs, self._own_wrappers, _every_tensor, patches_by_identity=True,
                                left_out=left_out)
        slots = weight_slots(member)
        key = (key, _layer_functions(member), options.get("block_index") if patched else None,
               autocast_state(self._backend))
        function = kind.functions.get(key)
        if function is None:
            leaves, spec = tree_flatten((args, kwargs))
            positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
            template = [None if i in positions else leaf for i, leaf in enumerate(leaves)]
            self._names += 1
            function = self._blocks.BlockFunction(f"{self._blocks.BLOCK_NAME}_{self._names}", member, template,
                                                  spec, positions, slots, self._traced)
            kind.functions[key] = function
        return function(tensors, [table[name] for table, name in slots])

    def _traced(self) -> None:
        self.traces += 1

    def _kind_off(self, kind: _Kind, reason: str) -> None:
        kind.off = reason
        log.debug("comfy-tpu: %s: blocks %s run inline in the model's program: %s", self._model_name,
                  kind.group.kind, reason)


