"""Installed versions, read from package metadata (imports neither torch nor torch_xla)."""
from __future__ import annotations

import importlib.metadata
from typing import Optional


def installed_version(*distributions: str) -> Optional[str]:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def torch_xla_version() -> Optional[str]:
    return installed_version("torch_xla", "torch-xla")


def libtpu_version() -> Optional[str]:
    return installed_version("libtpu", "libtpu-nightly")
