"""Re-warm after a restart, in fresh processes sharing one cache dir: signatures this process cannot
reproduce are skipped with the reason, each recorded signature is re-warmed at most once a process,
and ``COMFY_TPU_REWARM=0`` turns it off."""
from __future__ import annotations

import re

import pytest

from tests.child import run_child

STEPS = 8
#: A plain euler run (default replay execution) executes two graphs a step (the sampler's math, then
#: the model's program), the latent preparation and the result; the first run of a process also makes
#: the conv kernel twins.
PLAIN_EXECUTIONS = 2 * STEPS + 2


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> str:
    """A cache dir whose warm set holds a 4-device SPMD process's signature and a bf16 process's."""
    cache_dir = str(tmp_path_factory.mktemp("rewarm-cache"))
    spmd = run_child("cases_warmup:sample_runs", cache_dir=cache_dir, runs=1, steps=2,
                     env={"CPU_NUM_DEVICES": "4", "COMFY_TPU_SPMD": "on"})
    bf16 = run_child("cases_warmup:sample_runs", cache_dir=cache_dir, runs=1, steps=2,
                     env={"COMFY_TPU_AUTOCAST_BF16": "1"})
    assert any("data=4" in s for s in spmd["recorded"]), spmd["recorded"]
    assert any("bfloat16" in s for s in bf16["recorded"]), bf16["recorded"]
    return cache_dir


@pytest.fixture(scope="module")
def plain(seeded) -> dict:
    return run_child("cases_warmup:sample_runs", cache_dir=seeded, runs=3, steps=STEPS)


def test_foreign_signatures_are_skipped_once_with_the_reason(plain):
    skipped = [line for line in plain["log"].splitlines() if "not re-warming" in line]
    assert len(skipped) == 2, skipped
    assert any("mesh data=4" in line for line in skipped) and any("bfloat16" in line for line in skipped)
    assert "re-warming" not in plain["log"].replace("not re-warming", "")


def test_runs_after_the_first_execute_only_their_own_graphs(plain):
    later = plain["runs"][1:]
    assert all(run["executions"] == PLAIN_EXECUTIONS and run["compiles"] == 0 for run in later), plain["runs"]


def test_a_restart_rewarms_its_own_signature_once(seeded, plain):
    again = run_child("cases_warmup:sample_runs", cache_dir=seeded, runs=3, steps=STEPS)
    log = again["log"]
    assert len(re.findall(r"comfy-tpu: re-warming ", log)) == 1, log[-3000:]
    assert re.search(r"re-warmed 1 recorded signature\(s\) in [0-9.]+ s \(2 skipped, 0 failed\)", log), log[-3000:]
    first, *later = again["runs"]
    assert first["compiles"] > 0 and first["run_compiles"] == 0, first  # the re-warm compiled before step 1
    assert all(run["executions"] == PLAIN_EXECUTIONS and run["compiles"] == 0 for run in later), again["runs"]


def test_rewarm_off_compiles_on_first_use(seeded, plain):
    off = run_child("cases_warmup:sample_runs", cache_dir=seeded, runs=1, steps=STEPS, env={"COMFY_TPU_REWARM": "0"})
    assert "re-warm" not in off["log"]
    assert off["runs"][0]["compiles"] > 0
