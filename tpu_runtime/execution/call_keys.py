"""What a replayed call is keyed by, and what a traced call shape keeps: shared by whole-model replay
(``replay``), its chains of programs (``program_chain``) and the block programs (``block_programs``)."""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

#: transformer_options entries that do not reach the model's graph (identifiers ComfyUI renews per run).
IGNORED_OPTIONS = ("uuids",)
#: transformer_options entries through which other code changes what the model computes per call.
PER_CALL_PATCHES = ("patches", "patches_replace")
#: CPU tensors up to this many elements are part of the key by value (larger ones: not replayed).
HOST_VALUES_IN_KEY = 4096


#: ``_Program.positions`` of a call recorded as a ``program_chain.ProgramChain`` (its program).
CHAIN: Any = ("chain",)


class NotReplayable(Exception):
    """This call cannot be replayed (the reason is its message); it runs lazily."""


def _device_data(tensor: torch.Tensor) -> bool:
    """torch_xla's rule (the default): device tensors are program inputs, host tensors are values."""
    return tensor.device.type != "cpu"


def _leaf_key(leaf: Any, data_tensor: Callable[[torch.Tensor], bool] = _device_data) -> Any:
    if isinstance(leaf, torch.Tensor):
        if not data_tensor(leaf):
            if leaf.numel() > HOST_VALUES_IN_KEY:
                raise NotReplayable(f"a host tensor of {leaf.numel()} elements among the model's inputs")
            plain = leaf.detach().as_subclass(torch.Tensor).contiguous()
            return ("host", tuple(plain.shape), str(plain.dtype), hashlib.sha1(plain.numpy().tobytes()).hexdigest())
        return ("device", tuple(leaf.shape), str(leaf.dtype))
    if leaf is None or isinstance(leaf, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        return leaf
    if callable(leaf):
        return ("callable", id(leaf))
    return ("object", type(leaf).__qualname__, id(leaf))


def call_key(args: tuple, kwargs: dict, own_wrappers: str,
             data_tensor: Callable[[torch.Tensor], bool] = _device_data, patches_by_identity: bool = False,
             left_out: tuple[str, ...] = ()) -> tuple[tuple, list[torch.Tensor]]:
    """(key, device tensors of the call in order): what decides the traced graph, and its inputs.

    The key holds every tensor's shape and dtype, Python values by value, small host tensors by value,
    and other objects (patches, callables) by identity; the pack's own per-run wrappers and ComfyUI's
    per-run cond ids are left out, so a new run reuses the program. ``data_tensor`` says which tensors
    are program inputs (the backend's rule: on torchax every tensor is). Per-call patches make a call
    not replayable, unless ``patches_by_identity`` (a block's call: its model's Python runs every call,
    so the patches are only what they are); ``left_out``: further transformer_options not in the key."""
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        for name in PER_CALL_PATCHES:
            if options.get(name) and not patches_by_identity:
                raise NotReplayable(f"transformer_options[{name!r}] patches the model's forward ({sorted(options[name])})")
        kept = {k: v for k, v in options.items()
                if k not in IGNORED_OPTIONS and k not in left_out and k not in ("wrappers", "callbacks")}
        for name in ("wrappers", "callbacks"):
            others = {kind: {key: fns for key, fns in by_key.items() if key != own_wrappers}
                      for kind, by_key in (options.get(name) or {}).items()}
            kept[name] = {kind: by_key for kind, by_key in others.items() if by_key}
        kwargs = {**kwargs, "transformer_options": kept}
    leaves, spec = tree_flatten((args, kwargs))
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor) and data_tensor(leaf)]
    return (str(spec), tuple(_leaf_key(leaf, data_tensor) for leaf in leaves)), tensors


class _Program:
    """One traced call shape: the backend's program, the output's structure, the weights it read.
    ``positions``: for each output leaf, which of the program's outputs it is (a model may return one
    tensor in several places, as Flux ControlNets repeat their block outputs; the program has it once), or
    None for a leaf that is None (torchax's programs return tensors only)."""

    def __init__(self, program: Any, out_spec: Any, weight_layout: tuple, weight_ids: tuple,
                 positions: Optional[list[int]] = None) -> None:
        self.program = program
        self.out_spec = out_spec
        self.weight_layout = weight_layout
        self.weight_ids = weight_ids  # the weight objects last seen: unchanged, no layout check needed
        self.positions = positions

    def output(self, outputs: list[torch.Tensor]) -> Any:
        """The call's result from the program's outputs."""
        leaves = (list(outputs) if self.positions is None
                  else [None if index is None else outputs[index] for index in self.positions])
        return tree_unflatten(leaves, self.out_spec)

    def fits(self, weights: list[torch.Tensor], backend) -> bool:
        """Whether ``weights`` have the shapes, dtypes, device and shardings the program was traced with."""
        ids = tuple(map(id, weights))
        if ids == self.weight_ids:
            return True
        if _layout(weights, backend) != self.weight_layout:
            return False
        self.weight_ids = ids
        return True


def _distinct(leaves: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """The distinct tensors of ``leaves`` (by identity, in order), and each leaf's index among them."""
    distinct: list[torch.Tensor] = []
    index_of: dict[int, int] = {}
    positions = []
    for leaf in leaves:
        if id(leaf) not in index_of:
            index_of[id(leaf)] = len(distinct)
            distinct.append(leaf)
        positions.append(index_of[id(leaf)])
    return distinct, positions


def _layout(weights: list[torch.Tensor], backend) -> tuple:
    """Shapes, dtypes and shardings of the weights (a program is compiled for its parameters' shardings);
    raises NotReplayable when one is off the device."""
    if any(tensor is None or not backend.data_tensor(tensor) for tensor in weights):
        raise NotReplayable("some of its weights are on the CPU (a partly loaded model)")
    return tuple((tuple(w.shape), w.dtype, _whole_is_none(backend.tensor_sharding(w))) for w in weights)


def _whole_is_none(sharding: str) -> str:
    """torch_xla gives a whole weight the sharding "{replicated}" once a program under SPMD has read it (before:
    none): both mean whole on every device, one program (else a mesh's second call would trace anew)."""
    return "" if sharding == "{replicated}" else sharding


def autocast_state(backend) -> Any:
    """The autocast a call is traced under (None: none): part of a replayed call's key, since a program keeps
    the casts it was traced with (a run with COMFY_TPU_AUTOCAST_BF16 after an fp32 run of the same shapes
    would otherwise replay the fp32 program). torch_xla's is torch's ``xla`` autocast; torchax's acts while
    JAX traces (``TorchaxBackend.autocast_dtype``)."""
    dtype = getattr(backend, "autocast_dtype", None)
    if dtype is None and torch.is_autocast_enabled("xla"):
        dtype = torch.get_autocast_dtype("xla")
    return dtype


def call_with_views(inner: Callable, template: list, spec: Any, positions: list[int],
                    slots: list[tuple[dict, str]], views: list) -> Any:
    """``inner`` called as a traced program's body: the call's tensors replaced by ``views`` at ``positions``
    of the flattened call (``template`` holds the rest), the weights after them bound into their ``slots``
    for the call and put back after it. Both backends' traced functions (the whole model, a block) call it."""
    bound = list(template)
    for index, view in zip(positions, views):
        bound[index] = view
    args, kwargs = tree_unflatten(bound, spec)
    with weights_bound(slots, views[len(positions):]):
        return inner(*args, **kwargs)


@contextlib.contextmanager
def weights_bound(slots: list[tuple[dict, str]], weights: list) -> Iterator[None]:
    """The module's weight ``slots`` hold ``weights`` (a trace's views of its weight arguments) inside the
    block, and the tensors they held before it after, even if the body raises."""
    saved = [table[name] for table, name in slots]
    for (table, name), weight in zip(slots, weights):
        table[name] = weight
    try:
        yield
    finally:
        for (table, name), tensor in zip(slots, saved):
            table[name] = tensor


def weight_slots(module: torch.nn.Module) -> list[tuple[dict, str]]:
    """Every parameter and buffer of ``module`` as (its owner's parameter or buffer dict, name), each tensor
    once: where a traced call binds its weight arguments (a slot read afresh gets the tensor ComfyUI put there
    last: a LoRA patched in or out, a reload)."""
    found, seen = [], set()
    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    found.append((table, name))
    return found
