"""torchax 0.0.13 on torch >= 2.13: placeholders for the aten names torch removed, only while torchax loads.

Why: torchax 0.0.13 names some aten ops and overloads in tables it builds at import (``torchax/amp.py``'s
autocast policy) and when its first environment loads its op registry (``torchax/ops/jaten.py``,
``torchax/decompositions.py``). torch 2.13 removed them: the named-tensor (``Dimname``) overloads and
the ``cholesky``/``qr`` ops (``linalg_cholesky``/``linalg_qr`` remain), so ``import torchax`` fails with
``AttributeError: ... 'aten.prod' has no overload name 'dim_Dimname'``. Those entries are only table keys:
a traced model can never produce an op that no longer exists, so a placeholder standing in for each of
them changes nothing torchax runs (measured: tiny SD1.5 and Flux through ``nodes.common_ksampler``,
``make check-newest-torch``).

How, narrowly: for the names in :data:`REMOVED_ATEN` that this torch lacks, a placeholder is set as an
instance attribute of ``torch.ops.aten`` (for a removed op) or of its ``OpOverloadPacket`` (for a removed
overload): the very attributes torch's own lookup caches resolved names in. Nothing else of torch changes,
a name this torch still has is never touched, and every placeholder is removed when the window closes
(after ``import torchax`` and ``torchax.default_env()``). Logged once, naming what stood in.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional

import torch

log = logging.getLogger("comfy_tpu")

#: aten ``op`` -> overloads (``None``: the whole op) that torchax 0.0.13 names and torch >= 2.13 lacks
#: (found on torch 2.14.1 by resolving every name torchax looks up while it imports and loads its ops; the same 23
#: on torch 2.15.0).
REMOVED_ATEN: dict[str, Optional[tuple[str, ...]]] = {
    "cholesky": None,
    "qr": None,
    "prod": ("dim_Dimname",),
    "all": ("dimname", "dimname_out"),
    "index_add": ("dimname",),
    "index_copy": ("dimname",),
    "index_copy_": ("dimname",),
    "index_fill": ("Dimname_Scalar", "Dimname_Tensor"),
    "index_fill_": ("Dimname_Scalar", "Dimname_Tensor"),
    "norm": ("names_ScalarOpt_dim", "names_ScalarOpt_dim_dtype", "names_dtype_out", "names_out"),
    "std": ("names_dim", "names_out", "correction_names", "correction_names_out"),
    "std_mean": ("names_dim", "correction_names"),
    "unbind": ("Dimname",),
}


class RemovedOp:
    """Stands in for an aten op or overload this torch no longer has: a hashable key, never called."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, overload: str) -> "RemovedOp":
        if overload.startswith("__"):
            raise AttributeError(overload)
        return RemovedOp(f"{self._name}.{overload}")  # a removed op's ``.default``

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"aten.{self._name} does not exist in torch {torch.__version__} (comfy-tpu placeholder)")

    def __repr__(self) -> str:
        return f"RemovedOp(aten.{self._name})"


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.aten, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _has_overload(packet, overload: str) -> bool:
    try:
        getattr(packet, overload)
        return True
    except (AttributeError, RuntimeError):
        return False


def missing_names(removed: Optional[dict[str, Optional[tuple[str, ...]]]] = None) -> list[tuple[object, str, str]]:
    """``(owner, attribute, shown name)`` for each name of ``removed`` this torch lacks (empty on torch <= 2.12)."""
    found = []
    for op, overloads in (REMOVED_ATEN if removed is None else removed).items():
        if not _has_op(op):
            found.append((torch.ops.aten, op, f"aten.{op}"))
            continue
        packet = getattr(torch.ops.aten, op)
        for overload in overloads or ():
            if not _has_overload(packet, overload):
                found.append((packet, overload, f"aten.{op}.{overload}"))
    return found


@contextlib.contextmanager
def removed_aten_placeholders(removed: Optional[dict[str, Optional[tuple[str, ...]]]] = None) -> Iterator[list[str]]:
    """While open, each name of ``removed`` that this torch lacks resolves to a :class:`RemovedOp`; all are
    removed on exit. Yields the names that stood in (empty: nothing was set, torch has them all)."""
    placed = []
    for owner, attribute, shown in missing_names(removed):
        setattr(owner, attribute, RemovedOp(shown.removeprefix("aten.")))
        placed.append((owner, attribute, shown))
    if placed:
        log.info("comfy-tpu: torch %s lacks %d aten names torchax names at import (%s): placeholders while "
                 "torchax loads (see tpu_runtime/backends/torchax_torch_compat.py)", torch.__version__, len(placed),
                 ", ".join(shown for _, _, shown in placed))
    try:
        yield [shown for _, _, shown in placed]
    finally:
        for owner, attribute, _ in placed:
            if isinstance(owner.__dict__.get(attribute), RemovedOp):
                delattr(owner, attribute)


def import_torchax():
    """``torchax`` imported and its default environment made (op registry loaded), within the placeholders'
    window where this torchax release is known to name what this torch removed (``install/plan.py``: 0.0.13 on
    torch >= 2.13; a newer torchax, such as the 0.0.14 nightlies, loads without them). Returns ``(torchax, env)``."""
    from tpu_runtime.install.plan import torchax_needs_placeholders
    from tpu_runtime.install.versions import installed_version

    needed = torchax_needs_placeholders(torch.__version__, installed_version("torchax"))
    with removed_aten_placeholders() if needed else contextlib.nullcontext():
        import torchax

        env = torchax.default_env()
    return torchax, env
