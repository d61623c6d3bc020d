"""What one sampling run does: the settings it reads, overridden per model by the optimisation node."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

#: transformer_options[OPTIONS_KEY]: per-model overrides (a dict), set by the TPU Model Optimization node.
OPTIONS_KEY = "comfy_tpu"
#: Set in model_options by core's TorchCompileModel node.
CORE_TORCH_COMPILE_KEY = "torch_compile_kwargs"


class RunOptions(BaseModel):
    """What one sampling run does; the settings, overridden per model by the optimisation node."""

    autocast_bf16: bool = True
    sync_steps: int = 0
    debug_metrics: bool = False
    shape_padding: bool = True
    shape_padding_multiple: int = 64
    compilation_cache: bool = True
    execution: Literal["compiled", "lazy"] = "lazy"
    compiled_graph_break_limit: int = 0
    conv_kernel_layout: Literal["auto", "hwio", "native"] = "auto"

    @classmethod
    def from_settings(cls, settings: Any) -> "RunOptions":
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})


def for_model(options: RunOptions, model_options: dict) -> RunOptions:
    """``options`` with one model's overrides (the optimisation node's) applied: what its runs use,
    and so what its signatures record."""
    overrides = model_options.get("transformer_options", {}).get(OPTIONS_KEY, {})
    effective = options.model_copy(update={k: v for k, v in overrides.items() if k in RunOptions.model_fields})
    if effective.execution == "compiled" and CORE_TORCH_COMPILE_KEY in model_options:
        # The user's own TorchCompileModel node already compiles this model: don't capture it twice.
        effective = effective.model_copy(update={"execution": "lazy"})
    return effective
