"""Every family of the tiny zoo (SD1.5, SDXL, SD3, Flux, Wan 2.1) sampled on torchax with the Pallas flash
kernel forced on one device (#30: "the families suite passes with each implementation forced"; sdpa and
blockwise: test_attention_routes; on a mesh: test_attention_spmd). One fresh child, its own cache dir.

Off a TPU JAX's Pallas TPU flash kernel runs in Pallas's TPU interpret mode (it simulates the TPU's
memories; the kernel's body and grid are the TPU's). Per family: the router handed every device attention
call of the model's program to flash and none to another implementation; both runs within the families'
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


@pytest.fixture(scope="module")
def flash_run() -> dict:
    if importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
    start = time.perf_counter()
    result = run_child("cases_attention_flash:flash_families", families=FAMILIES,
                       env={"COMFY_TPU_BACKEND": "torchax", "COMFY_TPU_ATTENTION": "flash"})
    result["child_wall_s"] = round(time.perf_counter() - start, 1)
    print(f"flash-forced families child: {result['child_wall_s']} s")
    return result


def test_the_child_ran_torchax_with_flash_forced(flash_run):
    assert flash_run["backend"] == "torchax" and flash_run["setting"] == "flash", flash_run["router"]
    log = flash_run["log"]
    start = next(line for line in log.splitlines() if "comfy-tpu: TPU path on" in line)
    assert "attention flash: Pallas flash at every length" in start, start
    # a model that could not be traced would run eagerly on the host (ComfyUI's attention): said once
    assert "from now on" not in log, log[-3000:]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_runs_flash_matches_eager_and_recompiles_nothing(flash_run, family):
    first, second = flash_run["families"][family]["runs"]
    print(family, flash_run["families"][family])
    # every device attention call of the traced program went to the Pallas flash kernel
    assert set(first["calls"]) == {"flash"} and first["calls"]["flash"] > 0, first
    assert first["compiles"] > 0 and first["executions"] > 0, first
    # the second run ran the compiled program again: not traced (no call routed), nothing compiled
    assert second["compiles"] == 0 and second["calls"] == {} and second["executions"] > 0, second
    for run in (first, second):
        assert run["finite"] and run["max_diff"] < PARITY, (family, run)
        assert not run["fallbacks"], (family, run)
