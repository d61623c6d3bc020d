"""Repeated blocks traced and compiled once per kind on the torchax backend (issue 28;
``tpu_runtime/execution/block_functions.py``,
``tpu_runtime/backends/torchax_blocks.py``).

Each child is a fresh process with its own cache dir (compile counts come from JAX's compile events).
Flux, SD3 and Wan each sample at a shallow and then a deeper depth of the same width through ComfyUI's
``common_ksampler``, block programs on: every run matches eager CPU, later runs compile nothing, each
kind is one block function traced once, and the deeper model compiles nothing (its programs are the
shallow one's, from JAX's persistent cache). Flux's child also runs a LoRA at three strengths and a
ControlNet (run on the host under torchax: its residuals are the model call's inputs). Tiny Flux at
19 + 38 blocks compiles at most 1.5x the compile seconds of 1 + 2 blocks, and a restart on its cache
dir (its re-warm included) compiles nothing; the warm-up node compiles what the next prompts run.
"""
from __future__ import annotations

import pytest

from tests.child import run_child
from tests.suite_xla_flags import DEFAULT_OPTIMIZATION

PARITY = 1e-3  # fp32 (the child runs with autocast off)
FAMILIES = ["flux", "sd3", "wan"]
KINDS = {"flux": 2, "sd3": 1, "wan": 1}
TORCHAX = {"COMFY_TPU_BACKEND": "torchax", "COMFY_TPU_EXECUTION": "replay", "COMFY_TPU_BLOCK_PROGRAMS": "on"}
#: Steps of ``cases_blocks.depth_runs``: on torchax each model call returns its output to the host (by design).
STEPS = 3


_CHILDREN: dict = {}


def _family(family: str) -> dict:
    """One fresh child per family for the module (its tests share it)."""
    if family not in _CHILDREN:
        _CHILDREN[family] = run_child("cases_blocks:torchax_runs", family=family, env=TORCHAX)
    return _CHILDREN[family]


@pytest.fixture(scope="module", params=FAMILIES)
def measured(request):
    return request.param, _family(request.param)


def _run(result, model, visit):
    return next(r for r in result["runs"] if r["model"] == model and r["visit"] == visit)


def test_every_run_matches_eager_cpu(measured):
    family, result = measured
    for run in result["runs"]:
        assert run["diff"] <= PARITY, (family, run)
        assert run["transfers"] == STEPS, (family, run)  # one output per model call (cond and uncond batched)
        assert not run["fallbacks"], (family, run)
    assert not result["replay_fallbacks"], result["replay_fallbacks"]


def test_each_kind_is_one_block_function_traced_once(measured):
    family, result = measured
    blocks = result["blocks"]
    assert blocks["block_kinds_off"] == 0, blocks
    assert blocks["block_kinds"] == KINDS[family], blocks
    assert blocks["block_programs"] == KINDS[family], blocks
    assert blocks["block_traces"] == KINDS[family], blocks
    assert blocks["block_chains"] == 1 and blocks["block_chains_whole"] == 0, blocks


def test_later_runs_and_a_deeper_model_compile_nothing(measured):
    family, result = measured
    assert _run(result, "shallow", "first")["compiles"] > 0
    assert _run(result, "shallow", "again")["compiles"] == 0, result["runs"]
    assert _run(result, "deep", "first")["compiles"] == 0, result["runs"]
    assert _run(result, "deep", "again")["compiles"] == 0, result["runs"]


def test_a_lora_strength_change_compiles_nothing():
    result = _family("flux")
    runs = result["lora"]["runs"]
    base, lora, half, other = runs
    for run in runs:
        assert run["diff"] <= PARITY, run
    assert result["lora"]["blocks"]["block_traces"] == KINDS["flux"], result["lora"]["blocks"]
    assert lora["compiles"] == 0 and half["compiles"] == 0 and other["compiles"] == 0, runs
    assert max(abs(a - b) for a, b in zip(base["samples"], lora["samples"])) > 100 * PARITY


def test_a_controlnet_adding_residuals_per_block_keeps_parity():
    result = _family("flux")
    first, second = result["control"]["runs"]
    for run in (first, second):
        assert run["diff"] <= PARITY, run
        assert run["control_effect"] > 10 * PARITY, run
    assert second["compiles"] == 0, result["control"]["runs"]
    assert not result["control"]["replay_fallbacks"], result["control"]["replay_fallbacks"]


def test_deep_flux_compiles_about_what_shallow_flux_compiles_and_a_restart_nothing():
    """Fresh processes, empty cache dirs: Flux 1 + 2 and 19 + 38 blocks (hidden 64). Then a restart on the
    deep one's cache dir loads every program from JAX's persistent cache."""
    env = {**TORCHAX, **DEFAULT_OPTIMIZATION}  # compile seconds as a user's XLA spends them
    shallow = run_child("cases_blocks:first_run", family="flux", depth=1, env=env)
    deep = run_child("cases_blocks:first_run", family="flux", depth=19, env=env)
    for result in (shallow, deep):
        assert result["diff"] <= PARITY, result
        assert result["again_compiles"] == 0, result
        assert not result["replay_fallbacks"], result["replay_fallbacks"]
    assert deep["blocks"]["block_calls"] == 19 + 38, deep["blocks"]
    # 1 + 2 blocks: the single blocks are a kind (the one double block runs in the glue); 19 + 38: both kinds.
    assert deep["compiles"] <= shallow["compiles"] + 2, (shallow, deep)
    assert deep["compile_s"] <= 1.5 * shallow["compile_s"], (shallow["compile_s"], deep["compile_s"])
    # The restart re-warms the recorded signature (a model call: the chain's programs) before its first prompt.
    restart = run_child("cases_blocks:first_run", family="flux", depth=19, env=env, cache_dir=deep["cache_dir"])
    assert restart["log"].count("comfy-tpu: re-warming ") == 1, restart["log"][-3000:]
    assert restart["compiles"] == 0 and restart["again_compiles"] == 0, restart
    assert restart["cache_hits"] >= deep["compiles"], (restart, deep)
    assert restart["blocks"]["block_chains"] == 1 and restart["blocks"]["block_traces"] == KINDS["flux"], restart
    assert restart["diff"] <= PARITY, restart


def test_the_warmup_node_compiles_the_block_programs_the_next_prompts_run():
    result = run_child("cases_blocks:warmup_node_runs", family="flux", depth=4, env=TORCHAX)
    assert result["status"].startswith("warmed") and result["warmup_compiles"] > 0, result
    assert result["blocks"]["block_chains"] >= 1 and result["blocks"]["block_kinds_off"] == 0, result["blocks"]
    for run in result["runs"]:
        assert run["compiles"] == 0 and run["max_diff"] <= PARITY, result["runs"]
    assert not result["replay_fallbacks"], result["replay_fallbacks"]


def test_a_bf16_run_after_an_fp32_run_traces_its_own_block_functions():
    """A block function keeps the casts it was traced with (torchax's autocast acts while JAX traces): with
    autocast in its key, a bf16 run of the same shapes gets functions of its own and computes in bf16."""
    result = run_child("cases_blocks:autocast_after_fp32", family="flux", env=TORCHAX)
    assert result["fp32_diff"] <= PARITY, result
    assert 1e-4 * result["scale"] < result["bf16_diff"] <= 3e-2 * result["scale"], result
    assert result["blocks"]["block_programs"] == 2 * KINDS["flux"], result["blocks"]
