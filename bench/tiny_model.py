"""Small random-weight diffusion models built from ComfyUI's own classes (tests, demo, bench).

No weights can be downloaded in CI, so the demo and tests build an SD1.5-architecture UNet with
ComfyUI's ``supported_models.SD15`` config, scaled down, and fill it with seeded random weights
(ComfyUI's layers skip weight init; left alone they would give NaN).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch

TINY_UNET = dict(model_channels=32, in_channels=4, out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2],
                 transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
                 num_head_channels=-1, num_heads=4, use_spatial_transformer=True, image_size=32, legacy=False,
                 use_checkpoint=False)
SD15_UNET = dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                 num_heads=8, num_head_channels=-1, adm_in_channels=None, use_spatial_transformer=True, legacy=False,
                 use_checkpoint=False, image_size=32, in_channels=4, out_channels=4)


def build_sd15_model(size: Literal["tiny", "sd15"] = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
                     overrides: Optional[dict] = None):
    """A ``comfy.model_base.BaseModel`` (SD1.5 architecture) on the CPU with seeded random weights."""
    import comfy.supported_models

    config = dict(comfy.supported_models.SD15.unet_config)
    config.update(TINY_UNET if size == "tiny" else SD15_UNET)
    config.update(overrides or {})
    config["dtype"] = dtype
    model_config = comfy.supported_models.SD15(config)
    model_config.unet_config = config
    model = model_config.get_model({}, "model.diffusion_model.", device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.diffusion_model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.diffusion_model.to(dtype)
    return model


def build_patcher(size: Literal["tiny", "sd15"] = "tiny", seed: int = 0, load_device=None,
                  overrides: Optional[dict] = None, dtype: Optional[torch.dtype] = None):
    """The model wrapped the way ComfyUI's loaders wrap it: load on ``get_torch_device()``, weights in
    ``dtype`` (default: the one ComfyUI picks for the UNet, as ``--fp32-unet`` and the like would)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model = build_sd15_model(size, seed, dtype=dtype or mm.unet_dtype(), overrides=overrides)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device or mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def sd15_conditioning(seed: int = 1, tokens: int = 77, batch: int = 1):
    """Random CLIP-shaped conditioning in ComfyUI's ``[[tensor, dict]]`` form."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, 768, generator=generator), {}]]
