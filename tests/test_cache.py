"""The compilation cache (issue: signatures, warm-up, shape padding, persistence, public API).

Counts are XLA's own. The model is a tiny variant no other test compiles, so every compile seen
here belongs to this file's runs.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from tests.cache_models import CACHE_TEST_MODEL
from tests.child import run_child
from tests.sampling_harness import execution_mode, ksample, run_options

pytestmark = pytest.mark.fresh_process  # counts compiles: see tests/fresh_process.py


@pytest.fixture(scope="module", autouse=True)
def compiled_mode(comfy):
    """The cache's guarantees are checked in compiled mode, where a run could compile either kind of
    graph (dynamo captures and XLA executables); its second session (a child process) runs compiled too."""
    with execution_mode("compiled"):
        yield


@pytest.fixture(scope="module")
def manual(comfy, backend):
    """COMFY_TPU_MANUAL_WARMUP=1 semantics: no automatic warm-up."""
    import tpu_runtime.runtime as runtime

    manager = runtime.current().manager
    saved = manager.auto_warmup
    manager.auto_warmup = False
    yield manager
    manager.auto_warmup = saved


@pytest.fixture(scope="module")
def model(comfy):
    from bench import tiny_model

    return (tiny_model.build_patcher("tiny", seed=0, overrides=CACHE_TEST_MODEL), tiny_model.sd15_conditioning(1),
            tiny_model.sd15_conditioning(2))


@pytest.fixture(scope="module")
def warmed(comfy, backend, manual, model):
    import tpu_runtime

    patcher, _, _ = model
    return tpu_runtime.tpu_manager.warmup(patcher, 128, 128, cfg=7.0, sampler_name="euler", scheduler="normal")


def test_warmup_compiles_the_signature(warmed):
    assert warmed.graphs_compiled > 0 and warmed.steps_run == 2 and not warmed.already_cached
    assert warmed.signature.latent_shape == (4, 16, 16) and warmed.signature.uncond_pass


def test_runs_after_warmup_compile_nothing(comfy, backend, model, warmed):
    from tpu_runtime import runtime

    assert runtime.current().options.execution == "compiled"  # this file runs compiled: both kinds counted
    patcher, pos, neg = model
    runs = [ksample(comfy, patcher, pos, neg, steps=12, backend=backend),
            ksample(comfy, patcher, pos, neg, steps=20, cfg=4.5, scheduler="karras", seed=99, backend=backend)]
    small = ksample(comfy, patcher, pos, neg, steps=8, size=120, backend=backend)
    for run in runs + [small]:
        assert run.compiles == 0 and run.dynamo_frames == 0, (run.compiles, run.dynamo_frames)
    assert small.samples.shape == (1, 4, 15, 15)


def test_second_warmup_says_already_cached(model, warmed):
    import tpu_runtime

    again = tpu_runtime.tpu_manager.warmup(model[0], 128, 128, cfg=7.0)
    assert again.already_cached and again.graphs_compiled == 0 and "already cached" in again.status()


def test_new_batch_size_is_a_logged_miss(comfy, backend, model, warmed, caplog):
    patcher, pos, neg = model
    with caplog.at_level(logging.INFO, logger="comfy_tpu"):
        run = ksample(comfy, patcher, pos, neg, steps=4, batch=2, backend=backend)
    assert run.compiles > 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("compiling" in m and "first time" in m for m in messages), messages
    assert any("cache miss" in m and "batch_size 1 -> 2" in m for m in messages), messages


def test_stats_after_the_runs(comfy, backend, model, warmed):
    import tpu_runtime

    ksample(comfy, model[0], model[1], model[2], steps=5, backend=backend)
    stats = tpu_runtime.get_tpu_stats()
    assert stats["enabled"] and stats["cached_signatures"] >= 1 and stats["hits"] >= 1
    assert 0.0 < stats["hit_rate"] <= 1.0 and stats["compiles"] > 0 and stats["compile_seconds"] > 0
    assert stats["device"]["device"] == "xla:0"
    assert "PJRT CPU" in stats["persistent_cache"]["note"]
    # auto: conv kernels as HWIO twins on the PJRT CPU device, made by the runs above
    assert stats["conv_kernels"]["setting"] == "auto" and stats["conv_kernels"]["layout"] == "hwio"
    assert stats["conv_kernels"]["twins_made"] > 0
    assert tpu_runtime.tpu_manager.is_cached(warmed.signature)


def test_signature_ignores_steps_cfg_value_and_scheduler(model, manual):
    import tpu_runtime

    patcher = model[0]
    base = tpu_runtime.create_execution_signature(patcher, 128, 128, 1, 7.0, "normal", "euler", 20, None)
    same = tpu_runtime.create_execution_signature(patcher, 128, 128, 1, 3.5, "karras", "euler", 6, None)
    assert base == same and hash(base) == hash(same)
    assert base != tpu_runtime.create_execution_signature(patcher, 128, 128, 2, 7.0, "normal", "euler", 20, None)
    assert base != tpu_runtime.create_execution_signature(patcher, 128, 128, 1, 1.0, "normal", "euler", 20, None)
    assert base != tpu_runtime.create_execution_signature(patcher, 128, 128, 1, 7.0, "normal", "heun", 20, None)
    assert base == tpu_runtime.create_execution_signature(patcher, 120, 120, 1, 7.0, "normal", "euler", 20, None)


def test_padding_off_compiles_and_padding_is_bit_identical_on_the_bucket(comfy, backend, model, warmed):
    patcher, pos, neg = model
    padded = ksample(comfy, patcher, pos, neg, steps=6, size=128, seed=4, backend=backend)
    with run_options(shape_padding=False):
        unpadded = ksample(comfy, patcher, pos, neg, steps=6, size=128, seed=4, backend=backend)
        small = ksample(comfy, patcher, pos, neg, steps=6, size=120, backend=backend)
    assert small.compiles > 0
    assert torch.equal(padded.samples, unpadded.samples)


def test_a_second_process_sees_and_rewarms_the_signatures(manual, warmed):
    # The same execution mode as this file's runs: a process in another mode cannot reproduce them.
    child = run_child("cases_cache:second_session", cache_dir=os.environ["COMFY_TPU_CACHE_DIR"],
                      env={"COMFY_TPU_EXECUTION": "compiled"})
    assert warmed.signature.short() in child["recorded"]
    assert "re-warming" in child["log"]
    assert child["hit"], child  # the user's run compiled nothing: the re-warm did it first


def test_corrupt_warm_set_is_moved_aside(tmp_path, caplog):
    from tpu_runtime.cache.registry import WARM_SET_FILE, SignatureRegistry

    (tmp_path / WARM_SET_FILE).write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        registry = SignatureRegistry(tmp_path, {})
    assert registry.stats()["recorded_signatures"] == 0
    assert not (tmp_path / WARM_SET_FILE).exists()
    assert list(tmp_path.glob(f"{WARM_SET_FILE}.corrupt-*"))
    assert any("moved aside" in r.getMessage() for r in caplog.records)


def test_foreign_warm_set_is_moved_aside(tmp_path):
    from tpu_runtime.cache.registry import WARM_SET_FILE, SignatureRegistry

    (tmp_path / WARM_SET_FILE).write_text(json.dumps({"format": "someone-else", "version": 1, "entries": []}))
    assert SignatureRegistry(tmp_path, {}).stats()["recorded_signatures"] == 0
    assert list(tmp_path.glob(f"{WARM_SET_FILE}.corrupt-*"))


def test_unwritable_cache_dir_works_in_memory(tmp_path, caplog):
    from tpu_runtime.cache.registry import SignatureRegistry
    from tpu_runtime.cache.signature import ExecutionSignature

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        registry = SignatureRegistry(blocker / "cache", {})
    assert sum("not writable" in r.getMessage() for r in caplog.records) == 1
    signature = ExecutionSignature(model_fingerprint="f", latent_shape=(4, 8, 8), batch_size=1, context_tokens=(77,),
                                   uncond_pass=True, compute_dtype="float32", sampler="sample_euler")
    assert registry.record(signature, 3, 1.0).new_signature
    assert registry.record(signature, 0, 0.0).hit and registry.is_cached(signature)


def test_clear_cache_removes_only_the_packs_files(comfy, backend, model, warmed):
    import tpu_runtime
    import tpu_runtime.runtime as runtime

    cache_dir = Path(os.environ["COMFY_TPU_CACHE_DIR"])
    bystander = cache_dir / "not-ours.txt"
    bystander.write_text("keep me")
    assert (cache_dir / "warm_set.json").exists()
    tpu_runtime.tpu_manager.clear_cache()
    stats = tpu_runtime.get_tpu_stats()
    assert stats["cached_signatures"] == 0 and stats["signatures"] == [] and stats["hits"] == 0
    assert not (cache_dir / "warm_set.json").exists()
    assert not runtime.current().manager.xla_cache_dir.exists()
    assert bystander.read_text() == "keep me"
