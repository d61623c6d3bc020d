"""Finding a model's repeated blocks, generically: members of one ``ModuleList`` built alike.

Diffusion models are stacks of identical blocks (Flux ``double_blocks``/``single_blocks``, MMDiT
``joint_blocks``, Wan ``blocks``, the UNet's ``transformer_blocks``); XLA's compile time grows with the
unrolled graph, so blocks built alike can share one program (``execution.block_programs``). Two members
are alike when their structure is: the same class in every submodule, the same parameter and buffer
names, shapes and dtypes, and the same plain configuration values (a flag such as
``disable_self_attn`` changes what a block computes without changing its weights). A block that keeps a
tensor outside its parameters and buffers is never alike another (the tensor would be baked into the
shared program).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict

log = logging.getLogger("comfy_tpu")

#: Per-layer attributes that are not structure: ComfyUI's per-layer weight/bias functions (LoRA's low-VRAM
#: patches) are read per call and are part of a call's key instead.
_NOT_STRUCTURE = frozenset({"training", "weight_function", "bias_function"})
#: A block holds at least this many layers with weights (a list of single layers is no stack of blocks).
LEAST_LAYERS = 2
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


class NotAlike(Exception):
    """This block cannot share a program with another (the message says why)."""


class BlockGroup(BaseModel):
    """Blocks of one ``ModuleList`` built alike: one kind, one program per call signature."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    path: str                 # the ModuleList's name in the model (``double_blocks``)
    indices: tuple[int, ...]  # the members of this kind, by their index in the list
    members: tuple[torch.nn.Module, ...]
    structure: Any            # the members' shared structure (hashable)

    @property
    def kind(self) -> str:
        """How the log names the kind: ``double_blocks[0..18] (DoubleStreamBlock)``."""
        return f"{self.path}[{self.indices[0]}..{self.indices[-1]}] ({type(self.members[0]).__name__})"


def _plain_value(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value if not isinstance(value, (torch.dtype, torch.device)) else str(value)
    if isinstance(value, (tuple, list)) and all(isinstance(item, _PLAIN) for item in value):
        return tuple(str(item) if isinstance(item, (torch.dtype, torch.device)) else item for item in value)
    return _NOT_PLAIN


_NOT_PLAIN = object()


def block_structure(block: torch.nn.Module) -> tuple:
    """A hashable description of everything that decides ``block``'s graph apart from its call's inputs and
    its weights' values. Raises :class:`NotAlike` when the block keeps a tensor outside its parameters and
    buffers, or a submodule holds one of its forward functions per instance."""
    parts = []
    for name, module in block.named_modules():
        config = []
        for key, value in sorted(vars(module).items()):
            if key.startswith("_") or key in _NOT_STRUCTURE:
                continue
            if isinstance(value, torch.Tensor):
                raise NotAlike(f"{name or 'the block'} keeps a tensor {key!r} outside its parameters")
            if key == "forward":
                raise NotAlike(f"{name or 'the block'} has a forward of its own (an instance patch)")
            plain = _plain_value(value)
            # Other objects (functions, configs): by type only; a callable attribute is by its qualified name.
            config.append((key, plain if plain is not _NOT_PLAIN else (
                getattr(value, "__qualname__", None) or type(value).__qualname__)))
        tensors = tuple((key, tuple(t.shape), str(t.dtype)) for table in (module._parameters, module._buffers)
                        for key, t in table.items() if t is not None)
        parts.append((name, type(module).__module__, type(module).__qualname__, tuple(config), tensors))
    return tuple(parts)


def find_repeated_blocks(model: torch.nn.Module, least: int = 2) -> list[BlockGroup]:
    """Every kind of block that repeats (at least ``least`` members of one ``ModuleList`` alike), outermost
    first: a list inside a repeated block is part of that block's program."""
    groups: list[BlockGroup] = []
    taken: set[int] = set()
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or id(module) in taken:
            continue
        by_structure: dict[tuple, list[int]] = {}
        for index, member in enumerate(module):
            if sum(1 for sub in member.modules() if sub._parameters) < LEAST_LAYERS:
                continue  # a single layer: a program step of its own would cost more than it saves
            try:
                by_structure.setdefault(block_structure(member), []).append(index)
            except NotAlike as exc:
                log.debug("comfy-tpu: %s[%d] (%s) runs as part of the model's graph: %s", path, index,
                          type(member).__name__, exc)
        for structure, indices in by_structure.items():
            if len(indices) < least:
                continue
            members = tuple(module[i] for i in indices)
            groups.append(BlockGroup(path=path, indices=tuple(indices), members=members, structure=structure))
            for member in members:
                taken.update(id(sub) for sub in member.modules())
    return groups


def describe(groups: list[BlockGroup]) -> Optional[str]:
    """One line for the log: the kinds found and their member counts."""
    if not groups:
        return None
    return ", ".join(f"{g.kind} x{len(g.members)}" for g in groups)
