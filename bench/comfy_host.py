"""Finding and importing a real ComfyUI in this process (demo, bench, tests), as main.py would."""
from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent  # the pack folder (this file is bench/comfy_host.py)


def comfyui_path() -> Path:
    """``COMFYUI_PATH``, else the ComfyUI the pack sits in, else the one ``make setup`` unpacked."""
    candidates = [os.environ.get("COMFYUI_PATH"), PACK_DIR.parent.parent, PACK_DIR / ".cache" / "ComfyUI"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "main.py").is_file() and (Path(candidate) / "comfy").is_dir():
            return Path(candidate)
    raise RuntimeError("ComfyUI not found: set COMFYUI_PATH or run `make setup`")


def tree_version(root: Path) -> str:
    """The ComfyUI version a tree's ``comfyui_version.py`` states, read as text (nothing imported)."""
    source = root / "comfyui_version.py"
    found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", source.read_text(), re.MULTILINE)
    if not found:
        raise RuntimeError(f"{source} states no __version__")
    return found.group(1)


def import_comfy_core() -> Path:
    """Put ComfyUI on ``sys.path`` and import its core (``comfy.*``, CPU mode, as the prestartup script
    sets without CUDA) but not its nodes: enough for ``comfy.samplers`` in a few seconds. Returns its root."""
    root = comfyui_path()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from comfy.cli_args import args

    args.cpu = True
    args.use_pytorch_cross_attention = True
    import comfy.model_management  # noqa: F401
    return root


def import_comfy(load_pack: bool = True):
    """Import ComfyUI's ``nodes`` (CPU mode, as the prestartup script sets without CUDA) and load the pack."""
    os.chdir(comfyui_path())
    import_comfy_core()
    import nodes

    if load_pack and not asyncio.run(nodes.load_custom_node(str(PACK_DIR))):
        raise RuntimeError("ComfyUI failed to load the pack")
    return nodes
