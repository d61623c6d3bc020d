"""ControlNets and T2I-Adapters on the device under the torchax backend (issue 31), mirroring
tests/test_control.py: ComfyUI's own nodes apply them and ``nodes.common_ksampler`` samples, in one fresh
process with its own cache dir. A control's model runs as its own JAX program (replayed per call shape),
its outputs stay on the JAX device (``backends.torchax_resident``): ComfyUI's merge (the strength, the
chain) runs there, the strength as data, and the diffusion model's program takes the merged arrays. So a
run makes exactly one device-to-host transfer per model call (the model's output, which torchax's sampler
math on the host needs: the same as without a control), a new strength or range compiles nothing, and the
result matches eager CPU.

Tiny SD1.5-architecture UNet with cldm ControlNets of its shape, a T2I-Adapter, an SDXL-shaped ControlNet
(its label embedding reads ``y``); 64x64, fp32.
"""
from __future__ import annotations

import importlib.util

import pytest

from tests.child import run_child

PARITY = 1e-3

CASES = {
    # 1.0 would be a constant folded into a graph if the strength were a Python value; the first run's range
    # leaves steps without a control (the diffusion model's program without control inputs).
    "one": {"runs": [{"strength": 0.9, "start": 0.25, "end": 0.75}, {"strength": 0.5},
                     {"strength": 1.0, "start": 0.1, "end": 0.6}]},
    "chained": {"chained": 2, "runs": [{"strength": 0.9}, {"strength": 0.5, "start": 0.2, "end": 0.8}]},
}
FAMILIES = {"t2i": [0.9, 0.5], "sdxl": [0.9, 0.5]}


@pytest.fixture(scope="module")
def measured():
    if importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
    return run_child("cases_torchax_control:torchax_controls", cases=CASES, families=FAMILIES,
                     env={"COMFY_TPU_BACKEND": "torchax", "COMFY_TPU_EXECUTION": "replay"})


def _all_runs(measured):
    for case, runs in measured["controls"]["cases"].items():
        for index, run in enumerate(runs):
            yield case, index, run
    for family, family_measured in measured["families"].items():
        for index, run in enumerate(family_measured["runs"]):
            yield family, index, run


def test_runs_on_torchax(measured):
    assert measured["backend"] == "torchax"


def test_parity_with_eager_cpu_and_the_control_changes_the_result(measured):
    for case, index, run in _all_runs(measured):
        assert run["fallbacks"] == {} and run["diff"] <= PARITY, (case, index, run)
    for case, runs in measured["controls"]["cases"].items():
        assert runs[0]["unchanged_by_control"] > 100 * PARITY, (case, runs[0])
    for family, family_measured in measured["families"].items():
        for run in family_measured["runs"]:
            assert run["control_effect"] > 10 * PARITY, (family, run)


def test_one_transfer_to_the_host_per_model_call(measured):
    """The control's outputs never come to the host: a run transfers what a run without a control does."""
    plain = measured["controls"]["plain"]
    assert plain["transfers"] == plain["model_calls"], plain
    for case, index, run in _all_runs(measured):
        assert run["transfers"] == run["model_calls"], (case, index, run)


def test_a_controls_hint_is_uploaded_once_a_run(measured):
    """ComfyUI computes a ControlNet's hint once a run: it goes to the device once a run for each ControlNet,
    not with every control call (a T2I-Adapter's model takes its hint once a run anyway, positionally)."""
    for case, runs in measured["controls"]["cases"].items():
        for index, run in enumerate(runs):
            assert run["control_calls"] > 1 and run["extra"]["held_input_uploads"] == CASES[case].get("chained", 1), \
                (case, index, run)
    for family, family_measured in measured["families"].items():
        for run in family_measured["runs"]:
            assert run["extra"]["held_input_uploads"] == (0 if family == "t2i" else 1), (family, run)


def test_a_new_strength_or_range_compiles_nothing(measured):
    for case, index, run in _all_runs(measured):
        if index:
            assert run["compiles"] == 0, (case, index, run)
            assert run["extra"]["weight_uploads"] == 0, (case, index, run)


def test_the_controls_models_run_as_programs(measured):
    """Each call of a ControlNet in range runs its program; its merge runs on the device (device ops);
    a T2I-Adapter's program runs once a run (ComfyUI computes its features once)."""
    assert measured["controls"]["replay_fallbacks"] == {}
    for case, runs in measured["controls"]["cases"].items():
        chained = CASES[case].get("chained", 1)
        for index, run in enumerate(runs):
            ranged = (run["run"]["start"], run["run"]["end"]) != (0.0, 1.0)
            if ranged:
                assert 0 < run["control_calls"] < chained * run["model_calls"], (case, index, run)
            else:
                assert run["control_calls"] == chained * run["model_calls"], (case, index, run)
            assert run["extra"]["device_ops"] > 0, (case, index, run)
    for family, family_measured in measured["families"].items():
        assert family_measured["replay_fallbacks"] == {}, family
        for run in family_measured["runs"][1:]:
            assert run["control_calls"] == (1 if family == "t2i" else run["model_calls"]), (family, run)
            assert run["executions"] == run["model_calls"] + run["control_calls"], (family, run)
