"""What hardware is here, and whether the TPU path should be on.

Detection never raises: where the runtime cannot say something, the report says "unknown".
"""
from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, Callable, Optional

from pydantic import BaseModel

from tpu_runtime.install import versions
from tpu_runtime.backends.chip_memory import hbm_of_tpu_type
from tpu_runtime.settings.tpu_settings import LoadedSettings, env_var, format_mesh, parse_mesh

log = logging.getLogger("comfy_tpu")

#: torch minor version each torch_xla release is built against (they are pinned together).
TORCH_XLA_TORCH_PINS = {"2.9": "2.9", "2.8": "2.8", "2.7": "2.7", "2.6": "2.6", "2.5": "2.5"}


class DeviceReport(BaseModel):
    """Everything the doctor, the startup line and the device-info node show."""

    torch_version: str
    torch_xla_version: Optional[str]
    libtpu_version: Optional[str]
    torch_xla_importable: bool
    #: ``COMFY_TPU_BACKEND``: torch_xla, or torchax (JAX) with its versions.
    backend: str = "torch_xla"
    #: Why this backend: ``COMFY_TPU_BACKEND=...``, or what ``auto`` chose it for (backends/backend_choice.py).
    backend_reason: str = ""
    jax_version: Optional[str] = None
    torchax_version: Optional[str] = None
    device: Optional[str] = None
    device_type: str = "unknown"
    device_count: int = 0
    tpu_type: str = "unknown"
    hbm_per_chip_bytes: Optional[int] = None
    spmd: bool = False
    mesh: str = "single"
    spmd_reason: str = ""
    error: Optional[str] = None

    def summary(self) -> str:
        hbm = f"{self.hbm_per_chip_bytes / 2**30:.1f} GiB" if self.hbm_per_chip_bytes else "unknown"
        stack = (f"torchax {self.torchax_version or 'missing'}, jax {self.jax_version or 'missing'}"
                 if self.backend == "torchax" else f"torch_xla {self.torch_xla_version or 'missing'}")
        why = f" ({self.backend_reason})" if self.backend_reason.startswith("auto") else ""
        return (f"backend {self.backend}{why}, device {self.device or 'none'} ({self.device_type} x{self.device_count}, "
                f"TPU type {self.tpu_type}, HBM/chip {hbm}, SPMD {'on, mesh ' + self.mesh if self.spmd else 'off'}); "
                f"torch {self.torch_version}, {stack}, libtpu {self.libtpu_version or 'none'}")


class SpmdPlan(BaseModel):
    """Whether the batch is sharded over several devices, over which mesh, and why."""

    on: bool
    mesh: str = "single"          # "single", or axis=size pairs such as "data=4"
    axes: dict[str, int] = {}
    devices: int = 1
    reason: str = ""
    problems: list[str] = []


def plan_spmd(mode: str, mesh_spec: Optional[str], device_count: int, locked: bool = False) -> SpmdPlan:
    """Apply COMFY_TPU_SPMD / COMFY_TPU_MESH to the device count (pure: the backend acts on it).

    A mesh that does not fit the devices is a named problem and the run stays on one device:
    ComfyUI keeps working."""
    off = dict(on=False, devices=device_count)
    if mode == "off":
        return SpmdPlan(**off, reason=f"off ({env_var('spmd')}=off)")
    if device_count <= 1:
        problems = [f"{env_var('spmd')}=on but only {device_count} XLA device is present: running on one device"
                    ] if mode == "on" else []
        return SpmdPlan(**off, reason="one XLA device", problems=problems)
    if locked:
        return SpmdPlan(**off, reason="tensors were on an XLA device before SPMD could be enabled",
                        problems=["SPMD must be enabled before any XLA tensor exists; running on one device"])
    axes = parse_mesh(mesh_spec) if mesh_spec else {"data": device_count}
    size = 1
    for value in axes.values():
        size *= value
    if size != device_count:
        return SpmdPlan(**off, reason="mesh does not fit the devices", problems=[
            f"{env_var('mesh')}={mesh_spec!r} is not valid: expected axis sizes whose product is the "
            f"{device_count} XLA devices here, with a 'data' axis (e.g. data={device_count}). Running on one "
            "device."])
    why = "on" if mode == "on" else f"auto: {device_count} XLA devices"
    return SpmdPlan(on=True, mesh=format_mesh(axes), axes=axes, devices=device_count, reason=why)


class PathDecision(BaseModel):
    """Whether the pack runs ComfyUI's diffusion model on XLA, and the reason in words."""

    on: bool
    reason: str


def version_mismatch(torch_version: str, xla_version: Optional[str]) -> Optional[str]:
    """A sentence when torch and torch_xla are not a matching pair, else None."""
    if not xla_version:
        return None
    torch_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    xla_minor = ".".join(xla_version.split("+")[0].split(".")[:2])
    wanted = TORCH_XLA_TORCH_PINS.get(xla_minor)
    if wanted and wanted != torch_minor:
        return f"torch_xla {xla_version} needs torch {wanted}.x but torch {torch_version} is installed"
    return None


def detect(backend: str = "torch_xla") -> DeviceReport:
    """What is installed: torch, the backend's library (torch_xla, or torchax and JAX), libtpu. Starts
    nothing (no runtime, no device)."""
    import torch

    report = DeviceReport(torch_version=torch.__version__, torch_xla_version=versions.torch_xla_version(),
                          libtpu_version=versions.libtpu_version(),
                          torch_xla_importable=importlib.util.find_spec("torch_xla") is not None, backend=backend,
                          jax_version=versions.installed_version("jax"),
                          torchax_version=versions.installed_version("torchax"))
    if backend == "torchax":
        missing = [name for name in ("torchax", "jax") if importlib.util.find_spec(name) is None]
        if missing:
            report.error = (f"{env_var('backend')}=torchax but {' and '.join(missing)} is not installed "
                            "(python install.py --backend torchax, or pip install 'comfy-tpu[torchax]')")
        else:
            from tpu_runtime.install.plan import torchax_torch_problem

            report.error = torchax_torch_problem(report.torch_version, report.torchax_version)
        return report
    if not report.torch_xla_importable:
        from tpu_runtime.install.plan import torch_xla_missing

        report.error = torch_xla_missing(report.torch_version)
        return report
    report.error = version_mismatch(report.torch_version, report.torch_xla_version)
    return report


def describe(report: DeviceReport, backend: Any) -> DeviceReport:
    """``report`` completed with what a started backend says of its devices (a copy)."""
    report = report.model_copy()
    try:
        report.device = str(backend.device())
    except RuntimeError as exc:
        report.error = f"no PJRT device: {type(exc).__name__}: {exc}"
        return report
    report.device_type = backend.device_type()
    report.device_count = backend.device_count()
    report.spmd, report.mesh, report.spmd_reason = backend.spmd.on, backend.spmd.mesh, backend.spmd.reason
    attrs = backend.device_attributes()
    report.tpu_type = str(attrs.get("name") or attrs.get("device_kind") or os.environ.get(
        "TPU_ACCELERATOR_TYPE") or ("n/a (not a TPU)" if report.device_type != "TPU" else "unknown"))
    memory = backend.memory_info(backend.device())
    # Under SPMD the runtime answers no memory query: a TPU type's own HBM is still known.
    report.hbm_per_chip_bytes = memory[1] if memory else hbm_of_tpu_type(report.tpu_type)
    return report


def _tpu_runtime_present() -> bool:
    """Cheap check (no runtime start) for auto mode: is there any chance of a TPU?"""
    pjrt = os.environ.get("PJRT_DEVICE", "").upper()
    if pjrt:
        return pjrt == "TPU"
    return versions.libtpu_version() is not None


def decide_path(loaded: LoadedSettings, probe: Callable[[], DeviceReport]
                ) -> tuple[PathDecision, Optional[DeviceReport]]:
    """Apply the settings to what is here. ``probe`` starts the runtime and describes its devices: it
    is called only when the decision depends on them (not when the settings turn the path off, nor in
    auto mode on a machine with no TPU runtime). Auto mode turns on only for a real TPU."""
    if not loaded.ok:
        return PathDecision(on=False, reason="; ".join(p.message() for p in loaded.problems)), None
    settings = loaded.settings
    if settings.disable:
        return PathDecision(on=False, reason="disabled by COMFY_TPU_DISABLE"), None
    if settings.enable is False:
        return PathDecision(on=False, reason="disabled by COMFY_TPU_ENABLE=0"), None
    if settings.enable is None and not _tpu_runtime_present():
        return PathDecision(on=False, reason="no TPU runtime here (libtpu missing, PJRT_DEVICE is not TPU); "
                                             "set COMFY_TPU_ENABLE=1 to use XLA anyway"), None
    report = probe()
    if report.error:
        return PathDecision(on=False, reason=report.error), report
    if settings.enable:
        return PathDecision(on=True, reason=f"enabled by COMFY_TPU_ENABLE on {report.device_type}"), report
    if report.device_type == "TPU":
        return PathDecision(on=True, reason="a TPU was found"), report
    return PathDecision(on=False, reason=f"no TPU found (PJRT device type {report.device_type}); "
                                         "set COMFY_TPU_ENABLE=1 to use it anyway"), report
