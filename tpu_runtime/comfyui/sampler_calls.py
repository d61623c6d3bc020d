"""ComfyUI calls the compilation cache makes: one sampling call through ``comfy.sample.sample`` (so
ComfyUI's own wrappers and ``extra_conds`` run, as in a prompt), sampler names."""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from tpu_runtime.comfyui import samplers

log = logging.getLogger("comfy_tpu")


def sample_zeros(model: Any, latent_shape: tuple[int, ...], cfg: float, sampler_name: str, scheduler: str,
                 positive: list, negative: list, steps: int) -> None:
    """Sample a zero latent of ``latent_shape`` (batch first; 5-D for video models) for ``steps``
    steps, with ComfyUI's progress bar (in the UI too)."""
    import comfy.sample
    import latent_preview

    latent = torch.zeros(latent_shape)
    noise = comfy.sample.prepare_noise(latent, 0)
    callback = latent_preview.prepare_callback(model, steps)
    with torch.inference_mode():
        comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                            denoise=1.0, seed=0, callback=callback)


def sampler_function_name(sampler_name: str) -> str:
    """What signatures call ComfyUI's sampler ``sampler_name``: its k-diffusion function's name."""
    function = samplers.sampler_function(sampler_name)
    return getattr(function, "__name__", type(function).__name__)


def sampler_name_for(function_name: str) -> Optional[str]:
    """The sampler name that produces this sampler function (for re-warming a recorded signature),
    None when no sampler of this ComfyUI does."""
    for name in samplers.sampler_names():
        try:
            if sampler_function_name(name) == function_name:
                return name
        except Exception as exc:  # a sampler another pack registered may fail to build without its inputs
            log.debug("comfy-tpu: sampler %s not inspected for re-warm: %s", name, exc)
    return None
