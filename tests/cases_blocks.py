"""Bodies run in fresh processes (``tests/child.py``) by tests/test_block_programs.py: repeated blocks
compiled once per kind (``COMFY_TPU_BLOCK_PROGRAMS``), through ComfyUI's own ``common_ksampler``.

Each family of the tiny zoo is built at two depths of the same width; the shallower one samples first,
then the deeper one (other weights): its blocks are the same kinds with the same call shapes, so with
block programs it compiles nothing new, where a whole-model program would compile the whole deeper
model. Every run is compared with eager CPU on the same weights and inputs.
"""
from __future__ import annotations

import gc

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (before ComfyUI's own ``tests``)

#: Per family: the depth overrides (``unet_config``) of the shallow and the deep model.
DEPTHS = {
    "flux": ({"depth": 2, "depth_single_blocks": 2}, {"depth": 4, "depth_single_blocks": 6}),
    "sd3": ({"depth": 2, "num_blocks": 3}, {"depth": 2, "num_blocks": 5}),  # the last joint block is another kind
    "wan": ({"num_layers": 2}, {"num_layers": 5}),
}


def _sample(nodes, family: str, patcher, steps: int, backend=None, seed: int = 42):
    import torch

    from bench import tiny_zoo

    fam = tiny_zoo.family(family)
    pos, neg = tiny_zoo.conditioning(family, 1), tiny_zoo.conditioning(family, 2)
    latent = torch.zeros(tiny_zoo.latent_shape(family, size=64))
    return ksample(nodes, patcher, pos, neg, steps=steps, cfg=fam.cfg, seed=seed, latent=latent, backend=backend)


def depth_runs(nodes, family: str, steps: int = 3) -> dict:
    """Shallow model: first run, a second run; deep model: first run, a second run. Each: compiles,
    transfers, parity; and the block figures after all."""
    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    cpu = torch.device("cpu")
    result: dict = {"runs": []}
    for name, overrides, seed in (("shallow", DEPTHS[family][0], 0), ("deep", DEPTHS[family][1], 3)):
        xla = tiny_zoo.build_patcher(family, seed=seed, dtype=torch.float32, overrides=overrides)
        eager = tiny_zoo.build_patcher(family, seed=seed, load_device=cpu, dtype=torch.float32, overrides=overrides)
        reference = _sample(nodes, family, eager, steps)
        for visit in ("first", "again"):
            measured = _sample(nodes, family, xla, steps, backend)
            result["runs"].append({"model": name, "visit": visit, "compiles": measured.compiles,
                                   "transfers": measured.transfers_to_host, "fallbacks": measured.fallbacks,
                                   "diff": max_abs_diff(measured.samples, reference.samples)})
        if name == "deep":  # the deep model's figures, the shallow one (deleted) collected with its entries
            gc.collect()
            result["blocks"] = state.replayed_models.block_figures()
        del xla, eager
    result["replay_fallbacks"] = state.replayed_models.fallbacks()
    return result


def lora_runs(nodes, family: str = "flux", steps: int = 3) -> dict:
    """A deep model, then a LoRA clone of it at three strengths: parity, compiles of each run, and the block
    figures (the LoRA's new weight tensors have the shapes of the old: no block is traced again)."""
    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime

    backend = runtime.current().backend
    cpu = torch.device("cpu")
    overrides = DEPTHS[family][1]
    xla = tiny_zoo.build_patcher(family, seed=0, dtype=torch.float32, overrides=overrides)
    eager = tiny_zoo.build_patcher(family, seed=0, load_device=cpu, dtype=torch.float32, overrides=overrides)
    runs = []
    for label, strength in (("base", None), ("lora", 1.0), ("lora@0.5", 0.5), ("lora@0.8", 0.8)):
        if strength is None:
            model, reference_model = xla, eager
        else:
            model, _ = tiny_zoo.lora_clone(xla, strength=strength, limit=8)
            reference_model, _ = tiny_zoo.lora_clone(eager, strength=strength, limit=8)
        reference = _sample(nodes, family, reference_model, steps)
        measured = _sample(nodes, family, model, steps, backend)
        runs.append({"label": label, "compiles": measured.compiles, "transfers": measured.transfers_to_host,
                     "diff": max_abs_diff(measured.samples, reference.samples),
                     "samples": measured.samples.flatten()[:64].tolist()})
    return {"runs": runs, "blocks": runtime.current().replayed_models.block_figures()}


def torchax_runs(nodes, family: str) -> dict:
    """The torchax backend's block programs in one fresh process: ``depth_runs``; for Flux also a LoRA at
    three strengths (``lora_runs``) and a ControlNet adding residuals per block at two strengths."""
    import comfy.model_management

    result = depth_runs(nodes, family)
    if family == "flux":
        comfy.model_management.unload_all_models()  # the LoRA's block figures are its model's own
        gc.collect()
        result["lora"] = lora_runs(nodes, family)
        from tests.cases_control import family_runs

        result["control"] = family_runs(nodes, "flux", strengths=[0.9, 0.5], steps=2,
                                        overrides={"depth": 3, "depth_single_blocks": 4})
    return result


def spmd_runs(nodes, family: str = "flux", steps: int = 2) -> dict:
    """Under an SPMD mesh (the parent's env): ``depth_runs`` (a shallow then a deeper model, each run twice),
    then a LoRA at three strengths on the deep one (``lora_runs``), then a ControlNet adding residuals per
    block at two strengths (``cases_control.family_runs``); the block figures of each."""
    import comfy.model_management

    from tests.cases_control import family_runs

    result = depth_runs(nodes, family, steps=steps)
    comfy.model_management.unload_all_models()  # the LoRA's block figures are its model's own
    gc.collect()
    result["lora"] = lora_runs(nodes, family, steps=steps)
    comfy.model_management.unload_all_models()  # the ControlNet run's block figures are its model's own
    gc.collect()
    result["control"] = family_runs(nodes, family, strengths=[0.9, 0.5], steps=steps,
                                    overrides={"depth": 3, "depth_single_blocks": 4})
    result["control"]["blocks"] = _current_block_figures()
    return result


def _current_block_figures() -> dict:
    from tpu_runtime import runtime

    return runtime.current().replayed_models.block_figures()


def first_run(nodes, family: str, depth: int, steps: int = 2, dtype: str = "float32") -> dict:
    """A fresh process's first run of the zoo's ``family`` at ``depth`` (``bench_depth.depth_overrides``): its
    compile seconds and compiles (the backend's counters: JAX's compile events on torchax), the persistent
    cache's hits, then a second run's compiles, and parity with eager CPU (weights of ``dtype``)."""
    import torch

    from bench import tiny_zoo
    from bench.bench_depth import depth_overrides
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    overrides = depth_overrides(family, depth)
    weights = getattr(torch, dtype)
    eager = tiny_zoo.build_patcher(family, seed=0, load_device=torch.device("cpu"), dtype=weights,
                                   overrides=overrides)
    reference = _sample(nodes, family, eager, steps)
    model = tiny_zoo.build_patcher(family, seed=0, dtype=weights, overrides=overrides)
    compile_start = backend.compile_seconds()
    first = _sample(nodes, family, model, steps, backend)
    compile_s = backend.compile_seconds() - compile_start
    again = _sample(nodes, family, model, steps, backend)
    return {"compile_s": compile_s, "compiles": first.compiles, "again_compiles": again.compiles,
            "cache_hits": backend.counters()["persistent_cache_hits"],
            "diff": max(max_abs_diff(first.samples, reference.samples), max_abs_diff(again.samples, reference.samples)),
            "blocks": state.replayed_models.block_figures(), "replay_fallbacks": state.replayed_models.fallbacks()}


def warmup_node_runs(nodes, family: str, depth: int) -> dict:
    """``cases_rewarm.warmup_node_then_prompt`` on the zoo's ``family`` at ``depth`` (its models built deeper):
    the warm-up node, then prompts of its shape; and the block figures after."""
    import functools

    from bench import tiny_zoo
    from bench.bench_depth import depth_overrides
    from tests import cases_rewarm
    from tpu_runtime import runtime

    tiny_zoo.build_patcher = functools.partial(tiny_zoo.build_patcher, overrides=depth_overrides(family, depth))
    result = cases_rewarm.warmup_node_then_prompt(nodes, family)
    result["blocks"] = runtime.current().replayed_models.block_figures()
    result["replay_fallbacks"] = runtime.current().replayed_models.fallbacks()
    return result


def autocast_after_fp32(nodes, family: str = "flux", steps: int = 2) -> dict:
    """An fp32 run, then a bf16-autocast run of the same shapes, block programs on: each block program keeps
    the casts it was traced with, so the bf16 run must trace its own (else it replays fp32 blocks: a "bf16"
    result that computed in fp32). Both compared with eager fp32 on the same weights."""
    import torch

    from bench import tiny_zoo
    from tests.sampling_harness import run_options
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    eager = tiny_zoo.build_patcher(family, seed=0, load_device=torch.device("cpu"), dtype=torch.float32,
                                   overrides=DEPTHS[family][0])
    reference = _sample(nodes, family, eager, steps)
    model = tiny_zoo.build_patcher(family, seed=0, dtype=torch.float32, overrides=DEPTHS[family][0])
    fp32 = _sample(nodes, family, model, steps, backend)
    with run_options(autocast_bf16=True):
        bf16 = _sample(nodes, family, model, steps, backend)
    return {"scale": max(1.0, reference.samples.abs().max().item()),
            "fp32_diff": max_abs_diff(fp32.samples, reference.samples),
            "bf16_diff": max_abs_diff(bf16.samples, reference.samples),
            "blocks": state.replayed_models.block_figures()}
