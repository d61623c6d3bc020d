"""Auto mode's 'model' axis (``COMFY_TPU_SPMD=auto``, no mesh given): chosen for the first model (a
diffusion model at its sampling, a text encoder when its CLIP is made for the device) whose weights do not
fit one chip, from the chip budget the pack knows (``chip_memory``)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tpu_runtime.backends.chip_memory import chip_memory
from tpu_runtime.backends.weight_shard import auto_model_axis

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")


def auto_model_axis_for(state: "PackState", patcher: Any) -> None:
    """Auto mode (``COMFY_TPU_SPMD=auto``, no mesh given): the first model whose weights do not fit one
    chip (a diffusion model at its sampling, a text encoder when its CLIP is made for the device) gets
    the mesh a 'model' axis, logged with the plan. Models loaded before keep their placement."""
    backend, settings = state.backend, state.settings
    if settings.spmd != "auto" or settings.mesh or backend.model_axis() > 1 or backend.device_total() <= 1:
        return
    if getattr(patcher.model, "device", None) is not None and backend.is_device(patcher.model.device):
        return  # already loaded as it is
    memory = chip_memory(state)
    size, plan = auto_model_axis(patcher.model_size(), memory[0] if memory else None, backend.device_total())
    if size > 1:
        try:
            backend.set_model_axis(size)
        except ValueError as exc:  # this backend keeps weights whole: the model loads as it would, said once
            if state.notices.first_time("auto model axis refused", str(exc)):
                log.error("comfy-tpu: auto SPMD: %s doesn't fit one chip (%s), but %s", type(patcher.model).__name__,
                          plan, exc)
            return
        log.info("comfy-tpu: auto SPMD: %s doesn't fit one chip (%s); its weights are split over 'model'",
                 type(patcher.model).__name__, plan)
    elif state.notices.first_time("auto model axis", plan):
        log.debug("comfy-tpu: auto SPMD: %s", plan)
