"""A zoo of tiny random-weight models, one per family, built from ComfyUI's own classes.

Each family is ComfyUI's ``supported_models`` config (``SD15``, ``SDXL``, ``SD3``, ``Flux``,
``WAN21_T2V``) with its ``unet_config`` scaled down, so ComfyUI builds the real model class
(``model_base.SDXL`` with its adm label embedding, ``SD3`` around MMDiT, ``Flux``, ``WAN21`` with
5-D video latents) and its own sampling settings (EPS, flow shift, Flux shift). The weights are
seeded random; so are the buffers ComfyUI creates with ``torch.empty`` and fills from a checkpoint
(MMDiT's ``pos_embed``): left alone they hold whatever memory was there before.

``build_patcher(family, ...)`` loads on ``get_torch_device()`` (the XLA device when the pack is on)
or the given device (the CPU for the eager reference); ``conditioning(family, seed)`` is matching
random conditioning in ComfyUI's ``[[cross_attn, {extras}]]`` form; ``latent_shape(family, ...)``
is the shape of an empty latent for it.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import tiny_model

#: Pooled text embedding width of the tiny SDXL (CLIP-G's is 1280); SDXL's adm adds 6 x 256 size embeddings.
SDXL_POOLED = 32
SDXL_SIZE_EMBEDDINGS = 6 * 256


@dataclass(frozen=True)
class Family:
    """One model family of the zoo: its ComfyUI config class and how small we make it."""

    name: str
    config_class: str                      # the name in ``comfy.supported_models``
    unet_config: dict                      # overrides of the config class's own ``unet_config``
    context_dim: int                       # width of the cross-attention tokens
    tokens: int                            # tokens of the random conditioning
    latent_channels: int
    video: bool = False                    # latents (B, C, T, H, W)
    pooled: Optional[int] = None           # width of ``pooled_output``, when the family reads one
    extras: dict = field(default_factory=dict)  # further conditioning entries (Flux ``guidance``)
    cfg: float = 7.0                       # a typical cfg for the family
    #: The model's parameter dataclass (``module.Class``), and entries of ``unet_config`` given only when
    #: the running ComfyUI's dataclass has that field (fields later releases added, as required ones).
    params_class: Optional[str] = None
    newer_params: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "sd15": Family("sd15", "SD15", dict(tiny_model.TINY_UNET), context_dim=768, tokens=77, latent_channels=4),
    "sdxl": Family(
        "sdxl", "SDXL",
        dict(model_channels=32, in_channels=4, out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2],
             transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=1,
             context_dim=64, adm_in_channels=SDXL_POOLED + SDXL_SIZE_EMBEDDINGS, num_classes="sequential",
             use_linear_in_transformer=True, num_head_channels=16, num_heads=-1, use_spatial_transformer=True,
             image_size=32, legacy=False, use_checkpoint=False, use_temporal_resblock=False),
        context_dim=64, tokens=77, latent_channels=4, pooled=SDXL_POOLED, cfg=6.0),
    "sd3": Family(
        "sd3", "SD3",
        # MMDiT: hidden size = 64 * depth, one head per 64 channels; pos_embed is a 16 x 16 patch grid.
        dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=32,
             context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
             num_patches=256, pos_embed_max_size=16, pos_embed_scaling_factor=None, x_block_self_attn_layers=[]),
        context_dim=64, tokens=16, latent_channels=16, pooled=32, cfg=4.5),
    "flux": Family(
        "flux", "Flux",
        dict(image_model="flux", guidance_embed=True, in_channels=16, out_channels=16, vec_in_dim=32,
             context_in_dim=64, hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1,
             axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True),
        context_dim=64, tokens=16, latent_channels=16, pooled=32, extras={"guidance": 3.5}, cfg=1.0,
        # 2026 ComfyUI: a required ``txt_ids_dims`` (which text-id axes get positions; none for Flux.1).
        params_class="comfy.ldm.flux.model.FluxParams", newer_params={"txt_ids_dims": []}),
    "wan": Family(
        "wan", "WAN21_T2V",
        dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16, dim=64,
             ffn_dim=128, freq_dim=64, text_dim=64, num_heads=2, num_layers=1, window_size=(-1, -1),
             qk_norm=True, cross_attn_norm=True, eps=1e-6),
        context_dim=64, tokens=16, latent_channels=16, video=True, cfg=5.0),
}


def family(name: "str | Family") -> Family:
    """The zoo's family called ``name``; a :class:`Family` given is used as it is (bench_gpu_torchax's real sizes)."""
    if isinstance(name, Family):
        return name
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; the zoo has {', '.join(FAMILIES)}") from None


def running_comfyui_params(fam: Family, config: dict) -> dict:
    """``config`` plus the family's ``newer_params`` that the running ComfyUI's parameter dataclass has
    (detected from its fields, not from a version number): one builder for 0.3.75 and 2026 releases."""
    if not fam.params_class or not fam.newer_params:
        return config
    module, name = fam.params_class.rsplit(".", 1)
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    return {**config, **{key: value for key, value in fam.newer_params.items()
                         if key in fields and key not in config}}


def fill_seeded(module: torch.nn.Module, seed: int) -> None:
    """Every parameter and floating-point buffer of ``module`` from a seeded generator, in a fixed order.

    Matrices and kernels get ``randn / sqrt(fan_in)`` (activations stay O(1) through the blocks, so
    the model's output is a large part of each step and a wrong weight shows); vectors (biases,
    norm scales) ``randn * 0.02``.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = [p for _, p in module.named_parameters()]
    tensors += [b for _, b in module.named_buffers() if b.is_floating_point()]
    with torch.no_grad():
        for tensor in tensors:
            values = torch.randn(tensor.shape, generator=generator)
            if tensor.dim() >= 2:
                values /= math.sqrt(max(tensor[0].numel(), 1))
            else:
                values *= 0.02
            tensor.copy_(values)


def build_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, overrides: Optional[dict] = None):
    """The family's ``comfy.model_base`` model on the CPU with seeded random weights and buffers.

    ``sd15`` is the architecture of ``tiny_model.build_sd15_model`` with the zoo's weight scale (that
    one fills every weight with ``randn * 0.02``, so its UNet's output is close to zero)."""
    import comfy.supported_models

    fam = family(name)
    config_class = getattr(comfy.supported_models, fam.config_class)
    config = dict(config_class.unet_config)
    config.update(fam.unet_config)
    config.update(overrides or {})  # e.g. the depth (bench_depth)
    config = running_comfyui_params(fam, config)
    config["dtype"] = dtype
    model_config = config_class(config)
    model_config.unet_config = config  # over the class's ``unet_extra_config`` (head counts)
    model = model_config.get_model({}, "model.diffusion_model.", device="cpu")
    fill_seeded(model.diffusion_model, seed)
    return model


def build_patcher(name: str, seed: int = 0, load_device=None, dtype: Optional[torch.dtype] = None,
                  overrides: Optional[dict] = None):
    """The family's model wrapped as ComfyUI's loaders wrap it: loads on ``get_torch_device()`` (or
    ``load_device``), weights in ``dtype`` (default: the one ComfyUI picks for a diffusion model)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model = build_model(name, seed, dtype=dtype or mm.unet_dtype(), overrides=overrides)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device or mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def conditioning(name: str, seed: int = 1, batch: int = 1, size: int = 64) -> list:
    """Random conditioning for the family, as its text encoder node would give it: cross-attention
    tokens plus ``pooled_output`` (SDXL, SD3, Flux), SDXL's image size, Flux's ``guidance``."""
    fam = family(name)
    generator = torch.Generator().manual_seed(seed)
    cross_attn = torch.randn(batch, fam.tokens, fam.context_dim, generator=generator)
    extras: dict = dict(fam.extras)
    if fam.pooled:
        extras["pooled_output"] = torch.randn(batch, fam.pooled, generator=generator)
    if fam.name == "sdxl":
        extras.update(width=size, height=size, target_width=size, target_height=size)
    return [[cross_attn, extras]]


def latent_shape(name: str, batch: int = 1, size: int = 64, frames: int = 2) -> tuple[int, ...]:
    """Shape of an empty latent for ``size`` x ``size`` pixels (video: ``frames`` latent frames)."""
    fam = family(name)
    spatial = (size // 8, size // 8)
    if fam.video:
        return (batch, fam.latent_channels, frames, *spatial)
    return (batch, fam.latent_channels, *spatial)


def lora_clone(patcher, seed: int = 7, rank: int = 4, limit: int = 4, strength: float = 1.0):
    """A clone of ``patcher`` with a random rank-``rank`` LoRA on its last ``limit`` attention weights,
    loaded the way ComfyUI's LoraLoader loads a file (``comfy.sd.load_lora_for_models``, ``lora_unet_*``
    keys: ``lora_up``/``lora_down``/``alpha``). Returns (clone, patched weight keys)."""
    import comfy.sd

    generator = torch.Generator().manual_seed(seed)
    state = {}
    weights = patcher.model.state_dict()
    targets = [key for key, weight in weights.items()
               if key.startswith("diffusion_model.") and key.endswith(".weight") and weight.dim() == 2
               and "attn" in key][-limit:]
    for key in targets:
        out_features, in_features = weights[key].shape
        name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        state[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.5
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    clone, _ = comfy.sd.load_lora_for_models(patcher, None, state, strength, 0)
    return clone, targets

