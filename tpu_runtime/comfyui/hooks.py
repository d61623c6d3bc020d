"""ComfyUI's wrapper hooks (``comfy.patcher_extension``): how the pack's sampling wrappers are added to one
sampling call's model options, under one key, by the names of ComfyUI's ``WrappersMP`` kinds."""
from __future__ import annotations

from typing import Callable

#: The ``WrappersMP`` kinds the pack's sampling wrappers use (the start line says which a ComfyUI lacks).
WRAPPER_KINDS = ("OUTER_SAMPLE", "PREPARE_SAMPLING", "SAMPLER_SAMPLE", "PREDICT_NOISE", "CALC_COND_BATCH",
                 "APPLY_MODEL")


def has_wrapper(model_options: dict, kind: str, key: str) -> bool:
    import comfy.patcher_extension as pe

    return bool(pe.get_wrappers_with_key(getattr(pe.WrappersMP, kind), key, model_options, is_model_options=True))


def add_wrappers(model_options: dict, key: str, wrappers: dict[str, Callable]) -> None:
    """``wrappers``: ``WrappersMP`` kind name (one of :data:`WRAPPER_KINDS`) -> wrapper, added under ``key``."""
    import comfy.patcher_extension as pe

    unknown = set(wrappers) - set(WRAPPER_KINDS)
    if unknown:
        raise ValueError(f"not a wrapper kind the pack uses: {sorted(unknown)}")

    for kind, wrapper in wrappers.items():
        pe.add_wrapper_with_key(getattr(pe.WrappersMP, kind), key, wrapper, model_options, is_model_options=True)
