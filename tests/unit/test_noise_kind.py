"""``noise.noise_kind``: the table lookup, and what an unknown (another pack's) sampler gets."""
from __future__ import annotations

import logging

import pytest

from tpu_runtime.sampling import noise


def _function(name: str, module: str, takes_noise_sampler: bool):
    """A stand-in sampler function with ComfyUI's calling convention, named and placed as asked."""
    if takes_noise_sampler:
        def function(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
            return x
    else:
        def function(model, x, sigmas, extra_args=None, callback=None, disable=None):
            return x
    function.__name__ = function.__qualname__ = name
    function.__module__ = module
    return function


@pytest.fixture(autouse=True)
def fresh_log_memory(monkeypatch):
    monkeypatch.setattr(noise, "_UNKNOWN_LOGGED", set())


@pytest.mark.parametrize("name,kind", [("sample_euler_ancestral", "default"), ("sample_dpmpp_2m_sde", "brownian"),
                                       ("sample_dpmpp_2m_sde_heun", "brownian"), ("sample_euler", None),
                                       ("dpm_adaptive_function", "default"), ("dpm_fast_function", None)])
def test_comfyui_samplers_are_looked_up_in_the_table(name, kind, caplog):
    # The table decides, not the signature: dpm_adaptive's wrapper declares no noise_sampler.
    function = _function(name, "comfy.k_diffusion.sampling", takes_noise_sampler=False)
    assert noise.noise_kind(function) == kind
    assert not caplog.records


def test_an_unknown_sampler_with_a_noise_sampler_gets_host_default_noise_said_once(caplog):
    function = _function("sample_my_sde", "custom_nodes.other_pack.sampling", takes_noise_sampler=True)
    with caplog.at_level(logging.INFO, logger="comfy_tpu"):
        assert noise.noise_kind(function) == "default"
        assert noise.noise_kind(function) == "default"
    lines = [r.getMessage() for r in caplog.records if r.name == "comfy_tpu"]
    assert len(lines) == 1 and "custom_nodes.other_pack.sampling.sample_my_sde" in lines[0], lines
    assert caplog.records[0].levelno == logging.WARNING


def test_an_unknown_sampler_without_a_noise_sampler_gets_none_said_once(caplog):
    function = _function("sample_my_ode", "custom_nodes.other_pack.sampling", takes_noise_sampler=False)
    with caplog.at_level(logging.INFO, logger="comfy_tpu"):
        assert noise.noise_kind(function) is None
        assert noise.noise_kind(function) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "comfy_tpu"]
    assert len(lines) == 1 and "sample_my_ode" in lines[0] and "takes no noise_sampler" in lines[0], lines


def test_a_table_name_outside_comfyui_is_unknown(caplog):
    """Another pack's own ``sample_euler`` is not ComfyUI's: its signature decides, and it is logged."""
    function = _function("sample_euler", "custom_nodes.other_pack.sampling", takes_noise_sampler=True)
    with caplog.at_level(logging.INFO, logger="comfy_tpu"):
        assert noise.noise_kind(function) == "default"
    assert any("not in the pack's noise table" in r.getMessage() for r in caplog.records)


def test_a_callable_without_a_signature_gets_none():
    assert noise.noise_kind(print) is None
