"""Decisions that must be made before ComfyUI imports ``comfy.model_management``."""
from __future__ import annotations

import logging

from .device import _tpu_runtime_present
from .settings import load_settings

log = logging.getLogger("comfy_tpu")


def path_may_be_on() -> bool:
    """A cheap guess (no runtime start, no torch_xla import) of whether the TPU path will be on."""
    loaded = load_settings()
    if not loaded.ok or loaded.settings.disable or loaded.settings.enable is False:
        return False
    return bool(loaded.settings.enable) or _tpu_runtime_present()


def prepare_comfy_args() -> None:
    if not path_may_be_on():
        return
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available() and not args.cpu:
        args.cpu = True
        log.info("comfy-tpu: no CUDA here; ComfyUI runs in CPU mode and the diffusion model goes to XLA")
    if not any(getattr(args, flag, False) for flag in ("use_split_cross_attention", "use_quad_cross_attention",
                                                        "use_sage_attention", "use_flash_attention")):
        args.use_pytorch_cross_attention = True
