"""What ``install.py`` should do about torch_xla, decided from facts passed in (no I/O here).

torch_xla wheels are built against one torch minor version; pairing them wrong crashes at import.
ComfyUI owns torch (its own requirements and the user's CUDA/CPU choice put it there), so this
logic only ever adds the torch_xla that matches the torch already installed and never plans a
torch change: a mismatch or a torch without a torch_xla release is refused with one line saying why.

The requirement carries the ``[tpu]`` extra (which pulls libtpu) only on a TPU host: elsewhere
torch_xla still runs on its CPU PJRT device (useful for tests), and libtpu would be dead weight.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal, Optional

from pydantic import BaseModel

#: torch minor version -> the torch_xla release built for it.
TORCH_XLA_PINS: dict[str, str] = {
    "2.9": "2.9.0",
    "2.8": "2.8.0",
    "2.7": "2.7.0",
    "2.6": "2.6.0",
    "2.5": "2.5.1",
}

#: Environment variables that only a Cloud TPU VM (or someone who means TPU) sets.
_TPU_ENV_VARS = ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "TPU_WORKER_ID")
#: /dev entries TPU chips show up as: /dev/accelN (v2-v4), /dev/vfio/N (v5e, v5p, v6e).
_TPU_DEV_PATTERN = re.compile(r"^(accel\d+|vfio/\d+)$")


class InstallPlan(BaseModel):
    """One decision for install.py: what to do, the pip requirement (if any) and a one-line why."""

    action: Literal["nothing", "install", "refuse"]
    requirement: Optional[str] = None
    message: str


def minor_of(version: Optional[str]) -> Optional[str]:
    """``"2.9.0+cu128"`` -> ``"2.9"``: torch and torch_xla match on major.minor."""
    if not version:
        return None
    match = re.match(r"^\s*(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _torchax_instead(torch_version: str) -> str:
    """On a torch torch_xla lacks but the torchax backend runs on: the command that gives a backend."""
    if torchax_torch_problem(torch_version, TORCHAX_PINS["torchax"]) is not None:
        return ""
    return (f"; the torchax backend runs on torch {torch_version}: python install.py --backend torchax, then "
            "COMFY_TPU_BACKEND=torchax (or auto)")


def torch_xla_missing(torch_version: str) -> str:
    """Why the torch_xla backend cannot start when torch_xla is not installed, and what gives a backend."""
    wanted = TORCH_XLA_PINS.get(minor_of(torch_version) or "")
    if wanted:
        return f"torch_xla is not installed (python install.py in the pack folder installs torch_xla=={wanted})"
    return (f"torch_xla is not installed, and no torch_xla release matches torch {torch_version} (torch_xla exists "
            f"for torch {supported_torch()}){_torchax_instead(torch_version)}")


def supported_torch() -> str:
    """The torch versions that have a torch_xla release, for messages ("2.5, 2.6, ...")."""
    ordered = sorted(TORCH_XLA_PINS, key=lambda v: tuple(int(p) for p in v.split(".")))
    return ", ".join(ordered)


def requirement_for(xla_version: str, platform_tpu: bool) -> str:
    """The pip requirement for one torch_xla release; ``[tpu]`` adds libtpu on a TPU host."""
    return f"torch_xla{'[tpu]' if platform_tpu else ''}=={xla_version}"


def is_tpu_host(environ: Mapping[str, str], dev_entries: Iterable[str]) -> bool:
    """A best guess that this machine has TPU chips: decides whether libtpu is worth installing.

    ``dev_entries`` are names under /dev, with those under /dev/vfio given as ``"vfio/N"``.
    """
    if environ.get("PJRT_DEVICE", "").upper() == "TPU":
        return True
    if any(environ.get(name) for name in _TPU_ENV_VARS):
        return True
    return any(_TPU_DEV_PATTERN.match(entry) for entry in dev_entries)


def plan_install(torch_version: Optional[str], torch_xla_version: Optional[str],
                 platform_tpu: bool) -> InstallPlan:
    """Decide what install.py does. Never plans a change to torch."""
    if not torch_version:
        return InstallPlan(action="refuse", message=(
            "torch is not installed: install ComfyUI and its requirements (which bring its torch) "
            "first, then run install.py again"))
    torch_minor = minor_of(torch_version)
    wanted = TORCH_XLA_PINS.get(torch_minor or "")
    if torch_xla_version:
        if minor_of(torch_xla_version) == torch_minor:
            return InstallPlan(action="nothing", message=(
                f"torch_xla {torch_xla_version} matches torch {torch_version}; nothing to install"))
        fix = (f"replace it with {requirement_for(wanted, platform_tpu)}" if wanted
               else f"torch_xla exists only for torch {supported_torch()}")
        return InstallPlan(action="refuse", message=(
            f"torch_xla {torch_xla_version} does not match torch {torch_version} (major.minor must be "
            f"equal); not changing anything, torch stays as is: {fix}"))
    if not wanted:
        return InstallPlan(action="refuse", message=(
            f"no torch_xla release matches torch {torch_version}; torch_xla exists for torch "
            f"{supported_torch()}, so the pack will run ComfyUI stock{_torchax_instead(torch_version)}"))
    requirement = requirement_for(wanted, platform_tpu)
    return InstallPlan(action="install", requirement=requirement, message=(
        f"torch_xla is missing: {requirement} matches torch {torch_version} (torch stays as is)"))


#: The torchax backend's stack (COMFY_TPU_BACKEND=torchax), pinned together: what the figures in
#: bench/RESULTS.md were taken with. torchax itself requires no torch; JAX brings its own XLA.
TORCHAX_PINS = {"torchax": "0.0.13", "jax": "0.10.2"}


#: torchax releases -> the newest torch minor they import on by themselves (measured: torchax 0.0.13 imports on
#: torch 2.12.1 and fails at import on 2.13.0 and 2.14.1 with ``AttributeError: aten.prod has no overload
#: 'dim_Dimname'`` in torchax/amp.py: torch 2.13 removed the named-tensor overloads and ``aten.cholesky``/``qr``
#: that torchax's tables name). CI runs it on torch 2.9.
TORCHAX_NEWEST_TORCH = {"0.0.13": (2, 12)}

#: torchax releases -> the newest torch minor they run on with the pack's placeholders for those removed names
#: (``backends/torchax_torch_compat.py``; measured: tiny SD1.5 and Flux through ``nodes.common_ksampler``, parity
#: 1e-3, no recompile, the restart loads JAX's cache, on torch 2.14.1 and 2.15.0 (the registry's newest, Dec 2026)
#: with jax 0.10.2: ``make check-newest-torch``).
#: A newer torch is unchecked: refused, naming what runs. torchax's nightly 0.0.14.dev20261026 imports on torch
#: 2.14.1 by itself (a dev build: not pinned).
TORCHAX_NEWEST_TORCH_WITH_PLACEHOLDERS = {"0.0.13": (2, 15)}

#: The newest torch release the torchax backend was checked on end to end (the figures in bench/RESULTS.md).
NEWEST_TORCH_CHECKED = "2.15.0"


def _minor_tuple(version: Optional[str]) -> Optional[tuple[int, int]]:
    minor = minor_of(version)
    return tuple(int(p) for p in minor.split(".")) if minor else None  # type: ignore[return-value]


def torchax_needs_placeholders(torch_version: Optional[str], torchax_version: Optional[str]) -> bool:
    """True when this torchax names aten ops this torch removed (the pack then sets placeholders while it loads)."""
    minor = _minor_tuple(torch_version)
    newest = TORCHAX_NEWEST_TORCH.get(torchax_version or TORCHAX_PINS["torchax"])
    return minor is not None and newest is not None and minor > newest


def torchax_torch_problem(torch_version: Optional[str], torchax_version: Optional[str]) -> Optional[str]:
    """Why this torchax cannot run on this torch (None when it can, or when nothing is known against it)."""
    minor = _minor_tuple(torch_version)
    release = torchax_version or TORCHAX_PINS["torchax"]
    newest = TORCHAX_NEWEST_TORCH_WITH_PLACEHOLDERS.get(release)
    if minor is None or newest is None or minor <= newest:
        return None
    return (f"torchax {release} is unchecked on torch {torch_version}: it fails at import on torch >= 2.13 by "
            f"itself (AttributeError: aten.prod has no overload 'dim_Dimname', in torchax/amp.py), and the pack's "
            f"placeholders for the aten names torch removed are checked up to torch {NEWEST_TORCH_CHECKED}: "
            f"{working_stacks()}")


def working_stacks() -> str:
    """Which torch each backend runs on, as one sentence for refusals (install.py, the start line, the doctor)."""
    return (f"the torchax backend runs on torch <= 2.15 (checked: 2.9.0 in CI, 2.14.1 and {NEWEST_TORCH_CHECKED} by make "
            f"check-newest-torch; torchax {TORCHAX_PINS['torchax']}, "
            f"jax {TORCHAX_PINS['jax']}: python install.py --backend torchax); torch_xla needs torch "
            f"{supported_torch()}")


def torchax_requirements(platform_tpu: bool) -> list[str]:
    """The pip requirements of the ``torchax`` extra; ``jax[tpu]`` (with its libtpu) on a TPU host."""
    return [f"torchax=={TORCHAX_PINS['torchax']}", f"jax[{'tpu' if platform_tpu else 'cpu'}]=={TORCHAX_PINS['jax']}"]


def plan_torchax_install(torch_version: Optional[str], torchax_version: Optional[str], jax_version: Optional[str],
                         platform_tpu: bool) -> InstallPlan:
    """What ``install.py --backend torchax`` does: add torchax and JAX at their pins, never torch."""
    if not torch_version:
        return InstallPlan(action="refuse", message=(
            "torch is not installed: install ComfyUI and its requirements (which bring its torch) first"))
    problem = torchax_torch_problem(torch_version, TORCHAX_PINS["torchax"])
    if problem:  # installing it would leave an install that fails at import: nothing is installed
        return InstallPlan(action="refuse", message=f"not installing: {problem}")
    if torchax_version == TORCHAX_PINS["torchax"] and jax_version == TORCHAX_PINS["jax"]:
        return InstallPlan(action="nothing", message=(
            f"torchax {torchax_version} and jax {jax_version} are installed; nothing to install"))
    requirements = torchax_requirements(platform_tpu)
    note = (" (on a TPU, jax[tpu] pins its own libtpu: one backend per process, see docs/torchax.md)"
            if platform_tpu else "")
    return InstallPlan(action="install", requirement=" ".join(requirements), message=(
        f"torchax backend: installing {', '.join(requirements)} (torch {torch_version} stays as is){note}"))


def pip_command(python: str, requirement: str) -> list[str]:
    """The pip call for ``requirement``; refuses anything naming torch itself (ComfyUI owns it)."""
    requirements = requirement.split()
    for one in requirements:
        name = re.split(r"[\[=<>!~ ;]", one.strip(), maxsplit=1)[0].lower().replace("-", "_")
        if name == "torch":
            raise ValueError(f"refusing to pip install {requirement!r}: torch belongs to ComfyUI")
    return [python, "-m", "pip", "install", *requirements]
