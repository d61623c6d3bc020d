"""Tests load ComfyUI the way the demo does."""
from bench.comfy_host import PACK_DIR, comfyui_path, import_comfy  # noqa: F401
