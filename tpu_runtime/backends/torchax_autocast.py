"""bf16 autocast under torchax, as a torch function mode entered while JAX traces the model.

torchax 0.0.13's own autocast (its environment's ``autocast_dtype``) cannot serve: its ``PROMOTE`` policy
(``cat``, ``stack``) reads ``.dtype`` of every positional argument, so ``torch.cat([a, b], dim)`` fails
(``AttributeError: 'list' object has no attribute 'dtype'``; ComfyUI's timestep embedding concatenates a
list); and its policy table names aten ops only, while torchax lowers ``F.linear`` (every linear layer of
ComfyUI's ``comfy.ops``), ``einsum`` and ``F.scaled_dot_product_attention`` itself before they decompose, so
they would stay fp32. Measured on torchax 0.0.13: under its autocast ``F.linear`` and ``conv2d`` gave fp32.

Here the ops torch's autocast runs in lower precision on every device (its ``lower_precision_fp`` list:
matrix products, convolutions, attention) get their floating inputs cast to bf16 before torchax lowers
them; everything else runs in the dtypes it meets (norms and softmax of bf16 activations in bf16, as the
model's own casts decide), and a mix of dtypes promotes as torch does (JAX's promotion). No torchax state
is changed: the mode lives only inside the trace.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

#: torch's autocast ``lower_precision_fp`` ops, as torch functions (what torchax's function mode sees).
LOWER_PRECISION = frozenset({
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.mm, torch.bmm,
    torch.Tensor.mm, torch.Tensor.bmm, torch.baddbmm, torch.addmm, torch.addbmm, torch.einsum,
    F.scaled_dot_product_attention,
})


class LowerPrecision(TorchFunctionMode):
    """Casts the floating tensor inputs of :data:`LOWER_PRECISION` ops to ``dtype`` (see the module doc)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in LOWER_PRECISION:
            args, kwargs = pytree.tree_map_only(torch.Tensor, self._lower, (args, kwargs))
        return func(*args, **kwargs)

    def _lower(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point() and tensor.dtype != self.dtype:
            return tensor.to(self.dtype)
        return tensor
