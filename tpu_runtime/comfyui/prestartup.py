"""Decisions that must be made before ComfyUI imports ``comfy.model_management``."""
from __future__ import annotations

import logging
import os
import shutil

from tpu_runtime.backends.device import _tpu_runtime_present
from tpu_runtime.settings.tpu_settings import load_settings

log = logging.getLogger("comfy_tpu")


def path_may_be_on() -> bool:
    """A cheap guess (no runtime start, no torch_xla import) of whether the TPU path will be on."""
    loaded = load_settings()
    if not loaded.ok or loaded.settings.disable or loaded.settings.enable is False:
        return False
    return bool(loaded.settings.enable) or _tpu_runtime_present()


def needs_cpu_mode() -> bool:
    """ComfyUI must run in CPU mode when the path may be on, and also on a TPU host whose settings
    are broken (the path is off, but without CUDA ComfyUI would otherwise crash at startup)."""
    loaded = load_settings()
    if loaded.ok and (loaded.settings.disable or loaded.settings.enable is False):
        return False
    return path_may_be_on() or _tpu_runtime_present()


def _cuda_present() -> bool:
    """Whether an NVIDIA GPU is here, without importing torch (ComfyUI wants torch imported later)."""
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def prepare_comfy_args() -> None:
    if not needs_cpu_mode():
        return
    from comfy.cli_args import args

    if not _cuda_present() and not args.cpu:
        args.cpu = True
        log.info("comfy-tpu: no CUDA here; ComfyUI runs in CPU mode (the diffusion model goes to XLA "
                 "when the TPU path is on)")
    if path_may_be_on():
        _dynamic_vram_off(args)
    if path_may_be_on() and not any(getattr(args, flag, False) for flag in ("use_split_cross_attention", "use_quad_cross_attention",
                                                        "use_sage_attention", "use_flash_attention")):
        args.use_pytorch_cross_attention = True


def _dynamic_vram_off(args) -> None:
    """2026 ComfyUI's dynamic VRAM (comfy-aimdo) is CUDA-only: its ``ModelPatcherDynamic`` would route the
    pack's models through CUDA paths. ComfyUI decides it after the prestartup scripts run (from these
    flags), so turning it off here keeps the legacy ModelPatcher. A ComfyUI without the flags is left alone."""
    if not hasattr(args, "disable_dynamic_vram"):
        return
    if getattr(args, "enable_dynamic_vram", False):
        log.warning("comfy-tpu: --enable-dynamic-vram is CUDA-only (comfy-aimdo); on the TPU path it is turned "
                    "off (models on the XLA device load through ComfyUI's ModelPatcher)")
        args.enable_dynamic_vram = False
    args.disable_dynamic_vram = True
