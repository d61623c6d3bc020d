"""A kohya LoRA on every attention projection and 3x3 conv of the SD1.5-architecture model, through
ComfyUI's ``load_lora_for_models``, in a fresh process: every state (strengths 0.8 -> 0.6 -> 0.8 ->
1.3, removed, added again, removed again) is right (eager parity) and makes one device-to-host
transfer, its result (ComfyUI's backups of the patched weights stay on the device:
``comfyui/weight_backup.py``; they were 76 transfers a state change); strength changes compile 0, and
so does the first removal (it compiled 2 graphs while the conv twins were refilled only where a weight
changed, and were views that wrote through into the weight: ``backends/kernel_layout``)."""
from __future__ import annotations

import pytest

from tests.cases_lora import STATES
from tests.child import run_child

PARITY = 1e-3


@pytest.fixture(scope="module")
def visits() -> list[dict]:
    result = run_child("cases_lora:lora_states")
    assert result["patched"] > 50, result["patched"]  # every attention projection and 3x3 conv
    print([(v["strength"], v["compiles"], v["transfers"]) for v in result["visits"]])
    return result["visits"]


def test_every_state_is_right_and_makes_one_transfer(visits):
    for visit in visits:
        assert visit["max_diff"] < PARITY, visits
        assert visit["transfers"] == 1 and visit["run_transfers"] == 1, visits


def test_strength_changes_and_states_seen_before_compile_nothing(visits):
    assert [v["strength"] for v in visits] == STATES
    assert visits[0]["compiles"] > 0 and visits[1]["compiles"] > 0  # the base, then the LoRA's first time
    assert [v["compiles"] for v in visits[2:5]] == [0, 0, 0], visits  # 0.6, 0.8, 1.3
    assert visits[6]["compiles"] == 0 and visits[7]["compiles"] == 0, visits  # added again, removed again


def test_the_first_removal_compiles_nothing(visits):
    assert visits[5]["compiles"] == 0, visits
