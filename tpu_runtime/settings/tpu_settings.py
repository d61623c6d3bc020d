"""The pack's settings: one pydantic-settings object fed by ``COMFY_TPU_*`` env vars.

ComfyUI rejects unknown CLI flags, so the seed document's ``--tpu-*`` flags become environment
variables (and, optionally, a JSON or TOML file named by ``COMFY_TPU_SETTINGS_FILE``). Bad values
never raise out of :func:`load_settings`: they come back as :class:`SettingsProblem` lines that name
the variable, the value and what is accepted, and the TPU path stays off.

Each field of :class:`TPUSettings` is the one place a setting is described: its type, default and
checks, and (through :func:`setting`) what the launcher, the run options, the live ``args.tpu_*``
attributes, error messages and the README table need. Everything else derives from the fields.
"""
from __future__ import annotations

import json
import os
import tomllib
import types
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional, Union, get_args, get_origin

from annotated_types import Ge, Le
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "COMFY_TPU_"
SETTINGS_FILE_ENV = "COMFY_TPU_SETTINGS_FILE"
#: What an on/off field accepts, in words; every bool field gets it unless it says more.
ACCEPTED_BOOL = "1/0, true/false, yes/no, on/off"
_META_KEY = "comfy_tpu"


class SettingMeta(BaseModel):
    """What the rest of the pack needs to know about one setting, beyond its type and default."""

    model_config = {"frozen": True}

    #: Who reads it: once at ``start``, each sampling ``run`` (a RunOptions field), or the warm-up ``manager``.
    scope: Literal["start", "run", "manager"] = "start"
    #: The seed document has a ``--tpu-*`` flag for it: ComfyUI's ``args`` gets an ``args.tpu_<field>``.
    seed: bool = False
    #: What a bad value is told it should be; derived for bools and bounded ints when empty.
    accepted: str = ""
    #: The launcher flag's metavar; derived from the type when empty (int: N, path: PATH, choices: a|b).
    metavar: str = ""
    #: Said after the default in the README (``unset: on when a TPU is found``).
    default_note: str = ""
    #: Logged when it changes while ComfyUI runs, after "in force from the next sampling run".
    change_note: str = ""


def setting(default: Any, description: str, **kwargs: Any) -> Any:
    """``Field(default, description=...)`` plus :class:`SettingMeta` (its keywords); other keywords go to
    ``Field`` (``ge``, ``le``...). ``description`` is the README's "meaning" column."""
    meta = {key: kwargs.pop(key) for key in list(kwargs) if key in SettingMeta.model_fields}
    return Field(default, description=description,
                 json_schema_extra={_META_KEY: SettingMeta(**meta).model_dump(exclude_defaults=True)}, **kwargs)


class TPUSettings(BaseSettings):
    """Every knob of the pack. Field ``x`` is read from ``COMFY_TPU_X`` and set by ``--tpu-x``.

    A new setting is one field here, made with :func:`setting`; nothing else keeps a list of them."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, env_ignore_empty=True)

    enable: Optional[bool] = setting(
        None, "force the TPU path on (any PJRT device)", seed=True, default_note="on when a TPU is found",
        accepted=f"{ACCEPTED_BOOL} (unset: on when torch_xla finds a TPU)")
    disable: bool = setting(False, "force the TPU path off", seed=True)
    manual_warmup: bool = setting(False, "only warm up on request", scope="manager", seed=True,
                                  change_note="; automatic warm-up of recorded signatures follows it")
    warmup: bool = setting(True, "warm up new signatures automatically", scope="manager", seed=True,
                           change_note="; automatic warm-up of recorded signatures follows it")
    warmup_steps: int = setting(1, "the least steps a warm-up runs (it runs more when the sampler needs them)",
                                ge=1, le=1000, scope="manager", seed=True)
    rewarm: bool = setting(
        True, "after a restart, compile the signatures recorded in earlier sessions before a model's first step "
              "(each at most once a process; ones this process cannot reproduce are skipped, with the reason), "
              "and a VAE's or text encoder's recorded calls at its first call")
    autocast_bf16: bool = setting(
        True, "bf16 autocast around the diffusion model (and a bf16 UNet)", scope="run", seed=True,
        change_note="; a model already loaded keeps its UNet dtype until ComfyUI loads it again")
    compilation_cache: bool = setting(
        True, "keep the compilation cache", scope="run", seed=True,
        change_note="; XLA's persistent cache folder is set up at start only, this switches recording signatures")
    shape_padding: bool = setting(True, "pad latents to shape buckets", scope="run", seed=True)
    shape_padding_multiple: int = setting(
        64, "the pixel multiple latents are padded up to (a positive multiple of 8, at most 1024)", scope="run",
        seed=True, accepted="a positive multiple of 8 (pixels), at most 1024")
    debug_metrics: bool = setting(False, "log XLA figures after each run", scope="run", seed=True)
    sync_steps: int = setting(
        0, "also wait for the device every N steps (memory relief)", ge=0, scope="run", seed=True,
        default_note="auto", accepted="an integer >= 0 (0 = auto: wait one step behind the device)")
    cache_dir: Optional[Path] = setting(None, "where the pack keeps its files", accepted="a directory path",
                                        default_note="`<ComfyUI user dir>/comfy-tpu`")
    backend: Literal["torch_xla", "torchax", "auto"] = setting(
        "torch_xla", "`torch_xla`: PyTorch/XLA; `torchax`: PyTorch on JAX (the diffusion model jitted by JAX, "
                     "whose compilation cache survives restarts; replay execution only; needs the `torchax` "
                     "extra); see [docs/torchax.md](docs/torchax.md); `auto`: torchax on a TPU when it runs on "
                     "this torch, else torch_xla (off a TPU torch_xla, or torchax where torch_xla has no release "
                     "for this torch). One per process, chosen at start; the start line and the doctor say which "
                     "and why",
        metavar="NAME", default_note="why: the Backends section below",
        accepted="torch_xla, torchax or auto (torchax needs the extra: python install.py --backend torchax)")
    execution: Literal["replay", "compiled", "lazy"] = setting(
        "replay", "`replay`: the diffusion model is traced once per call shape and replayed as its own program; "
                "`compiled`: captured once by dynamo (openxla backend); `lazy`: re-traced every step, fused with "
                "the sampler's math (see below)", scope="run", metavar="MODE",
        accepted="replay (traced once, replayed), compiled (dynamo + openxla) or lazy (lazy tensor tracing every "
                 "step)")
    block_programs: Literal["auto", "on", "off"] = setting(
        "auto", "replay execution: each kind of repeated block (Flux's double/single blocks, MMDiT's joint blocks, "
                "Wan's blocks) traced and compiled once and run once per block with its own weights, so the "
                "compile does not grow with depth (torch_xla and torchax); `on`: also for kinds of 2 or 3 blocks; "
                "`off`: the whole model as one program; see [docs/block_programs.md](docs/block_programs.md)",
        scope="run",
        default_note="on (torch_xla or torchax, one device or an SPMD mesh) for a model with a kind of 4 blocks "
                     "or more",
        accepted="auto, on or off (auto: on for models with 4 or more blocks of a kind)")
    compiled_graph_break_limit: int = setting(
        0, "graph breaks a captured model may have before it falls back to lazy", ge=0, scope="run")
    conv_kernel_layout: Literal["auto", "hwio", "native"] = setting(
        "auto", "`hwio`: conv kernels go to XLA as HWIO twins kept on the device (no kernel transposes a call; "
                "costs a device copy of every conv kernel); `native`: PyTorch's OIHW weights (see below)",
        scope="run", default_note="`hwio` on the PJRT CPU device, `native` on a TPU",
        accepted="auto, hwio or native (auto: hwio on the PJRT CPU device, native elsewhere)")
    attention: Literal["auto", "sdpa", "blockwise", "flash"] = setting(
        "auto", "attention in the diffusion model: `sdpa`: PyTorch SDPA (XLA materializes the scores); "
                "`blockwise`: memory-bounded (query blocks, online softmax over key blocks: no seq x seq "
                "buffer); `flash`: the Pallas flash kernel (torch_xla: on a TPU only, else blockwise; torchax: "
                "Pallas interpret mode off a TPU)", scope="run", metavar="auto|sdpa|blockwise|flash",
        default_note="`auto`: SDPA below 4,096 tokens; from there Pallas flash on a TPU (blockwise when masked), "
                     "blockwise elsewhere",
        accepted="auto, sdpa, blockwise or flash")
    spmd: Literal["auto", "on", "off"] = setting(
        "auto", "split the diffusion model's batch over every chip (torch_xla SPMD), and in `auto` weights over a "
                "`model` axis when a model (the diffusion model, or text encoders on the device) does not fit one "
                "chip; see [docs/scaling.md](docs/scaling.md)",
        default_note="on with more than one XLA device",
        accepted="auto, on or off (auto: on when more than one XLA device is present)")
    mesh: Optional[str] = setting(
        None, "the SPMD mesh, `axis=size` pairs with a `data` axis (their product = the device count); a `model` "
              "axis splits the weights of the diffusion model and of the text encoders on the device over its chips",
        metavar="data=N", default_note="every device on one `data` axis",
        accepted="axis=size pairs separated by commas with a 'data' axis, e.g. data=8 or data=4,model=2 "
                 "(unset: every device on one 'data' axis)")

    vae: Literal["auto", "device", "host"] = setting(
        "auto", "where ComfyUI's VAE decodes and encodes: `device`: on the XLA device, a program per latent "
                "(or tile) shape and batch, fp32 unless ComfyUI is told otherwise (`--bf16-vae`), the image back "
                "to the host in one transfer, ComfyUI's own decode on the host if that fails; `host`: where "
                "stock ComfyUI puts it. torch_xla (lazy trace) and torchax (jitted function)",
        metavar="auto|device|host",
        default_note="`auto`: `device` on a TPU, `host` elsewhere (on the PJRT CPU device XLA's program is "
                     "slower than PyTorch's own decode: bench/RESULTS.md)",
        accepted="auto, device or host")
    text_encoders: Literal["auto", "device", "host"] = setting(
        "auto", "where the text encoders (CLIP-L, CLIP-G, T5-XXL, umt5) run: `device`: on the XLA device, a "
                "program per token bucket (CLIP: 77 per chunk, chunk count a power of two; T5: length a "
                "multiple of 128, the added keys masked), the result back to the host in one transfer; under "
                "a mesh with a `model` axis their weights are split over it as the diffusion model's; "
                "`host`: where stock ComfyUI puts them (LLM encoders stay there). torch_xla and torchax",
        metavar="auto|device|host", default_note="`auto`: `device` on a TPU, `host` elsewhere",
        accepted="auto, device or host")

    hbm_per_chip_gib: Optional[float] = setting(
        None, "one chip's memory in GiB, where the runtime does not report it (torch_xla answers no memory "
              "query under SPMD): ComfyUI's load decisions and the auto `model` axis use it",
        gt=0, metavar="GIB", default_note="the runtime's figure, else the TPU type's (v5e 16, v6e 32...)",
        accepted="a positive number of GiB, e.g. 16 or 31.25")

    @field_validator("spmd", "backend", "block_programs", "vae", "text_encoders", mode="before")
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


# -- what derives from the fields --------------------------------------------------------------
def setting_meta(field: str) -> SettingMeta:
    """The field's :class:`SettingMeta` (the defaults for a field made with a plain ``Field``)."""
    extra = TPUSettings.model_fields[field].json_schema_extra
    return SettingMeta(**extra.get(_META_KEY, {})) if isinstance(extra, dict) else SettingMeta()


def fields_where(**meta: Any) -> tuple[str, ...]:
    """The fields whose metadata has these values, in field order: ``fields_where(scope="run")``."""
    return tuple(name for name in TPUSettings.model_fields
                 if all(getattr(setting_meta(name), key) == value for key, value in meta.items()))


def value_type(field: str) -> Any:
    """The field's type without ``Optional``: ``bool``, ``int``, ``Path``, ``str`` or a ``Literal``."""
    annotation = TPUSettings.model_fields[field].annotation
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    return annotation


def accepted(field: str) -> str:
    """What ``field`` accepts, in words ("" when neither the metadata nor the type says)."""
    meta, kind = setting_meta(field), value_type(field)
    if meta.accepted:
        return meta.accepted
    if kind is bool:
        return ACCEPTED_BOOL
    if kind is int:
        bounds = TPUSettings.model_fields[field].metadata
        low = next((b.ge for b in bounds if isinstance(b, Ge)), None)
        high = next((b.le for b in bounds if isinstance(b, Le)), None)
        if low is not None and high is not None:
            return f"an integer from {low} to {high}"
        return "an integer" + (f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
    if get_origin(kind) is Literal:
        words = [str(arg) for arg in get_args(kind)]
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    return ""


class LaunchFlag(NamedTuple):
    """One ``comfy-tpu launch`` flag: an on/off switch (``const`` is what it sets) or one taking a value."""

    flag: str
    field: str
    const: Optional[bool] = None
    metavar: Optional[str] = None


def launch_flags(field: str) -> list[LaunchFlag]:
    """``--tpu-<field>``; a switch that is on by default can also be turned off (``--no-tpu-<field>``)."""
    flag, kind = "--tpu-" + field.replace("_", "-"), value_type(field)
    if kind is bool:
        switch_off = TPUSettings.model_fields[field].default is True
        return [LaunchFlag(flag, field, True)] + ([LaunchFlag("--no-" + flag[2:], field, False)] if switch_off else [])
    metavar = setting_meta(field).metavar or {int: "N", Path: "PATH"}.get(kind) or (
        "|".join(get_args(kind)) if get_origin(kind) is Literal else "VALUE")
    return [LaunchFlag(flag, field, metavar=metavar)]


def all_launch_flags() -> list[LaunchFlag]:
    """Every field's flags, in field order."""
    return [flag for field in TPUSettings.model_fields for flag in launch_flags(field)]


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
        words = accepted(field) if field in TPUSettings.model_fields else ""
        problems.append(SettingsProblem(variable=variable, value=str(value), accepted=words or error["msg"]))
    return problems


def env_var(field: str) -> str:
    """The environment variable that feeds ``field``."""
    return ENV_PREFIX + field.upper()
