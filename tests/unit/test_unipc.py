"""UniPC in its one-graph form (tpu_runtime.sampling.unipc): ComfyUI's order schedule, the same ops between every two
model calls, and exact answers where the ODE's solution is known. Parity with ComfyUI's own UniPC on real
models is checked in fresh processes (tests/test_sampling_path.py, tests/test_replay.py)."""
from __future__ import annotations

import logging
import math
import sys
import types

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tpu_runtime.sampling import unipc, unipc_weights
from tpu_runtime.state import Notices


@pytest.mark.parametrize("steps, orders", [(2, [1, 1]), (3, [1, 2, 1]), (4, [1, 2, 2, 1]),
                                           (6, [1, 2, 3, 3, 2, 1]), (8, [1, 2, 3, 3, 3, 3, 2, 1])])
def test_the_orders_are_comfyuis_ramp_up_and_down(steps, orders):
    assert unipc_weights.step_orders(steps) == orders


def _schedule(steps: int, end: float = 0.0) -> torch.Tensor:
    sigmas = torch.exp(torch.linspace(math.log(14.6), math.log(0.03), steps))
    return torch.cat([sigmas, torch.tensor([end])]) if end == 0.0 else torch.linspace(14.6, end, steps + 1)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", [2, 3, 5, 9])
def test_a_constant_prediction_is_followed_exactly(variant, steps):
    """With the model predicting the same image D at every sigma, the ODE's solution is
    x(sigma) = D + (x0 - D) sigma / sigma0: every order of the method lands on it."""
    generator = torch.Generator().manual_seed(steps)
    x0 = torch.randn(2, 4, 8, 8, generator=generator) * 14.6
    image = torch.randn(2, 4, 8, 8, generator=generator)

    def model(x, sigma, **kwargs):
        return image.clone()

    result = unipc.sample(model, x0.clone(), _schedule(steps, end=0.05), variant=variant)
    expected = image + (x0 - image) * 0.05 / 14.6
    assert torch.allclose(result, expected, atol=2e-5), (result - expected).abs().max()


def test_a_schedule_ending_at_0_ends_at_0_001_as_comfyuis_does():
    """ComfyUI's UniPC ends at sigma 0.001 and changes the schedule in place (its KSAMPLER reads the last
    sigma afterwards); float32's lambda at 0.001 is a few percent off, as in ComfyUI."""
    image, x0 = torch.full((1, 4, 8, 8), 0.3), torch.full((1, 4, 8, 8), 14.6)
    sigmas = _schedule(5)
    result = unipc.sample(lambda x, sigma, **kwargs: image.clone(), x0, sigmas)
    assert sigmas[-1].item() == pytest.approx(unipc_weights.FINAL_SIGMA)
    expected = image + (x0 - image) * unipc_weights.FINAL_SIGMA / 14.6
    assert torch.allclose(result, expected, atol=1e-4), (result - expected).abs().max()


class _OpLog(TorchFunctionMode):
    """The torch functions called, by name, split at each model call."""

    def __init__(self) -> None:
        super().__init__()
        self.segments: list[list[str]] = [[]]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.segments[-1].append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("steps", [2, 3, 4, 6, 11])
def test_every_step_runs_the_same_ops(steps):
    """Between two model calls the device work is the same whatever the order or the step: one graph."""
    log = _OpLog()

    def model(x, sigma, **kwargs):
        log.segments.append([])
        return torch.tanh(x * 0.1) + sigma.view(-1, 1, 1, 1) * 0.01

    x0 = torch.randn(1, 4, 8, 8) * 14.6
    sigmas = _schedule(steps)
    weights = unipc_weights.step_weights(sigmas.clone())
    with log:
        unipc.sample(model, x0, sigmas)
    between = log.segments[1:-1]  # after each model call but the last, up to the next call
    assert len(between) == steps - 1
    assert all(segment == between[0] for segment in between), between
    assert len(weights) == steps and weights[0].correction == (0.0, 0.0, 0.0, 0.0)
    assert all(len(step.row()) == 8 for step in weights)


def test_an_unknown_variant_is_named():
    with pytest.raises(ValueError, match="'vary_coeff'"):
        unipc_weights.step_weights(_schedule(4), "vary_coeff")


def _comfy_function(name: str):
    def function(*args, **kwargs):
        return ("comfy", name, kwargs)

    function.__name__, function.__module__ = name, "comfy.extra_samplers.uni_pc"
    return function


@pytest.fixture
def checked_unipc(monkeypatch):
    """A stand-in ``comfy.extra_samplers.uni_pc`` whose source is the one the one-graph form was checked against."""
    module = types.ModuleType("comfy.extra_samplers.uni_pc")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(unipc, "source_fingerprint", lambda found: unipc.CHECKED_SOURCE if found is module else "other")
    return module


def test_only_comfyuis_unipc_functions_are_replaced(checked_unipc):
    assert unipc.replacement_for(_comfy_function("sample_euler")) is None
    elsewhere = _comfy_function("sample_unipc")
    elsewhere.__module__ = "my_nodes.samplers"
    assert unipc.replacement_for(elsewhere) is None
    replacement = unipc.replacement_for(_comfy_function("sample_unipc"))
    assert replacement is not None
    sigmas = torch.tensor([1.0, 0.0])  # one step has no update: ComfyUI's own runs it
    assert replacement(None, torch.zeros(1), sigmas) == ("comfy", "sample_unipc", {})
    # options it does not reproduce go to ComfyUI's own, with the options
    three_steps = _schedule(3)
    assert replacement(None, torch.zeros(1), three_steps, variant="vary_coeff")[2] == {"variant": "vary_coeff"}
    assert replacement(None, torch.zeros(1), three_steps, noise_mask=1)[2] == {"noise_mask": 1}


def test_another_comfyui_unipc_source_runs_comfyuis_own_and_says_so(checked_unipc, monkeypatch, caplog):
    monkeypatch.setattr(unipc, "source_fingerprint", lambda found: "0123456789abcdef")
    notices = Notices()
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        assert unipc.replacement_for(_comfy_function("sample_unipc"), notices=notices) is None
        assert unipc.replacement_for(_comfy_function("sample_unipc_bh2"), notices=notices) is None
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and "0123456789abcdef" in said[0] and "ComfyUI's own runs" in said[0], said


def test_the_fingerprint_reads_the_reproduced_source():
    module = types.ModuleType("stand_in")
    assert unipc.source_fingerprint(module) == "unreadable"  # none of the reproduced functions
