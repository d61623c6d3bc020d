"""Warm-up: compile a signature's graphs by sampling a few steps at it, with zero conditioning.

Because the per-step graph does not depend on the step index or count, a warm-up needs only the
steps that reach every distinct graph of a sampler: the latent preparation, each kind of step
(first, middle, last for multistep samplers) and the result. Measured per sampler in fresh processes
(tests/test_warmup_coverage.py): euler-like samplers need 2 steps (the first step's graph, and a later
one that also holds the previous update); multistep and two-call samplers 3. UniPC ramps its order
up and down (1, 2, 3, ..., 3, 2, 1), and a 4-step run steps 2 -> 2, which no longer run has: its
warm-up samples 6 steps, then 4, so every run of 4 steps or more finds its graphs compiled.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

STEPS_TO_COVER = {"euler": 2, "euler_ancestral": 2, "ddim": 2, "lcm": 2, "ddpm": 2}
#: Samplers whose graphs depend on the step count: one warm-up run per step count listed.
STEP_PLANS = {"uni_pc": (6, 4), "uni_pc_bh2": (6, 4)}
DEFAULT_STEPS = 3
#: What the warm-up node and API take to warm every sampler of :data:`WARMED_BY_ALL` at once.
ALL_SAMPLERS = "(all samplers)"
#: The samplers whose parity and compile counts the suite checks. In replay execution (the default) the
#: model's program is shared, so each after the first adds only its own small graphs.
WARMED_BY_ALL = ("euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "lcm",
                 "ddim", "uni_pc")


def step_plan(sampler_name: str, minimum: int = 1) -> tuple[int, ...]:
    """The step counts a warm-up of ``sampler_name`` samples, one sampling run each."""
    plan = STEP_PLANS.get(sampler_name, (STEPS_TO_COVER.get(sampler_name, DEFAULT_STEPS),))
    return (max(plan[0], minimum), *plan[1:])


def zero_conditioning(model: Any, tokens: int = 77, batch: int = 1) -> list:
    """Conditioning of the model's own context shape (zeros): the graph only cares about shapes."""
    inner = getattr(model, "model", model)
    unet_config = getattr(getattr(inner, "model_config", None), "unet_config", {}) or {}
    context_dim = int(unet_config.get("context_dim") or 768)
    extra: dict[str, Any] = {}
    adm = int(getattr(inner, "adm_channels", 0) or 0)
    if adm:
        extra["pooled_output"] = torch.zeros(batch, 1280)
    return [[torch.zeros(batch, tokens, context_dim), extra]]


def run_warmup_sampling(model: Any, width: int, height: int, batch_size: int, cfg: float, sampler_name: str,
                        scheduler: str, positive: Optional[list], negative: Optional[list], steps: int) -> None:
    """One sampling call through ComfyUI's own ``comfy.sample.sample`` (so the real wrappers run)."""
    import comfy.sample
    import latent_preview

    inner = getattr(model, "model", model)
    channels = int(getattr(getattr(inner, "latent_format", None), "latent_channels", 4))
    latent = torch.zeros(batch_size, channels, height // 8, width // 8)
    positive = positive if positive is not None else zero_conditioning(model)
    negative = negative if negative is not None else zero_conditioning(model)
    noise = comfy.sample.prepare_noise(latent, 0)
    callback = latent_preview.prepare_callback(model, steps)  # ComfyUI's progress bar, in the UI too
    with torch.inference_mode():
        comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                            denoise=1.0, seed=0, callback=callback)
