"""Replay execution (issue: the step at device speed): one model graph for every sampler.

In a fresh process, after a warm-up with euler, the first run of each other sampler compiles only
the sampler's own small graphs: at most 10% of the warm-up's compile seconds (XLA's CompileTime).
Each run matches eager CPU, makes one device-to-host transfer and two graph executions a model call
(the sampler's math, then the model's program), and a run at another step count compiles nothing.
"""
from __future__ import annotations

import pytest

from tests.child import run_child
from tests.suite_xla_flags import DEFAULT_OPTIMIZATION

OTHER_SAMPLERS = ["euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "lcm", "ddim",
                  "uni_pc"]
PARITY = 1e-3


@pytest.fixture(scope="module")
def after_euler():
    return run_child("cases_replay:new_samplers", samplers=OTHER_SAMPLERS, env={"COMFY_TPU_EXECUTION": "replay",
                                                                                **DEFAULT_OPTIMIZATION})


@pytest.mark.parametrize("sampler", OTHER_SAMPLERS)
def test_a_new_sampler_runs_right_and_then_compiles_nothing(after_euler, sampler):
    run = after_euler["samplers"][sampler]
    assert run["again_compiles"] == 0, run
    assert run["transfers"] == 1 and not run["fallbacks"], run
    assert run["executions"] <= 2 * run["model_calls"] + 2 + 1, run
    assert run["diff"] <= PARITY, run


def test_the_warm_set_tells_the_model_program_from_the_sampler_graphs(after_euler):
    """The registry records which part of a run's compile was the model's program: the warm-up's is most
    of it, a new sampler's is none (the program is shared), so the estimate for a new sampler is its own."""
    warm = after_euler["warmup"]
    assert 0.5 * warm["compile_s"] < warm["program_s"] <= warm["compile_s"], warm
    others = {sampler: run for sampler, run in after_euler["samplers"].items() if not run["warm_signature"]}
    assert len(others) >= 8  # ddim runs ComfyUI's euler function: the warm-up's own signature
    for sampler, run in others.items():
        assert run["recorded_program_s"] == 0.0, (sampler, run)
        assert run["recorded_s"] == pytest.approx(run["compile_s"], abs=1e-3), (sampler, run)


@pytest.mark.parametrize("sampler", OTHER_SAMPLERS)
def test_a_new_sampler_compiles_only_its_own_small_graphs(after_euler, sampler):
    warm_s = after_euler["warmup"]["compile_s"]
    run = after_euler["samplers"][sampler]
    assert run["compile_s"] <= 0.10 * warm_s, (sampler, run, after_euler["warmup"])


def test_the_model_was_traced_once_and_replayed_for_every_call(after_euler):
    assert after_euler["replay_fallbacks"] == {}
    figures = after_euler["replay"]
    assert figures["programs"] == 1 and figures["traces"] == 1 and figures["replays"] > 50, figures
    assert after_euler["stats_replay"] == {**figures, "lazy_fallbacks": {}}  # what /tpu/stats shows
