"""Noise for ancestral and SDE samplers, drawn on the host and uploaded.

ComfyUI draws sampler noise with ``torch.Generator(device=x.device)``, which XLA does not support,
and builds SDE Brownian trees from ``zeros_like(x).cpu()`` (a device-to-host sync). Drawing from a CPU
generator seeded the same way gives exactly the noise ComfyUI makes on the CPU for that seed. A run
padded to a shape bucket draws at the user's own shape and pads with zeros, as the initial noise is
padded: the same noise as stock ComfyUI where the user's latent is, none in the border.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch

from . import padding
from .host_values import plain

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _to_bucket(noise: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Noise drawn at the user's shape, zero-padded to the run's (bucket) shape, on ``like``'s device."""
    return padding.pad(noise, like.shape[-2], like.shape[-1]).to(like.device)


def host_default_noise_sampler(like: torch.Tensor, seed: Optional[int],
                               shape: Optional[tuple[int, ...]] = None) -> NoiseSampler:
    """Same draws as ComfyUI's ``default_noise_sampler`` on a CPU latent of ``shape`` (default: like's),
    uploaded to ``like.device``."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
    shape, dtype = tuple(shape or like.shape), like.dtype

    def sample(sigma, sigma_next):
        return _to_bucket(torch.randn(shape, dtype=dtype, generator=generator, device="cpu"), like)

    return sample


def host_brownian_noise_sampler(like: torch.Tensor, sigmas: torch.Tensor, seed: Optional[int],
                                shape: Optional[tuple[int, ...]] = None) -> NoiseSampler:
    """ComfyUI's ``BrownianTreeNoiseSampler`` built on a host stand-in for the latent (of ``shape``)."""
    from comfy.k_diffusion.sampling import BrownianTreeNoiseSampler

    host_sigmas = plain(sigmas)
    sigma_min, sigma_max = host_sigmas[host_sigmas > 0].min(), host_sigmas.max()
    stand_in = torch.zeros(tuple(shape or like.shape), dtype=like.dtype)
    tree = BrownianTreeNoiseSampler(stand_in, sigma_min, sigma_max, seed=seed, cpu=True)

    def sample(sigma, sigma_next):
        return _to_bucket(tree(plain(sigma), plain(sigma_next)), like)

    return sample


def noise_kind(sampler_function: Callable) -> Optional[str]:
    """'brownian', 'default' or None (the sampler draws no noise), read from its signature and source."""
    try:
        if "noise_sampler" not in inspect.signature(sampler_function).parameters:
            return None
        source = inspect.getsource(sampler_function)
    except (TypeError, ValueError, OSError):
        return None
    return "brownian" if "BrownianTreeNoiseSampler" in source else "default"
