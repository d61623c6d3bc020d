"""ComfyUI's sampler pieces the pack calls (its noise samplers, its mask preparation, its sampler list).

Noise is drawn by ComfyUI's own functions on a host stand-in of the latent, never by a copy of them: a
ComfyUI that changes its seeding (2026 releases seed the CPU generator with ``seed + 1``) gives the device
run the very noise its own CPU run draws."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_noise_sampler(shape: tuple[int, ...], dtype: torch.dtype, seed: Optional[int]) -> NoiseSampler:
    """ComfyUI's ``default_noise_sampler`` for a CPU latent of ``shape``: its draws, on the host."""
    from comfy.k_diffusion.sampling import default_noise_sampler as comfy_default

    return comfy_default(torch.empty(shape, dtype=dtype, device="cpu"), seed=seed)


def brownian_noise_sampler(shape: tuple[int, ...], dtype: torch.dtype, sigma_min: Any, sigma_max: Any,
                           seed: Optional[int]) -> NoiseSampler:
    """ComfyUI's ``BrownianTreeNoiseSampler`` on a host latent of ``shape`` (drawn on the CPU)."""
    from comfy.k_diffusion.sampling import BrownianTreeNoiseSampler

    return BrownianTreeNoiseSampler(torch.zeros(shape, dtype=dtype), sigma_min, sigma_max, seed=seed, cpu=True)


def prepare_mask(mask: torch.Tensor, shape: tuple[int, ...], device: Any) -> torch.Tensor:
    """ComfyUI's ``prepare_mask``: a denoise mask at the latent's resolution."""
    import comfy.sampler_helpers

    return comfy.sampler_helpers.prepare_mask(mask, shape, device)


def sampler_names() -> tuple[str, ...]:
    """``KSampler.SAMPLERS`` of the running ComfyUI (other packs may have added some)."""
    import comfy.samplers

    return tuple(comfy.samplers.KSampler.SAMPLERS)


def sampler_function(name: str) -> Callable:
    """The function ComfyUI runs for a sampler name (``KSAMPLER.sampler_function``)."""
    import comfy.samplers

    sampler = comfy.samplers.sampler_object(name)
    return getattr(sampler, "sampler_function", None) or type(sampler)


def scheduler_names() -> tuple[str, ...]:
    import comfy.samplers

    return tuple(comfy.samplers.KSampler.SCHEDULERS)


def loaded_patchers() -> list:
    """The model patchers ComfyUI holds loaded now (``current_loaded_models``)."""
    import comfy.model_management as mm

    return [entry.model for entry in list(mm.current_loaded_models) if entry.model is not None]
