"""Re-warm and warm-up for every model family of the zoo (SD1.5, SDXL, SD3, Flux, Wan 2.1 with video
latents), in fresh processes: process A samples and records its signature; process B, sharing the
cache dir, re-warms it from the recorded conditioning layout before its first prompt, which is right
(eager parity) and compiles nothing the re-warm did not; a warm-up node run covers the next prompt of
that shape; a re-warm made to fail (a corrupt warm set) is set aside, the prompt runs, and a third
process does not retry it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.child import run_child

FAMILIES = ["sd15", "sdxl", "sd3", "flux", "wan"]
PARITY = 1e-3


def _right(runs: list[dict]) -> None:
    for run in runs:
        assert run["finite"] and run["max_diff"] < PARITY, runs


@pytest.fixture(scope="module")
def restarts(tmp_path_factory) -> dict:
    """Per family: process A's and then process B's figures (two runs each, one cache dir)."""
    out = {}
    for family in FAMILIES:
        cache_dir = str(tmp_path_factory.mktemp(f"rewarm-{family}"))
        first = run_child("cases_rewarm:family_runs", cache_dir=cache_dir, family=family, runs=2)
        second = run_child("cases_rewarm:family_runs", cache_dir=cache_dir, family=family, runs=2)
        out[family] = (first, second)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_after_a_restart_the_first_prompt_is_right_and_compiles_nothing_new(restarts, family):
    first, second = restarts[family]
    _right(first["runs"] + second["runs"])
    a_first, a_later = first["runs"]
    b_first, b_later = second["runs"]
    assert a_first["compiles"] > 0 and a_later["compiles"] == 0, first["runs"]
    log = second["log"]
    assert len(re.findall(r"comfy-tpu: re-warming ", log)) == 1 and "failed and is set aside" not in log, log[-3000:]
    # the re-warm compiled before the first step; the run itself compiled nothing, nor did the next
    assert b_first["run_compiles"] == 0 and 0 < b_first["compiles"] <= a_first["compiles"], second["runs"]
    assert b_later["compiles"] == 0 and b_later["transfers"] == 1, second["runs"]
    assert second["recorded"] == first["recorded"] and not second["set_aside"]
    print(f"{family}: A first prompt {a_first['compiles']} compile(s), later {a_later['compiles']}; B first prompt "
          f"{b_first['compiles']} (re-warm) + {b_first['run_compiles']} (run), later {b_later['compiles']}; worst "
          f"|XLA - eager| {max(r['max_diff'] for r in first['runs'] + second['runs']):.2e}")


@pytest.mark.parametrize("wired", [True, False], ids=["conditioning wired", "shapes from the config"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_warmup_node_covers_the_next_prompt(family, wired):
    result = run_child("cases_rewarm:warmup_node_then_prompt", family=family, wired=wired)
    assert result["status"].startswith("warmed") and result["warmup_compiles"] > 0, result
    _right(result["runs"])
    compiled = [run for run in result["runs"] if run["compiles"]]
    assert not compiled, (result["status"], result["runs"])
    print(f"{family} warm-up ({'wired' if wired else 'config'}): {result['warmup_compiles']} compile(s); then "
          f"{[run['compiles'] for run in result['runs']]}; worst {max(r['max_diff'] for r in result['runs']):.2e}")


def test_a_failing_rewarm_is_set_aside_and_the_prompt_runs(tmp_path):
    cache_dir = str(tmp_path)
    first = run_child("cases_rewarm:family_runs", cache_dir=cache_dir, family="flux", runs=1)
    path = Path(cache_dir) / "warm_set.json"
    warm = json.loads(path.read_text())
    for entry in warm["entries"]:  # a corrupt record: a cross-attention width the model cannot take
        for cond in entry["signature"]["conditioning"]["positive"]:
            cond["cross_attn"]["shape"][-1] += 3
    path.write_text(json.dumps(warm))
    second = run_child("cases_rewarm:family_runs", cache_dir=cache_dir, family="flux", runs=2)
    _right(second["runs"])
    log = second["log"]
    assert len(re.findall("failed and is set aside", log)) == 1, log[-3000:]
    assert re.search(r"re-warmed 0 recorded signature\(s\) in [0-9.]+ s \(0 skipped, 1 failed\)", log), log[-3000:]
    # the prompt compiled what the failed re-warm did not; then nothing
    assert len(second["set_aside"]) == 1 and 0 < second["runs"][0]["run_compiles"] <= first["runs"][0]["compiles"]
    assert second["runs"][1]["compiles"] == 0
    # a third process re-warms only the signature the second one's prompt recorded: the set-aside one is
    # not retried
    third = run_child("cases_rewarm:family_runs", cache_dir=cache_dir, family="flux", runs=1)
    log = third["log"]
    assert len(re.findall(r"comfy-tpu: re-warming ", log)) == 1 and "set aside" not in log, log[-3000:]
    assert re.search(r"re-warmed 1 recorded signature\(s\) in [0-9.]+ s \(0 skipped, 0 failed\)", log), log[-3000:]
    assert third["runs"][0]["run_compiles"] == 0 and len(third["set_aside"]) == 1
    _right(third["runs"])


def test_an_older_warm_set_without_layouts_is_rewarmed_from_the_models_config(tmp_path):
    cache_dir = str(tmp_path)
    first = run_child("cases_rewarm:family_runs", cache_dir=cache_dir, family="sd15", runs=1)
    path = Path(cache_dir) / "warm_set.json"
    warm = json.loads(path.read_text())
    for entry in warm["entries"]:  # as the pack wrote it before signatures recorded the layout
        del entry["signature"]["conditioning"]
    path.write_text(json.dumps(warm))
    second = run_child("cases_rewarm:family_runs", cache_dir=cache_dir, family="sd15", runs=2)
    _right(second["runs"])
    assert len(re.findall(r"comfy-tpu: re-warming ", second["log"])) == 1, second["log"][-3000:]
    b_first, b_later = second["runs"]
    assert b_first["run_compiles"] == 0 and 0 < b_first["compiles"] <= first["runs"][0]["compiles"], second["runs"]
    assert b_later["compiles"] == 0
    # the old entry gave way to the one its re-warm recorded, with the layout
    recorded = json.loads(path.read_text())["entries"]
    assert len(recorded) == 1 and recorded[0]["signature"]["conditioning"] is not None
