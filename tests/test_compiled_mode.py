"""Compiled mode's own behaviour: models dynamo cannot capture well fall back to lazy (named once in
the log, the run completes and matches eager), the model's own errors are not swallowed, and the
stand-in leaves the model as it found it. The acceptance figures of both modes are in
test_sampling_path.py."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.sampling_harness import execution_mode, ksample, max_abs_diff

pytestmark = pytest.mark.fresh_process  # counts compiles: see tests/fresh_process.py

PARITY = 1e-3


@pytest.fixture
def compiled_mode(comfy):
    with execution_mode("compiled"):
        yield


def _fresh_pair(seed: int = 5):
    from bench import tiny_model

    return (tiny_model.build_patcher("tiny", seed=seed),
            tiny_model.build_patcher("tiny", seed=seed, load_device=torch.device("cpu")))


def _breaking_patch(h, transformer_options):
    """An input-block patch dynamo cannot trace through: a graph break per input block."""
    torch._dynamo.graph_break()
    return h


def _fallback_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot run compiled" in r.getMessage()]


def test_graph_break_storm_falls_back_to_lazy(comfy, backend, compiled_mode, caplog):
    from tpu_runtime import runtime

    xla, cpu = _fresh_pair()
    for patcher in (xla, cpu):
        patcher.set_model_input_block_patch(_breaking_patch)
    pos, neg = _conditioning()
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        first = ksample(comfy, xla, pos, neg, steps=4, backend=backend)
        second = ksample(comfy, xla, pos, neg, steps=6, backend=backend)
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "SD15" in warnings[0] and "graph breaks" in warnings[0] and "lazy mode" in warnings[0]
    # The run it happened in completed correctly; later runs are lazy: no dynamo, one graph a call.
    assert max_abs_diff(first.samples, ksample(comfy, cpu, pos, neg, steps=4).samples) <= PARITY
    assert max_abs_diff(second.samples, ksample(comfy, cpu, pos, neg, steps=6).samples) <= PARITY
    assert second.dynamo_frames == 0 and second.compiles == 0
    assert second.executions <= second.model_calls + 2
    assert any("graph breaks" in reason for reason in runtime.current().compiled_models.fallbacks().values())


def test_capture_failure_falls_back_to_lazy(comfy, backend, compiled_mode, caplog, monkeypatch):
    """A backend that cannot compile the captured graph (here: one that raises, standing in for an
    op the openxla backend cannot lower) leaves the model in lazy mode; the run completes."""

    def failing_backend(graph_module, example_inputs):
        raise NotImplementedError("no lowering for aten::made_up_op")

    monkeypatch.setattr(backend, "compile_module",
                        lambda module: torch.compile(module, backend=failing_backend, dynamic=False))
    xla, cpu = _fresh_pair(seed=6)
    pos, neg = _conditioning()
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        run = ksample(comfy, xla, pos, neg, steps=4, backend=backend)
        again = ksample(comfy, xla, pos, neg, steps=4, backend=backend)
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 1 and "made_up_op" in warnings[0], warnings
    assert max_abs_diff(run.samples, ksample(comfy, cpu, pos, neg, steps=4).samples) <= PARITY
    assert again.dynamo_frames == 0 and again.compiles == 0


def test_model_errors_are_not_swallowed(comfy, backend, compiled_mode, caplog):
    def broken_patch(h, transformer_options):
        raise ValueError("this patch is broken")

    xla, _ = _fresh_pair(seed=7)
    xla.set_model_input_block_patch(broken_patch)
    pos, neg = _conditioning()
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"), pytest.raises(ValueError, match="broken"):
        ksample(comfy, xla, pos, neg, steps=2, backend=backend)
    assert not _fallback_warnings(caplog)
    # Dynamo marks code whose capture raised as never to be captured again; the pack resets it, so
    # the next model of the same class is captured and runs compiled.
    healthy, _ = _fresh_pair(seed=10)
    run = ksample(comfy, healthy, pos, neg, steps=2, backend=backend)
    assert run.dynamo_frames >= 1 and run.captured_graph_calls == run.model_calls == 2
    assert not _fallback_warnings(caplog)


def test_stand_in_is_removed_after_the_run(comfy, backend, compiled_mode, tiny):
    xla, _, pos, neg = tiny
    module = xla.model.diffusion_model
    run = ksample(comfy, xla, pos, neg, steps=3, backend=backend)
    assert xla.model.diffusion_model is module
    assert dict(xla.model.named_children())["diffusion_model"] is module
    assert run.model_calls == 3 == run.captured_graph_calls


def test_lazy_mode_never_goes_through_dynamo(comfy, backend, tiny):
    xla, _, pos, neg = tiny
    with execution_mode("lazy"):
        run = ksample(comfy, xla, pos, neg, steps=3, backend=backend)
    assert run.dynamo_frames == run.dynamo_graphs == run.captured_graph_calls == 0


def _conditioning():
    from bench import tiny_model

    return tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)


def test_a_capture_does_not_reset_the_runtime_counters(comfy, backend, compiled_mode):
    """torch_xla's openxla bridge clears its counters while capturing; the pack's figures must not
    go backwards (CPU-fallback names, cache hits and, under SPMD, executions are counters)."""
    xla, _ = _fresh_pair(seed=8)
    pos, neg = _conditioning()
    ksample(comfy, xla, pos, neg, steps=2, backend=backend)  # counters are non-zero by now
    before = backend.counters()
    assert before["cached_compiles"] > 0
    xla_new, _ = _fresh_pair(seed=9)
    run = ksample(comfy, xla_new, pos, neg, steps=2, backend=backend)
    after = backend.counters()
    assert run.dynamo_frames == 1  # a new capture happened
    assert {k: v for k, v in after.items() if v < before[k]} == {}
