"""How an attention call splits over an SPMD mesh (pure logic), and the arguments torch_xla's Pallas flash
kernel gets under SPMD (a TPU-only path: the kernel is mocked, the arguments built here are checked)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tpu_runtime.execution.attention import layout, split, xla_kernels


@pytest.mark.parametrize("axes,batch,heads,expected", [
    ({"data": 2, "model": 2}, 2, 4, ("data", "model", None, None)),
    ({"data": 1, "model": 4}, 2, 4, (None, "model", None, None)),
    ({"data": 4}, 8, 24, ("data", None, None, None)),
    ({"data": 2, "model": 4}, 3, 6, (None, None, None, None)),  # neither divides: whole on every device
    ({}, 2, 4, (None, None, None, None)),
])
def test_rows_split_over_data_and_heads_over_model_where_they_divide(axes, batch, heads, expected):
    assert split.heads_spec(axes, batch, heads) == expected
    assert split.is_split(expected) == any(expected)


def test_a_mask_splits_only_along_the_rows_and_heads_it_has():
    spec = ("data", "model", None, None)
    q_shape = (2, 4, 300, 64)
    assert split.mask_spec(spec, (2, 1, 1, 77), q_shape) == ("data", None, None, None)  # key padding
    assert split.mask_spec(spec, (1, 1, 300, 77), q_shape) == (None, None, None, None)  # one for every row
    assert split.mask_spec(spec, (2, 4, 300, 77), q_shape) == spec


def _mesh(**axes):
    """What the kernels read of torch_xla's ``Mesh``."""
    return SimpleNamespace(axis_names=tuple(axes), mesh_shape=tuple(axes.values()))


def _flash_call(mocker, mesh, heads=4, mask=None):
    kernel = mocker.Mock(side_effect=lambda q, *args, **kwargs: torch.zeros_like(q))
    mocker.patch.object(xla_kernels, "_pallas_flash", return_value=kernel)
    q, k, v = torch.randn(2, 200, heads * 40), torch.randn(2, 77, heads * 40), torch.randn(2, 77, heads * 40)
    out = xla_kernels.flash_attention(layout.to_heads(q, k, v, heads, mask=mask), mesh)
    assert out.shape == (2, heads, 200, 40)
    return kernel.call_args


def test_torch_xla_flash_gets_its_partition_spec_and_mesh_under_spmd(mocker):
    mesh = _mesh(data=2, model=2)
    args, kwargs = _flash_call(mocker, mesh, mask=torch.ones(2, 1, 77, dtype=torch.bool))
    assert kwargs["partition_spec"] == ("data", "model", None, None) and kwargs["mesh"] is mesh
    q, k = args[0], args[1]
    assert q.shape == (2, 4, 256, 128) and k.shape == (2, 4, 128, 128)  # padded to the kernel's tile
    # the bias is whole over rows and heads (the kernel splits it with q); padded keys are out
    assert kwargs["ab"].shape == (2, 4, 256, 128) and kwargs["kv_segment_ids"].shape == (2, 128)
    assert kwargs["kv_segment_ids"][:, 77:].sum() == 0 and kwargs["kv_segment_ids"][:, :77].all()


def test_torch_xla_flash_runs_whole_without_a_mesh_or_a_split(mocker):
    _, kwargs = _flash_call(mocker, None)
    assert "partition_spec" not in kwargs and "mesh" not in kwargs
    _, kwargs = _flash_call(mocker, _mesh(data=1, model=4), heads=3)  # 3 heads over model=4: nothing splits
    assert "partition_spec" not in kwargs
    _, kwargs = _flash_call(mocker, _mesh(data=1, model=4))
    assert kwargs["partition_spec"] == (None, "model", None, None)
