"""The warm set's bounds and what a re-warm skips (pure logic: no device, no compile)."""
from __future__ import annotations

import json

import torch

from tpu_runtime.cache.registry import MAX_WARM_SET_ENTRIES, WARM_SET_FILE, SignatureRegistry
from tpu_runtime.cache.signature import ExecutionSignature

RUNTIME = {"torch": "2.9.0", "torch_xla": "2.9.0", "libtpu": None}


def _signature(n: int = 0, **update) -> ExecutionSignature:
    fields = dict(model_fingerprint="f", latent_shape=(4, 8, 8 + n), batch_size=1, context_tokens=(77,),
                  uncond_pass=True, compute_dtype="float32", sampler="sample_euler")
    return ExecutionSignature(**{**fields, **update})


def test_the_warm_set_keeps_the_most_recent_signatures(tmp_path):
    registry = SignatureRegistry(tmp_path, RUNTIME)
    for n in range(MAX_WARM_SET_ENTRIES + 6):
        registry.record(_signature(n), 1, 0.1)
    on_disk = json.loads((tmp_path / WARM_SET_FILE).read_text())["entries"]
    assert len(on_disk) == MAX_WARM_SET_ENTRIES
    kept = {tuple(entry["signature"]["latent_shape"]) for entry in on_disk}
    assert (4, 8, 8 + MAX_WARM_SET_ENTRIES + 5) in kept and (4, 8, 8) not in kept


def test_entries_remember_the_runtime_that_recorded_them(tmp_path):
    SignatureRegistry(tmp_path, RUNTIME).record(_signature(), 1, 0.1)
    reloaded = SignatureRegistry(tmp_path, {**RUNTIME, "torch_xla": "2.10.0"})
    assert reloaded.get(_signature()).runtime == RUNTIME


def test_entries_of_files_without_a_runtime_per_entry_get_the_files(tmp_path):
    registry = SignatureRegistry(tmp_path, RUNTIME)
    registry.record(_signature(), 1, 0.1)
    data = json.loads((tmp_path / WARM_SET_FILE).read_text())
    for entry in data["entries"]:
        entry.pop("runtime")
    (tmp_path / WARM_SET_FILE).write_text(json.dumps(data))
    assert SignatureRegistry(tmp_path, {}).get(_signature()).runtime == RUNTIME


def test_rewarm_skips_what_this_process_cannot_reproduce(tmp_path, mocker):
    from tpu_runtime.backends.device import PathDecision
    from tpu_runtime.cache.manager import TPUManager
    from tpu_runtime.settings.run_options import RunOptions
    from tpu_runtime.settings.tpu_settings import load_settings
    from tpu_runtime.state import PackState

    registry = SignatureRegistry(tmp_path, RUNTIME)
    registry.record(_signature(), 1, 0.1)
    older = SignatureRegistry(tmp_path, {**RUNTIME, "torch_xla": "2.10.0"})
    state = PackState(loaded=load_settings(), decision=PathDecision(on=True, reason="test"),
                      backend=mocker.Mock(mesh_description=lambda: "single"), options=RunOptions(autocast_bf16=False))
    manager = TPUManager(state, older)
    patcher = mocker.Mock(model_dtype=lambda: torch.float32)
    options = RunOptions(autocast_bf16=False, execution="lazy")  # as the recorded signatures ran
    assert "torch_xla 2.9.0" in manager._cannot_reproduce(_signature(), patcher, options)
    assert "mesh data=4" in manager._cannot_reproduce(_signature(mesh="data=4"), patcher, options)
    assert "bfloat16" in manager._cannot_reproduce(_signature(compute_dtype="bfloat16"), patcher, options)
    assert "compiled" in manager._cannot_reproduce(_signature(execution="compiled"), patcher, options)
    controlled = _signature(execution="lazy", controls=("positive:ControlNet/abc",))
    assert "ControlNet" in manager._cannot_reproduce(controlled, patcher, options)
