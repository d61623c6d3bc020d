"""comfy-tpu runtime: runs ComfyUI's diffusion sampling on TPUs through PyTorch/XLA.

Importable without ComfyUI (settings, device detection, host values); the pieces that touch ComfyUI
import it lazily. Inside a running ComfyUI, ``import tpu_runtime`` gives the module the pack uses.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .settings import TPUSettings, load_settings  # noqa: E402

__all__ = ["TPUSettings", "load_settings", "__version__"]
