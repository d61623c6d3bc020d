"""Bodies run in fresh processes (``tests/child.py``) by the family re-warm tests: each family of the
tiny zoo (``bench/tiny_zoo.py``) sampled through ComfyUI's ``common_ksampler`` as a user would queue
it, per-run figures, the first run compared with eager CPU on the same weights and inputs."""
from __future__ import annotations


from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (imported before ComfyUI's own ``tests``)

SIZE = 64
FRAMES = 2
STEPS = 4
UNETS = ("sd15", "sdxl")


def _inputs(name: str):
    from bench import tiny_zoo

    return (tiny_zoo.conditioning(name, 1, size=SIZE), tiny_zoo.conditioning(name, 2, size=SIZE),
            tiny_zoo.latent_shape(name, size=SIZE, frames=FRAMES), tiny_zoo.family(name).cfg)


def _figures(run, reference=None) -> dict:
    import torch

    from tpu_runtime import runtime

    figures = {"compiles": run.compiles, "run_compiles": runtime.current().run_history[-1].compiles,
               "transfers": run.transfers_to_host, "finite": bool(torch.isfinite(run.samples).all()),
               "shape": list(run.samples.shape)}
    if reference is not None:
        figures["max_diff"] = max_abs_diff(run.samples, reference)
    return figures


def family_runs(nodes, family: str, runs: int = 2, steps: int = STEPS, sampler: str = "euler") -> dict:
    """``runs`` KSampler runs of ``family`` (seeds 0, 1, ...); each compared with eager CPU."""
    import torch

    import tpu_runtime
    from bench import tiny_zoo
    from tpu_runtime import runtime

    backend = runtime.current().backend
    xla = tiny_zoo.build_patcher(family, seed=0, dtype=torch.float32)
    cpu = tiny_zoo.build_patcher(family, seed=0, load_device=torch.device("cpu"), dtype=torch.float32)
    positive, negative, shape, cfg = _inputs(family)
    out = []
    for seed in range(runs):
        run = ksample(nodes, xla, positive, negative, steps=steps, sampler=sampler, cfg=cfg, seed=seed,
                      latent=torch.zeros(shape), backend=backend)
        reference = ksample(nodes, cpu, positive, negative, steps=steps, sampler=sampler, cfg=cfg, seed=seed,
                            latent=torch.zeros(shape)).samples
        out.append(_figures(run, reference))
    stats = tpu_runtime.get_tpu_stats()
    return {"runs": out, "recorded": [s["summary"] for s in stats["signatures"]],
            "set_aside": [s["rewarm_failed"] for s in stats["signatures"] if s["rewarm_failed"]]}


def warmup_node_then_prompt(nodes, family: str, wired: bool = True, steps: int = 6) -> dict:
    """The ``TPU Manual Warmup`` node (with the workflow's conditioning wired in, or without: shapes
    from the model's config), then real prompts of that shape: their compiles."""
    import torch

    from bench import tiny_zoo
    from tpu_nodes.nodes import TPUManualWarmup
    from tpu_runtime import runtime

    backend = runtime.current().backend
    xla = tiny_zoo.build_patcher(family, seed=0, dtype=torch.float32)
    cpu = tiny_zoo.build_patcher(family, seed=0, load_device=torch.device("cpu"), dtype=torch.float32)
    positive, negative, shape, cfg = _inputs(family)
    frames = shape[2] if len(shape) == 5 else 1
    before = backend.counters()["compiles"]
    # Unwired, the shapes come from the config; its token count too for the UNets (CLIP's 77) and Wan
    # (text_len, 512: the zoo's prompts are shorter, so it is given, as SD3's and Flux's must be).
    tokens = 0 if wired or family in UNETS else tiny_zoo.family(family).tokens
    node = TPUManualWarmup.execute(xla, SIZE, SIZE, shape[0], cfg, "euler", "normal",
                                   positive if wired else None, negative if wired else None, frames=frames,
                                   context_tokens=tokens)
    result = {"status": node.args[1], "warmup_compiles": backend.counters()["compiles"] - before, "runs": []}
    for seed in range(2):
        run = ksample(nodes, xla, positive, negative, steps=steps + seed * 3, sampler="euler", cfg=cfg,
                      seed=seed, latent=torch.zeros(shape), backend=backend)
        reference = ksample(nodes, cpu, positive, negative, steps=steps + seed * 3, sampler="euler", cfg=cfg,
                            seed=seed, latent=torch.zeros(shape)).samples
        result["runs"].append(_figures(run, reference))
    return result
