"""Install ComfyUI's requirements without touching the pinned torch stack.

torch, torchvision and torchaudio are pinned together with torch_xla; letting ComfyUI's unpinned
``torch`` lines through would let pip replace them.
"""
from __future__ import annotations

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


def main() -> int:
    requirements = Path(sys.argv[1])
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(kept_lines(requirements.read_text())) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", handle.name], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
