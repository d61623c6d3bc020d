"""``host_values`` without XLA: the "device" is PyTorch's ``meta`` device (shapes, no data), so any
value read back must come from the host copy; in-place detection on real torch ops."""
from __future__ import annotations

import pytest
import torch

from tpu_runtime.execution.host_values import DeviceTwin, HostTensor, as_host, host_copy, plain, upload, written_tensors

META = torch.device("meta")


def twin(values) -> DeviceTwin:
    """A device tensor (meta) that knows its host values, as ``HostTensor.to(device)`` makes one."""
    return as_host(torch.tensor(values, dtype=torch.float32)).to(META)


# -- in-place detection, from ATen's schemas ------------------------------------------------------
def _ops():
    a, b = torch.ones(3), torch.ones(3)
    out = torch.empty(3)
    return [
        ("add_", torch.Tensor.add_, (a, b), {}, [a]),
        ("copy_", torch.Tensor.copy_, (a, b), {}, [a]),
        ("index_put_", torch.Tensor.index_put_, (a, (torch.tensor([0]),), torch.tensor([2.0])), {}, [a]),
        ("transpose_ (an in-place view op)", torch.Tensor.transpose_, (torch.ones(2, 3), 0, 1), {}, 0),
        ("add out=", torch.add, (a, b), {"out": out}, [out]),
        ("max out=(values, indices)", torch.max, (a, 0), {"out": (out, torch.empty(0, dtype=torch.long))}, "out"),
        ("setitem", torch.Tensor.__setitem__, (a, 0, 1.0), {}, [a]),
        ("iadd", torch.Tensor.__iadd__, (a, b), {}, [a]),
        ("add (not in place)", torch.add, (a, b), {}, []),
        ("view (a view, not a write)", torch.Tensor.view, (a, 3), {}, []),
        ("transpose (a view, not a write)", torch.Tensor.transpose, (torch.ones(2, 3), 0, 1), {}, []),
        ("getitem", torch.Tensor.__getitem__, (a, 0), {}, []),
        ("to", torch.Tensor.to, (a, "cpu"), {}, []),
        ("python-level in-place function", torch.nn.init.trunc_normal_, (a,), {}, [a]),
    ]


@pytest.mark.parametrize("label,func,args,kwargs,expected", _ops(), ids=[op[0] for op in _ops()])
def test_written_tensors_follow_the_op_schema(label, func, args, kwargs, expected):
    if expected == 0:
        expected = [args[0]]
    elif expected == "out":
        expected = list(kwargs["out"])
    written = written_tensors(func, args, kwargs)
    assert len(written) == len(expected) and all(w is e for w, e in zip(written, expected)), label


# -- HostTensor ----------------------------------------------------------------------------------
def test_host_math_stays_on_the_host_and_tagged():
    sigmas = as_host(torch.tensor([3.0, 1.0, 0.0]))
    step = sigmas[1] * 2 - sigmas[0]
    assert isinstance(step, HostTensor) and step.device.type == "cpu"
    assert bool(sigmas[2] == 0)  # a branch on a host value: no device involved


def test_a_host_value_meeting_a_device_tensor_is_uploaded_as_data():
    result = as_host(torch.tensor(2.0)) * torch.ones(3, device=META)
    assert type(result) is torch.Tensor and result.device == META


def test_moving_host_values_to_the_device_makes_a_twin():
    moved = twin([3.0, 1.0])
    assert isinstance(moved, DeviceTwin) and moved.device == META
    assert torch.equal(host_copy(moved), torch.tensor([3.0, 1.0]))


def test_upload_of_a_0d_value_is_a_1_element_buffer_viewed_as_0d():
    uploaded = upload(as_host(torch.tensor(1.5)), META)
    assert uploaded.dim() == 0 and uploaded.device == META and type(uploaded) is torch.Tensor
    assert uploaded._base is not None and uploaded._base.shape == (1,)


def test_plain_drops_the_tag_and_as_host_is_free_for_host_values():
    host = as_host(torch.tensor([1.0]))
    assert as_host(host) is host
    assert type(plain(host)) is torch.Tensor
    assert host_copy(torch.ones(2, device=META)) is None


# -- DeviceTwin ------------------------------------------------------------------------------------
def test_reads_are_answered_from_the_host_copy():
    sigmas = twin([3.0, 1.0, 0.0])
    assert float(sigmas[0]) == 3.0 and sigmas[1].item() == 1.0 and sigmas.tolist() == [3.0, 1.0, 0.0]
    back = sigmas.cpu()
    assert back.device.type == "cpu" and torch.equal(back, torch.tensor([3.0, 1.0, 0.0]))
    assert bool((sigmas > 0).any())


def test_twin_only_math_is_mirrored_and_uploaded_fresh():
    doubled = twin([1.0, 2.0]) * 2
    assert isinstance(doubled, DeviceTwin) and doubled.device == META
    assert doubled.tolist() == [2.0, 4.0]
    assert doubled.shape == (2,)  # metadata: the device tensor's own answer


def test_in_place_ops_on_twins_are_mirrored_on_the_host():
    values = twin([1.0, 2.0])
    assert values.add_(1) is values
    values[0] = 9.0
    values += 1
    assert isinstance(values, DeviceTwin) and values.tolist() == [10.0, 4.0]


def test_out_variant_writes_the_out_twins_host_copy():
    out = twin([0.0, 0.0])
    assert torch.add(twin([1.0, 2.0]), twin([3.0, 4.0]), out=out) is out
    assert out.tolist() == [4.0, 6.0]


def test_an_in_place_write_from_a_device_tensor_forgets_the_host_copy():
    values = twin([1.0, 2.0])
    values.add_(torch.ones(2, device=META))  # values we cannot know on the host
    assert host_copy(values) is None


def test_an_out_write_from_a_device_tensor_forgets_the_out_host_copy():
    out = twin([0.0, 0.0])
    torch.add(twin([1.0, 2.0]), torch.ones(2, device=META), out=out)
    assert host_copy(out) is None


def test_math_with_a_plain_device_tensor_gives_a_plain_tensor():
    mixed = twin([1.0, 2.0]) + torch.ones(2, device=META)
    assert type(mixed) is torch.Tensor and mixed.device == META


def test_random_ops_are_never_mirrored():
    values = twin([1.0, 2.0])
    noisy = torch.randn_like(values)
    assert not isinstance(noisy, DeviceTwin) or host_copy(noisy) is None


def test_in_place_ops_work_on_inference_tensors():
    """ComfyUI samples under inference mode, where tensors keep no version counter."""
    with torch.inference_mode():
        values = twin([1.0, 2.0])
        values.mul_(3)
    assert values.tolist() == [3.0, 6.0]
