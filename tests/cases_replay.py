"""Bodies run in fresh processes (``tests/child.py``) by the replay tests."""
from __future__ import annotations

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (before ComfyUI's own ``tests``)


def new_samplers(nodes, samplers: list, warm_sampler: str = "euler", steps: int = 6, size: int = 128,
                 channels: int = 0) -> dict:
    """Warm up ``warm_sampler`` through the public API, then run each of ``samplers`` once: the compile
    seconds (XLA's CompileTime) each first run costs, against the warm-up's; parity with eager CPU.
    ``channels``: SD1.5's whole UNet topology at that many base channels (0: the 2-level tiny UNet)."""
    import torch

    import tpu_runtime
    from bench import tiny_model
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    size_name, overrides = ("sd15", {"model_channels": channels}) if channels else ("tiny", None)
    xla = tiny_model.build_patcher(size_name, seed=0, overrides=overrides)
    cpu = tiny_model.build_patcher(size_name, seed=0, load_device=torch.device("cpu"), overrides=overrides)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    seconds = backend.compile_seconds()
    warm = tpu_runtime.tpu_manager.warmup(xla, size, size, cfg=7.0, sampler_name=warm_sampler, positive=pos,
                                          negative=neg)
    manager = state.manager

    def signature(sampler: str):
        return manager.create_execution_signature(xla, size, size, 1, cfg_scale=7.0, sampler=sampler)

    def entry(sampler: str):
        return manager.registry.get(signature(sampler))

    result = {"execution": state.options.execution, "warmup": {"graphs": warm.graphs_compiled,
                                                               "compile_s": backend.compile_seconds() - seconds,
                                                               "program_s": entry(warm_sampler).model_program_seconds},
              "samplers": {}}
    for sampler in samplers:
        seconds = backend.compile_seconds()
        run = ksample(nodes, xla, pos, neg, steps=steps, sampler=sampler, size=size, backend=backend)
        compile_s = backend.compile_seconds() - seconds
        recorded = entry(sampler)
        again = ksample(nodes, xla, pos, neg, steps=steps + 3, sampler=sampler, size=size, seed=7, backend=backend)
        reference = ksample(nodes, cpu, pos, neg, steps=steps, sampler=sampler, size=size)
        result["samplers"][sampler] = {
            "compiles": run.compiles, "compile_s": compile_s, "transfers": run.transfers_to_host,
            "executions": run.executions, "model_calls": run.model_calls, "fallbacks": run.fallbacks,
            "again_compiles": again.compiles, "diff": max_abs_diff(run.samples, reference.samples),
            "recorded_s": recorded.compile_seconds, "recorded_program_s": recorded.model_program_seconds,
            "warm_signature": signature(sampler) == signature(warm_sampler)}
    result["replay"] = state.replayed_models.figures()
    result["replay_fallbacks"] = state.replayed_models.fallbacks()
    result["stats_replay"] = tpu_runtime.get_tpu_stats()["replay"]
    return result
