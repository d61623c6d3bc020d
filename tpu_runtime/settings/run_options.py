"""``RunOptions``: what one sampling run does, made from the settings fields marked ``scope="run"``.

The fields (names, types, defaults, descriptions) come from :class:`~tpu_runtime.settings.tpu_settings.TPUSettings`,
so a new per-run setting is one field there. Values are not re-checked against the settings' bounds:
per-model overrides (the optimisation node's dict) go in with ``model_copy(update=...)`` as before.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field, create_model
from typing_extensions import Self

from tpu_runtime.settings.tpu_settings import TPUSettings, fields_where

#: transformer_options[OPTIONS_KEY]: per-model overrides (a dict), set by the TPU Model Optimization node.
OPTIONS_KEY = "comfy_tpu"
#: Set in model_options by core's TorchCompileModel node.
CORE_TORCH_COMPILE_KEY = "torch_compile_kwargs"


class _RunOptionsBase(BaseModel):
    @classmethod
    def from_settings(cls, settings: TPUSettings) -> Self:
        """The run options in ``settings`` (a ``RunOptions``)."""
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})


def _field(name: str) -> tuple[Any, Any]:
    info = TPUSettings.model_fields[name]
    return info.annotation, Field(info.default, description=info.description)


RunOptions = create_model(
    "RunOptions", __base__=_RunOptionsBase, __module__=__name__,
    __doc__="What one sampling run does; the settings, overridden per model by the optimisation node.",
    **{name: _field(name) for name in fields_where(scope="run")})


def for_model(options: "RunOptions", model_options: dict,
              execution_modes: Optional[tuple[str, ...]] = None) -> "RunOptions":
    """``options`` with one model's overrides (the optimisation node's) applied: what its runs use,
    and so what its signatures record. ``execution_modes``: what the backend runs (the first is its
    own); a mode it lacks (compiled on torchax) becomes that one, here only, so runs and the signatures
    the public API makes agree."""
    overrides = model_options.get("transformer_options", {}).get(OPTIONS_KEY, {})
    effective = options.model_copy(update={k: v for k, v in overrides.items() if k in RunOptions.model_fields})
    if effective.execution != "lazy" and CORE_TORCH_COMPILE_KEY in model_options:
        # The user's own TorchCompileModel node already compiles this model: don't capture or replay it too.
        effective = effective.model_copy(update={"execution": "lazy"})
    if execution_modes and effective.execution not in execution_modes:
        effective = effective.model_copy(update={"execution": execution_modes[0]})
    return effective
