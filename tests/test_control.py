"""ControlNets on the step path (issue #17): with ControlNets in the conditioning, applied by
ComfyUI's own nodes and sampled through ComfyUI's own ``nodes.common_ksampler``, a run makes one
device-to-host transfer (the result), runs no op on the CPU, and matches eager CPU; after a case's first
run, a new strength, start/end percent, step count, cfg, scheduler or seed compiles nothing. In replay
execution each ControlNet's model is replayed as its own program: a run executes the graphs of a run
without a control plus two for each call of a control (its program, and the small graph of its outputs
and the diffusion model's input).

Tiny SD1.5-architecture UNet, cldm ControlNets of its shape (random weights), 128x128, PJRT CPU, fp32,
replay execution (the default), each module's cases in one fresh process.
"""
from __future__ import annotations

import pytest

from tests.child import run_child

PARITY = 1e-3
#: Graph executions per model call in replay execution: the sampler's math, then the diffusion model's program.
EXECUTIONS_PER_CALL = 2
#: And per call of a ControlNet (replayed): its program, then the small graph of its outputs and the model's input.
EXECUTIONS_PER_CONTROL_CALL = 2
#: Executions a run makes beyond its model calls' (the last step's math; the result's copy).
EXECUTIONS_PER_RUN = 2

CASES = {
    "one": {"runs": [{"strength": 0.9}, {"strength": 0.5}, {"strength": 0.7}, {"strength": 1.0},
                     {"steps": 10}, {"cfg": 5.0}, {"scheduler": "karras"}, {"seed": 7},
                     ]},
    "range": {"runs": [{"start": 0.25, "end": 0.75}, {"start": 0.1, "end": 0.6, "strength": 0.6},
                       {"start": 0.5, "end": 1.0, "steps": 10}]},
    "apply_to_uncond": {"apply": "apply_to_uncond", "runs": [{"strength": 0.9}, {"strength": 0.5}]},
    "chained": {"chained": 2, "runs": [{"strength": 0.9}, {"strength": 0.5, "start": 0.2, "end": 0.8}]},
    "batch2": {"runs": [{"batch": 2}, {"batch": 2, "strength": 0.5, "seed": 3}]},
    # Two model calls a step; a sampler that hands the model a host sigma; SDE noise.
    "heun": {"runs": [{"sampler": "heun"}, {"sampler": "heun", "strength": 0.5, "steps": 6}]},
    "uni_pc": {"runs": [{"sampler": "uni_pc"}, {"sampler": "uni_pc", "strength": 0.5, "seed": 9}]},
    "dpmpp_2m_sde": {"runs": [{"sampler": "dpmpp_2m_sde"}, {"sampler": "dpmpp_2m_sde", "strength": 0.5, "seed": 9}]},
    # A hint of one image per latent: ComfyUI repeats it over cond and uncond (another hint shape).
    "batch2_hint2": {"runs": [{"batch": 2, "hint_batch": 2}, {"batch": 2, "hint_batch": 2, "strength": 0.5}]},
}


@pytest.fixture(scope="module")
def measured():
    return run_child("cases_control:control_runs", cases=CASES, env={"COMFY_TPU_EXECUTION": "replay"})


def _runs(measured, case):
    return list(enumerate(measured["cases"][case]))


@pytest.mark.parametrize("case", list(CASES))
def test_one_transfer_no_fallbacks_and_parity_each_run(measured, case):
    for index, run in _runs(measured, case):
        assert run["transfers"] == 1, (index, run)
        assert run["fallbacks"] == {}, (index, run)
        assert run["diff"] <= PARITY, (index, run)
    first = measured["cases"][case][0]
    assert first["unchanged_by_control"] > 100 * PARITY, first  # the control changes the result


@pytest.mark.parametrize("case", list(CASES))
def test_nothing_compiles_after_the_first_run(measured, case):
    later = _runs(measured, case)[1:]
    assert later and all(run["compiles"] == 0 for _, run in later), later


@pytest.mark.parametrize("case", list(CASES))
def test_a_control_adds_only_its_program_and_one_small_graph_a_call(measured, case):
    plain = measured["plain"]
    assert plain["executions"] == EXECUTIONS_PER_CALL * plain["model_calls"] + EXECUTIONS_PER_RUN, plain
    for index, run in _runs(measured, case)[1:]:
        expected = (EXECUTIONS_PER_CALL * run["model_calls"] + EXECUTIONS_PER_RUN
                    + EXECUTIONS_PER_CONTROL_CALL * run["control_calls"])
        if run["run"]["sampler"] == "euler":
            assert run["executions"] == expected, (index, run)
        else:  # the bound tests/test_replay.py holds every sampler to without a control
            assert run["executions"] <= expected + 1, (index, run)


def test_the_diffusion_model_stays_replayed(measured):
    assert measured["replay_fallbacks"] == {}


@pytest.mark.parametrize("case", list(CASES))
def test_the_controlnets_models_are_replayed(measured, case):
    """Each call of a ControlNet in range runs its program (its Python is not run again): as many as
    model calls per ControlNet without a range, fewer with one (the steps outside it run none)."""
    for index, run in _runs(measured, case):
        chained, ranged = CASES[case].get("chained", 1), (run["run"]["start"], run["run"]["end"]) != (0.0, 1.0)
        if ranged:
            assert 0 < run["control_calls"] < chained * run["model_calls"], (index, run)
        else:
            assert run["control_calls"] == chained * run["model_calls"], (index, run)
    # The diffusion model's program, and one for each ControlNet model.
    assert measured["replay"]["programs"] >= 3, measured["replay"]


@pytest.mark.parametrize("how", ["control_net", "from_conditioning"])
def test_a_warmed_signature_with_a_controlnet_compiles_nothing(how):
    """The warm-up (public API) covers the control path: in a fresh process, the real runs that follow,
    at other strengths, compile nothing and match eager CPU."""
    warmed = run_child("cases_control:warmed_control", warm_percent=[0.0, 1.0], run_percents=[[0.0, 1.0], [0.0, 1.0]],
                       from_conditioning=how == "from_conditioning", env={"COMFY_TPU_EXECUTION": "replay"})
    assert warmed["warmup"]["graphs"] > 0 and len(warmed["warmup"]["controls"]) == 2, warmed["warmup"]
    for run in warmed["runs"]:
        assert run["compiles"] == 0 and run["transfers"] == 1 and not run["fallbacks"], run
        assert run["diff"] <= PARITY, run


def test_a_warmup_with_a_range_covers_the_steps_the_control_is_off():
    warmed = run_child("cases_control:warmed_control", warm_percent=[0.2, 0.8],
                       run_percents=[[0.3, 0.7], [0.0, 0.5], [0.5, 1.0]], env={"COMFY_TPU_EXECUTION": "replay"})
    for run in warmed["runs"]:
        assert run["compiles"] == 0 and run["transfers"] == 1 and not run["fallbacks"], run
        assert run["diff"] <= PARITY, run


#: Other kinds of control: a T2I-Adapter (``comfy.t2i_adapter``) on the tiny SD1.5-architecture UNet; a cldm
#: ControlNet of SDXL's shape (its label embedding reads ``y``); an XLabs-style Flux ControlNet
#: (``comfy.ldm.flux.controlnet.ControlNetFlux``: ``y`` and ``guidance``). ComfyUI's SD3 ControlNets need a VAE
#: to encode the hint; Flux stands for the DiT families here.
FAMILIES = ["t2i", "sdxl", "flux"]


#: The compat layer (`make test-compat`) runs the Flux ControlNet (a DiT family's ControlNet class, built
#: from that ComfyUI's own ``FluxParams``).
COMPAT_FAMILIES = {"flux"}


@pytest.mark.parametrize("family", [pytest.param(family, marks=pytest.mark.compat) if family in COMPAT_FAMILIES
                                    else family for family in FAMILIES])
def test_other_controls_one_transfer_no_recompile_parity(family):
    measured = run_child("cases_control:family_runs", family=family, strengths=[0.9, 0.5, 1.0],
                         env={"COMFY_TPU_EXECUTION": "replay"})
    assert measured["replay_fallbacks"] == {}
    runs = measured["runs"]
    for run in runs:
        assert run["transfers"] == 1 and run["fallbacks"] == {}, run
        assert run["diff"] <= PARITY and run["control_effect"] > 10 * PARITY, run
    for run in runs[1:]:
        assert run["compiles"] == 0, run
        # A T2I-Adapter's features are computed once a run; a ControlNet's model runs at every call, replayed.
        assert run["control_calls"] == (0 if family == "t2i" else run["model_calls"]), run
        assert run["executions"] == (EXECUTIONS_PER_CALL * run["model_calls"] + EXECUTIONS_PER_RUN
                                     + EXECUTIONS_PER_CONTROL_CALL * run["control_calls"]), run


#: The other execution modes, with the cases that exercise what differs there: the control model traced in
#: the step's graph (lazy) or ahead of the captured model (compiled), strengths and ranges as data.
OTHER_MODE_CASES = {name: CASES[name] for name in ("one", "range", "heun")}


@pytest.fixture(scope="module", params=["lazy", "compiled"])
def measured_in_mode(request):
    return request.param, run_child("cases_control:control_runs", cases=OTHER_MODE_CASES,
                                    env={"COMFY_TPU_EXECUTION": request.param})


def test_lazy_and_compiled_execution_keep_the_guarantees(measured_in_mode):
    mode, measured = measured_in_mode
    for case, runs in measured["cases"].items():
        for index, run in enumerate(runs):
            assert run["transfers"] == 1 and run["fallbacks"] == {}, (mode, case, index, run)
            assert run["diff"] <= PARITY, (mode, case, index, run)
            if index:
                assert run["compiles"] == 0, (mode, case, index, run)
