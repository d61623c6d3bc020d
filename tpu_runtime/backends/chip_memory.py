"""One chip's memory (free, total), as ComfyUI's load decisions and the auto ``model`` axis need it.

The runtime's own figures come first. torch_xla 2.9 answers no memory query under SPMD
(pytorch/xla#9022), so there the total comes from ``COMFY_TPU_HBM_PER_CHIP_GIB`` or the TPU type's
HBM, and the free part is that total less what the pack has placed on the busiest chip (the diffusion
models' weights, measured from their shardings): an estimate that leaves out activations and programs,
which ComfyUI reserves for on its own (its inference memory estimate).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

GIB = 2**30
#: HBM per chip by the runtime's device kind (Google Cloud's published figures).
HBM_BY_TPU_KIND = {"TPU v2": 8, "TPU v3": 16, "TPU v4": 32, "TPU v5 lite": 16, "TPU v5e": 16, "TPU v5p": 95,
                   "TPU v5": 95, "TPU v6 lite": 32, "TPU v6e": 32, "TPU7x": 192}


def hbm_of_tpu_type(tpu_type: str) -> Optional[int]:
    """Bytes of HBM of one chip of ``tpu_type`` (a device kind such as ``TPU v5 lite``), None if unknown."""
    for kind in sorted(HBM_BY_TPU_KIND, key=len, reverse=True):
        if tpu_type.strip().lower().startswith(kind.lower()):
            return HBM_BY_TPU_KIND[kind] * GIB
    return None


def chip_memory(state: "PackState") -> Optional[tuple[int, int]]:
    """(free, total) bytes of one chip, or None where nothing says (PJRT CPU under SPMD, no setting)."""
    backend = state.backend
    reported = backend.memory_info(backend.device())
    if reported is not None:
        return reported
    if state.settings.hbm_per_chip_gib:
        total = int(state.settings.hbm_per_chip_gib * GIB)
    else:
        total = hbm_of_tpu_type(state.report.tpu_type) if state.report is not None else None
    if total is None:
        return None
    held = state.placement.held_per_chip() if state.placement is not None else 0
    return max(total - held, 0), total
