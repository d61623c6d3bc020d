"""Small random-weight ControlNets built from ComfyUI's own classes (tests, bench).

Each is the control model ComfyUI's loaders would build for the tiny models of ``tiny_model`` and
``tiny_zoo``, wrapped the way ``comfy.controlnet`` wraps a loaded file, with seeded random weights
and buffers (ComfyUI's layers leave them uninitialised).
"""
from __future__ import annotations

import torch


def sd15_controlnet(seed: int = 5, load_device=None):
    """A cldm ControlNet of the tiny SD1.5-architecture UNet's shape (``tiny_model.TINY_UNET``), as
    ``comfy.controlnet.ControlNet`` (what ``ControlNetLoader`` returns for an SD1.5 ControlNet)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops
    import comfy.supported_models

    from bench.tiny_model import TINY_UNET
    from bench.tiny_zoo import fill_seeded

    config = dict(comfy.supported_models.SD15.unet_config)
    config.update(TINY_UNET)
    config.pop("out_channels", None)
    config.pop("transformer_depth_output", None)
    dtype = mm.unet_dtype()
    control_model = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=dtype, device="cpu",
                                               operations=comfy.ops.disable_weight_init, **config)
    fill_seeded(control_model, seed)
    control_model.to(dtype)
    return comfy.controlnet.ControlNet(control_model, load_device=load_device or mm.get_torch_device(),
                                       manual_cast_dtype=None)


def hint_image(seed: int = 3, size: int = 128, batch: int = 1) -> torch.Tensor:
    """A ComfyUI IMAGE (``[B, H, W, 3]`` in 0..1)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, size, size, 3, generator=generator)


def apply_control(positive: list, negative: list, control, image: torch.Tensor, strength: float = 1.0,
                  start_percent: float = 0.0, end_percent: float = 1.0) -> tuple[list, list]:
    """(positive, negative) as ``ControlNetApplyAdvanced`` makes them (the node's own code)."""
    import nodes

    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, image, strength,
                                                            start_percent, end_percent)
