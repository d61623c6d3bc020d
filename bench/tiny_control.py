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


#: The tiny SD1.5-architecture UNet with two res blocks a level: its input blocks then line up with a
#: T2I-Adapter's features (one after each level's res blocks, as in SD1.5's own UNet).
T2I_UNET = dict(num_res_blocks=[2, 2], transformer_depth=[1, 1, 1, 1], transformer_depth_output=[1] * 6)


def t2i_adapter(seed: int = 6, device=None):
    """A T2I-Adapter (``comfy.t2i_adapter.adapter.Adapter``, the full non-XL kind) whose features fit
    the tiny UNet built with :data:`T2I_UNET`, wrapped in ``comfy.controlnet.T2IAdapter`` as
    ``load_t2i_adapter`` wraps a file; ``device`` as ComfyUI's (default its torch device)."""
    import comfy.controlnet
    import comfy.t2i_adapter.adapter

    from bench.tiny_zoo import fill_seeded

    adapter = comfy.t2i_adapter.adapter.Adapter(cin=3 * 64, channels=[32, 64, 128, 128], nums_rb=2, ksize=1, sk=True,
                                                use_conv=False, xl=False)
    fill_seeded(adapter, seed)
    if device is None:
        return comfy.controlnet.T2IAdapter(adapter, adapter.input_channels, 8, "nearest-exact")

    class PinnedT2IAdapter(comfy.controlnet.T2IAdapter):
        """ComfyUI's ``T2IAdapter.copy`` forgets the device (a copy computes on ``get_torch_device()``):
        an eager-CPU reference's copies must stay on ``device``."""

        def copy(self):
            copied = super().copy()
            copied.device = self.device
            return copied

    return PinnedT2IAdapter(adapter, adapter.input_channels, 8, "nearest-exact", device=device)


def family_controlnet(family: str, seed: int = 5, load_device=None):
    """A ControlNet for a tiny zoo family, built as ComfyUI's loader builds that family's: ``sdxl``: a cldm
    ControlNet of the tiny SDXL UNet (reads ``y``); ``flux``: an XLabs-style ``ControlNetFlux`` (image
    hint, ``y`` and ``guidance``) of the tiny Flux's shape."""
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops
    import comfy.supported_models

    from bench.tiny_zoo import FAMILIES, fill_seeded, running_comfyui_params

    fam = FAMILIES[family]
    config_class = getattr(comfy.supported_models, fam.config_class)
    config = dict(config_class.unet_config)
    config.update(fam.unet_config)
    config = running_comfyui_params(fam, config)
    dtype = mm.unet_dtype()
    operations = comfy.ops.disable_weight_init
    if family == "sdxl":
        import comfy.cldm.cldm

        config.pop("out_channels", None)
        config.pop("transformer_depth_output", None)
        model = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=dtype, device="cpu", operations=operations, **config)
        extra = {}
    elif family == "flux":
        import comfy.ldm.flux.controlnet

        config.pop("image_model", None)
        model = comfy.ldm.flux.controlnet.ControlNetFlux(mistoline=False, operations=operations, device="cpu",
                                                         dtype=dtype, **config)
        extra = {"extra_conds": ["y", "guidance"]}
    else:
        raise ValueError(f"no tiny ControlNet for family {family!r} (sdxl, flux)")
    fill_seeded(model, seed)
    model.to(dtype)
    return comfy.controlnet.ControlNet(model, load_device=load_device or mm.get_torch_device(), manual_cast_dtype=None,
                                       **extra)
