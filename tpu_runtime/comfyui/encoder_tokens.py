"""The token side of a text encoder's call on the device: ``SDClipModel.process_tokens`` made to leave
nothing on the device whose shape follows the prompt.

ComfyUI's ``process_tokens`` looks the token ids up in the embedding table on the weights' device and
builds the token mask there from a Python list. On torch_xla each lookup is a graph of the prompt's own
shape (a T5 prompt's length, a CLIP prompt's chunk count): a compile per new prompt before the
encoder's program even runs. When the prompt is token ids only (no textual-inversion vectors), the
embeddings are exactly the table's rows for those ids: ``process_tokens`` then runs on the host with a
stand-in lookup (zeros of the right shape, never used), and :class:`TokenIds` hands the ids to the
encoder's program, which pads them to its bucket and looks them up itself. Otherwise ComfyUI's lookup
runs as written and only the mask is kept on the host (the same values, from the same list): ComfyUI
multiplies the host result by it (umt5's ``zero_out_masked``) and returns it with the result.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Optional

import torch
from torch.overrides import TorchFunctionMode

from tpu_runtime.comfyui.calls import Call

HOST = torch.device("cpu")
#: SDClipModel.process_tokens's parameters in ComfyUI 0.3.75 .. 0.33.
PROCESS_TOKENS_CALL = ("tokens", "device")


class TokenIds:
    """The ids of the call being encoded when its embeddings are stand-ins for the table's rows of them."""

    def __init__(self) -> None:
        self.ids: Optional[torch.Tensor] = None
        self._stand_in: Optional[torch.Tensor] = None

    def hold(self, ids: Optional[torch.Tensor], stand_in: Optional[torch.Tensor]) -> None:
        """``stand_in`` (embeddings of zeros) stands for the table's rows of ``ids`` in the next call."""
        self.ids, self._stand_in = ids, stand_in

    def of(self, embeds: Any) -> Optional[torch.Tensor]:
        """The (batch, tokens) host ids ``embeds`` stands in for; None when ``embeds`` are real embeddings."""
        return self.ids if embeds is not None and embeds is self._stand_in else None

    def looked_up(self, embedding: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """What ComfyUI's ``process_tokens`` computes for ``ids`` (on the table's device)."""
        return embedding(ids.to(embedding.weight.device), out_dtype=torch.float32)


def plain_ids(tokens: Any) -> Optional[torch.Tensor]:
    """``tokens`` (rows of ints, all one length) as a (rows, length) long tensor; None for anything else."""
    if not isinstance(tokens, (list, tuple)) or not tokens:
        return None
    rows = [list(row) for row in tokens]
    if any(len(row) != len(rows[0]) or not all(isinstance(t, numbers.Integral) for t in row) for row in rows):
        return None
    return torch.tensor([[int(t) for t in row] for row in rows], dtype=torch.long)


class _HostCopies(TorchFunctionMode):
    """Keeps the host tensor of each ``torch.tensor(<Python list>, device=...)`` made under it (no transfer)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func is torch.tensor and args and isinstance(args[0], list) and isinstance(result, torch.Tensor):
            host = {key: value for key, value in kwargs.items() if key != "device"}
            self.copies[id(result)] = (result, torch.tensor(args[0], **host))
        return result


def process_tokens(method: Callable, embedding: torch.nn.Module, holder: TokenIds) -> Callable:
    """``method`` (a bound ``process_tokens``) for an encoder on the device (see the module's docstring)."""

    def call(*args, **kwargs):
        given = Call(args, kwargs, PROCESS_TOKENS_CALL)
        holder.hold(None, None)
        ids = plain_ids(given.get("tokens"))
        if ids is None:
            copies = _HostCopies()
            with copies:
                result = method(*args, **kwargs)
            if isinstance(result, tuple) and len(result) >= 2 and id(result[1]) in copies.copies:
                made, host = copies.copies[id(result[1])]
                if made is result[1]:
                    return (result[0], host, *result[2:])
            return result
        width = embedding.weight.shape[1]

        def stand_in(input, *args, out_dtype=None, **kwargs):
            return torch.zeros(*input.shape, width, dtype=out_dtype or torch.float32)

        vars(embedding)["forward"] = stand_in
        given.set("device", HOST)
        try:
            result = given.forward(method)
        finally:
            vars(embedding).pop("forward", None)
        embeds = result[0]
        if tuple(embeds.shape[:2]) == tuple(ids.shape):
            holder.hold(ids, embeds)
            return result
        given.set("device", embedding.weight.device)  # not the rows of ids after all: ComfyUI's own lookup
        return given.forward(method)

    return call
