"""Shape buckets: latents padded up to a multiple so nearby sizes share compiled graphs.

The whole sampling run works on the padded latent (so the sampler's own math is in the same graph
for every size of a bucket); the result is cropped back, so the user sees their own size. Sizes
already on the multiple are left untouched (bit-identical to padding off).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

#: How the padded border of noise and latent is filled. Measured (bench/bench_padding.py, table in
#: bench/RESULTS.md): zeros gave the smallest mean change on the two latent rows/columns next to
#: the padding (0.099-0.110 vs 0.128-0.148 for replicate/reflect/circular, euler and dpmpp_2m).
PAD_MODE = "zeros"


def bucket(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def padded_hw(height: int, width: int, multiple_px: int) -> tuple[int, int]:
    """Latent (H, W) -> padded latent (H, W) for a pixel multiple (a latent pixel is 8 image pixels)."""
    step = max(multiple_px // 8, 1)
    return bucket(height, step), bucket(width, step)


def pad(tensor: Optional[torch.Tensor], height: int, width: int, mode: str = PAD_MODE) -> Optional[torch.Tensor]:
    """Pad the last two dims on the bottom/right up to (height, width)."""
    if tensor is None:
        return None
    extra_h, extra_w = height - tensor.shape[-2], width - tensor.shape[-1]
    if extra_h == 0 and extra_w == 0:
        return tensor
    if mode == "zeros":
        return F.pad(tensor, (0, extra_w, 0, extra_h))
    shape = tensor.shape
    flat = tensor.reshape(-1, 1, shape[-2], shape[-1]) if tensor.dim() != 4 else tensor
    out = F.pad(flat, (0, extra_w, 0, extra_h), mode=mode)
    return out.reshape(*shape[:-2], height, width)


def crop(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tensor.shape[-2:] == (height, width):
        return tensor
    return tensor[..., :height, :width]
