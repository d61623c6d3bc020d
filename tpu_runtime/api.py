"""The public API (as in the design document): ``get_tpu_stats``, ``tpu_manager``,
``create_execution_signature``. Works before the pack starts or with the path off: it says so.

Inside a ComfyUI with the TPU path on, this module is also ``comfy.tpu_xla`` (see ``seed_api``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from tpu_runtime.settings.live import SettingRefused  # noqa: F401  (what a refused ``args.tpu_*`` change raises)
from tpu_runtime.state import current

if TYPE_CHECKING:
    from tpu_runtime.state import PackState


class TPUPathOff(RuntimeError):
    """The TPU path is off, so there is no device cache to act on."""


def _manager():
    state = current()
    if state is None or state.manager is None:
        reason = state.decision.reason if state else "the pack has not started (load it in ComfyUI)"
        raise TPUPathOff(f"comfy-tpu: the TPU path is off: {reason}")
    return state.manager


def get_tpu_stats() -> dict[str, Any]:
    return stats_of(current())


def stats_of(state: Optional["PackState"]) -> dict[str, Any]:
    """``get_tpu_stats()`` of a given pack state (the nodes and routes have theirs passed in)."""
    device = state.report.model_dump() if state and state.report else None
    if state is None or state.manager is None:
        return {"enabled": False, "reason": state.decision.reason if state else "not started",
                "cached_signatures": 0, "signatures": [], "hits": 0, "misses": 0, "hit_rate": 0.0, "compiles": 0,
                "compile_seconds": 0.0, "persistent_cache": None, "spmd": None, "device": device}
    stats = state.manager.stats()
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
               force_recompile: bool = False, control_net=None, control_percent: tuple[float, float] = (0.0, 1.0),
               frames: int = 1, context_tokens=None, vae=None, clip=None):
        return _manager().warmup(model, width, height, batch_size, cfg, sampler_name, scheduler, positive,
                                 negative, force_recompile, control_net=control_net, control_percent=control_percent,
                                 frames=frames, context_tokens=context_tokens, vae=vae, clip=clip)

    def create_execution_signature(self, *args, **kwargs):
        return create_execution_signature(*args, **kwargs)


tpu_manager = _ManagerProxy()


def create_execution_signature(model: Any = None, width: Optional[int] = None, height: Optional[int] = None,
                               batch_size: Optional[int] = None, cfg_scale: float = 7.0, scheduler: str = "normal",
                               sampler: Optional[str] = None, steps: int = 20, dtype: Any = None, *,
                               model_id: Any = None, input_shape: Optional[tuple[int, int, int, int]] = None,
                               context_tokens: int = 77):
    """The signature a sampling run with these arguments has (pass it to ``tpu_manager.is_cached``).

    The pack's spelling: ``(model, width, height, batch_size=1, cfg_scale, scheduler, sampler, steps,
    dtype)``. The seed document's: ``model_id=`` (the model, its class name or its fingerprint),
    ``input_shape=(B, C, H, W)`` (latent) instead of width/height/batch; a sampler name given as
    ``scheduler`` (as in the seed's example) is taken as the sampler. Only the graph fields decide
    whether it is cached (``signature.GRAPH_FIELDS``); cfg (beyond cfg == 1), scheduler and steps are
    shown, not matched. Bad or contradictory arguments raise ValueError (pydantic's)."""
    from tpu_runtime.cache.seed_signature import SignatureRequest, build

    request = SignatureRequest(model=model, model_id=model_id, width=width, height=height, input_shape=input_shape,
                               batch_size=batch_size, cfg_scale=cfg_scale, scheduler=scheduler, sampler=sampler,
                               steps=steps, dtype=dtype, context_tokens=context_tokens)
    return build(request, _manager())
