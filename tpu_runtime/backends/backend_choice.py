"""Which backend a process runs: ``COMFY_TPU_BACKEND`` as set, or under ``auto`` the one the facts favour.

Why ``auto`` decides this way: on a TPU the backend whose compilation cache loads after a restart is worth
most (torch_xla 2.9 cannot load its cache there, pytorch/xla#9094; JAX's loads), so torchax when it is
installed and runs on this torch, torch_xla otherwise. Off a TPU torch_xla (its CPU path is the checked
one: VAE and text encoders on the device, HWIO conv twins), unless it cannot run on this torch (no release
for torch >= 2.10) and torchax can: then torchax, so that current torch still has a backend.

Pure: the facts are passed in (:func:`facts_here` gathers them without importing torch_xla or JAX).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel

Name = Literal["torch_xla", "torchax"]


class BackendFacts(BaseModel):
    """What the choice depends on: the device kind and whether each backend can run on this torch."""

    on_tpu: bool
    torch_version: str
    #: Why torchax cannot run here (not installed, or unchecked on this torch); None: it can.
    torchax_problem: Optional[str] = None
    #: Why torch_xla cannot run here (not installed, or not built for this torch); None: it can.
    torch_xla_problem: Optional[str] = None


class BackendChoice(BaseModel):
    """The backend a process starts, and why in words (the start line and the doctor say it)."""

    name: Name
    reason: str


def choose_backend(setting: str, facts: BackendFacts) -> BackendChoice:
    """``setting`` is ``COMFY_TPU_BACKEND`` (torch_xla, torchax or auto)."""
    if setting in ("torch_xla", "torchax"):
        return BackendChoice(name=setting, reason=f"COMFY_TPU_BACKEND={setting}")
    if facts.on_tpu:
        if facts.torchax_problem is None:
            return BackendChoice(name="torchax", reason=(
                "auto on a TPU: torchax, whose JAX compilation cache loads after a restart (torch_xla 2.9's does "
                "not load on a TPU, pytorch/xla#9094)"))
        return BackendChoice(name="torch_xla", reason=f"auto on a TPU: torch_xla, as torchax cannot run "
                                                      f"({facts.torchax_problem})")
    if facts.torch_xla_problem is not None and facts.torchax_problem is None:
        return BackendChoice(name="torchax", reason=(
            f"auto off a TPU: torchax, as torch_xla cannot run on torch {facts.torch_version} "
            f"({facts.torch_xla_problem})"))
    return BackendChoice(name="torch_xla", reason="auto off a TPU: torch_xla (its CPU path runs the VAE and text "
                                                  "encoders on the device too)")


def resolve(setting: str) -> BackendChoice:
    """The backend this process runs for ``setting``: the facts are gathered only under ``auto``."""
    if setting in ("torch_xla", "torchax"):
        return choose_backend(setting, BackendFacts(on_tpu=False, torch_version="?"))
    return choose_backend(setting, facts_here())


def facts_here() -> BackendFacts:
    """The facts of this machine and install, from package metadata and environment (imports torch only)."""
    import importlib.util

    import torch

    from tpu_runtime.backends.device import _tpu_runtime_present, version_mismatch
    from tpu_runtime.install import versions
    from tpu_runtime.install.plan import torchax_torch_problem

    torchax_version = versions.installed_version("torchax")
    if torchax_version is None or importlib.util.find_spec("jax") is None:
        torchax_problem: Optional[str] = "torchax and JAX are not installed (python install.py --backend torchax)"
    else:
        torchax_problem = torchax_torch_problem(torch.__version__, torchax_version)
    xla_version = versions.torch_xla_version()
    if xla_version is None:
        xla_problem: Optional[str] = "torch_xla is not installed"
    else:
        xla_problem = version_mismatch(torch.__version__, xla_version)
    return BackendFacts(on_tpu=_tpu_runtime_present(), torch_version=torch.__version__,
                        torchax_problem=torchax_problem, torch_xla_problem=xla_problem)
