"""``tpu_manager.warmup(sampler_name="(all samplers)")`` warms every sampler the pack tests, in turn,
and says so in one result (the warm-up of each is the same as warming it alone)."""
from __future__ import annotations

import torch

from tpu_runtime.cache import warmup
from tpu_runtime.backends.device import PathDecision
from tpu_runtime.cache.manager import TPUManager, WarmupResult
from tpu_runtime.settings.tpu_settings import load_settings
from tpu_runtime.cache.signature import ExecutionSignature
from tpu_runtime.state import PackState
from tests.unit.fake_backend import FakeBackend


#: The workflow's conditioning, wired in (a warm-up takes its shapes from it).
POSITIVE = [[torch.zeros(1, 77, 768), {}]]


def _result(sampler: str, graphs: int, cached: bool = False) -> WarmupResult:
    signature = ExecutionSignature(model_fingerprint="f", latent_shape=(4, 16, 16), batch_size=1,
                                   context_tokens=(77,), uncond_pass=True, compute_dtype="float32", sampler=sampler)
    return WarmupResult(signature=signature, graphs_compiled=graphs, seconds=0.5, steps_run=2, already_cached=cached)


def test_all_samplers_warms_each_tested_sampler_once_and_adds_up(tmp_path, mocker):
    state = PackState(loaded=load_settings(), decision=PathDecision(on=True, reason="test"), backend=FakeBackend())
    manager = TPUManager(state, mocker.Mock())
    one = mocker.patch.object(manager, "_warm_one", side_effect=lambda model, shape, cfg, name, *rest: _result(
        name, 6 if name == "euler" else 1))
    result = manager.warmup("model", 128, 128, sampler_name=warmup.ALL_SAMPLERS, positive=POSITIVE)
    assert [call.args[3] for call in one.call_args_list] == list(warmup.WARMED_BY_ALL)
    assert result.samplers == len(warmup.WARMED_BY_ALL) and result.graphs_compiled == 6 + 9
    assert result.steps_run == 2 * len(warmup.WARMED_BY_ALL) and not result.already_cached
    assert "and 9 other sampler(s)" in result.status()


def test_one_sampler_is_warmed_alone(mocker):
    state = PackState(loaded=load_settings(), decision=PathDecision(on=True, reason="test"), backend=FakeBackend())
    manager = TPUManager(state, mocker.Mock())
    one = mocker.patch.object(manager, "_warm_one", return_value=_result("sample_heun", 1, cached=True))
    result = manager.warmup("model", 128, 128, sampler_name="heun", positive=POSITIVE)
    assert one.call_count == 1 and result.samplers == 1 and result.status().startswith("already cached")
