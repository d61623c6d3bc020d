"""comfy-tpu runtime: runs ComfyUI's diffusion sampling on TPUs through PyTorch/XLA.

Importable without ComfyUI (settings, device detection, host values); the pieces that touch ComfyUI
import it lazily. Inside a running ComfyUI, ``import tpu_runtime`` gives the module the pack uses
(the pack puts its folder on ``sys.path`` and imports this package by name), so the public API
below reads the running pack's state.
"""
from __future__ import annotations

__version__ = "0.1.0"

from tpu_runtime.api import create_execution_signature, get_tpu_stats, tpu_manager  # noqa: E402
from tpu_runtime.settings.tpu_settings import TPUSettings, load_settings  # noqa: E402

__all__ = ["TPUSettings", "load_settings", "get_tpu_stats", "tpu_manager", "create_execution_signature",
           "__version__"]
