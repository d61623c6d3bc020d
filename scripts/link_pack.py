"""Link this pack into a ComfyUI as ``custom_nodes/comfy-tpu``: the one change ``make setup`` makes in
a ComfyUI folder (``COMFYUI_PATH`` may be a user's own), so that ComfyUI started there lists the pack.

``ln -sfn`` did this before; with the pack cloned into ``custom_nodes/comfy-tpu`` (the README's install
by hand), or another copy of it there, that makes a link *inside* that folder. So: nothing happens when
``custom_nodes/comfy-tpu`` already leads to this pack; a link that leads elsewhere is pointed here (a
checkout moved, or another one set up last); a folder or file that is something else is left alone,
with a warning.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
LINK_NAME = "comfy-tpu"


def link_pack(comfyui: Path, pack: Path = PACK_DIR, name: str = LINK_NAME) -> tuple[bool, str]:
    """Make ``<comfyui>/custom_nodes/<name>`` lead to ``pack``; (True, what was done) or (False, why not)."""
    link = comfyui / "custom_nodes" / name
    if link.exists() and link.resolve() == pack.resolve():
        return True, f"{link} is this pack already"
    if link.exists() and not link.is_symlink():
        return False, f"left {link} alone: it is not a link and not this pack ({pack}); ComfyUI loads that one"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():  # to another checkout, or dangling
        link.unlink()
    link.symlink_to(pack, target_is_directory=True)
    return True, f"linked {link} -> {pack}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("comfyui", type=Path, help="the ComfyUI folder")
    args = parser.parse_args(argv)
    done, message = link_pack(args.comfyui)
    print(f"comfy-tpu: {message}", file=sys.stdout if done else sys.stderr)
    return 0  # a folder left alone is the user's choice: setup goes on


if __name__ == "__main__":
    sys.exit(main())
