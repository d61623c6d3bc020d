"""Install ComfyUI's requirements without touching the pinned torch stack.

torch, torchvision and torchaudio are pinned together with torch_xla; letting ComfyUI's unpinned
``torch`` lines through would let pip replace them. The lines naming them are dropped, and the
versions installed now are given to pip as constraints, so that a requirement that needs another torch
(a package asking for ``torch>=2.10``) fails with pip's own message instead of replacing it.
"""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PINNED = {"torch", "torchvision", "torchaudio", "torch-xla", "torch_xla"}


def kept_lines(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        name = re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
        if line.strip() and not line.strip().startswith("#") and name not in PINNED:
            lines.append(line.strip())
    return lines


def installed_pins() -> list[str]:
    """``name==version`` for each pinned package this interpreter sees installed."""
    pins = {}
    for name in sorted(PINNED):
        try:
            pins[name.replace("_", "-")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _written(lines: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
    return handle.name


def main() -> int:
    requirements = Path(sys.argv[1])
    if not requirements.is_file():
        print(f"comfy-tpu: ComfyUI's requirements file {requirements} does not exist", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "pip", "install", "-q", "-r", _written(kept_lines(requirements.read_text()))]
    pins = installed_pins()
    if pins:
        command += ["-c", _written(pins)]
    subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
