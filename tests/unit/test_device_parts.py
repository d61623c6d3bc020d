"""Where the VAE and text encoders run, and their programs' keys (pure logic: a fake backend)."""
from __future__ import annotations

import pytest
import torch

from tests.unit.fake_backend import FakeBackend
from tpu_runtime.execution.call_keys import NotReplayable
from tpu_runtime.execution.device_parts import DeviceParts, placement
from tpu_runtime.execution.module_programs import CallPrograms


@pytest.mark.parametrize("setting,backend,device_type,where", [
    ("device", "torch_xla", "CPU", "device"), ("host", "torch_xla", "TPU", "host"),
    ("auto", "torch_xla", "TPU", "device"), ("auto", "torch_xla", "CPU", "host"),
    ("device", "torchax", "CPU", "device"), ("auto", "torchax", "TPU", "device"), ("auto", "torchax", "CPU", "host"),
    ("device", "other", "TPU", "host")])
def test_a_part_goes_to_the_device_only_when_asked_and_the_backend_runs_it(setting, backend, device_type, where):
    assert placement(setting, backend, device_type) == where


class ProgramBackend(FakeBackend):
    """Every tensor is device data; a program returns what its trace computed (enough to count keys)."""

    name = "torch_xla"

    def device_type(self) -> str:
        return "TPU"

    def data_tensor(self, tensor: torch.Tensor) -> bool:
        return True

    def capture_program(self, outputs, inputs):
        self._counters["compiles"] += 1
        return [o.clone() for o in outputs]

    def run_program(self, program, inputs):
        self._counters["executions"] += 1
        return program

    def all_to_host(self, tensors):
        self._counters["transfers_to_host"] += 1
        return list(tensors)


def _programs(backend):
    return CallPrograms(backend, torch.nn.Linear(4, 4), "test module")


def test_a_program_per_call_shape_and_form_then_replays():
    backend = ProgramBackend()
    programs = _programs(backend)
    for shape in [(1, 4), (1, 4), (2, 4), (1, 4)]:
        x = torch.ones(shape)
        out = programs.run(("decode", "{}"), lambda views: programs._module(views[0]), [x])
        assert out.shape == (shape[0], 4)
    programs.run(("encode", "{}"), lambda views: programs._module(views[0]), [torch.ones(1, 4)])
    assert programs.figures() == {"programs": 3, "traces": 3, "replays": 5}
    assert backend.counters()["compiles"] == 3 and backend.counters()["transfers_to_host"] == 5


def test_outputs_keep_their_structure_with_none_and_repeats():
    backend = ProgramBackend()
    programs = _programs(backend)
    x = torch.ones(1, 4)

    def function(views):
        y = views[0] * 2
        return y, None, (y, views[0] + 1)

    for _ in range(2):
        y, none, (again, other) = programs.run("k", function, [x])
        assert none is None and torch.equal(y, again) and torch.equal(other, x + 1)
    assert backend.counters()["transfers_to_host"] == 2  # all outputs in one transfer, each call


def test_a_host_read_while_tracing_makes_the_module_lazy():
    backend = ProgramBackend()
    programs = _programs(backend)
    x = torch.ones(1, 4)

    def reads_a_value(views):
        backend._counters["transfers_to_host"] += 1  # what .item() on a device tensor does
        return views[0] * 3

    assert torch.equal(programs.run("k", reads_a_value, [x]), x * 3)
    assert programs.lazy_reason and "host" in programs.lazy_reason and programs.figures()["programs"] == 0


def test_non_tensor_outputs_make_the_module_lazy():
    programs = _programs(ProgramBackend())
    assert programs.run("k", lambda views: {"a": 1}, [torch.ones(1)]) == {"a": 1}
    assert "not tensors" in programs.lazy_reason


def test_an_input_off_the_device_is_refused_before_anything_runs():
    backend = FakeBackend()  # host tensors are not device data there
    with pytest.raises(NotReplayable):
        _programs(backend).run("k", lambda views: pytest.fail("must not run"), [torch.ones(1)])


def test_figures_say_where_each_part_ran_with_its_compiles_and_transfers():
    backend = ProgramBackend()
    parts = DeviceParts(backend, "auto", "host")
    assert parts.on_device("vae") and not parts.on_device("text_encoders")
    with parts.timed("vae", "device"):
        backend._counters["compiles"] += 2
        backend._counters["transfers_to_host"] += 1
    stats = parts.stats()
    assert stats["vae"]["where"] == "device" and stats["vae"]["calls"] == 1
    assert (stats["vae"]["compiles"], stats["vae"]["transfers_to_host"]) == (2, 1)
    assert stats["text_encoders"]["where"] == "not run yet"


def test_a_backend_without_part_programs_keeps_both_parts_on_the_host_and_says_so(caplog):
    backend = FakeBackend()
    backend.name = "other"
    with caplog.at_level("INFO", logger="comfy_tpu"):
        parts = DeviceParts(backend, "device", "device")
    assert not parts.on_device("vae") and not parts.on_device("text_encoders")
    assert "stay on the host with the other backend" in caplog.text


@pytest.mark.parametrize("shape,index,expected", [
    ((1, 2, 1, 4), (slice(None), slice(None), slice(-2, None)), (slice(None), slice(None), slice(None, None))),
    ((1, 2, 3, 4), (slice(None), slice(None), slice(-2, None)), (slice(None), slice(None), slice(-2, None))),
    ((1,), slice(-5, None), slice(None, None)),
    ((1, 2), (Ellipsis, slice(-5, None)), (Ellipsis, slice(-5, None))),  # not a simple index: as given
    ((3,), 0, 0)])
def test_negative_slice_starts_are_clamped_as_eager_pytorch_does(shape, index, expected):
    from tpu_runtime.execution.trace_fixes import EagerSemantics, clamp_index

    assert clamp_index(torch.Size(shape), index) == expected
    x = torch.arange(torch.Size(shape).numel()).reshape(shape)
    with EagerSemantics():
        assert torch.equal(x[index], x[expected])


@pytest.mark.parametrize("scale", [2, 2.0, (2.0, 2.0), (1, 3)])
def test_nearest_exact_integer_upscales_are_nearest_and_the_same_pixels(scale):
    from tpu_runtime.execution.trace_fixes import EagerSemantics

    x = torch.randn(1, 2, 3, 5)
    upsample = torch.nn.Upsample(scale_factor=scale, mode="nearest-exact")
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.interpolate:
                seen.append(args[3] if len(args) > 3 else (kwargs or {}).get("mode"))
            return func(*args, **(kwargs or {}))

    with Spy(), EagerSemantics():  # the inner mode sees the call first and rewrites it
        rewritten = upsample(x)
    assert torch.equal(rewritten, upsample(x)) and seen == ["nearest"]


def test_fractional_and_downscaling_nearest_exact_is_left_alone():
    from tpu_runtime.execution.trace_fixes import integer_upscale

    assert not integer_upscale(1.5) and not integer_upscale((2.0, 0.5)) and not integer_upscale(None)
