"""The torchax backend's new parts on tiny arrays (JAX on the CPU, no ComfyUI): bf16 autocast (``torch.cat``
of a list, ``F.linear``), device-resident program outputs (ops stay on the device, a strength is data), weight splits."""
from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchax") is None, reason="torchax is not installed")


def test_lower_precision_traces_cat_of_a_list_and_computes_products_in_bf16():
    """What torchax 0.0.13's own autocast fails on (cat of a list) or misses (F.linear, conv2d)."""
    import jax
    import torchax

    from tpu_runtime.backends.torchax_autocast import LowerPrecision

    env = torchax.default_env()

    def traced(lower, a, w):
        with torch.inference_mode(False), torch.no_grad(), env, LowerPrecision(lower):
            x, weight = torchax.tensor.Tensor(a, env), torchax.tensor.Tensor(w, env)
            joined = torch.cat([x, x.to(torch.bfloat16)], dim=0)
            linear = torch.nn.functional.linear(x, weight)
            conv = torch.nn.functional.conv2d(x.reshape(1, 2, 2, 2), weight.reshape(3, 4, 1, 1)[:, :2])
            norm = torch.nn.functional.group_norm(x.reshape(1, 2, 2, 2), 2)
            return [t.jax() for t in (joined, linear, conv, norm)]

    a, w = jax.numpy.ones((2, 4)), jax.numpy.ones((3, 4))
    dtypes = [str(t.dtype) for t in jax.jit(lambda a, w: traced(torch.bfloat16, a, w))(a, w)]
    assert dtypes == ["float32", "bfloat16", "bfloat16", "float32"], dtypes  # cat promotes as torch does


def test_resident_tensors_compute_on_the_device_with_a_strength_as_data():
    import jax
    import torchax

    from tpu_runtime.backends.torchax import host_tensor
    from tpu_runtime.backends.torchax_resident import ResidentOps, ResidentTensor

    counts: dict = {}
    ops = ResidentOps(torchax.default_env(), counts, host_tensor)
    x = ops.wrap(jax.numpy.arange(4.0))
    for strength in (0.5, 0.25):
        transfers = counts.get("transfers_to_host", 0)
        y = ops.wrap(x.jax())
        y *= torch.tensor(strength)  # in place, as ControlBase.control_merge writes it
        assert (y + y).to(torch.bfloat16).dtype == torch.bfloat16
        assert isinstance(y, ResidentTensor) and counts.get("transfers_to_host", 0) == transfers
        assert y.cpu().tolist() == [strength * v for v in range(4)]  # a host read: counted
    assert counts["transfers_to_host"] == 2 and counts["device_ops"] >= 6


def test_weight_splits_follow_the_tensor_and_give_a_named_sharding():
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from tpu_runtime.backends.torchax_shard import WeightSplits, bytes_per_device

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    splits = WeightSplits(lambda: mesh)
    weight, other = torch.ones(4, 2), torch.ones(4, 2)
    splits.mark(weight, ("model", None))
    assert splits.describe(weight) == "(model, None)" and splits.describe(other) == ""
    assert splits.sharding(weight).spec == jax.sharding.PartitionSpec("model", None)
    array = jax.device_put(np.ones((4, 2), np.float32), splits.sharding(weight))
    assert bytes_per_device(array, list(mesh.devices.flat)) == [32]
    del weight
    assert len(splits) == 0  # forgotten with its tensor
