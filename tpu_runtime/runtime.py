"""Bringing the pack up inside ComfyUI: settings -> device decision -> patches, with one log line."""
from __future__ import annotations

import logging
from typing import Optional

from pydantic import BaseModel

from . import backend as backend_mod
from .device import DeviceReport, PathDecision, decide_path, detect
from .sampling import RunOptions
from .settings import LoadedSettings, load_settings

log = logging.getLogger("comfy_tpu")


class RuntimeState(BaseModel):
    """What :func:`start` decided; read by the doctor, nodes and stats."""

    model_config = {"arbitrary_types_allowed": True}

    loaded: LoadedSettings
    decision: PathDecision
    report: Optional[DeviceReport] = None


STATE: Optional[RuntimeState] = None


def run_options(loaded: LoadedSettings) -> RunOptions:
    s = loaded.settings
    return RunOptions(autocast_bf16=s.autocast_bf16, sync_steps=s.sync_steps, debug_metrics=s.debug_metrics)


def start(force: bool = False) -> RuntimeState:
    """Idempotent: decide once whether the TPU path is on and, if so, install the patches."""
    global STATE
    if STATE is not None and not force:
        return STATE
    loaded = load_settings()
    for problem in loaded.problems:
        log.error("comfy-tpu: %s", problem.message())
    decision, report = decide_path(loaded, detect)
    STATE = RuntimeState(loaded=loaded, decision=decision, report=report)
    if not decision.on:
        log.info("comfy-tpu: TPU path off: %s. ComfyUI runs as stock.", decision.reason)
        return STATE
    from . import patches

    patches.install(backend_mod.get_backend(), run_options(loaded))
    changed = loaded.settings.non_defaults()
    log.info("comfy-tpu: TPU path on (%s): %s; settings changed from defaults: %s", decision.reason,
             report.summary() if report else "?", changed or "none")
    return STATE


def stop() -> None:
    """Undo the patches (tests; a user switching the pack off without a restart)."""
    global STATE
    from . import patches

    patches.uninstall()
    STATE = None
