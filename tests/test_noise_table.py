"""The noise table (``tpu_runtime.sampling.noise.NOISE_KINDS``) against what ComfyUI's samplers really do.

Each sampler of ``KSampler.SAMPLERS`` is run on the CPU with a stand-in denoiser while ComfyUI's
``default_noise_sampler`` and ``BrownianTreeNoiseSampler`` are watched: the one it builds when given
no noise sampler must be the table's kind, and given one it must build neither. Only
``comfy.samplers`` is imported (a few seconds), not ComfyUI's nodes or the pack.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from tests.comfy_env import import_comfy_core
from tpu_runtime.comfyui.sampler_probe import _Built, _run
from tpu_runtime.sampling import noise

#: Samplers that take no ``noise_sampler`` yet build ComfyUI's default one themselves (with eta 0,
#: so it never draws): on XLA that default fails (no device generator) and the pack cannot replace it.
BUILDS_DEFAULT_ITSELF = {"sample_euler_cfg_pp", "dpm_fast_function"}


#: ``KSampler.SAMPLERS`` of ComfyUI 0.3.75, spelled out so collecting this file imports no ComfyUI
#: (importing its core configures it for the whole session); a newer ComfyUI's own list is checked by the
#: probe test.
SAMPLERS = ("euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
            "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
            "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
            "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
            "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
            "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
            "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2")
#: Sampler functions of ComfyUI's own custom-sampler nodes (comfy_extras.nodes_advanced_samplers).
EXTRA_FUNCTIONS = ("sample_lcm_upscale", "sample_euler_pp")


def _function(comfy_samplers, name: str):
    """The function ComfyUI runs for a sampler name (or an extra node's function, by its name)."""
    if name in EXTRA_FUNCTIONS:
        import comfy_extras.nodes_advanced_samplers as extras

        return getattr(extras, name)
    return comfy_samplers.sampler_object(name).sampler_function


@pytest.fixture(scope="module")
def comfy_samplers():
    """``comfy.samplers``, from ComfyUI's core only (configured as ``import_comfy`` does)."""
    import_comfy_core()
    import comfy.samplers

    return comfy.samplers


def test_every_sampler_of_the_running_comfyui_is_classified(comfy_samplers):
    """The running ComfyUI's list, whatever it holds (2026 releases add samplers): each one's noise is found
    by the probe the pack runs at start, agreeing with the table where the table knows the function."""
    from tpu_runtime.comfyui.sampler_probe import probe

    unclassified, disagreeing = [], []
    for name in comfy_samplers.KSampler.SAMPLERS:
        function = comfy_samplers.sampler_object(name).sampler_function
        found = probe(function)
        if found.error:
            unclassified.append((name, found.error))
        elif function.__name__ in noise.NOISE_KINDS and function.__name__ not in BUILDS_DEFAULT_ITSELF \
                and found.kind != noise.NOISE_KINDS[function.__name__]:
            disagreeing.append((name, found.kind, noise.NOISE_KINDS[function.__name__]))
    assert not unclassified and not disagreeing, (unclassified, disagreeing)
    assert set(SAMPLERS) - set(comfy_samplers.KSampler.SAMPLERS) == set(), "a checked sampler is gone"


@pytest.fixture
def watched(comfy_samplers, monkeypatch):
    """Make ComfyUI's two noise-sampler constructors raise :class:`_Built` naming their kind."""
    import comfy.k_diffusion.sampling as k

    def built(kind):
        def constructor(*args, **kwargs):
            raise _Built(kind)
        return constructor

    monkeypatch.setattr(k, "default_noise_sampler", built("default"))
    monkeypatch.setattr(k, "BrownianTreeNoiseSampler", built("brownian"))


def _accepts_noise_sampler(function) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == "noise_sampler" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


@pytest.mark.parametrize("name", SAMPLERS + EXTRA_FUNCTIONS)
def test_noise_table_entry_matches_the_sampler(comfy_samplers, watched, name, caplog):
    function = _function(comfy_samplers, name)
    assert function.__name__ in noise.NOISE_KINDS, f"{name} ({function.__name__}) is missing from the table"
    kind = noise.noise_kind(function)
    assert not [r for r in caplog.records if r.name == "comfy_tpu"], "a known sampler is not logged as unknown"

    built_alone = _run(function)
    if kind is None:
        assert not _accepts_noise_sampler(function), f"{name} takes a noise sampler the pack would not give"
        expected = "default" if function.__name__ in BUILDS_DEFAULT_ITSELF else None
        assert built_alone == expected, f"{name} built {built_alone} noise itself"
        return
    assert _accepts_noise_sampler(function)
    assert built_alone == kind, f"{name}: the table says {kind}, ComfyUI builds {built_alone}"

    draws = []

    def given(sigma, sigma_next):
        draws.append((float(sigma), float(sigma_next)))
        return torch.zeros(1, 4, 4, 4)

    assert _run(function, noise_sampler=given) is None, f"{name} ignored the given noise sampler"
    assert draws, f"{name} never drew from the given noise sampler"  # (eta-0 samplers too: noise times 0)


def test_the_table_has_no_stale_entries(comfy_samplers):
    """Every entry is the function of some sampler above: the table holds nothing else."""
    reached = {_function(comfy_samplers, name).__name__ for name in SAMPLERS + EXTRA_FUNCTIONS}
    assert set(noise.NOISE_KINDS) == reached, set(noise.NOISE_KINDS) ^ reached
