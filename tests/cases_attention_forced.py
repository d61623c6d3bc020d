"""Bodies run in fresh processes (``tests/child.py``) by ``test_attention_forced_families``: every family of
the tiny zoo sampled through ComfyUI's ``common_ksampler`` on torchax with ``COMFY_TPU_ATTENTION`` forcing
one implementation (flash: JAX's Pallas TPU flash kernel, off a TPU in Pallas's TPU interpret mode), twice, each run against
eager CPU running ComfyUI's own attention on the same weights and inputs.

Per run: the attention calls the router handed each implementation (counted when the model's program is
traced: the flash kernel's sites put into the program JAX compiles), JAX compiles and their seconds,
executions, wall seconds; the max difference from eager."""
from __future__ import annotations

import time

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (imported before ComfyUI's own ``tests``)

SIZE = 64
FRAMES = 2
STEPS = 2


def forced_families(nodes, families: list, steps: int = STEPS, runs: int = 2) -> dict:
    """Each family, ``runs`` euler runs of ``steps`` steps (seeds 0, 1, ...), each compared with eager CPU."""
    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime
    from tpu_runtime.sampling.attach import attention_router

    state = runtime.current()
    backend = state.backend
    router = attention_router(state, state.options.attention)  # the one ``attach`` installs (cached)
    out = {}
    for name in families:
        start = time.perf_counter()
        device = tiny_zoo.build_patcher(name, seed=0, dtype=torch.float32)
        cpu = tiny_zoo.build_patcher(name, seed=0, load_device=torch.device("cpu"), dtype=torch.float32)
        positive, negative = tiny_zoo.conditioning(name, 1, size=SIZE), tiny_zoo.conditioning(name, 2, size=SIZE)
        shape, cfg = tiny_zoo.latent_shape(name, size=SIZE, frames=FRAMES), tiny_zoo.family(name).cfg
        figures = []
        for seed in range(runs):
            calls, compile_s, began = dict(router.calls), backend.compile_seconds(), time.perf_counter()
            run = ksample(nodes, device, positive, negative, steps=steps, cfg=cfg, seed=seed,
                          latent=torch.zeros(shape), backend=backend)
            wall = time.perf_counter() - began
            eager = ksample(nodes, cpu, positive, negative, steps=steps, cfg=cfg, seed=seed, latent=torch.zeros(shape))
            figures.append({
                "calls": {key: count - calls.get(key, 0) for key, count in router.calls.items()
                          if count != calls.get(key, 0)},
                "compiles": run.compiles, "compile_s": round(backend.compile_seconds() - compile_s, 2),
                "executions": run.executions, "fallbacks": run.fallbacks, "wall_s": round(wall, 2),
                "finite": bool(torch.isfinite(run.samples).all()), "max_diff": max_abs_diff(run.samples, eager.samples)})
        out[name] = {"runs": figures, "family_s": round(time.perf_counter() - start, 1)}
    return {"families": out, "router": repr(router), "setting": state.options.attention, "backend": backend.name}
