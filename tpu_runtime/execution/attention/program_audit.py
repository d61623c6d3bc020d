"""What a lowered attention program holds: its largest tensors and any with a seq x seq extent.

Why: on XLA:CPU a whole naive attention fuses into one kernel whose memory analysis shows no
temporary buffer, so CPU memory figures say nothing about a TPU; the program handed to XLA (HLO
text from torch_xla, StableHLO from ``jax.jit(...).lower(...).as_text()``) does."""
from __future__ import annotations

import math
import re
from typing import Iterable, NamedTuple

_BYTES = {"pred": 1, "i1": 1, "s8": 1, "u8": 1, "i8": 1, "ui8": 1, "bf16": 2, "f16": 2, "s16": 2, "i16": 2,
          "f32": 4, "s32": 4, "i32": 4, "u32": 4, "ui32": 4, "f64": 8, "s64": 8, "i64": 8, "u64": 8, "ui64": 8}
_HLO_SHAPE = re.compile(r"\b(pred|bf16|f16|f32|f64|[su](?:8|16|32|64))\[([0-9,]*)\]")
_MLIR_SHAPE = re.compile(r"tensor<((?:\d+x)+)(i1|bf16|f16|f32|f64|u?i(?:8|16|32|64))>")


class TensorShape(NamedTuple):
    dtype: str
    dims: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.dims) * _BYTES[self.dtype]

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.dims))}] ({self.nbytes / 2**20:.1f} MiB)"


def shapes(text: str) -> set[TensorShape]:
    """Every array shape the program text names (HLO ``bf16[1,2,3]`` or MLIR ``tensor<1x2x3xbf16>``)."""
    found = {TensorShape(d, tuple(int(n) for n in dims.split(",") if n)) for d, dims in _HLO_SHAPE.findall(text)}
    found |= {TensorShape(d, tuple(int(n) for n in dims.rstrip("x").split("x"))) for dims, d in _MLIR_SHAPE.findall(text)}
    return found


class Audit(NamedTuple):
    """``largest``: the largest tensor; ``largest_inner``: the largest that is not an input or output
    re-laid (same element count as q, k, v or the result, padding included); ``seq_by_seq``: tensors
    with two extents of at least ``min_seq`` (a scores matrix)."""

    largest: TensorShape
    largest_inner: TensorShape
    seq_by_seq: tuple[TensorShape, ...]


def audit(text: str, min_seq: int, io_elements: Iterable[int]) -> Audit:
    """Audit one program text; ``io_elements`` are the element counts of its inputs and output, each
    allowed up to one block of padding per sequence (the loops pad to whole blocks)."""
    found = sorted(shapes(text), key=lambda s: s.nbytes)
    io = list(io_elements)

    def is_io(shape: TensorShape) -> bool:
        n = math.prod(shape.dims)
        return any(size <= n <= size * 1.1 for size in io)

    inner = [s for s in found if not is_io(s)]
    big = tuple(s for s in found if sum(d >= min_seq for d in s.dims) >= 2)
    return Audit(found[-1], inner[-1] if inner else TensorShape("f32", ()), big)
