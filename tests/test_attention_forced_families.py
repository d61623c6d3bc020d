"""Every family of the tiny zoo (SD1.5, SDXL, SD3, Flux, Wan 2.1) sampled on torchax with the Pallas flash
kernel, then the memory-bounded blockwise attention, forced on one device (#30: "the families suite passes
with each implementation forced"; SDPA is what ``auto`` runs at these lengths in every torchax family test;
torch_xla's: test_attention_routes; on a mesh: test_attention_spmd). One fresh child per implementation,
its own cache dir.

Off a TPU JAX's Pallas TPU flash kernel runs in Pallas's TPU interpret mode (it simulates the TPU's
memories; the kernel's body and grid are the TPU's). Per family: the router handed every device attention
call of the model's program to the forced implementation and none to another; both runs within the families'
bound of eager CPU running ComfyUI's own attention; the first run compiled, the second compiled nothing
(its program, kernel included, ran again), no op fell back to the host and the model never fell back to
running eagerly."""
from __future__ import annotations

import importlib.util
import time

import pytest

from tests.child import run_child

FAMILIES = ["sd15", "sdxl", "sd3", "flux", "wan"]
PARITY = 1e-3  # the families' bound (test_attention_routes, test_model_switching): fp32 against eager CPU


IMPLEMENTATIONS = ["flash", "blockwise"]
START_LINE = {"flash": "attention flash: Pallas flash at every length",
              "blockwise": "attention blockwise: memory-bounded blockwise at every length"}


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def forced_run(request) -> dict:
    if importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
    start = time.perf_counter()
    result = run_child("cases_attention_forced:forced_families", families=FAMILIES,
                       env={"COMFY_TPU_BACKEND": "torchax", "COMFY_TPU_ATTENTION": request.param})
    result["child_wall_s"] = round(time.perf_counter() - start, 1)
    result["forced"] = request.param
    print(f"{request.param}-forced families child: {result['child_wall_s']} s")
    return result


def test_the_child_ran_torchax_with_the_implementation_forced(forced_run):
    forced = forced_run["forced"]
    assert forced_run["backend"] == "torchax" and forced_run["setting"] == forced, forced_run["router"]
    log = forced_run["log"]
    start = next(line for line in log.splitlines() if "comfy-tpu: TPU path on" in line)
    assert START_LINE[forced] in start, start
    # a model that could not be traced would run eagerly on the host (ComfyUI's attention): said once
    assert "from now on" not in log, log[-3000:]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_runs_it_matches_eager_and_recompiles_nothing(forced_run, family):
    forced = forced_run["forced"]
    first, second = forced_run["families"][family]["runs"]
    print(forced, family, forced_run["families"][family])
    # every device attention call of the traced program went to the forced implementation
    assert set(first["calls"]) == {forced} and first["calls"][forced] > 0, first
    assert first["compiles"] > 0 and first["executions"] > 0, first
    # the second run ran the compiled program again: not traced (no call routed), nothing compiled
    assert second["compiles"] == 0 and second["calls"] == {} and second["executions"] > 0, second
    for run in (first, second):
        assert run["finite"] and run["max_diff"] < PARITY, (family, run)
        assert not run["fallbacks"], (family, run)
