"""The pack's settings: one pydantic-settings object fed by ``COMFY_TPU_*`` env vars.

ComfyUI rejects unknown CLI flags, so the seed document's ``--tpu-*`` flags become environment
variables (and, optionally, a JSON or TOML file named by ``COMFY_TPU_SETTINGS_FILE``). Bad values
never raise out of :func:`load_settings`: they come back as :class:`SettingsProblem` lines that name
the variable, the value and what is accepted, and the TPU path stays off.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "COMFY_TPU_"
SETTINGS_FILE_ENV = "COMFY_TPU_SETTINGS_FILE"

#: What each field accepts, in words, for error messages.
_ACCEPTED_BOOL = "1/0, true/false, yes/no, on/off"
_ACCEPTED: dict[str, str] = {
    "enable": _ACCEPTED_BOOL + " (unset: on when torch_xla finds a TPU)",
    "disable": _ACCEPTED_BOOL,
    "warmup": _ACCEPTED_BOOL,
    "warmup_steps": "an integer from 1 to 1000",
    "rewarm": _ACCEPTED_BOOL,
    "manual_warmup": _ACCEPTED_BOOL,
    "autocast_bf16": _ACCEPTED_BOOL,
    "compilation_cache": _ACCEPTED_BOOL,
    "shape_padding": _ACCEPTED_BOOL,
    "shape_padding_multiple": "a positive multiple of 8 (pixels), at most 1024",
    "debug_metrics": _ACCEPTED_BOOL,
    "sync_steps": "an integer >= 0 (0 = auto: wait one step behind the device)",
    "cache_dir": "a directory path",
    "execution": "compiled (dynamo + openxla) or lazy (lazy tensor tracing every step)",
    "compiled_graph_break_limit": "an integer >= 0",
    "conv_kernel_layout": "auto, hwio or native (auto: hwio on the PJRT CPU device, native elsewhere)",
    "spmd": "auto, on or off (auto: on when more than one XLA device is present)",
    "mesh": "axis=size pairs separated by commas with a 'data' axis, e.g. data=8 or data=4,model=2 "
            "(unset: every device on one 'data' axis)",
}


class TPUSettings(BaseSettings):
    """Every knob of the pack. Field ``x`` is read from ``COMFY_TPU_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, env_ignore_empty=True)

    enable: Optional[bool] = Field(None, description="--tpu-enable: force the TPU path on (unset: auto).")
    disable: bool = Field(False, description="--tpu-disable: force the TPU path off.")
    warmup: bool = Field(True, description="Automatic warm-up of new signatures (--no-tpu-warmup sets false).")
    warmup_steps: int = Field(1, ge=1, le=1000, description="--tpu-warmup-steps N.")
    rewarm: bool = Field(True, description="--tpu-rewarm: after a restart, compile the signatures recorded in "
                                          "earlier sessions before a model's first step (--no-tpu-rewarm: off).")
    manual_warmup: bool = Field(False, description="--tpu-manual-warmup: only warm up on request.")
    autocast_bf16: bool = Field(True, description="--tpu-autocast-bf16: bf16 autocast around the diffusion model.")
    compilation_cache: bool = Field(True, description="--tpu-compilation-cache.")
    shape_padding: bool = Field(True, description="--tpu-shape-padding: pad latents to shape buckets.")
    shape_padding_multiple: int = Field(64, description="Pixel multiple latents are padded to.")
    debug_metrics: bool = Field(False, description="--tpu-debug-metrics: log XLA metrics per run.")
    sync_steps: int = Field(0, ge=0, description="--tpu-sync-steps N: also wait for the device every N steps.")
    cache_dir: Optional[Path] = Field(None, description="Where the pack keeps its cache (default <ComfyUI user dir>/comfy-tpu).")
    execution: Literal["compiled", "lazy"] = Field(
        "lazy", description="How the diffusion model runs: captured once by dynamo (openxla backend) or "
                                "re-traced lazily every step.")
    compiled_graph_break_limit: int = Field(
        0, ge=0, description="Graph breaks a captured model may have before it falls back to lazy execution.")
    conv_kernel_layout: Literal["auto", "hwio", "native"] = Field(
        "auto", description="Conv kernels handed to XLA as HWIO twins (no per-call kernel transposes; costs a "
                            "device copy of each conv kernel) or as PyTorch's own OIHW weights.")
    spmd: Literal["auto", "on", "off"] = Field("auto", description="Shard the batch over every XLA device (SPMD).")
    mesh: Optional[str] = Field(None, description="Device mesh for SPMD, e.g. data=8 (default: all on 'data').")

    @field_validator("spmd", mode="before")
    @classmethod
    def _spmd_word(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("mesh")
    @classmethod
    def _mesh_spec(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        return format_mesh(parse_mesh(value))

    @field_validator("shape_padding_multiple")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        if value <= 0 or value % 8 or value > 1024:
            raise ValueError("must be a positive multiple of 8, at most 1024")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # Env beats the settings file; explicit keyword arguments beat both.
        return init_settings, env_settings, _SettingsFileSource(settings_cls)

    def non_defaults(self) -> dict[str, Any]:
        """Fields whose value differs from the default: what the startup log line shows."""
        defaults = TPUSettings.model_construct()
        return {name: getattr(self, name) for name in type(self).model_fields
                if getattr(self, name) != getattr(defaults, name)}


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=4,model=2"`` -> ``{"data": 4, "model": 2}``; raises ValueError on anything else.

    Sizes are checked against the device count only when the devices are known (the backend)."""
    axes: dict[str, int] = {}
    for part in text.split(","):
        name, sep, size = part.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(f"{part.strip()!r} is not axis=size")
        if name in axes:
            raise ValueError(f"axis {name!r} given twice")
        axes[name] = int(size)
    if "data" not in axes:
        raise ValueError("the batch is sharded over an axis named 'data': name one")
    return axes


def format_mesh(axes: dict[str, int]) -> str:
    return ",".join(f"{name}={size}" for name, size in axes.items())


class _SettingsFileSource(PydanticBaseSettingsSource):
    """Values from the JSON or TOML file named by ``COMFY_TPU_SETTINGS_FILE`` (lowest priority)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(SETTINGS_FILE_ENV)
        if not path:
            return {}
        return read_settings_file(Path(path))


class SettingsFileError(ValueError):
    """The settings file is missing, unreadable or not a table of settings."""


def read_settings_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise SettingsFileError(f"{SETTINGS_FILE_ENV}={path}: cannot read it ({exc})") from exc
    if not isinstance(data, dict):
        raise SettingsFileError(f"{SETTINGS_FILE_ENV}={path}: expected a table of settings")
    return {str(k).lower().removeprefix(ENV_PREFIX.lower()): v for k, v in data.items()}


class SettingsProblem(BaseModel):
    """One bad setting, said so a person can fix it."""

    variable: str
    value: str
    accepted: str

    def message(self, outcome: str = "The TPU path stays off.") -> str:
        """``outcome``: what happens instead (at start the path stays off; a change made later is refused)."""
        return f"{self.variable}={self.value!r} is not valid: expected {self.accepted}. {outcome}"


class LoadedSettings(BaseModel):
    """The settings in force plus what was wrong with the input (empty when all is well)."""

    model_config = {"arbitrary_types_allowed": True}

    settings: TPUSettings
    problems: list[SettingsProblem] = []

    @property
    def ok(self) -> bool:
        return not self.problems


def load_settings(**overrides: Any) -> LoadedSettings:
    """Read the environment (and settings file); never raises for bad input."""
    try:
        settings = TPUSettings(**overrides)
    except SettingsFileError as exc:
        return LoadedSettings(settings=TPUSettings.model_construct(),
                              problems=[SettingsProblem(variable=SETTINGS_FILE_ENV,
                                                        value=os.environ.get(SETTINGS_FILE_ENV, ""),
                                                        accepted=f"a readable JSON or TOML file ({exc})")])
    except ValidationError as exc:
        return LoadedSettings(settings=TPUSettings.model_construct(), problems=_problems_from(exc))
    problems = []
    if settings.enable and settings.disable:
        problems.append(SettingsProblem(variable=f"{ENV_PREFIX}ENABLE and {ENV_PREFIX}DISABLE",
                                        value="both set", accepted="at most one of them"))
    return LoadedSettings(settings=settings, problems=problems)


def _problems_from(exc: ValidationError) -> list[SettingsProblem]:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        variable = ENV_PREFIX + field.upper()
        value = os.environ.get(variable, error.get("input"))
        problems.append(SettingsProblem(variable=variable, value=str(value),
                                        accepted=_ACCEPTED.get(field, error["msg"])))
    return problems


def env_var(field: str) -> str:
    """The environment variable that feeds ``field``."""
    return ENV_PREFIX + field.upper()
