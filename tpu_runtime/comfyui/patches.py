"""Every change the pack makes to ComfyUI's modules, in one place: idempotent and reversible.

Only what ComfyUI offers no hook for is patched here:

* ``comfy.model_management``: the diffusion model's device is XLA; memory queries answer for XLA;
  bf16 is reported (and chosen for the UNet) when autocast is on. Intermediates keep the device stock
  ComfyUI gives them; the VAE and text encoders too unless their settings put them on the device.
* ``comfy.samplers.calculate_sigmas``: schedules are computed from a host copy of ``model_sampling``.
* ``comfy.sampler_helpers.prepare_model_patcher``: every sampling call of a model that loads on XLA
  gets the sampling wrappers (``sampling.attach``), whatever node loaded the model.
* ``comfy.model_patcher.ModelPatcher.partially_load``: when a model loaded on the XLA device gets
  other weight patches (a LoRA added, removed or changed), ComfyUI unpatches it to the offload device
  (the CPU) and loads it back: every weight to the host and back. In lazy execution (the default)
  the pack keeps the unpatched model on the device.
* ``comfy.model_patcher.ModelPatcher.patch_weight_to_device``: ComfyUI's backup of a weight a patch
  replaces is a copy on the device, not a device-to-host transfer (``weight_backup``).
* ``comfy.model_patcher.ModelPatcher.load`` and ``patch_weight_to_device``: under a mesh with a
  ``model`` axis, the diffusion model's weights are split over it as they land on the device
  (``weight_shard.Placement``): a weight moved there holds its host data until first used, so
  marking it right after ComfyUI's load uploads each chip's part only, and a weight with a LoRA
  patch is placed split before ComfyUI computes the patch on the device (the patch's result is
  split as its weight: nothing is gathered). ComfyUI has no hook before a weight is patched.
* ``comfy.model_patcher.ModelPatcher.unpatch_model``: when ComfyUI moves a model off the device, its
  split weights are read to the host part by part first (torch_xla's ``.to("cpu")`` would gather each
  whole on the device, with a program compiled per weight shape); on torchax the device copies of its
  host weights are dropped after (ComfyUI's move of a host tensor to the host moves nothing).
* ``optimized_attention`` in ComfyUI's model modules, only where ComfyUI has no
  ``optimized_attention_override`` hook: device calls go to the pack's router (``attention_patch``).
* ``comfy.sd.VAE``'s decode/encode methods, ``vae_device``/``vae_dtype``, and the text encoders' device,
  ``comfy.sd.CLIP.__init__`` and ``comfy.sd1_clip.SDClipModel.forward``: the VAE and CLIP text encoders as
  device programs (``vae_patch``, ``text_encoder_patch``; ``COMFY_TPU_VAE``, ``COMFY_TPU_TEXT_ENCODERS``).
* ``comfy.samplers.pre_run_control``: a ControlNet's start/end percents are converted with the host
  copy of the schedule (ComfyUI's ``percent_to_sigma`` reads a device value with ``.item()``).
"""
from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any, Callable

import torch

from tpu_runtime.comfyui import weight_backup
from tpu_runtime.sampling import control
from tpu_runtime import sampling
from tpu_runtime.comfyui.calls import Call, positional_names
from tpu_runtime.backends.chip_memory import chip_memory
from tpu_runtime.execution.host_values import as_host
from tpu_runtime.comfyui.model_axis import auto_model_axis_for

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")


def _owner(path: str) -> Any:
    """A module (``comfy.samplers``) or a class in one (``comfy.model_patcher.ModelPatcher``)."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module_name, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module_name), name)


class Patches:
    """The attributes the pack replaced in ComfyUI's modules, with what was there before.

    ComfyUI's modules are process-wide, so what this records is too; it lives in the pack's state
    (one per started pack) and :meth:`uninstall` puts everything back."""

    def __init__(self) -> None:
        self._originals: dict[tuple[str, str], Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self._originals)

    def set(self, owner_path: str, attribute: str, value: Any) -> None:
        owner = _owner(owner_path)
        self._originals.setdefault((owner_path, attribute), vars(owner).get(attribute, getattr(owner, attribute)))
        setattr(owner, attribute, value)

    def original(self, owner_path: str, attribute: str) -> Any:
        """What ComfyUI had before the pack patched it."""
        if (owner_path, attribute) in self._originals:
            return self._originals[(owner_path, attribute)]
        return getattr(_owner(owner_path), attribute)

    def uninstall(self) -> None:
        """Put every patched attribute back."""
        for (owner_path, attribute), value in list(self._originals.items()):
            setattr(_owner(owner_path), attribute, value)
        self._originals.clear()


def install(state: "PackState") -> Patches:
    """Apply the patches for a started pack (``state.backend`` set); idempotent per state."""
    if state.patches is not None and state.patches.installed:
        return state.patches
    import comfy.model_management as mm

    patches = state.patches = Patches()
    backend = state.backend
    mm_name = "comfy.model_management"
    xla_device = backend.device()
    # Devices stock ComfyUI picks for everything but the diffusion model, read before we patch.
    stock = {name: getattr(mm, name)() for name in (
        "text_encoder_device", "text_encoder_offload_device", "vae_device", "vae_offload_device",
        "intermediate_device", "unet_offload_device")}

    def is_xla(device: Any) -> bool:
        return device is not None and backend.is_device(device)

    def get_torch_device(*args, **kwargs):
        return xla_device

    def memory(device: Any) -> tuple[int, int]:
        """(free, total) for an XLA device: one chip's (the runtime's figures, else the HBM setting or the
        TPU type's, see chip_memory), else host RAM (PJRT CPU under SPMD). Under a 'model' axis a chip
        holds 1/M of a model ComfyUI loads, so ComfyUI, which compares a whole model's bytes with
        this, is told M chips' worth."""
        reported = chip_memory(state)
        if reported is not None:
            ways = backend.model_axis()
            return reported[0] * ways, reported[1] * ways
        import psutil
        vm = psutil.virtual_memory()
        return vm.available, vm.total

    orig_free = mm.get_free_memory
    orig_total = mm.get_total_memory
    orig_bf16 = mm.should_use_bf16
    orig_fp16 = mm.should_use_fp16
    orig_unet_dtype = mm.unet_dtype

    def memory_query(original: Callable, which: int, both_flag: str) -> Callable:
        """``get_free_memory`` (which=0) or ``get_total_memory`` (1): answered for an XLA device."""

        def query(*args, **kwargs):
            call = Call.of(original, args, kwargs, fallback=("dev", both_flag))
            dev = call.get("dev")
            dev = xla_device if dev is None else dev
            if not is_xla(dev):
                return call.forward(original)
            value = memory(dev)[which]
            return (value, value) if call.get(both_flag, False) else value

        return query

    get_free_memory = memory_query(orig_free, 0, "torch_free_too")
    get_total_memory = memory_query(orig_total, 1, "torch_total_too")

    def should_use_bf16(*args, **kwargs):
        device = Call.of(orig_bf16, args, kwargs, fallback=("device",)).get("device")
        if device is None or is_xla(device):
            return True
        return orig_bf16(*args, **kwargs)

    def should_use_fp16(*args, **kwargs):
        device = Call.of(orig_fp16, args, kwargs, fallback=("device",)).get("device")
        if device is None or is_xla(device):
            return False  # TPUs compute in bf16; fp16 would only add casts
        return orig_fp16(*args, **kwargs)

    def unet_dtype(*args, **kwargs):
        call = Call.of(orig_unet_dtype, args, kwargs, fallback=("device", "model_params", "supported_dtypes"))
        device = call.get("device")
        supported = call.get("supported_dtypes", (torch.float16, torch.bfloat16, torch.float32))
        explicit = any(getattr(mm.args, flag, False) for flag in (
            "fp32_unet", "fp64_unet", "bf16_unet", "fp16_unet", "fp8_e4m3fn_unet", "fp8_e5m2_unet",
            "fp8_e8m0fnu_unet"))
        if (device is None or is_xla(device)) and not explicit:
            if state.options.autocast_bf16 and torch.bfloat16 in supported:
                return torch.bfloat16
            return torch.float32
        return orig_unet_dtype(*args, **kwargs)

    patches.set(mm_name, "get_torch_device", get_torch_device)
    patches.set(mm_name, "get_free_memory", get_free_memory)
    patches.set(mm_name, "get_total_memory", get_total_memory)
    patches.set(mm_name, "should_use_bf16", should_use_bf16)
    patches.set(mm_name, "should_use_fp16", should_use_fp16)
    patches.set(mm_name, "unet_dtype", unet_dtype)
    parts = state.device_parts
    on_device = {"vae_device": parts is not None and parts.on_device("vae"),
                 "text_encoder_device": parts is not None and parts.on_device("text_encoders")}
    for name, device in stock.items():
        # The VAE and the text encoders go to the XLA device when their setting says so (device_parts).
        answer = xla_device if on_device.get(name) else device
        patches.set(mm_name, name, (lambda d: (lambda *a, **k: d))(answer))
    if parts is not None:  # on the host they are only timed (the per-run figures say where each part ran)
        from tpu_runtime.comfyui import text_encoder_patch, vae_patch

        if on_device["vae_device"]:
            patches.set(mm_name, "vae_dtype", vae_patch.vae_dtype(mm.vae_dtype, is_xla))
        vae_patch.install(patches, state, parts, stock["vae_device"])
        text_encoder_patch.install(patches, state, parts, stock["text_encoder_device"],
                                   on_device["text_encoder_device"])

    import comfy.model_patcher
    import comfy.samplers
    import comfy.sampler_helpers

    orig_calculate_sigmas = comfy.samplers.calculate_sigmas
    host_schedules = state.host_schedules

    def calculate_sigmas(*args, **kwargs):
        call = Call.of(orig_calculate_sigmas, args, kwargs, fallback=("model_sampling", "scheduler_name", "steps"))
        call.set("model_sampling", host_schedules.host_model_sampling(call.get("model_sampling")))
        sigmas = call.forward(orig_calculate_sigmas)
        # Tagged: when ComfyUI moves it to the device, the copy keeps these host values (DeviceTwin).
        return as_host(sigmas) if sigmas.device.type == "cpu" else sigmas

    orig_prepare = comfy.sampler_helpers.prepare_model_patcher

    def prepare_model_patcher(*args, **kwargs):
        call = Call.of(orig_prepare, args, kwargs, fallback=("model", "conds", "model_options"))
        model, model_options = call.get("model"), call.get("model_options")
        result = orig_prepare(*args, **kwargs)
        if is_xla(getattr(model, "load_device", None)):
            auto_model_axis_for(state, model)  # before ComfyUI sizes the load against the free memory
            host_schedules.remember(model.get_model_object("model_sampling"))
            sampling.attach(model_options, state)
        return result

    _route_attention_without_hook(state, patches)
    patches.set("comfy.samplers", "calculate_sigmas", calculate_sigmas)
    patches.set("comfy.samplers", "pre_run_control",
                control.pre_run_control(comfy.samplers.pre_run_control, host_schedules.host_model_sampling, is_xla))
    patches.set("comfy.sampler_helpers", "prepare_model_patcher", prepare_model_patcher)
    patches.set("comfy.model_patcher.ModelPatcher", "partially_load", _repatch_on_device(is_xla, state))
    patches.set("comfy.model_patcher.ModelPatcher", "patch_weight_to_device",
                weight_backup.backup_on_device(comfy.model_patcher.ModelPatcher.patch_weight_to_device, is_xla))
    if backend.device_total() > 1:  # under SPMD (auto mode may add a 'model' axis later)
        patches.set("comfy.model_patcher.ModelPatcher", "load", _split_on_load(is_xla, state))
        patches.set("comfy.model_patcher.ModelPatcher", "patch_weight_to_device", _split_before_patch(is_xla, state))
    if backend.device_total() > 1 or getattr(backend, "weights_on_host", False) is True:
        patches.set("comfy.model_patcher.ModelPatcher", "unpatch_model", _off_the_chips_on_unload(is_xla, state))
    log.debug("comfy-tpu: patches installed")
    return patches


def _route_attention_without_hook(state: "PackState", patches: Patches) -> None:
    """A ComfyUI with no attention override hook gets its ``optimized_attention`` routed (attention_patch)."""
    import comfy.ldm.modules.attention as attention

    from tpu_runtime.comfyui import attention_patch

    if attention_patch.has_override_hook(attention):
        return
    from tpu_runtime.execution.attention import route

    backend = state.backend
    attention_patch.install(patches, lambda: route.router_for(state.options.attention, backend.name,
                                                              backend.device_type(), backend.spmd_mesh()),
                            lambda tensor: route.on_device(backend.name, tensor))


def _repatch_on_device(is_xla: Callable[[Any], bool], state: "PackState") -> Callable:
    """``ModelPatcher.partially_load`` that, for a model already on the XLA device, unpatches it there."""
    import comfy.model_patcher

    load = comfy.model_patcher.ModelPatcher.partially_load

    def partially_load(self, *args, **kwargs):
        chip = Call.of(load, (self, *args), kwargs, fallback=("self", "device_to")).get("device_to")
        fully_on_chip = is_xla(getattr(self.model, "device", None)) and not getattr(self.model, "model_lowvram", False)
        # A partly loaded (low-VRAM) model keeps ComfyUI's path, and so does compiled execution: a model
        # captured by dynamo kept computing with the patched weights after they were restored in place
        # on the chip (tests/test_kernel_layout.py); a full reload makes it see them.
        on_chip = state.options.execution != "compiled"
        if not (is_xla(chip) and fully_on_chip and on_chip):
            return load(self, *args, **kwargs)
        unpatch = self.unpatch_model

        def unpatch_on_chip(*unpatch_args, **unpatch_kwargs):
            # ComfyUI's partially_load unpatches to self.offload_device; the weights stay on the chip.
            call = Call(unpatch_args, unpatch_kwargs, positional_names(unpatch), fallback=("device_to",))
            if call.get("device_to") is not None:
                call.set("device_to", chip)
            return call.forward(unpatch)

        self.unpatch_model = unpatch_on_chip
        try:
            return load(self, *args, **kwargs)
        finally:
            del self.unpatch_model

    return partially_load


def _split_on_load(is_xla: Callable[[Any], bool], state: "PackState") -> Callable:
    """``ModelPatcher.load`` that, for the XLA device, splits the model's weights over the 'model' axis
    right after ComfyUI moved them (before anything reads them: each chip receives its part only)."""
    import comfy.model_patcher

    load = comfy.model_patcher.ModelPatcher.load

    def split_load(self, *args, **kwargs):
        device_to = Call.of(load, (self, *args), kwargs, fallback=("self", "device_to")).get("device_to")
        result = load(self, *args, **kwargs)
        if is_xla(device_to):
            config = getattr(self.model, "model_config", None)  # a text encoder's model has none
            label = type(self.model).__name__
            state.placement.shard_model(self.model, f"{type(config).__name__} ({label})" if config is not None else label)
        return result

    return split_load


def _split_before_patch(is_xla: Callable[[Any], bool], state: "PackState") -> Callable:
    """``ModelPatcher.patch_weight_to_device`` that places the weight split on the device before ComfyUI
    computes its patch there, and splits the result the same way: the whole weight never exists on a
    chip. ComfyUI's backup of the weight is taken first, from the host copy, as ComfyUI itself takes it."""
    import collections

    import comfy.model_patcher
    import comfy.utils

    patch = comfy.model_patcher.ModelPatcher.patch_weight_to_device
    Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])  # ComfyUI's own backup record

    def split_patch(self, *args, **kwargs):
        call = Call.of(patch, (self, *args), kwargs, fallback=("self", "key", "device_to", "inplace_update"))
        key, device_to, inplace_update = call.get("key"), call.get("device_to"), call.get("inplace_update", False)
        placement = state.placement
        if not placement.on or key not in self.patches or not is_xla(device_to) or call.get("return_weight", False):
            # ``return_weight`` (checkpoint saving, 2026 ComfyUI): ComfyUI computes the patched weight and
            # returns it without placing it in the model: nothing to split.
            return patch(self, *args, **kwargs)
        backend = state.backend
        weight, set_func, convert_func = comfy.model_patcher.get_key_weight(self.model, key)
        plain = set_func is None and convert_func is None and placement.placement(self.model).plan.spec(key)
        on_host = weight.device.type == "cpu"
        if plain and key not in self.backup and (on_host or backend.tensor_sharding(weight)):
            # ComfyUI's own backup, taken here: of a host weight before it moves, of a split one part by
            # part (ComfyUI's weight.to(host) would gather it whole on the device first).
            inplace = self.weight_inplace_update or inplace_update
            host = weight.to(device=self.offload_device, copy=inplace) if on_host else backend.gather_on_host(weight.detach())
            self.backup[key] = Backup(host, inplace)
        if plain and on_host:
            comfy.utils.set_attr_param(self.model, key, weight.to(device_to))
            weight = comfy.utils.get_attr(self.model, key)
        placement.shard(self.model, key, weight)
        result = patch(self, *args, **kwargs)
        placement.shard(self.model, key, comfy.utils.get_attr(self.model, key))
        return result

    return split_patch


def _off_the_chips_on_unload(is_xla: Callable[[Any], bool], state: "PackState") -> Callable:
    """``ModelPatcher.unpatch_model`` that, when ComfyUI moves a model off the XLA device (offload, unload,
    a full reload), first brings its split weights to the host part by part (torch_xla would gather each
    whole on the device and compile a program per weight shape to do it), and after it drops the device
    copies a backend keeps of host weights (torchax's twins: ComfyUI's move of a host tensor to the host
    moves nothing, so without this an unloaded model would hold the chips while the loader caches it)."""
    import comfy.model_patcher

    unpatch = comfy.model_patcher.ModelPatcher.unpatch_model

    def unpatch_to_host(self, *args, **kwargs):
        call = Call.of(unpatch, (self, *args), kwargs, fallback=("self", "device_to", "unpatch_weights"))
        device_to = call.get("device_to")
        leaving = call.get("unpatch_weights", True) and device_to is not None and not is_xla(device_to)
        if leaving:
            state.placement.bring_to_host(self.model)
        result = unpatch(self, *args, **kwargs)
        if leaving:
            released = state.backend.release_weights(self.model)
            if released:
                log.debug("comfy-tpu: %s unloaded: %d device copies of its weights dropped",
                          type(self.model).__name__, released)
            state.placement.remeasure(self.model)
        return result

    return unpatch_to_host
