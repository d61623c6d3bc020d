"""Repeated blocks compiled once per kind (issue 28; ``tpu_runtime/execution/block_programs.py``).

Each test's body runs in a fresh child process with its own cache dir (compile counts). Flux (double
and single blocks), SD3 (joint blocks) and Wan (blocks) each sample at a shallow and then a deeper depth
of the same width through ComfyUI's ``common_ksampler``, block programs on: every run matches eager
CPU, later runs compile nothing, and the deeper model compiles nothing at all (its block kinds and call
shapes are the shallow one's), where the whole-model program (block programs off) compiles it anew.
A LoRA on some of a kind's blocks (new weight tensors) keeps parity and compiles nothing; a ControlNet
adding residuals per block index keeps parity and compiles nothing after its first run.
"""
from __future__ import annotations

import pytest

from tests.child import run_child

PARITY = 1e-3  # fp32 (the child runs with autocast off)
FAMILIES = ["flux", "sd3", "wan"]
#: Kinds of repeated block each family's models have (Flux: double and single; SD3: joint; Wan: blocks).
KINDS = {"flux": 2, "sd3": 1, "wan": 1}


@pytest.fixture(scope="module", params=FAMILIES)
def measured(request):
    on = run_child("cases_blocks:depth_runs", family=request.param,
                   env={"COMFY_TPU_EXECUTION": "replay", "COMFY_TPU_BLOCK_PROGRAMS": "on"})
    return request.param, on


def _run(result, model, visit):
    return next(r for r in result["runs"] if r["model"] == model and r["visit"] == visit)


def test_every_run_matches_eager_cpu(measured):
    family, result = measured
    for run in result["runs"]:
        assert run["diff"] <= PARITY, (family, run)
        assert run["transfers"] == 1, (family, run)  # the result only
        assert not run["fallbacks"], (family, run)
    assert not result["replay_fallbacks"], result["replay_fallbacks"]


def test_each_kind_is_one_program_shared_by_its_blocks(measured):
    family, result = measured
    blocks = result["blocks"]
    assert blocks["block_kinds_off"] == 0, blocks
    # The deep model (the shallow one is unloaded and collected): one call shape, so one program per kind,
    # each traced once, run once per block per model call.
    assert blocks["block_kinds"] == KINDS[family], blocks
    assert blocks["block_programs"] == KINDS[family], blocks
    assert blocks["block_traces"] == KINDS[family], blocks


def test_later_runs_and_a_deeper_model_compile_nothing(measured):
    family, result = measured
    assert _run(result, "shallow", "first")["compiles"] > 0
    assert _run(result, "shallow", "again")["compiles"] == 0, result["runs"]
    assert _run(result, "deep", "first")["compiles"] == 0, result["runs"]
    assert _run(result, "deep", "again")["compiles"] == 0, result["runs"]


def test_without_block_programs_the_deeper_model_compiles_again():
    off = run_child("cases_blocks:depth_runs", family="flux",
                    env={"COMFY_TPU_EXECUTION": "replay", "COMFY_TPU_BLOCK_PROGRAMS": "off"})
    assert _run(off, "deep", "first")["compiles"] > 0, off["runs"]
    assert off["blocks"].get("block_kinds", 0) == 0, off["blocks"]
    assert all(run["diff"] <= PARITY for run in off["runs"]), off["runs"]


def test_a_lora_on_some_blocks_keeps_parity_and_compiles_nothing():
    result = run_child("cases_blocks:lora_runs", family="flux",
                       env={"COMFY_TPU_EXECUTION": "replay", "COMFY_TPU_BLOCK_PROGRAMS": "on"})
    base, lora, half, other = result["runs"]
    for run in result["runs"]:
        assert run["diff"] <= PARITY, run
    # The model's programs are not traced again for the LoRA (its new weights have the old shapes). ComfyUI's
    # patch graphs compile on the LoRA's first visit, and once more for 1.0 -> 0.5 (torch_xla makes the scalar
    # 1.0 a constant: see test_model_switching); 0.5 -> 0.8 compiles nothing.
    assert result["blocks"]["block_traces"] == KINDS["flux"], result["blocks"]
    assert other["compiles"] == 0, result["runs"]
    # The LoRA changes the result far beyond the parity bound (it is applied, not ignored).
    assert max(abs(a - b) for a, b in zip(base["samples"], lora["samples"])) > 100 * PARITY


def test_a_controlnet_adding_residuals_per_block_keeps_parity():
    result = run_child("cases_control:family_runs", family="flux", strengths=[0.9, 0.5],
                       overrides={"depth": 3, "depth_single_blocks": 4},
                       env={"COMFY_TPU_EXECUTION": "replay", "COMFY_TPU_BLOCK_PROGRAMS": "on"})
    first, second = result["runs"]
    for run in result["runs"]:
        assert run["diff"] <= PARITY, run
        assert run["control_effect"] > 10 * PARITY, run  # the control changes the result
    assert second["compiles"] == 0, result["runs"]
    assert not result["replay_fallbacks"], result["replay_fallbacks"]


def test_a_bf16_run_after_an_fp32_run_traces_its_own_block_programs():
    """A block program keeps the casts it was traced with: with autocast in its key, a bf16 run of the same
    shapes gets programs of its own (one per kind per autocast state) and computes in bf16."""
    result = run_child("cases_blocks:autocast_after_fp32", family="flux",
                       env={"COMFY_TPU_EXECUTION": "replay", "COMFY_TPU_BLOCK_PROGRAMS": "on"})
    assert result["fp32_diff"] <= PARITY, result
    # computed in bf16: within bf16's bound of eager fp32 and further from it than fp32 programs get
    assert 1e-4 * result["scale"] < result["bf16_diff"] <= 3e-2 * result["scale"], result
    assert result["blocks"]["block_programs"] == 2 * KINDS["flux"], result["blocks"]
