"""Bringing the pack up inside ComfyUI: settings -> device decision -> patches, with one log line."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from . import backend as backend_mod
from .device import DeviceReport, PathDecision, decide_path, detect
from .sampling import RunOptions
from .settings import LoadedSettings, TPUSettings, load_settings

log = logging.getLogger("comfy_tpu")


class RuntimeState(BaseModel):
    """What :func:`start` decided; read by the doctor, nodes and stats."""

    model_config = {"arbitrary_types_allowed": True}

    loaded: LoadedSettings
    decision: PathDecision
    report: Optional[DeviceReport] = None
    #: The settings as changed from Python after start (``args.tpu_*``, see live_settings); None until then.
    changed: Optional[TPUSettings] = None

    @property
    def settings(self) -> TPUSettings:
        """The settings in force now: as loaded at start, with any later change."""
        return self.changed or self.loaded.settings


STATE: Optional[RuntimeState] = None
MANAGER = None  # the TPUManager once the path is on


def run_options(loaded: LoadedSettings) -> RunOptions:
    return RunOptions.from_settings(loaded.settings)


def default_cache_dir() -> Path:
    """``<ComfyUI user dir>/comfy-tpu`` inside ComfyUI, else ``~/.cache/comfy-tpu``."""
    try:
        import folder_paths

        return Path(folder_paths.get_user_directory()) / "comfy-tpu"
    except Exception:
        return Path.home() / ".cache" / "comfy-tpu"


def xla_cache_subdir(cache_dir: Path) -> Path:
    """XLA executables only load into the runtime that built them: one folder per version triple."""
    from .versions import libtpu_version, torch_xla_version
    import torch

    key = f"torch-{torch.__version__}_xla-{torch_xla_version()}_libtpu-{libtpu_version() or 'none'}"
    return cache_dir / "xla" / key.replace("+", "-")


def persistent_cache_note(report: Optional[DeviceReport]) -> str:
    device_type = report.device_type if report else "unknown"
    if device_type == "CPU":
        return ("PJRT CPU cannot load serialized executables (torch_xla 2.9): compiled graphs do not survive a "
                "restart; the pack re-warms recorded signatures before their first use instead")
    if device_type == "TPU" and (report.torch_xla_version or "").startswith("2.9"):
        return ("torch_xla 2.9 on TPU may fail to load its persistent cache (pytorch/xla#9094); see the "
                "deserialize_failures counter; recorded signatures are re-warmed before their first use")
    return "XLA persistent cache in use; hits and misses are XLA's own counters"


def start(force: bool = False) -> RuntimeState:
    """Idempotent: decide once whether the TPU path is on and, if so, install the patches."""
    global STATE
    if STATE is not None and not force:
        return STATE
    loaded = load_settings()
    for problem in loaded.problems:
        log.error("comfy-tpu: %s", problem.message())
    settings = loaded.settings
    cache_dir = Path(settings.cache_dir) if loaded.ok and settings.cache_dir else default_cache_dir()
    xla_dir = xla_cache_subdir(cache_dir) if loaded.ok and settings.compilation_cache else None
    if xla_dir is not None:
        try:
            xla_dir.mkdir(parents=True, exist_ok=True)
            backend_mod.configure_persistent_cache(str(xla_dir))
        except OSError as exc:
            log.warning("comfy-tpu: no XLA persistent cache at %s (%s)", xla_dir, exc)
            xla_dir = None
    if loaded.ok:  # SPMD is switched on (or not) when the backend starts, before any XLA device exists
        backend_mod.configure_spmd(settings.spmd, settings.mesh)
    decision, report = decide_path(loaded, detect)
    STATE = RuntimeState(loaded=loaded, decision=decision, report=report)
    if not decision.on:
        log.info("comfy-tpu: TPU path off: %s. ComfyUI runs as stock.", decision.reason)
        return STATE
    from . import manager as manager_mod, patches, sampling
    from .cache import SignatureRegistry
    from .versions import libtpu_version, torch_xla_version
    import torch

    backend = backend_mod.get_backend()
    options = run_options(loaded)
    registry = SignatureRegistry(cache_dir, {"torch": torch.__version__, "torch_xla": torch_xla_version(),
                                             "libtpu": libtpu_version()})
    global MANAGER
    MANAGER = manager_mod.TPUManager(
        backend, registry, options, warmup=settings.warmup, manual_warmup=settings.manual_warmup,
        warmup_steps=settings.warmup_steps, xla_cache_dir=Path(backend.persistent_cache_dir)
        if backend.persistent_cache_dir else None, persistent_cache_note=persistent_cache_note(report),
        mesh=backend.mesh_description(), rewarm=settings.rewarm)
    sampling.OBSERVERS[:] = [MANAGER]
    patches.install(backend, options)
    from . import seed_api

    seed_api.register()  # only with the path on: a seed script then fails loudly when it is off
    changed = loaded.settings.non_defaults()
    log.info("comfy-tpu: TPU path on (%s): %s; settings changed from defaults: %s", decision.reason,
             report.summary() if report else "?", changed or "none")
    return STATE


def stop() -> None:
    """Undo the patches (tests; a user switching the pack off without a restart)."""
    global STATE, MANAGER
    from . import patches, sampling, seed_api

    seed_api.unregister()
    patches.uninstall()
    sampling.OBSERVERS.clear()
    STATE = None
    MANAGER = None
