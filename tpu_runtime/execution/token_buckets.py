"""Bucketed shapes for text encoders run as device programs: a program per shape, so each new prompt
length must not be a new shape.

* T5 / umt5 (``comfy/text_encoders/t5.py``): ComfyUI's tokenizers pad to a minimum length only (SD3's T5
  77, Flux's 256, Wan's umt5 512), so a longer prompt is a sequence of its own length. The sequence is
  padded to a multiple of :data:`TOKEN_STEP` with keys masked out: every real token sees exactly the keys
  (and relative position biases) it saw before, and the padded rows are cut off the result.
* CLIP: a prompt over 75 tokens is one 77-token chunk per 75 tokens (plus one for weighted prompts); the
  chunk count goes up to a power of two with blank rows (each chunk is encoded on its own, so the rows do
  not see each other), cut off the result.
"""
from __future__ import annotations

from typing import Optional

import torch

from tpu_runtime.execution.attention import blockwise

#: Token-length step of a T5 bucket: the lane width a TPU pads a matmul's dims to anyway.
TOKEN_STEP = 128


def length_bucket(length: int, step: int = TOKEN_STEP) -> int:
    """The sequence length a T5 call of ``length`` tokens runs at (the next multiple of ``step``)."""
    return max(step, -(-length // step) * step)


def chunk_bucket(chunks: int) -> int:
    """The chunk count a CLIP call of ``chunks`` chunks runs at (the next power of two)."""
    return 1 << max(chunks - 1, 0).bit_length()


def pad_dim(tensor: torch.Tensor, size: int, dim: int, value: float = 0) -> torch.Tensor:
    """``tensor`` grown along ``dim`` to ``size`` with ``value`` (itself when it is that size already): the
    attention's padding, argument order of this module."""
    return blockwise._pad(tensor, dim, size, value)


def cut_dim(value: Optional[torch.Tensor], size: int, dim: int) -> Optional[torch.Tensor]:
    """``value`` cut back to ``size`` along ``dim`` (None stays None)."""
    return None if value is None else value.narrow(dim, 0, size)
