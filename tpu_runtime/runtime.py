"""Bringing the pack up inside ComfyUI: settings -> device decision -> backend -> state -> patches, with
one log line."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tpu_runtime.backends import xla as backend_mod
from tpu_runtime.backends.backend_choice import resolve as resolve_backend
from tpu_runtime.backends.device import DeviceReport, decide_path, describe, detect
from tpu_runtime.settings.run_options import RunOptions
from tpu_runtime.settings.tpu_settings import TPUSettings, env_var, load_settings
from tpu_runtime.state import PackState, current, set_current

if TYPE_CHECKING:
    from tpu_runtime.comfyui.capabilities import ComfyCapabilities

log = logging.getLogger("comfy_tpu")

__all__ = ["current", "start", "stop"]


def default_cache_dir() -> Path:
    """``<ComfyUI user dir>/comfy-tpu`` inside ComfyUI, else ``~/.cache/comfy-tpu``."""
    from tpu_runtime.comfyui.server import user_directory

    user = user_directory()  # None outside ComfyUI (a script, the doctor)
    return user / "comfy-tpu" if user is not None else Path.home() / ".cache" / "comfy-tpu"


def xla_cache_subdir(cache_dir: Path, backend: str = "torch_xla") -> Path:
    """XLA executables only load into the runtime that built them: one folder per version triple
    (torchax: JAX's cache under ``jax/``, per jax, jaxlib, torchax and libtpu version)."""
    from tpu_runtime.install.versions import installed_version, libtpu_version, torch_xla_version
    import torch

    if backend == "torchax":
        key = (f"jax-{installed_version('jax')}_jaxlib-{installed_version('jaxlib')}_torchax-"
               f"{installed_version('torchax')}_libtpu-{libtpu_version() or 'none'}")
        return cache_dir / "jax" / key.replace("+", "-")
    key = f"torch-{torch.__version__}_xla-{torch_xla_version()}_libtpu-{libtpu_version() or 'none'}"
    return cache_dir / "xla" / key.replace("+", "-")


def persistent_cache_note(report: Optional[DeviceReport]) -> str:
    device_type = report.device_type if report else "unknown"
    if report is not None and report.backend == "torchax":
        return ("JAX persistent compilation cache in use (loads on CPU and TPU); hits and misses are JAX's own "
                "monitoring events")
    if device_type == "CPU":
        return ("PJRT CPU cannot load serialized executables (torch_xla 2.9): compiled graphs do not survive a "
                "restart; the pack re-warms recorded signatures before their first use instead")
    if device_type == "TPU" and (report.torch_xla_version or "").startswith("2.9"):
        return ("torch_xla 2.9 on TPU may fail to load its persistent cache (pytorch/xla#9094); see the "
                "deserialize_failures counter; recorded signatures are re-warmed before their first use")
    return "XLA persistent cache in use; hits and misses are XLA's own counters"


def start(force: bool = False) -> PackState:
    """Decide once whether the TPU path is on and, if so, start the backend and install the patches.

    Idempotent; ``force`` starts again (after :func:`stop`), reusing the backend of a previous start:
    the XLA runtime (PJRT client, SPMD, persistent cache) is settled once per process."""
    previous = current()
    if previous is not None and not force:
        return previous
    loaded = load_settings()
    for problem in loaded.problems:
        log.error("comfy-tpu: %s", problem.message())
    settings = loaded.settings
    cache_dir = Path(settings.cache_dir) if loaded.ok and settings.cache_dir else default_cache_dir()
    started: dict[str, Any] = {}

    def start_backend() -> DeviceReport:
        """The probe of ``decide_path``: starts the XLA runtime (only when the decision needs it)."""
        choice = resolve_backend(settings.backend if loaded.ok else "torch_xla")
        report = detect(choice.name).model_copy(update={"backend_reason": choice.reason})
        if report.error:
            return report
        backend = previous.backend if previous is not None else None
        if backend is not None and loaded.ok and backend.name != choice.name:
            log.error("comfy-tpu: %s=%s asked for (%s), but this process runs the %s backend (one per process, "
                      "chosen at its first start): restart ComfyUI to change it", env_var("backend"), settings.backend,
                      choice.reason, backend.name)
        if backend is None:
            try:
                backend = backend_mod.create_backend(_persistent_cache_dir(cache_dir, settings, choice.name),
                                                     (settings.spmd, settings.mesh), choice.name)
            except backend_mod.BackendUnavailable as exc:
                return report.model_copy(update={"error": str(exc)})
        started["backend"] = backend
        return describe(report, backend)

    decision, report = decide_path(loaded, start_backend)
    state = PackState(loaded=loaded, decision=decision, report=report)
    set_current(state)
    if not decision.on:
        log.info("comfy-tpu: TPU path off: %s. ComfyUI runs as stock.", decision.reason)
        return state
    _assemble(state, started["backend"], cache_dir)
    log.info("comfy-tpu: TPU path on (%s): %s; attention %s; settings changed from defaults: %s", decision.reason,
             report.summary() if report else "?", _attention_words(state), loaded.settings.non_defaults() or "none")
    return state


def _attention_words(state: PackState) -> str:
    """Which attention runs (``choice.describe``), for the start line."""
    from tpu_runtime.execution.attention import choice

    backend = state.backend
    return choice.describe(state.loaded.settings.attention, backend.name, backend.device_type(),
                           backend.mesh_description())


def _persistent_cache_dir(cache_dir: Path, settings: TPUSettings, backend: str) -> Optional[str]:
    """XLA's persistent cache folder for ``backend``, made (None when the cache is off or the folder cannot be
    made)."""
    if not settings.compilation_cache:
        return None
    xla_dir = xla_cache_subdir(cache_dir, backend)
    try:
        xla_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("comfy-tpu: no XLA persistent cache at %s (%s)", xla_dir, exc)
        return None
    return str(xla_dir)


def _assemble(state: PackState, backend: Any, cache_dir: Path) -> None:
    """Build what a pack with the path on holds, and install the patches."""
    import torch

    from tpu_runtime.cache import manager as manager_mod
    from tpu_runtime.comfyui import patches, seed_api
    from tpu_runtime.cache.registry import SignatureRegistry, warm_set_file
    from tpu_runtime.execution.compiled import CompiledModels
    from tpu_runtime.backends.kernel_layout import KernelTwins
    from tpu_runtime.execution.replay import ReplayedModels
    from tpu_runtime.execution.device_parts import DeviceParts
    from tpu_runtime.cache.part_shapes import PartShapes, part_shapes_file
    from tpu_runtime.sampling import WRAPPER_KEY
    from tpu_runtime.sampling.schedule import HostSchedules
    from tpu_runtime.install.versions import libtpu_version, torch_xla_version
    from tpu_runtime.backends.weight_shard import Placement
    from tpu_runtime.comfyui.sampler_probe import SamplerProbes

    settings = state.settings
    state.backend = backend
    state.options = RunOptions.from_settings(settings)
    state.host_schedules = HostSchedules()
    state.placement = Placement(backend)
    state.kernel_twins = KernelTwins(backend, state.placement)
    state.compiled_models = CompiledModels(backend)
    state.replayed_models = ReplayedModels(backend, WRAPPER_KEY)
    state.device_parts = DeviceParts(backend, settings.vae, settings.text_encoders,
                                     PartShapes(part_shapes_file(cache_dir, backend.name)), rewarm=settings.rewarm)
    # Another backend's programs are not torch_xla's: its warm set is a file of its own (signatures hold
    # no backend, so one file would add one backend's compile seconds to the other's entries).
    registry = SignatureRegistry(cache_dir, {"torch": torch.__version__, "torch_xla": torch_xla_version(),
                                             "libtpu": libtpu_version(),
                                             **({"backend": backend.name} if backend.name != "torch_xla" else {})},
                                 file_name=warm_set_file(backend.name))
    state.manager = manager_mod.TPUManager(
        state, registry, warmup=settings.warmup, manual_warmup=settings.manual_warmup,
        warmup_steps=settings.warmup_steps, xla_cache_dir=Path(backend.persistent_cache_dir)
        if backend.persistent_cache_dir else None, persistent_cache_note=persistent_cache_note(state.report),
        rewarm=settings.rewarm)
    state.observers.append(state.manager)
    state.sampler_probes = SamplerProbes()
    patches.install(state)
    seed_api.register()  # only with the path on: a seed script then fails loudly when it is off
    state.comfy = _comfy_capabilities(state)


def _comfy_capabilities(state: PackState) -> Optional["ComfyCapabilities"]:
    """What the running ComfyUI has, said in one line (a failure to look is said, never fatal)."""
    from tpu_runtime.comfyui import capabilities
    from tpu_runtime.sampling.noise import noise_kind

    try:
        found = capabilities.detect(lambda function: noise_kind(function, state.sampler_probes))
    except Exception as exc:  # noqa: BLE001 - the pack runs without the report
        log.warning("comfy-tpu: could not read what this ComfyUI has: %s: %s", type(exc).__name__, exc)
        return None
    say = log.warning if found.newer_than_checked or found.older_than_checked else log.info
    say("comfy-tpu: %s", found.line())
    return found


def stop() -> None:
    """Undo the patches (tests; a user switching the pack off without a restart). The backend stays,
    for a later :func:`start` to reuse."""
    from tpu_runtime.comfyui import seed_api

    seed_api.unregister()
    state = current()
    if state is not None:
        if state.patches is not None:
            state.patches.uninstall()
        state.observers.clear()
