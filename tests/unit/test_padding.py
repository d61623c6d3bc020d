"""Shape buckets: padded up to a multiple, cropped back; sizes on the multiple untouched."""
from __future__ import annotations

import pytest
import torch

from tpu_runtime.sampling import padding


@pytest.mark.parametrize("size,multiple,expected", [(1, 8, 8), (8, 8, 8), (9, 8, 16), (64, 64, 64), (65, 64, 128)])
def test_bucket_rounds_up_to_the_multiple(size, multiple, expected):
    assert padding.bucket(size, multiple) == expected


def test_padded_hw_works_in_latent_pixels():
    assert padding.padded_hw(64, 72, 512) == (64, 128)  # 512 px = 64 latent px
    assert padding.padded_hw(5, 7, 8) == (5, 7)          # a multiple of one latent pixel changes nothing
    assert padding.padded_hw(5, 7, 4) == (5, 7)          # under a latent pixel: treated as 1


def test_pad_fills_the_bottom_right_with_zeros_and_crop_undoes_it():
    latent = torch.arange(1, 1 + 2 * 4 * 3 * 5, dtype=torch.float32).reshape(2, 4, 3, 5)
    padded = padding.pad(latent, 8, 8)
    assert padded.shape == (2, 4, 8, 8)
    assert torch.equal(padded[..., :3, :5], latent)
    assert padded[..., 3:, :].abs().sum() == 0 and padded[..., :, 5:].abs().sum() == 0
    assert torch.equal(padding.crop(padded, 3, 5), latent)


def test_a_tensor_on_the_bucket_is_returned_as_is():
    latent = torch.randn(1, 4, 8, 8)
    assert padding.pad(latent, 8, 8) is latent
    assert padding.crop(latent, 8, 8) is latent
    assert padding.pad(None, 8, 8) is None


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 4, 3, 5), (1, 4, 2, 3, 5)])
def test_replicate_mode_repeats_the_edge_for_any_rank(shape):
    mask = torch.rand(shape)
    padded = padding.pad(mask, 4, 7, mode="replicate")
    assert padded.shape == (*shape[:-2], 4, 7)
    assert torch.equal(padded[..., 3, :5], mask[..., 2, :])  # the last row, repeated
    assert torch.equal(padded[..., :3, 6], mask[..., :, 4])  # the last column, repeated
