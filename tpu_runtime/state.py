"""The running pack's state, in one object: what ``runtime.start`` decided and built.

Everything that lives as long as the pack does is held here and handed to what needs it: the
sampling wrappers and patches get it when they are made, the manager when it is built, the nodes
and routes when ComfyUI registers them. Tests and scripts read it through :func:`current`. Nothing
else in the pack keeps state in module globals (the few that must say why where they are).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from tpu_runtime.backends.device import DeviceReport, PathDecision
from tpu_runtime.cache.prompt_warmup import PendingWarmups
from tpu_runtime.settings.run_options import RunOptions
from tpu_runtime.settings.tpu_settings import LoadedSettings, TPUSettings

if TYPE_CHECKING:
    from tpu_runtime.backends.xla import Backend
    from tpu_runtime.execution.compiled import CompiledModels
    from tpu_runtime.execution.replay import ReplayedModels
    from tpu_runtime.backends.kernel_layout import KernelTwins
    from tpu_runtime.backends.weight_shard import Placement
    from tpu_runtime.cache.manager import TPUManager
    from tpu_runtime.backends.metrics import RunFigures
    from tpu_runtime.comfyui.patches import Patches
    from tpu_runtime.sampling import RunObserver
    from tpu_runtime.sampling.schedule import HostSchedules
    from tpu_runtime.comfyui.capabilities import ComfyCapabilities
    from tpu_runtime.comfyui.sampler_probe import SamplerProbes
    from tpu_runtime.execution.device_parts import DeviceParts

log = logging.getLogger("comfy_tpu")

#: Per-run figures kept (newest last) for the demo, stats and tests.
RUN_HISTORY_LENGTH = 50


class Notices:
    """Things said once per process (a sampler's syncs, a batch padding, a CPU fallback op): the
    log names each problem without repeating it every run."""

    def __init__(self) -> None:
        self._said: set[tuple[Any, ...]] = set()

    def first_time(self, *key: Any) -> bool:
        """True the first time ``key`` is seen (then say it), False after."""
        if key in self._said:
            return False
        self._said.add(key)
        return True


@dataclass(eq=False)
class PackState:
    """The pack as it runs. With the TPU path off only ``loaded``, ``decision`` and ``report`` are set."""

    loaded: LoadedSettings
    decision: PathDecision
    report: Optional[DeviceReport] = None
    #: The settings as changed from Python after start (``args.tpu_*``, see live_settings); None until then.
    changed: Optional[TPUSettings] = None
    backend: Optional["Backend"] = None
    #: The one set of run options: the wrappers read it at each sampling call, the manager for signatures.
    options: RunOptions = field(default_factory=RunOptions)
    manager: Optional["TPUManager"] = None
    patches: Optional["Patches"] = None
    #: Told about each sampling run on the device (the manager, tests).
    observers: list["RunObserver"] = field(default_factory=list)
    run_history: list["RunFigures"] = field(default_factory=list)
    notices: Notices = field(default_factory=Notices)
    pending_warmups: PendingWarmups = field(default_factory=PendingWarmups)
    # Per-model registries: each keeps its entries on (or weakly keyed by) the model, so they go with it.
    host_schedules: Optional["HostSchedules"] = None
    kernel_twins: Optional["KernelTwins"] = None
    #: Splits the diffusion model's weights over the mesh's 'model' axis as they load (weight_shard).
    placement: Optional["Placement"] = None
    compiled_models: Optional["CompiledModels"] = None
    replayed_models: Optional["ReplayedModels"] = None
    #: Where the VAE and the text encoders run, their programs and figures (execution.device_parts).
    device_parts: Optional["DeviceParts"] = None
    #: How the running ComfyUI's samplers draw noise, probed once per function (comfyui.sampler_probe).
    sampler_probes: Optional["SamplerProbes"] = None
    #: What the running ComfyUI has and what the pack does about it (comfyui.capabilities), found at start.
    comfy: Optional["ComfyCapabilities"] = None

    @property
    def settings(self) -> TPUSettings:
        """The settings in force now: as loaded at start, with any later change."""
        return self.changed or self.loaded.settings

    @property
    def on(self) -> bool:
        return self.decision.on and self.backend is not None

    def record_run(self, figures: "RunFigures") -> None:
        self.run_history.append(figures)
        del self.run_history[:-RUN_HISTORY_LENGTH]


# The one module global the pack keeps: ComfyUI imports the pack (and scripts import ``comfy.tpu_xla``)
# as modules, with no object to hand over, so the state ``runtime.start`` builds is found here.
_CURRENT: Optional[PackState] = None


def current() -> Optional[PackState]:
    """The running pack's state (None before ``runtime.start``)."""
    return _CURRENT


def set_current(state: Optional[PackState]) -> None:
    """Called by ``runtime.start`` only."""
    global _CURRENT
    _CURRENT = state
