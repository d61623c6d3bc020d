"""Conditioning and latents of a model's own shapes, for a warm-up of a model that has never run.

The shapes come from the model's config as ComfyUI built it (``unet_config`` and the diffusion
model's attributes), family by family: the cross-attention width (``context_dim`` of UNets,
``context_in_dim`` of Flux, ``text_dim`` of Wan, the context embedder's ``in_features`` of MMDiT),
the pooled width (``vec_in_dim``, MMDiT's ``adm_in_channels``, SDXL's ``adm_in_channels`` less its
size embeddings), the token count (given, else the model's ``text_len``, else CLIP's 77 for UNets).
What the config does not say is asked for (:class:`WarmupArgumentError`), never guessed.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from tpu_runtime.cache.warmup import WarmupArgumentError

#: CLIP's token window: every UNet family's text encoders pad to multiples of it.
CLIP_TOKENS = 77
#: Size embeddings ComfyUI's UNet models with a label embedding append to the pooled output (256 each).
SIZE_EMBEDDINGS = {"SDXL": 6 * 256, "SDXLRefiner": 4 * 256}
#: Flux's distilled guidance: a float on the device (data), any value but 0 and 1 traces the same graph.
GUIDANCE = 3.5


def _config(model: Any) -> tuple[Any, dict, Any]:
    inner = getattr(model, "model", model)
    unet_config = dict(getattr(getattr(inner, "model_config", None), "unet_config", {}) or {})
    return inner, unet_config, getattr(inner, "diffusion_model", None)


def context_width(model: Any) -> Optional[int]:
    """The cross-attention tokens' width the model's config names, None when it names none."""
    _, config, diffusion = _config(model)
    for key in ("context_in_dim", "text_dim", "context_dim"):
        if config.get(key):
            return int(config[key] if not isinstance(config[key], (list, tuple)) else config[key][0])
    embedder = (config.get("context_embedder_config") or {}).get("params", {})
    if embedder.get("in_features"):
        return int(embedder["in_features"])
    layer = getattr(diffusion, "context_embedder", None)
    return int(layer.in_features) if isinstance(getattr(layer, "in_features", None), int) else None


def pooled_width(model: Any) -> Optional[int]:
    """The ``pooled_output`` width the model reads (0: it reads none), None when the config does not say."""
    inner, config, _ = _config(model)
    if config.get("vec_in_dim"):
        return int(config["vec_in_dim"])
    adm = int(config.get("adm_in_channels") or getattr(inner, "adm_channels", 0) or 0)
    if not adm:
        return 0
    if config.get("context_embedder_config"):  # MMDiT: the pooled output is the whole adm input
        return adm
    extra = SIZE_EMBEDDINGS.get(type(inner).__name__)
    return adm - extra if extra is not None and adm > extra else None


def model_tokens(model: Any) -> Optional[int]:
    """The token count the model's config implies: its ``text_len`` (Wan), CLIP's 77 for UNets."""
    _, config, diffusion = _config(model)
    text_len = config.get("text_len") or getattr(diffusion, "text_len", None)
    if isinstance(text_len, int) and text_len > 0:
        return text_len
    return CLIP_TOKENS if config.get("context_dim") else None


def config_conditioning(model: Any, tokens: Optional[int] = None, batch: int = 1) -> list:
    """Zero conditioning of the model's own shapes, in ComfyUI's ``[[cross_attn, {options}]]`` form;
    ``WarmupArgumentError`` naming what is missing when the config does not give a shape."""
    inner = getattr(model, "model", model)
    what = type(inner).__name__
    width = context_width(model)
    if width is None:
        raise WarmupArgumentError(f"{what}: its config names no cross-attention width; wire the conditioning "
                                  "the workflow uses into positive")
    tokens = tokens or model_tokens(model)
    if not tokens:
        raise WarmupArgumentError(f"{what}: its config does not say how many text tokens its prompts have; wire "
                                  "the conditioning the workflow uses into positive (or give context_tokens)")
    pooled = pooled_width(model)
    if pooled is None:
        raise WarmupArgumentError(f"{what}: its config does not say how wide its pooled_output is; wire the "
                                  "conditioning the workflow uses into positive")
    options: dict[str, Any] = {}
    if pooled:
        options["pooled_output"] = torch.zeros(batch, pooled)
    _, config, _ = _config(model)
    if config.get("guidance_embed"):
        options["guidance"] = GUIDANCE
    return [[torch.zeros(batch, int(tokens), width), options]]


def latent_shape(model: Any, width: int, height: int, batch: int, frames: int = 1) -> tuple[int, ...]:
    """An empty latent's shape for ``width`` x ``height`` pixels: (B, C, H, W), or (B, C, T, H, W) with
    ``frames`` latent frames for a video model (its latent format has 3 latent dimensions)."""
    inner = getattr(model, "model", model)
    latent_format = getattr(inner, "latent_format", None)
    channels = int(getattr(latent_format, "latent_channels", 4))
    scale = int(getattr(latent_format, "spacial_downscale_ratio", 8) or 8)
    if int(getattr(latent_format, "latent_dimensions", 2)) == 3:
        return (batch, channels, max(int(frames), 1), height // scale, width // scale)
    return (batch, channels, height // scale, width // scale)
