"""What the running ComfyUI has, found by looking (signatures, attributes, its sampler list, source
fingerprints), never guessed from its version; and what the pack does about each thing.

Found once at start, logged in one line, shown by ``comfy-tpu doctor`` and ``/tpu/stats``. A ComfyUI newer
than the newest checked runs: the line says so and names each feature that fell back. No version is refused.
"""
from __future__ import annotations

import inspect
import logging
import sys
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, Field

log = logging.getLogger("comfy_tpu")

#: The ComfyUI releases the suite runs on (CI: 0.3.75 in the main layer, 0.33.0 in the compat layer).
CHECKED_RANGE = ("0.3.75", "0.33.0")

Status = Literal["device", "fallback", "handled", "absent"]


class Feature(BaseModel):
    name: str
    status: Status
    detail: str = ""


class SamplerClass(BaseModel):
    """One entry of ``KSampler.SAMPLERS`` as the pack runs it."""

    name: str
    function: str
    noise: str           # "none", "host default", "host brownian", or why it is not known
    path: Literal["device", "stock"] = "device"
    note: str = ""


class ComfyCapabilities(BaseModel):
    version: str = "unknown"
    checked_range: tuple[str, str] = CHECKED_RANGE
    newer_than_checked: bool = False
    older_than_checked: bool = False
    features: list[Feature] = Field(default_factory=list)
    samplers: list[SamplerClass] = Field(default_factory=list)

    def fell_back(self) -> list[Feature]:
        return [f for f in self.features if f.status == "fallback"]

    def line(self) -> str:
        """The start line: version, checked range, what runs on the device, what fell back and why."""
        low, high = self.checked_range
        where = ("newer than the newest checked" if self.newer_than_checked else
                 "older than the oldest checked" if self.older_than_checked else "within the checked range")
        stock = [s.name for s in self.samplers if s.path == "stock"]
        device = len(self.samplers) - len(stock)
        text = (f"ComfyUI {self.version} ({where}: {low} to {high}, in CI); samplers on the device: {device} of "
                f"{len(self.samplers)}")
        if stock:
            text += f" (stock ComfyUI path: {', '.join(stock)})"
        fell = self.fell_back()
        text += "; fell back: " + ("; ".join(f"{f.name} ({f.detail})" for f in fell) if fell else "nothing")
        return text


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def comfyui_version() -> str:
    module = sys.modules.get("comfyui_version")
    if module is None:
        try:
            import comfyui_version as module  # noqa: PLC0415 - ComfyUI's own top-level module
        except ImportError:
            return "unknown"
    return str(getattr(module, "__version__", "unknown"))


def _parameters(function: Any) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _wrapper_feature() -> Feature:
    import comfy.patcher_extension as pe

    from tpu_runtime.comfyui.hooks import WRAPPER_KINDS

    missing = [kind for kind in WRAPPER_KINDS if not hasattr(pe.WrappersMP, kind)]
    if missing:
        return Feature(name="sampler wrappers", status="fallback",
                       detail=f"ComfyUI lacks WrappersMP.{', '.join(missing)}: the pack cannot attach those")
    return Feature(name="sampler wrappers", status="device",
                   detail="every wrapper takes and forwards the arguments it does not use")


def _weight_patch_feature() -> Feature:
    import comfy.model_patcher as mp

    params = _parameters(mp.ModelPatcher.patch_weight_to_device)
    extra = [p for p in params if p not in ("self", "key", "device_to", "inplace_update")]
    detail = f"arguments forwarded as given (beyond 0.3.75's: {', '.join(extra) or 'none'})"
    if "return_weight" in extra:
        detail += "; a return_weight call (checkpoint saving) is ComfyUI's own"
    return Feature(name="patch_weight_to_device", status="handled", detail=detail)


def _dynamic_vram_feature() -> Feature:
    memory = sys.modules.get("comfy.memory_management")
    if memory is None or not hasattr(memory, "aimdo_enabled"):
        return Feature(name="dynamic VRAM", status="absent", detail="this ComfyUI has none")
    import comfy.model_patcher as mp

    core = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)
    if getattr(memory, "aimdo_enabled", False) or core is not mp.ModelPatcher:
        return Feature(name="dynamic VRAM", status="fallback",
                       detail=f"comfy-aimdo is on (CUDA-only; ComfyUI loads models as {core.__name__}): the "
                              "pack's load patches may not apply; start ComfyUI with --disable-dynamic-vram")
    return Feature(name="dynamic VRAM", status="handled", detail="off on the TPU path (CUDA-only, comfy-aimdo)")


def _interrupt_feature() -> Feature:
    import comfy.model_management as mm

    interrupt = getattr(mm, "InterruptProcessingException", None)
    if interrupt is None:
        return Feature(name="interrupts", status="absent", detail="no InterruptProcessingException")
    base = "BaseException" if not issubclass(interrupt, Exception) else "Exception"
    return Feature(name="interrupts", status="handled",
                   detail=f"InterruptProcessingException is a {base}: runs are closed in finally blocks")


def _control_feature() -> Feature:
    import comfy.samplers

    original = comfy.samplers.pre_run_control
    try:
        source = inspect.getsource(inspect.unwrap(original))
    except (OSError, TypeError):
        source = ""
    clones = "multigpu_clones" in source
    return Feature(name="pre_run_control", status="handled",
                   detail="ComfyUI's own runs with the host schedule" + (" (its multigpu clones too)" if clones else ""))


def _attention_feature() -> Feature:
    try:
        import comfy.ldm.modules.attention as attention
        source = inspect.getsource(attention)
    except (ImportError, OSError, TypeError):
        return Feature(name="attention override", status="absent", detail="attention module not readable")
    if "optimized_attention_override" in source:
        return Feature(name="attention override", status="device",
                       detail="transformer_options['optimized_attention_override'] (ComfyUI's hook)")
    from tpu_runtime.comfyui.attention_patch import RoutedAttention

    if isinstance(getattr(attention, "optimized_attention", None), RoutedAttention):
        return Feature(name="attention override", status="device",
                       detail="no override hook: optimized_attention routed by the pack (comfyui/attention_patch.py)")
    return Feature(name="attention override", status="fallback", detail="no override hook: ComfyUI's attention runs")


def _unipc_feature() -> Feature:
    from tpu_runtime.sampling import unipc

    module = sys.modules.get("comfy.extra_samplers.uni_pc")
    if module is None:
        try:
            import comfy.extra_samplers.uni_pc as module  # noqa: PLC0415
        except ImportError:
            return Feature(name="uni_pc one-graph", status="absent", detail="no UniPC in this ComfyUI")
    precision, why = unipc.formula_for(module)
    if precision is not None:
        return Feature(name="uni_pc one-graph", status="device", detail=why)
    return Feature(name="uni_pc one-graph", status="fallback",
                   detail=f"{why}: ComfyUI's own runs (correct; a small graph per order of its steps, 7 on a first "
                          "run, and its solves on the host: one host sync a step)")


def classify_samplers(names: tuple[str, ...], function_of: Callable[[str], Callable],
                      noise_of: Callable[[Callable], Optional[str]]) -> list[SamplerClass]:
    """Each sampler name: its function, and the noise the pack gives it (the probe's finding)."""
    classes = []
    for name in names:
        try:
            function = function_of(name)
        except Exception as exc:  # noqa: BLE001 - another pack's sampler may need inputs to build
            classes.append(SamplerClass(name=name, function="?", noise=f"not inspected ({type(exc).__name__})",
                                        path="stock", note="built by another pack: ComfyUI's own path"))
            continue
        kind = noise_of(function)
        classes.append(SamplerClass(name=name, function=getattr(function, "__name__", repr(function)),
                                    noise={None: "none", "default": "host default", "brownian": "host brownian"}
                                    .get(kind, str(kind))))
    return classes


def detect(noise_of: Optional[Callable[[Callable], Optional[str]]] = None) -> ComfyCapabilities:
    """Look at the running ComfyUI (its core must be imported). ``noise_of``: how the pack decides a sampler
    function's noise (``sampling.noise.noise_kind`` with the probe)."""
    from tpu_runtime.comfyui import samplers

    version = comfyui_version()
    parsed = _version_tuple(version)
    features = []
    for find in (_wrapper_feature, _weight_patch_feature, _dynamic_vram_feature, _interrupt_feature,
                 _control_feature, _attention_feature, _unipc_feature):
        try:
            features.append(find())
        except Exception as exc:  # noqa: BLE001 - one unreadable feature must not stop the start
            features.append(Feature(name=find.__name__.strip("_").removesuffix("_feature"), status="fallback",
                                    detail=f"could not be read: {type(exc).__name__}: {exc}"))
    classes = (classify_samplers(samplers.sampler_names(), samplers.sampler_function, noise_of)
               if noise_of is not None else [])
    return ComfyCapabilities(
        version=version, features=features, samplers=classes,
        newer_than_checked=bool(parsed) and parsed > _version_tuple(CHECKED_RANGE[1]),
        older_than_checked=bool(parsed) and parsed < _version_tuple(CHECKED_RANGE[0]))


def detect_in(comfy_dir: str) -> ComfyCapabilities:
    """:func:`detect` for the ComfyUI in ``comfy_dir``, from a process that has not imported it (the doctor):
    its core is imported in CPU mode, as the prestartup script sets it without CUDA."""
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    import comfy.options  # noqa: F401 - ComfyUI's own: command-line parsing stays off
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401
    from tpu_runtime.comfyui.sampler_probe import SamplerProbes
    from tpu_runtime.sampling.noise import noise_kind

    probes = SamplerProbes()
    return detect(lambda function: noise_kind(function, probes))
