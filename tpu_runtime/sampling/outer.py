"""The run as a whole (``OUTER_SAMPLE``, ``PREPARE_SAMPLING``): padding, metering, observers, the result."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from tpu_runtime.comfyui.calls import Call
from tpu_runtime.sampling import control, padding
from tpu_runtime.backends import metrics
from tpu_runtime.execution.host_values import as_host, host_copy
from tpu_runtime.settings.run_options import RunOptions
from tpu_runtime.sampling.run import _RUN, EXPECTED_TRANSFERS, SamplingRun, padded_shape, run_signature, sampler_function_name

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")

#: ``CFGGuider.outer_sample``'s parameters in ComfyUI 0.3.75 (used only where the running one cannot be read).
OUTER_SAMPLE_FORM = ("noise", "latent_image", "sampler", "sigmas", "denoise_mask", "callback", "disable_pbar",
                     "seed", "latent_shapes")


def outer_sample_wrapper(state: "PackState", options: RunOptions):
    backend = state.backend

    def outer_sample(executor, *args, **kwargs):
        call = Call.through(executor, args, kwargs, fallback=OUTER_SAMPLE_FORM)
        guider = executor.class_obj
        patcher = guider.model_patcher
        noise, latent_image, sampler, sigmas = (call.get(name) for name in ("noise", "latent_image", "sampler",
                                                                            "sigmas"))
        denoise_mask = call.get("denoise_mask")
        if host_copy(sigmas) is None:
            log.info("comfy-tpu: the sigmas given to the sampler are on %s; copying them to the host once",
                     sigmas.device)
        user_shape = tuple(noise.shape)
        padded = padded_shape(user_shape, options)
        if padded != user_shape:
            noise, latent_image, denoise_mask = _pad_inputs(noise, latent_image, denoise_mask, padded)
            call.set("noise", noise)
            if denoise_mask is not None:
                call.set("denoise_mask", denoise_mask)
            if call.given("latent_shapes") or "latent_shapes" in call.names:
                call.set("latent_shapes", [latent_image.shape])
        call.set("latent_image", _host_tagged(latent_image))
        call.set("sigmas", as_host(sigmas))
        run = SamplingRun(state=state, options=options, host_sigmas=as_host(sigmas),
                          model_name=type(patcher.model).__name__, user_shape=user_shape)
        run.controlled = control.has_controls(guider)
        run.signature = run_signature(guider, sampler, user_shape, tuple(noise.shape), options, len(sigmas) - 1,
                                      backend.mesh_description())
        for observer in list(state.observers):
            observer.before_run(run, patcher)
        token = _RUN.set(run)
        meter = metrics.RunMeter(backend)
        program_compile_start = _program_compile_s(state)
        completed = False
        try:
            # Always under inference mode, as ComfyUI's nodes run: a script calling the sampler
            # outside it (grad on, or only no_grad) traces other graphs than a warm-up did (autograd
            # and view tracking change what each step boundary materialises: measured, 2 new graphs).
            with torch.inference_mode():
                output = call.forward(executor)
            completed = True
            # The result comes to the host here (once), then is cropped there: cropping on the device
            # would make one more graph for every size of a bucket.
            with torch.inference_mode():
                result = padding.crop(backend.to_host(output), user_shape[-2], user_shape[-1])
            # A caller outside inference mode gets an ordinary tensor, as stock ComfyUI would give it.
            return result if torch.is_inference_mode_enabled() else result.clone()
        finally:
            # ``finally`` runs for ComfyUI's interrupt too (a BaseException in 2026 ComfyUI): the run is
            # always closed and its figures kept; only a completed run is recorded.
            _RUN.reset(token)
            run.figures = meter.stop().without(run.load_figures).model_copy(update={
                "model_calls": sum(p.boundaries for p in run.pacers),
                "host_trace_s": sum(p.host_trace_s for p in run.pacers),
                "device_wait_s": sum(p.device_wait_s for p in run.pacers),
                "model_program_compile_s": _program_compile_s(state) - program_compile_start})
            _report(run, sampler_function_name(sampler))
            if completed:
                for observer in list(state.observers):
                    observer.after_run(run)

    return outer_sample


def _program_compile_s(state: "PackState") -> float:
    """Compile seconds of the diffusion models' replay programs so far (0 outside replay execution)."""
    return state.replayed_models.program_compile_s if state.replayed_models is not None else 0.0


def prepare_sampling(executor, *args, **kwargs):
    """ComfyUI loads the model here (and applies or removes weight patches): metered apart. Every argument
    (0.8 adds ``force_full_load``, 0.33 ``force_offload``) goes on as given."""
    run = _RUN.get()
    if run is None:
        return executor(*args, **kwargs)
    meter = metrics.RunMeter(run.backend)
    try:
        return executor(*args, **kwargs)
    finally:
        run.load_figures = meter.stop()
        if run.load_figures.transfers_to_host or run.load_figures.compiles:
            log.debug("comfy-tpu: loading %s: %s", run.model_name, run.load_figures.model_dump())


def _pad_inputs(noise, latent_image, denoise_mask, padded: tuple[int, ...]):
    """Pad the run's inputs (on the host, before ComfyUI moves them) to the bucket shape."""
    from tpu_runtime.comfyui.samplers import prepare_mask

    height, width = padded[-2], padded[-1]
    if denoise_mask is not None:
        # At latent resolution first (as ComfyUI would), so the padding does not stretch the mask.
        denoise_mask = padding.pad(prepare_mask(denoise_mask, noise.shape, "cpu"),
                                   height, width, mode="replicate")
    return padding.pad(noise, height, width), padding.pad(latent_image, height, width), denoise_mask


def _host_tagged(latent: torch.Tensor) -> torch.Tensor:
    """A host latent tagged so its device copy answers ``count_nonzero(...) > 0`` on the host."""
    if latent is None or latent.is_nested or latent.device.type != "cpu":
        return latent
    return as_host(latent)


def _report(run: SamplingRun, sampler_name: str) -> None:
    """Keep the run's figures; say what it did wrong once (CPU fallbacks, host syncs)."""
    figures = run.figures
    state = run.state
    state.record_run(figures)
    new_fallbacks = sorted(op for op in figures.fallback_ops if state.notices.first_time("fallback", run.model_name, op))
    if new_fallbacks:
        log.warning("comfy-tpu: %s ran %s on the CPU (XLA has no lowering); the run completed, "
                    "but each such op costs a device-to-host round trip", run.model_name, ", ".join(new_fallbacks))
    # The result's own transfer is inside the metered span; anything beyond it is a sync.
    # A backend that makes programs from functions (torchax) brings each model call's output to the host
    # by design: the sampler's math runs there.
    expected = EXPECTED_TRANSFERS + (figures.model_calls if state.backend.traces_functions else 0)
    if figures.transfers_to_host > expected and state.notices.first_time("syncs", sampler_name):
        log.warning("comfy-tpu: sampler %s made %d device-to-host syncs during sampling; it runs "
                    "correctly, but slower than a sync-free sampler", sampler_name,
                    figures.transfers_to_host - expected)
    if run.options.debug_metrics:
        log.info("comfy-tpu: run figures %s", figures.model_dump())
