"""The one-graph UniPC (tpu_runtime.sampling.unipc) against ComfyUI's own ``uni_pc``/``uni_pc_bh2`` on the CPU.

Both run with the same stand-in denoiser (a smooth function of the latent and sigma) and the same schedules,
2 to 20 steps, ending at 0 (ComfyUI ends those at 0.001, in place) or not. Only ComfyUI's core is imported;
no device, no compile. On XLA, parity with eager CPU on real models is checked in fresh processes
(tests/test_sampling_path.py, tests/test_replay.py).
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.comfy_env import import_comfy_core
from tpu_runtime.sampling import unipc

#: Measured at most 9.9e-5 on these latents (|x| up to ~1): float32 rounding of two orderings of one sum.
BOUND = 2e-4


@pytest.fixture(scope="module")
def comfy_unipc():
    import_comfy_core()
    import comfy.extra_samplers.uni_pc

    return comfy.extra_samplers.uni_pc


def test_comfyuis_unipc_is_the_source_this_was_checked_against(comfy_unipc):
    assert unipc.source_fingerprint(comfy_unipc) == unipc.CHECKED_SOURCE
    assert unipc.replacement_for(comfy_unipc.sample_unipc) is not None
    assert unipc.replacement_for(comfy_unipc.sample_unipc_bh2) is not None


def _denoiser(seed: int):
    mix = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed)) * 0.3

    def model(x, sigma, **kwargs):
        s = sigma.view(-1, 1, 1, 1)
        return torch.tanh(torch.einsum("ij,bjhw->bihw", mix, x) / (1 + s) + 0.1 * s)

    return model


def _schedule(steps: int, to_zero: bool) -> torch.Tensor:
    if to_zero:
        return torch.cat([torch.exp(torch.linspace(math.log(14.6), math.log(0.03), steps)), torch.zeros(1)])
    return torch.linspace(14.6, 0.05, steps + 1)


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
@pytest.mark.parametrize("steps", [2, 3, 4, 5, 6, 10, 20])
@pytest.mark.parametrize("to_zero", [True, False])
def test_the_same_results_as_comfyuis_own(comfy_unipc, name, steps, to_zero):
    function = comfy_unipc.sample_unipc if name == "uni_pc" else comfy_unipc.sample_unipc_bh2
    model = _denoiser(steps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(100 + steps)) * 14.6
    theirs_sigmas, ours_sigmas = _schedule(steps, to_zero), _schedule(steps, to_zero)
    theirs_steps, ours_steps = [], []
    theirs = function(model, x.clone(), theirs_sigmas, {}, lambda info: theirs_steps.append(info["i"]), True)
    ours = unipc.replacement_for(function)(model, x.clone(), ours_sigmas, {}, lambda info: ours_steps.append(info["i"]),
                                           True)
    assert (ours - theirs).abs().max().item() <= BOUND
    assert torch.equal(ours_sigmas, theirs_sigmas)  # the schedule left as ComfyUI's leaves it
    assert ours_steps == theirs_steps == list(range(steps))  # one callback a step, for the progress bar


def test_a_unipc_of_another_source_is_probed_against_comfyuis_own(comfy_unipc, monkeypatch):
    """A ComfyUI whose UniPC source is not the checked one (ComfyUI master computes its ``b`` in float64)
    keeps the one-graph form where it gives that UniPC's own results on the CPU probe."""
    monkeypatch.setattr(unipc, "CHECKED_SOURCE", "another-release")
    unipc._formula_matching.cache_clear()
    precision, why = unipc.formula_for(comfy_unipc)
    assert precision in ("float32", "float64") and "probe" in why
    replacement = unipc.replacement_for(comfy_unipc.sample_unipc)
    model, sigmas = _denoiser(5), _schedule(6, True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 14.6
    theirs = comfy_unipc.sample_unipc(model, x.clone(), sigmas.clone(), {}, None, True)
    assert (replacement(model, x.clone(), sigmas.clone(), {}, None, True) - theirs).abs().max().item() <= BOUND
    unipc._formula_matching.cache_clear()


def test_a_unipc_that_computes_something_else_runs_as_comfyuis_own(comfy_unipc, caplog):
    """The probe catches a UniPC that is not the reproduced formula: ComfyUI's own runs, said once."""
    import types

    changed = types.ModuleType("comfy.extra_samplers.uni_pc")
    changed.sample_unipc = lambda *a, **k: comfy_unipc.sample_unipc(*a, **k) + 0.01
    changed.sample_unipc_bh2 = lambda *a, **k: comfy_unipc.sample_unipc_bh2(*a, **k) + 0.01
    precision, why = unipc.formula_for(changed)
    assert precision is None and "differ" in why
