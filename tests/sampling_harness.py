"""Runs ComfyUI's own ``nodes.common_ksampler`` and measures it with torch_xla's counters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Measured:
    samples: torch.Tensor
    compiles: int
    executions: int
    transfers_to_host: int
    fallbacks: dict


def ksample(comfy, patcher, positive, negative, *, steps: int, sampler: str = "euler", scheduler: str = "normal",
            cfg: float = 7.0, seed: int = 42, batch: int = 1, size: int = 128, denoise: float = 1.0,
            latent: Optional[torch.Tensor] = None, noise_mask: Optional[torch.Tensor] = None,
            backend=None) -> Measured:
    """One KSampler run as the KSampler node makes it, with XLA's counters diffed around it."""
    samples = latent if latent is not None else torch.zeros(batch, 4, size // 8, size // 8)
    latent_dict = {"samples": samples}
    if noise_mask is not None:
        latent_dict["noise_mask"] = noise_mask
    before = backend.counters() if backend else None
    fallbacks_before = backend.fallback_ops() if backend else {}
    with torch.inference_mode():
        out = comfy.common_ksampler(patcher, seed, steps, cfg, sampler, scheduler, positive, negative, latent_dict,
                                    denoise=denoise)[0]["samples"]
    if backend is None:
        return Measured(out, 0, 0, 0, {})
    after = backend.counters()
    fallbacks = {k: v - fallbacks_before.get(k, 0) for k, v in backend.fallback_ops().items()
                 if v != fallbacks_before.get(k, 0)}
    return Measured(out, after["compiles"] - before["compiles"], after["executions"] - before["executions"],
                    after["transfers_to_host"] - before["transfers_to_host"], fallbacks)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()
