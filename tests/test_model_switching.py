"""Long sessions stay right (#20): one process samples every model family of the tiny zoo (SD1.5,
SDXL, SD3, Flux, a Wan 2.1-style video model) in one order and then another, then a LoRA clone of
SDXL and SDXL again. Every run matches eager CPU on the same weights and inputs, a model's later
visits compile nothing, no op falls back to the CPU, and a run brings only its result to the host."""
from __future__ import annotations

import importlib.util
import time

import pytest

from tests.child import run_child
from tests.fresh_process import selected_backends

PARITY = 1e-3  # fp32 (the child runs with autocast off)
MAX_TRANSFERS = 2
#: The last visits: onto the LoRA clone, the same LoRA at strengths 0.5 and 0.8, and back to the base.
LORA_VISITS = ["sdxl+lora", "sdxl+lora@0.5", "sdxl+lora@0.8", "sdxl"]
#: Every family and a LoRA strength change: also in the compat layer (`make test-compat`).
pytestmark = pytest.mark.compat


@pytest.fixture(scope="module", params=selected_backends())
def session(request):
    if request.param == "torchax" and importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
    start = time.perf_counter()
    result = run_child("cases_switching:switching", env={"COMFY_TPU_BACKEND": request.param})
    result["child_wall_s"] = round(time.perf_counter() - start, 1)
    result["backend"] = request.param
    print(f"model switching child ({request.param}): {result['child_wall_s']} s")
    for visit in result["visits"]:
        print(visit)
    return result


def _label(index: int, visit: dict) -> str:
    return f"visit {index} {visit['model']} ({visit['visit']})"


def test_every_run_matches_eager_cpu(session):
    for index, visit in enumerate(session["visits"]):
        assert visit["finite"], _label(index, visit)
        assert visit["max_diff"] <= PARITY, (_label(index, visit), visit)


def test_the_lora_changes_the_result_far_beyond_the_parity_bound(session):
    # Otherwise a LoRA left out (or left behind on the base model) would pass the parity check.
    assert session["lora_effect"] > 100 * PARITY, session["lora_effect"]


def test_a_models_second_visit_compiles_nothing(session):
    visits = session["visits"]
    for index, visit in enumerate(visits):
        if visit["visit"] == "second":
            assert visit["compiles"] == 0 and visit["run_compiles"] == 0, (_label(index, visit), visit)
        elif "+" not in visit["model"]:
            # the count is this process's own: each family's first visit compiles its graphs
            assert visit["compiles"] > 0, (_label(index, visit), visit)


def test_no_op_falls_back_to_the_cpu(session):
    for index, visit in enumerate(session["visits"]):
        assert not visit["fallbacks"] and not visit["run_fallbacks"], (_label(index, visit), visit)


def test_a_run_brings_only_its_result_to_the_host(session):
    for index, visit in enumerate(session["visits"]):
        if session["backend"] == "torchax":
            # The sampler's math runs on the host: each model call's output comes back, and nothing else.
            assert visit["run_transfers"] == visit["transfers"] == visit["model_calls"], (_label(index, visit), visit)
            continue
        # The pack's own figures meter the sampling run, not ComfyUI's model load before it.
        assert visit["run_transfers"] <= MAX_TRANSFERS, (_label(index, visit), visit)
    if session["backend"] == "torchax":
        return
    for index, visit in enumerate(session["visits"][:-len(LORA_VISITS)]):
        assert visit["transfers"] <= MAX_TRANSFERS, (_label(index, visit), visit)


def test_the_lora_visits_come_last(session):
    assert [visit["model"] for visit in session["visits"][-len(LORA_VISITS):]] == LORA_VISITS


def test_a_lora_strength_change_compiles_nothing(session):
    """The LoRA at strength 0.8 after 0.5: other weight values, the same program. (Under torch_xla the
    change from 1.0 to 0.5 compiled one graph in this test, most likely because torch_xla makes the
    scalar 1.0 a constant of the patch graph; torchax compiles nothing for either change.)"""
    half, other = session["visits"][-3], session["visits"][-2]
    assert other["compiles"] == 0 and other["run_compiles"] == 0, other
    if session["backend"] == "torchax":
        assert half["compiles"] == 0 and half["run_compiles"] == 0, half


def test_a_lora_switch_keeps_the_weights_on_the_device(session):
    """Onto the LoRA clone: ComfyUI backs up each patched weight to the host (one transfer each, as it
    does on CUDA); back to the base: the backups return. The rest of the model never leaves the chip
    (ComfyUI alone sent every weight to the CPU and back: ~250 transfers for this model).
    torchax: the device twins of the unpatched weights stay; only the patched weights are uploaded,
    going onto the LoRA and coming back (ComfyUI restores each backup as a new Parameter: a new tensor)."""
    onto_lora, back_to_base = session["visits"][-len(LORA_VISITS)], session["visits"][-1]
    if session["backend"] == "torchax":
        assert 0 < onto_lora["weight_uploads"] <= len(session["lora_keys"]), onto_lora
        assert 0 < back_to_base["weight_uploads"] <= len(session["lora_keys"]), back_to_base
        return
    assert onto_lora["transfers"] <= MAX_TRANSFERS + len(session["lora_keys"]), onto_lora
    assert back_to_base["transfers"] <= MAX_TRANSFERS, back_to_base
