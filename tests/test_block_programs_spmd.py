"""Repeated blocks compiled once per kind under SPMD (issue 28): a ``data=2,model=2`` mesh on 4 CPU devices
(PJRT CPU devices on torch_xla, JAX host devices on torchax), the batch split over 'data' and the weights
over 'model'.

One fresh child per backend (compile counts): a shallow then a deeper tiny Flux, each sampled twice through
ComfyUI's ``common_ksampler``, then a LoRA on the deep one at three strengths. Block programs run (each
kind one program, run once per block), the split weights are arguments of the block programs with their
'model' shardings, every run matches eager CPU, later runs and the deeper model compile nothing, and a LoRA
strength change compiles nothing; then a ControlNet adding residuals per block (Flux's, at two strengths)
keeps parity through the block programs and its strength change compiles nothing.
"""
from __future__ import annotations

import importlib.util

import pytest

from tests.child import run_child

PARITY = 1e-3  # fp32 (the child runs with autocast off)
STEPS = 2
KINDS = 2  # Flux: double and single blocks
MESH = {"COMFY_TPU_EXECUTION": "replay", "COMFY_TPU_BLOCK_PROGRAMS": "on", "COMFY_TPU_SPMD": "on",
        "COMFY_TPU_MESH": "data=2,model=2"}
BACKENDS = {
    "torch_xla": {**MESH, "CPU_NUM_DEVICES": "4"},
    "torchax": {**MESH, "COMFY_TPU_BACKEND": "torchax", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
}
#: Device-to-host transfers of one run: torch_xla's result only; torchax returns each model call's output.
TRANSFERS = {"torch_xla": 1, "torchax": STEPS}


@pytest.fixture(scope="module", params=list(BACKENDS))
def measured(request):
    if request.param == "torchax" and importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
    return request.param, run_child("cases_blocks:spmd_runs", family="flux", steps=STEPS, env=BACKENDS[request.param])


def _run(result, model, visit):
    return next(r for r in result["runs"] if r["model"] == model and r["visit"] == visit)


def test_block_programs_run_on_the_mesh_with_split_weights(measured):
    backend, result = measured
    assert "split over 'model'" in result["log"] or "weights over 'model'" in result["log"], result["log"][-2000:]
    blocks = result["blocks"]  # the deep model: 4 double and 6 single blocks
    assert blocks["block_kinds"] == KINDS and blocks["block_kinds_off"] == 0, blocks
    assert blocks["block_programs"] == KINDS and blocks["block_traces"] == KINDS, blocks
    assert blocks["block_calls"] >= 10, blocks  # every block ran as its kind's program
    assert blocks["block_weights_split"] > 0, blocks  # weights split over 'model' are the programs' arguments
    assert not result["replay_fallbacks"], result["replay_fallbacks"]


def test_every_run_matches_eager_cpu_and_later_runs_compile_nothing(measured):
    backend, result = measured
    for run in result["runs"]:
        assert run["diff"] <= PARITY, (backend, run)
        assert run["transfers"] == TRANSFERS[backend], (backend, run)
        assert not run["fallbacks"], (backend, run)
    assert _run(result, "shallow", "first")["compiles"] > 0
    assert _run(result, "shallow", "again")["compiles"] == 0, result["runs"]
    assert _run(result, "deep", "again")["compiles"] == 0, result["runs"]


def test_a_lora_strength_change_under_spmd_compiles_nothing(measured):
    backend, result = measured
    lora = result["lora"]
    base, first, half, other = lora["runs"]
    for run in lora["runs"]:
        assert run["diff"] <= PARITY, (backend, run)
    assert lora["blocks"]["block_traces"] == KINDS, lora["blocks"]  # the LoRA's weights: no block traced again
    assert other["compiles"] == 0, lora["runs"]  # 0.5 -> 0.8
    assert max(abs(a - b) for a, b in zip(base["samples"], first["samples"])) > 100 * PARITY  # applied


def test_a_controlnet_adding_residuals_per_block_under_spmd_keeps_parity(measured):
    backend, result = measured
    control = result["control"]
    first, second = control["runs"]
    for run in control["runs"]:
        assert run["diff"] <= PARITY, (backend, run)
        assert run["control_effect"] > 10 * PARITY, (backend, run)  # the control changes the result
        assert not run["fallbacks"], (backend, run)
    assert control["blocks"]["block_calls"] > 0 and control["blocks"]["block_kinds_off"] == 0, control["blocks"]
    assert second["compiles"] == 0, control["runs"]  # 0.9 -> 0.5
    assert not control["replay_fallbacks"], control["replay_fallbacks"]
