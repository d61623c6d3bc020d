"""Body of the model-switching test, run in one fresh process (``tests/child.py``): every family of the
tiny zoo sampled in one order, then in another, then a LoRA clone of one of them and its base model
again, each run compared with eager CPU on the same weights and inputs."""
from __future__ import annotations

import time

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (imported before ComfyUI's own ``tests``)

FIRST_ORDER = ["sd15", "sdxl", "sd3", "flux", "wan"]
#: No transition of the first order repeats here (wan -> flux, flux -> sd3, sd3 -> sd15, ...).
SECOND_ORDER = ["flux", "sd3", "sd15", "wan", "sdxl"]
LORA = "+lora"
#: The same LoRA at other strengths: ComfyUI patches the same weights with other values (no compile).
LORA_STRENGTHS = {"+lora@0.5": 0.5, "+lora@0.8": 0.8}


def switching(nodes, steps: int = 3, size: int = 64, frames: int = 2, lora_family: str = "sdxl",
              sampler: str = "euler") -> dict:
    """Per visit: compiles, executions, device-to-host transfers, CPU-fallback ops (counter diff
    around the call, and the pack's own per-run figures), max |XLA - eager|, wall seconds."""
    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime

    backend = runtime.current().backend
    cpu = torch.device("cpu")
    built_s = time.perf_counter()
    xla_models, cpu_models, inputs = {}, {}, {}
    for name in FIRST_ORDER:
        xla_models[name] = tiny_zoo.build_patcher(name, seed=0, dtype=torch.float32)
        cpu_models[name] = tiny_zoo.build_patcher(name, seed=0, load_device=cpu, dtype=torch.float32)
        inputs[name] = (tiny_zoo.conditioning(name, 1, size=size), tiny_zoo.conditioning(name, 2, size=size),
                        tiny_zoo.latent_shape(name, size=size, frames=frames), tiny_zoo.family(name).cfg)
    xla_models[lora_family + LORA], lora_keys = tiny_zoo.lora_clone(xla_models[lora_family])
    cpu_models[lora_family + LORA], _ = tiny_zoo.lora_clone(cpu_models[lora_family])
    inputs[lora_family + LORA] = inputs[lora_family]
    for suffix, strength in LORA_STRENGTHS.items():
        xla_models[lora_family + suffix], _ = tiny_zoo.lora_clone(xla_models[lora_family], strength=strength)
        cpu_models[lora_family + suffix], _ = tiny_zoo.lora_clone(cpu_models[lora_family], strength=strength)
        inputs[lora_family + suffix] = inputs[lora_family]
    built_s = time.perf_counter() - built_s

    visits = FIRST_ORDER + SECOND_ORDER + [lora_family + LORA] + [lora_family + suffix for suffix in LORA_STRENGTHS] + [
        lora_family]
    seen: set[str] = set()
    result = {"visits": [], "lora_keys": lora_keys, "build_s": round(built_s, 2)}

    def eager(name: str, seed: int) -> torch.Tensor:
        positive, negative, shape, cfg = inputs[name]
        return ksample(nodes, cpu_models[name], positive, negative, steps=steps, sampler=sampler, cfg=cfg,
                       seed=seed, latent=torch.zeros(shape)).samples

    for index, name in enumerate(visits):
        positive, negative, shape, cfg = inputs[name]
        seed = 10 + index
        latent = torch.zeros(shape)
        uploads = backend.counters().get("weight_uploads", 0)
        start = time.perf_counter()
        run = ksample(nodes, xla_models[name], positive, negative, steps=steps, sampler=sampler, cfg=cfg,
                      seed=seed, latent=latent, backend=backend)
        wall = time.perf_counter() - start
        figures = runtime.current().run_history[-1]  # the pack's own per-run figures
        reference = eager(name, seed)
        result["visits"].append({
            "model": name, "visit": "second" if name in seen else "first", "shape": list(run.samples.shape),
            "compiles": run.compiles, "run_compiles": figures.compiles, "executions": run.executions,
            "transfers": run.transfers_to_host, "run_transfers": figures.transfers_to_host, "fallbacks": run.fallbacks, "run_fallbacks": figures.fallback_ops,
            "max_diff": max_abs_diff(run.samples, reference), "finite": bool(torch.isfinite(run.samples).all()),
            "abs_max": float(run.samples.abs().max()), "wall_s": round(wall, 2), "model_calls": run.model_calls,
            "weight_uploads": backend.counters().get("weight_uploads", 0) - uploads})
        seen.add(name)
    # How far apart the LoRA clone's and its base's results are: a parity bound far below this means
    # the parity check would have seen the LoRA missing (or left behind on the base).
    seed = 10 + visits.index(lora_family + LORA)
    result["lora_effect"] = max_abs_diff(eager(lora_family + LORA, seed), eager(lora_family, seed))
    return result
