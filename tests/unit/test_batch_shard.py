"""``sharded_apply``: the model's rows padded to a multiple of the mesh's data axis, cropped after."""
from __future__ import annotations

import logging

import pytest
import torch

from tpu_runtime.backends import batch_shard
from tpu_runtime.execution.host_values import as_host
from tpu_runtime.state import Notices
from tests.unit.fake_backend import FakeBackend


@pytest.mark.parametrize("rows,ways,expected", [(1, 1, 1), (3, 4, 4), (4, 4, 4), (5, 4, 8), (2, 8, 8)])
def test_padded_rows(rows, ways, expected):
    assert batch_shard.padded_rows(rows, ways) == expected


def test_pad_rows_copies_the_last_row_into_every_matching_tensor():
    x = torch.arange(3.0).reshape(3, 1)
    other = torch.ones(2, 1)   # another batch size: left alone
    scalar = torch.tensor(1.0)
    padded = batch_shard.pad_rows({"x": x, "nested": [x, (other, scalar)], "n": 3}, rows=3, target=4)
    assert padded["x"].flatten().tolist() == [0.0, 1.0, 2.0, 2.0]
    assert padded["nested"][0].shape == (4, 1) and isinstance(padded["nested"][1], tuple)
    assert padded["nested"][1][0] is other and padded["nested"][1][1] is scalar and padded["n"] == 3


def test_sharded_apply_pads_runs_and_crops(caplog):
    backend = FakeBackend(shards=4)
    seen = {}

    def executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        seen.update(x=x, t=t, c_crossattn=c_crossattn, y=kwargs["y"])
        return x * 2

    x = torch.arange(3.0).reshape(3, 1, 1, 1)
    notices = Notices()
    with caplog.at_level(logging.INFO, logger="comfy_tpu"):
        out = batch_shard.sharded_apply(backend, executor, x, torch.ones(3), c_crossattn=torch.zeros(3, 7, 2),
                                        y=torch.zeros(3, 5), notices=notices)
        batch_shard.sharded_apply(backend, executor, x, torch.ones(3), c_crossattn=torch.zeros(3, 7, 2),
                                  y=torch.zeros(3, 5), notices=notices)
    assert seen["x"].shape[0] == seen["t"].shape[0] == seen["c_crossattn"].shape[0] == seen["y"].shape[0] == 4
    assert torch.equal(out, x * 2)
    padding_lines = [r for r in caplog.records if "does not divide" in r.getMessage()]
    assert len(padding_lines) == 1  # once per shape


def test_rows_that_divide_are_not_padded_or_cropped():
    backend = FakeBackend(shards=2)
    x = torch.randn(4, 1)
    result = torch.randn(4, 1)
    out = batch_shard.sharded_apply(backend, lambda *args, **kwargs: result, x, torch.ones(4))
    assert out is result


def test_only_plain_device_tensors_are_marked_sharded(mocker):
    backend = FakeBackend(shards=2)
    spy = mocker.spy(backend, "shard_batch")
    meta = torch.device("meta")
    x = torch.empty(2, 4, device=meta)
    context = torch.empty(2, 7, device=meta)
    host_values = as_host(torch.zeros(2, 3))     # host-side: never sharded
    twin = as_host(torch.zeros(2, 3)).to(meta)   # a device twin of host values: never sharded
    batch_shard.sharded_apply(backend, lambda x, *args, **kwargs: x, x, torch.ones(2), c_crossattn=context,
                              h=host_values, w=twin, cpu=torch.zeros(2, 1))
    assert [call.args[0].shape for call in spy.call_args_list] == [(2, 4), (2, 7)]
