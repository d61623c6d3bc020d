"""Bodies run in fresh processes (``tests/child.py``) by the warm-up tests: each starts with no graph
compiled and an empty cache dir, so every compile it counts is its own."""
from __future__ import annotations

import time

from tests.sampling_harness import ksample  # noqa: F401  (imported before ComfyUI's own ``tests``)

#: (steps, scheduler, cfg, seed) of the runs that must find everything compiled after a warm-up.
RUNS = [(4, "normal", 5.0, 1), (12, "karras", 7.5, 2), (20, "exponential", 3.0, 3), (30, "simple", 8.0, 4)]


def _figures(run) -> dict:
    """Counts around the whole ``common_ksampler`` call (a re-warm before the first step included), and
    ``run_compiles``: those of the sampling run itself, from its first step to its result."""
    from tpu_runtime import runtime

    return {"compiles": run.compiles, "executions": run.executions, "transfers": run.transfers_to_host,
            "run_compiles": runtime.current().run_history[-1].compiles}


def coverage(nodes, sampler: str, batch: int = 1, size: int = 128) -> dict:
    """Warm up ``sampler`` through the public API, then sample what a user would: other step counts,
    schedulers, seeds and cfg values, img2img, a size in the same bucket, and a script's call outside
    inference mode."""
    import torch

    import tpu_runtime
    from bench import tiny_model
    from tpu_runtime import runtime

    backend = runtime.current().backend
    patcher = tiny_model.build_patcher("tiny", seed=0)
    pos, neg = tiny_model.sd15_conditioning(1, batch=1), tiny_model.sd15_conditioning(2, batch=1)
    before = backend.counters()["compiles"]
    start = time.perf_counter()
    warm = tpu_runtime.tpu_manager.warmup(patcher, size, size, batch_size=batch, cfg=7.0, sampler_name=sampler,
                                          positive=pos, negative=neg)
    result = {"warmup": {"graphs": warm.graphs_compiled, "seconds": round(time.perf_counter() - start, 2),
                         "steps": warm.steps_run, "process_compiles": backend.counters()["compiles"] - before},
              "runs": {}}
    for steps, scheduler, cfg, seed in RUNS:
        run = ksample(nodes, patcher, pos, neg, steps=steps, sampler=sampler, scheduler=scheduler, cfg=cfg,
                      seed=seed, batch=batch, size=size, backend=backend)
        result["runs"][f"{steps} steps {scheduler} cfg {cfg}"] = _figures(run)
    latent = torch.randn(batch, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(5))
    run = ksample(nodes, patcher, pos, neg, steps=10, sampler=sampler, denoise=0.6, latent=latent, batch=batch,
                  backend=backend)
    result["runs"]["img2img denoise 0.6"] = _figures(run)
    run = ksample(nodes, patcher, pos, neg, steps=12, sampler=sampler, batch=batch, size=size - 8, backend=backend)
    result["runs"][f"{size - 8}px, same bucket"] = _figures(run)
    run = ksample(nodes, patcher, pos, neg, steps=8, sampler=sampler, batch=batch, size=size, backend=backend,
                  inference_mode=False)
    result["runs"]["script call, outside inference mode"] = _figures(run)
    return result


def sample_runs(nodes, runs: int = 3, steps: int = 8, size: int = 64, sampler: str = "euler") -> dict:
    """``runs`` plain KSampler runs of the tiny model (fp32 weights, whatever the compute dtype), as a
    user would queue them; per-run figures."""
    import torch

    import tpu_runtime
    from bench import tiny_model
    from tpu_runtime import runtime

    backend = runtime.current().backend
    patcher = tiny_model.build_patcher("tiny", seed=0, dtype=torch.float32)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    figures = [_figures(ksample(nodes, patcher, pos, neg, steps=steps, sampler=sampler, seed=seed, size=size,
                                backend=backend)) for seed in range(runs)]
    stats = tpu_runtime.get_tpu_stats()
    return {"runs": figures, "recorded": [s["summary"] for s in stats["signatures"]],
            "recorded_signatures": stats["recorded_signatures"]}
