"""Adding the pack's wrappers to one sampling call's model options (``patches`` calls it for every
sampling call of a model that loads on the XLA device)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tpu_runtime.comfyui import hooks
from tpu_runtime.execution.attention import choice, route
from tpu_runtime.settings.run_options import for_model
from tpu_runtime.sampling import model_call, outer, steps

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")

WRAPPER_KEY = "comfy_tpu"


def attach(model_options: dict, state: "PackState") -> None:
    """Add the wrappers (and the pack's attention router), with the run options in force now and this
    model's own overrides; a call that has them already is left alone."""
    if hooks.has_wrapper(model_options, "OUTER_SAMPLE", WRAPPER_KEY):
        return
    modes = state.backend.execution_modes
    options = for_model(state.options, model_options, modes)
    asked = for_model(state.options, model_options).execution
    if asked != options.execution:  # e.g. compiled (dynamo) on torchax: said once
        if state.notices.first_time("execution mode", asked, state.backend.name):
            log.error("comfy-tpu: COMFY_TPU_EXECUTION=%s is not available on the %s backend (it runs %s); "
                      "sampling runs in %s execution", asked, state.backend.name, ", ".join(modes), options.execution)
    # Lazy mode cuts the graph before each model evaluation; the other modes cut it later, right
    # before the model runs (its inputs are then device data for the captured or replayed program).
    boundary_in_model = options.execution in ("compiled", "replay")
    apply_model = {"compiled": model_call.compiled_apply_model_wrapper,
                   "replay": model_call.replayed_apply_model_wrapper}.get(options.execution,
                                                                         model_call.apply_model_wrapper)
    hooks.add_wrappers(model_options, WRAPPER_KEY, {
        "OUTER_SAMPLE": outer.outer_sample_wrapper(state, options),
        "PREPARE_SAMPLING": outer.prepare_sampling,
        "SAMPLER_SAMPLE": steps.sampler_sample,
        "PREDICT_NOISE": steps.predict_noise_wrapper(boundary=not boundary_in_model),
        "CALC_COND_BATCH": steps.calc_cond_batch,
        "APPLY_MODEL": apply_model(state, options),
    })
    transformer_options = model_options.setdefault("transformer_options", {})
    transformer_options.setdefault("optimized_attention_override", attention_router(state, options.attention))


def attention_router(state: "PackState", setting: choice.Setting) -> route.AttentionRouter:
    """The attention router for this setting on this backend, with its SPMD mesh (what runs is said
    once a process)."""
    backend, device_type = state.backend.name, state.backend.device_type()
    mesh = state.backend.mesh_description()
    if state.notices.first_time("attention", setting, backend, device_type, mesh):
        log.info("comfy-tpu: attention %s", choice.describe(setting, backend, device_type, mesh))
    return route.router_for(setting, backend, device_type, state.backend.spmd_mesh())
