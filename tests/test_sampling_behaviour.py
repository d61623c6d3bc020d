"""What a user sees while sampling on XLA: progress, cancel, CPU-fallback warnings, custom samplers."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.sampling_harness import BACKEND, ksample, max_abs_diff

# Counts compiles (see tests/fresh_process.py); run once per backend.
pytestmark = [pytest.mark.fresh_process, pytest.mark.both_backends]
TORCHAX = BACKEND == "torchax"


def result_transfers_ok(run) -> bool:
    """torch_xla: the result (and at most one more); torchax: each model call's output, nothing else."""
    return run.transfers_to_host == run.model_calls if TORCHAX else run.transfers_to_host <= 2


def test_sync_free_run_logs_no_sync_warning(comfy, backend, tiny, caplog):
    xla, _, pos, neg = tiny
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        ksample(comfy, xla, pos, neg, steps=3, sampler="dpmpp_2m", backend=backend)
    assert not [r for r in caplog.records if "syncs" in r.getMessage()]


def test_progress_is_reported_after_the_device_ran_the_step(comfy, backend, tiny):
    """ComfyUI's per-step callback (its progress bar) fires for every step, in order, and only once
    the graph that computed the step has executed: never ahead of the device."""
    import comfy.utils as comfy_utils

    xla, _, pos, neg = tiny
    ksample(comfy, xla, pos, neg, steps=3, backend=backend)  # compile first
    seen = []
    start = backend.counters()["executions"]

    def hook(value, total, preview, node_id=None):
        seen.append((value, total, backend.counters()["executions"] - start))

    comfy_utils.set_progress_bar_global_hook(hook)
    try:
        ksample(comfy, xla, pos, neg, steps=8, backend=backend)
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
    assert [value for value, _, _ in seen] == list(range(1, 9))
    assert all(total == 8 for _, total, _ in seen)
    # Step k's denoised value comes out of the graph dispatched at model call k+1 (1-based: the prep
    # graph runs first), so by the time step k is shown, at least k+1 graphs have run. torchax runs one
    # program a model call, synchronously: step k is shown after its program ran.
    for value, _, executed in seen:
        assert executed >= value + (0 if TORCHAX else 1), seen


@pytest.mark.compat  # also in the compat layer (`make test-compat`)
def test_interrupt_stops_cleanly_and_the_next_prompt_runs(comfy, backend, tiny):
    import comfy.model_management as mm
    import comfy.utils as comfy_utils

    xla, _, pos, neg = tiny
    # A whole run of this signature first, as the tests before this one make in the module: run alone
    # (the compat layer selects it), the interrupted run is the process's first, and the graphs of the
    # steps it never reached would be counted against the run after it.
    ksample(comfy, xla, pos, neg, steps=10, backend=backend)
    calls = []

    def hook(value, total, preview, node_id=None):
        # 2026 ComfyUI's ProgressBar throttles updates by time: the first one sent from step 2 on interrupts.
        calls.append(value)
        if value >= 2:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    comfy_utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            ksample(comfy, xla, pos, neg, steps=10, backend=backend)
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
    assert len(calls) == 2 and calls[0] == 1 and calls[1] >= 2, calls  # nothing ran on after the interrupt
    assert not mm.processing_interrupted()
    run = ksample(comfy, xla, pos, neg, steps=10, seed=3, backend=backend)
    assert run.compiles == 0 and result_transfers_ok(run) and torch.isfinite(run.samples).all()


@pytest.mark.skipif(TORCHAX, reason="torchax has no CPU fallback: an op it cannot lower fails the model's trace, "
                                     "and the model then runs on the host (the last test of this module)")
def test_cpu_fallback_in_the_model_is_named_once(comfy, backend, tiny, caplog, monkeypatch):
    """An op XLA cannot lower, inside the diffusion model, is logged once with the model's name."""
    import comfy.patcher_extension as pe
    from tpu_runtime import runtime
    from tpu_runtime.state import Notices

    # The sync warning is said once per sampler and process: start from none said (an earlier test's
    # model switch, which moves weights inside the metered span, may already have said it for euler).
    monkeypatch.setattr(runtime.current(), "notices", Notices())

    xla, _, pos, neg = tiny
    patched = xla.clone()

    def with_fallback(executor, x, t, *args, **kwargs):
        out = executor(x, t, *args, **kwargs)
        return out + 0.0 * torch.nonzero(out > 1e9).sum()  # aten::nonzero has no XLA lowering

    patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_fallback", with_fallback)
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        first = ksample(comfy, patched, pos, neg, steps=2, backend=backend)
        ksample(comfy, patched, pos, neg, steps=3, backend=backend)
    assert first.fallbacks, "the test op did not fall back to the CPU"
    named = [r.getMessage() for r in caplog.records if "aten::nonzero" in r.getMessage()]
    assert len(named) == 1 and "BaseModel" in named[0], named
    syncs = [r.getMessage() for r in caplog.records if "device-to-host syncs" in r.getMessage()]
    assert len(syncs) == 1 and "sample_euler" in syncs[0], syncs  # said once, not every run
    assert torch.isfinite(first.samples).all()


def test_sampler_custom_advanced(comfy, backend, tiny):
    """The custom-sampling nodes (noise, guider, sampler, sigmas) go through the same path."""
    from comfy_extras import nodes_custom_sampler as cs

    xla, cpu, pos, neg = tiny
    latent = {"samples": torch.zeros(1, 4, 16, 16)}

    def run(model, steps):
        noise = cs.RandomNoise.execute(11).result[0]
        guider = cs.CFGGuider.execute(model, pos, neg, 6.0).result[0]
        sampler = cs.KSamplerSelect.execute("dpmpp_2m").result[0]
        sigmas = cs.BasicScheduler.execute(model, "karras", steps, 1.0).result[0]
        with torch.inference_mode():
            return cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent).result[0]["samples"]

    run(xla, 5)
    before = backend.counters()
    out = run(xla, 9)
    after = backend.counters()
    assert after["compiles"] == before["compiles"]
    transfers = after["transfers_to_host"] - before["transfers_to_host"]
    if TORCHAX:  # dpmpp_2m: one model call a step, each output back to the host
        assert transfers == after["executions"] - before["executions"] == 9
    else:
        assert transfers <= 2
    assert max_abs_diff(out, run(cpu, 9)) <= 1e-3



def test_a_model_that_reads_the_schedule_runs_lazily_and_right(comfy, backend, caplog):
    """Replay keeps ``sample_sigmas`` (its length is the step count) out of the traced call; a model
    whose Python needs it runs lazily from then on, said once, and its results stay right."""
    import comfy.patcher_extension as pe
    from bench import tiny_model
    from tpu_runtime import runtime

    def reads_schedule(executor, *args, **kwargs):
        schedule = args[-1]["sample_sigmas"] if isinstance(args[-1], dict) else kwargs["transformer_options"][
            "sample_sigmas"]
        return executor(*args, **kwargs) * (1.0 + 0.0 * len(schedule))

    xla = tiny_model.build_patcher("tiny", seed=21)
    cpu = tiny_model.build_patcher("tiny", seed=21, load_device=torch.device("cpu"))
    for patcher in (xla, cpu):
        patcher.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_reads_schedule", reads_schedule)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    assert runtime.current().options.execution == "replay"
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        first = ksample(comfy, xla, pos, neg, steps=3, backend=backend)
        second = ksample(comfy, xla, pos, neg, steps=5, backend=backend)
    said = [r.getMessage() for r in caplog.records if "cannot be replayed" in r.getMessage()]
    assert len(said) == 1 and "sample_sigmas" in said[0], said
    assert max_abs_diff(first.samples, ksample(comfy, cpu, pos, neg, steps=3).samples) <= 1e-3
    assert max_abs_diff(second.samples, ksample(comfy, cpu, pos, neg, steps=5).samples) <= 1e-3
    # torchax: the model then runs eagerly on the host, so nothing comes from the device at all.
    assert second.transfers_to_host == (0 if TORCHAX else 1)
