"""The public API (as in the design document): ``get_tpu_stats``, ``tpu_manager``,
``create_execution_signature``. Works before the pack starts or with the path off: it says so."""
from __future__ import annotations

from typing import Any


class TPUPathOff(RuntimeError):
    """The TPU path is off, so there is no device cache to act on."""


def _manager():
    from . import runtime

    if runtime.MANAGER is None:
        reason = runtime.STATE.decision.reason if runtime.STATE else "the pack has not started (load it in ComfyUI)"
        raise TPUPathOff(f"comfy-tpu: the TPU path is off: {reason}")
    return runtime.MANAGER


def get_tpu_stats() -> dict[str, Any]:
    from . import runtime

    state = runtime.STATE
    device = state.report.model_dump() if state and state.report else None
    if runtime.MANAGER is None:
        return {"enabled": False, "reason": state.decision.reason if state else "not started",
                "cached_signatures": 0, "signatures": [], "hits": 0, "misses": 0, "hit_rate": 0.0, "compiles": 0,
                "compile_seconds": 0.0, "persistent_cache": None, "spmd": None, "device": device}
    stats = runtime.MANAGER.stats()
    stats.update(enabled=True, reason=state.decision.reason, device=device)
    return stats


class _ManagerProxy:
    """``tpu_manager``: the running pack's manager, looked up on each call."""

    def clear_cache(self) -> None:
        _manager().clear_cache()

    def is_cached(self, signature) -> bool:
        return _manager().is_cached(signature)

    def stats(self) -> dict[str, Any]:
        return get_tpu_stats()

    def warmup(self, model, width: int, height: int, batch_size: int = 1, cfg: float = 7.0,
               sampler_name: str = "euler", scheduler: str = "normal", positive=None, negative=None,
               force_recompile: bool = False):
        return _manager().warmup(model, width, height, batch_size, cfg, sampler_name, scheduler, positive,
                                 negative, force_recompile)

    def create_execution_signature(self, *args, **kwargs):
        return _manager().create_execution_signature(*args, **kwargs)


tpu_manager = _ManagerProxy()


def create_execution_signature(model, width: int, height: int, batch_size: int = 1, cfg_scale: float = 7.0,
                               scheduler: str = "normal", sampler: str = "euler", steps: int = 20, dtype=None):
    return _manager().create_execution_signature(model, width, height, batch_size, cfg_scale, scheduler, sampler,
                                                 steps, dtype)
