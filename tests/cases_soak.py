"""Eager-CPU references for the soak test's parity subset, computed in a fresh process."""
from __future__ import annotations

from tests.sampling_harness import ksample  # noqa: F401  (imported before ComfyUI's own ``tests``)


def eager_reference(nodes, prompts: list[dict], out_dir: str) -> dict:
    """The soak prompts' latents on the CPU with fp32 weights (no pack: the models load on the CPU)."""
    import torch

    from bench import tiny_model

    paths = {}
    for spec in prompts:
        overrides = {"model_channels": spec["channels"]} if spec["channels"] != 32 else None
        patcher = tiny_model.build_patcher("tiny", seed=spec["model_seed"], load_device=torch.device("cpu"),
                                           overrides=overrides, dtype=torch.float32)
        run = ksample(nodes, patcher, tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2),
                      steps=spec["steps"], sampler=spec["sampler"], cfg=spec["cfg"], seed=spec["seed"],
                      batch=spec["batch"], size=spec["size"])
        path = f"{out_dir}/eager_{spec['index']:02d}.pt"
        torch.save(run.samples.as_subclass(torch.Tensor), path)  # a plain tensor, whatever the pack tagged
        paths[str(spec["index"])] = path
    return {"paths": paths}
