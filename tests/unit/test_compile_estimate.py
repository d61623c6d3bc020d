"""The compile estimate shown before a first-time compile: in replay execution a new sampler costs its
own small graphs only once any sampler compiled the model's program (issue: one model graph for every
sampler). Pure registry logic: no ComfyUI, no XLA."""
from __future__ import annotations

import pytest

from tpu_runtime.cache.registry import SignatureRegistry
from tpu_runtime.cache.signature import ExecutionSignature

VERSIONS = {"torch": "2.9.0", "torch_xla": "2.9.0"}


def signature(sampler: str, execution: str = "replay", batch: int = 1, model: str = "m1") -> ExecutionSignature:
    return ExecutionSignature(model_fingerprint=model, latent_shape=(4, 16, 16), batch_size=batch,
                              context_tokens=(77,), uncond_pass=True, compute_dtype="float32", sampler=sampler,
                              execution=execution)


@pytest.fixture
def registry(tmp_path) -> SignatureRegistry:
    return SignatureRegistry(tmp_path, VERSIONS)


def test_the_model_program_key_leaves_the_sampler_out_in_replay_only():
    assert signature("euler").model_program_key() == signature("uni_pc").model_program_key()
    assert signature("euler").model_program_key() != signature("euler", batch=2).model_program_key()
    assert signature("euler", execution="lazy").model_program_key() is None
    assert signature("euler", execution="compiled").model_program_key() is None


def test_a_new_sampler_after_a_warm_up_is_estimated_at_its_own_graphs(registry):
    registry.record(signature("euler"), compiles=6, compile_seconds=40.0, model_program_seconds=38.5)
    assert registry.model_program_warm(signature("uni_pc"))
    # uni_pc never ran and the program is compiled: no figure to give (its graphs are small, unknown).
    assert registry.estimate_compile_seconds(signature("uni_pc")) is None
    assert registry.estimate_compile_seconds(signature("uni_pc", batch=2)) == pytest.approx(38.5)
    registry.record(signature("uni_pc"), compiles=7, compile_seconds=1.2)
    # Another model program (batch 2) in a later process: program (from the nearest) + uni_pc's graphs.
    fresh = SignatureRegistry(registry.cache_dir, VERSIONS)
    assert not fresh.model_program_warm(signature("uni_pc", batch=2))
    assert fresh.estimate_compile_seconds(signature("uni_pc", batch=2)) == pytest.approx(38.5 + 1.2)
    fresh.record(signature("euler"), compiles=0, compile_seconds=0.0)  # euler's program loaded again here
    assert fresh.estimate_compile_seconds(signature("uni_pc")) == pytest.approx(1.2)
    assert fresh.estimate_compile_seconds(signature("dpmpp_2m")) is None


def test_lazy_execution_keeps_the_whole_signature_estimate(registry):
    registry.record(signature("euler", execution="lazy"), compiles=5, compile_seconds=30.0)
    assert not registry.model_program_warm(signature("heun", execution="lazy"))
    assert registry.estimate_compile_seconds(signature("heun", execution="lazy")) == 30.0
    assert registry.estimate_compile_seconds(signature("heun", execution="lazy", model="other")) == 30.0


def test_a_warm_set_written_before_the_split_still_loads_and_estimates(registry):
    registry.record(signature("euler"), compiles=6, compile_seconds=40.0)  # no program figure: an old file
    fresh = SignatureRegistry(registry.cache_dir, VERSIONS)
    assert fresh.get(signature("euler")).model_program_seconds == 0.0
    # Its sampler graphs are then the whole 40 s: an over-estimate, never an under-estimate.
    assert fresh.estimate_compile_seconds(signature("euler")) == pytest.approx(40.0)


def test_no_record_no_estimate(registry):
    assert registry.estimate_compile_seconds(signature("euler")) is None


def test_each_backend_keeps_its_own_warm_set(tmp_path):
    """Signatures hold no backend: one file would add torchax's compile seconds to torch_xla's entries."""
    from tpu_runtime.cache.registry import warm_set_file

    xla = SignatureRegistry(tmp_path, VERSIONS, file_name=warm_set_file("torch_xla"))
    jax = SignatureRegistry(tmp_path, {**VERSIONS, "backend": "torchax"}, file_name=warm_set_file("torchax"))
    xla.record(signature("euler"), compiles=6, compile_seconds=40.0, model_program_seconds=38.0)
    jax.record(signature("euler"), compiles=1, compile_seconds=3.0, model_program_seconds=3.0)
    assert warm_set_file("torch_xla") == "warm_set.json" and warm_set_file("torchax") != "warm_set.json"
    assert SignatureRegistry(tmp_path, VERSIONS).get(signature("euler")).compile_seconds == 40.0
    again = SignatureRegistry(tmp_path, VERSIONS, file_name=warm_set_file("torchax"))
    assert again.get(signature("euler")).compile_seconds == 3.0
