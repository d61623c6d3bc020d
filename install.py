"""Install the torch_xla that matches ComfyUI's torch (ComfyUI-Manager runs ``python install.py``).

Reads what is installed, lets ``tpu_runtime.install.plan.plan_install`` decide, prints one line,
and pip-installs torch_xla only when that plan says so; torch itself is never touched. Safe to run
again (a matching torch_xla means nothing to do). Always exits 0: a non-zero exit makes Manager
flag the pack as broken, while without torch_xla the pack simply leaves ComfyUI stock.

    python install.py [--dry-run] [--tpu | --no-tpu] [--backend torch_xla|torchax]

``--backend torchax`` installs the torchax backend's extra (torchax and JAX, pinned) instead of torch_xla.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Optional

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.insert(0, _PACK_DIR)

from tpu_runtime.install.plan import is_tpu_host, pip_command, plan_install, plan_torchax_install  # noqa: E402
from tpu_runtime.install.versions import installed_version  # noqa: E402

_PREFIX = "comfy-tpu install:"


def dev_entries() -> list[str]:
    """Names under /dev (and /dev/vfio as ``vfio/N``) for the TPU-host guess."""
    entries: list[str] = []
    for folder, prefix in (("/dev", ""), ("/dev/vfio", "vfio/")):
        try:
            entries += [prefix + name for name in os.listdir(folder)]
        except OSError:
            continue
    return entries


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Install the torch_xla matching the installed torch.")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    tpu = parser.add_mutually_exclusive_group()
    tpu.add_argument("--tpu", dest="tpu", action="store_true", default=None,
                     help="install the [tpu] extra (libtpu) even if this does not look like a TPU host")
    tpu.add_argument("--no-tpu", dest="tpu", action="store_false",
                     help="install plain torch_xla (CPU PJRT only) even on a TPU host")
    parser.add_argument("--backend", choices=("torch_xla", "torchax"), default="torch_xla",
                        help="the backend to install (COMFY_TPU_BACKEND): torch_xla (default) or torchax (JAX)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    platform_tpu = args.tpu if args.tpu is not None else is_tpu_host(os.environ, dev_entries())
    if args.backend == "torchax":
        plan = plan_torchax_install(installed_version("torch"), installed_version("torchax"),
                                    installed_version("jax"), platform_tpu)
    else:
        plan = plan_install(installed_version("torch"), installed_version("torch_xla"), platform_tpu)
    print(f"{_PREFIX} {plan.message}", flush=True)
    if plan.action != "install" or not plan.requirement:
        return 0
    command = pip_command(sys.executable, plan.requirement)
    if args.dry_run:
        print(f"{_PREFIX} dry run, would run: {shlex.join(command)}", flush=True)
        return 0
    print(f"{_PREFIX} running: {shlex.join(command)}", flush=True)
    code = subprocess.call(command)
    if code:
        print(f"{_PREFIX} pip failed (exit {code}); the pack leaves ComfyUI stock until "
              f"{plan.requirement} is installed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
