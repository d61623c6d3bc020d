"""Tests load ComfyUI the way the demo does."""
from bench.comfy_host import PACK_DIR, comfyui_path, import_comfy, import_comfy_core, tree_version  # noqa: F401
