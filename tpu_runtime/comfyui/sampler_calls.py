"""ComfyUI calls the compilation cache makes: one sampling call through ``comfy.sample.sample`` (so
ComfyUI's own wrappers and ``extra_conds`` run, as in a prompt), sampler names, the prompt executing."""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

log = logging.getLogger("comfy_tpu")


def sample_zeros(model: Any, latent_shape: tuple[int, ...], cfg: float, sampler_name: str, scheduler: str,
                 positive: list, negative: list, steps: int) -> None:
    """Sample a zero latent of ``latent_shape`` (batch first; 5-D for video models) for ``steps``
    steps, with ComfyUI's progress bar (in the UI too)."""
    import comfy.sample
    import latent_preview

    latent = torch.zeros(latent_shape)
    noise = comfy.sample.prepare_noise(latent, 0)
    callback = latent_preview.prepare_callback(model, steps)
    with torch.inference_mode():
        comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                            denoise=1.0, seed=0, callback=callback)


def sampler_function_name(sampler_name: str) -> str:
    """What signatures call ComfyUI's sampler ``sampler_name``: its k-diffusion function's name."""
    import comfy.samplers

    sampler = comfy.samplers.sampler_object(sampler_name)
    function = getattr(sampler, "sampler_function", None)
    return getattr(function, "__name__", type(sampler).__name__)


def sampler_name_for(function_name: str) -> Optional[str]:
    """The sampler name that produces this sampler function (for re-warming a recorded signature),
    None when no sampler of this ComfyUI does."""
    import comfy.samplers

    for name in comfy.samplers.KSampler.SAMPLERS:
        try:
            if sampler_function_name(name) == function_name:
                return name
        except Exception as exc:  # a sampler another pack registered may fail to build without its inputs
            log.debug("comfy-tpu: sampler %s not inspected for re-warm: %s", name, exc)
    return None


def executing_prompt_id() -> Optional[str]:
    """The id of the prompt ComfyUI is executing (None outside one)."""
    from comfy_execution.utils import get_executing_context

    return getattr(get_executing_context(), "prompt_id", None)


def executing_node_id() -> Optional[str]:
    """The id of the node ComfyUI is executing (None outside ComfyUI or a prompt)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:  # outside ComfyUI
        return None
    context = get_executing_context()
    return str(context.node_id) if context is not None and context.node_id is not None else None


def progress_text_sender() -> Any:
    """``PromptServer.send_progress_text`` of the running server, None without one."""
    try:
        from server import PromptServer
    except ImportError:  # ComfyUI imported as a library, no server module
        return None
    instance = getattr(PromptServer, "instance", None)
    return instance.send_progress_text if instance is not None else None
