"""Text encoders' shape buckets and the ids-only token form (pure logic)."""
from __future__ import annotations

import torch

from tpu_runtime.comfyui.encoder_tokens import plain_ids
from tpu_runtime.execution.token_buckets import chunk_bucket, cut_dim, length_bucket, pad_dim


def test_length_buckets_are_multiples_of_the_step():
    assert [length_bucket(n) for n in (1, 77, 128, 129, 256, 261, 512, 513)] == [128, 128, 128, 256, 256, 384, 512,
                                                                                   640]


def test_chunk_buckets_are_powers_of_two():
    assert [chunk_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]


def test_pad_and_cut_round_trip():
    x = torch.arange(6.0).reshape(2, 3)
    padded = pad_dim(x, 5, 1, value=-1)
    assert padded.shape == (2, 5) and (padded[:, 3:] == -1).all()
    assert torch.equal(cut_dim(padded, 3, 1), x) and cut_dim(None, 3, 1) is None
    assert pad_dim(x, 2, 0) is x


def test_plain_ids_only_for_rows_of_ints_of_one_length():
    assert torch.equal(plain_ids([[1, 2], [3, 4]]), torch.tensor([[1, 2], [3, 4]]))
    assert plain_ids([[1, 2], [3]]) is None
    assert plain_ids([[1, torch.zeros(4)]]) is None  # a textual-inversion vector among the ids
    assert plain_ids([]) is None
