"""The step loop's host side (``SAMPLER_SAMPLE``, ``PREDICT_NOISE``, ``CALC_COND_BATCH``): host sigmas
and noise for the sampler, one step boundary before each model evaluation, fixed cond batching."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from tpu_runtime.comfyui.calls import Call
from tpu_runtime.sampling import control, unipc
from tpu_runtime.execution.host_values import HostTensor, as_host, device_twin, host_copy, plain, upload
from tpu_runtime.sampling.noise import host_brownian_noise_sampler, host_default_noise_sampler, noise_kind
from tpu_runtime.execution.pacing import StepPacer
from tpu_runtime.sampling.run import _RUN


#: The wrapped functions' parameters in ComfyUI 0.3.75 (used only where the running one cannot be read).
SAMPLER_SAMPLE_FORM = ("model_wrap", "sigmas", "extra_args", "callback", "noise", "latent_image", "denoise_mask",
                       "disable_pbar")
PREDICT_NOISE_FORM = ("x", "timestep", "model_options", "seed")
CALC_COND_BATCH_FORM = ("model", "conds", "x_in", "timestep", "model_options")


class _HostModelWrap:
    """Just enough of a model wrapper for ``Sampler.max_denoise`` to read the host schedule."""

    def __init__(self, model_sampling) -> None:
        self.inner_model = type("InnerModel", (), {"model_sampling": model_sampling})()


@contextlib.contextmanager
def _host_sampler(sampler, model_wrap, noise: torch.Tensor, host_sigmas: HostTensor, seed, host_schedules, backend,
                  notices, user_shape: Optional[tuple[int, ...]] = None, host_timesteps: bool = False,
                  probe=None):
    """Point a KSAMPLER at host-side helpers for the length of one call, then restore it: host noise,
    UniPC in its one-graph form (:mod:`..unipc`), host timesteps when controls read them.
    ``host_timesteps``: the model's timesteps are computed on the host (see :mod:`..control`); ``probe``: how
    the running ComfyUI's samplers draw noise (:class:`tpu_runtime.comfyui.sampler_probe.SamplerProbes`)."""
    saved = dict(vars(sampler))
    try:
        if hasattr(sampler, "max_denoise"):
            ms = host_schedules.host_model_sampling(model_wrap.inner_model.model_sampling)
            unbound = type(sampler).max_denoise
            sampler.max_denoise = lambda _wrap, sigmas: unbound(sampler, _HostModelWrap(ms), sigmas)
        function = getattr(sampler, "sampler_function", None)
        extra = getattr(sampler, "extra_options", None)
        kind = noise_kind(function, probe) if function is not None else None
        if kind and isinstance(extra, dict) and extra.get("noise_sampler") is None:
            noise_sampler = (host_brownian_noise_sampler(noise, host_sigmas, seed, user_shape) if kind == "brownian"
                             else host_default_noise_sampler(noise, seed, user_shape))
            sampler.extra_options = {**extra, "noise_sampler": noise_sampler}
        replacement = unipc.replacement_for(function, backend.shard_batch, notices) if function is not None else None
        if replacement is not None:
            function = sampler.sampler_function = replacement
        if host_timesteps and function is not None:
            sampler.sampler_function = control.host_timestep_sampler(function)
        yield
    finally:
        vars(sampler).clear()
        vars(sampler).update(saved)


def sampler_sample(executor, *args, **kwargs):
    run = _RUN.get()
    if run is None:
        return executor(*args, **kwargs)
    call = Call.through(executor, args, kwargs, fallback=SAMPLER_SAMPLE_FORM)
    model_wrap, sigmas, extra_args, callback, noise = (call.get(name) for name in (
        "model_wrap", "sigmas", "extra_args", "callback", "noise"))
    latent_image, disable_pbar = call.get("latent_image"), call.get("disable_pbar", False)
    host_sigmas = run.host_sigmas
    if host_sigmas is None or host_sigmas.shape != sigmas.shape:
        host_sigmas = as_host(sigmas)  # another wrapper changed the schedule: one transfer
    total_steps = max(len(host_sigmas) - 1, 0)
    call.set("latent_image", _as_device_data(latent_image))
    call.set("sigmas", host_sigmas)
    call.set("disable_pbar", True)  # the pacer shows the bar
    pacer = StepPacer(run.backend, total_steps, wait_every=run.options.sync_steps, show_bar=not disable_pbar)
    run.pacer = pacer
    run.pacers.append(pacer)
    try:
        with _host_sampler(executor.class_obj, model_wrap, noise, host_sigmas, extra_args.get("seed"),
                           run.state.host_schedules, run.backend, run.state.notices, run.user_shape or None,
                           host_timesteps=run.controlled, probe=run.state.sampler_probes):
            call.set("callback", pacer.step_callback(callback))
            samples = call.forward(executor)
        samples = plain(control.plain_latent(samples))
        pacer.finish()
        return samples
    finally:
        pacer.close()
        run.pacer = None


def _as_device_data(tensor):
    """A device twin re-sent from its host values: whether ComfyUI's preprocessing of it (such as
    ``process_latent_in``) was already run on the device or is still pending must not change the
    first step's graph."""
    host = host_copy(tensor) if isinstance(tensor, torch.Tensor) else None
    if host is None or tensor.device.type == "cpu":
        return tensor
    return upload(host, tensor.device)


def predict_noise_wrapper(boundary: bool):
    """Lazy mode cuts the graph before each model evaluation; compiled mode cuts it later, right
    before the captured graph runs (see :mod:`..compiled`)."""

    def predict_noise(executor, *args, **kwargs):
        run = _RUN.get()
        if run is None or run.pacer is None:
            return executor(*args, **kwargs)
        call = Call.through(executor, args, kwargs, fallback=PREDICT_NOISE_FORM)
        x, timestep = control.plain_latent(call.get("x")), call.get("timestep")
        if boundary:
            run.pacer.boundary()
        if isinstance(timestep, torch.Tensor) and timestep.device != x.device:
            # Samplers that pass a host sigma straight to the model (uni_pc, and every sampler when
            # a control is in the conditioning): upload it as data, or ComfyUI's
            # ``timestep(...).to(sigma.device)`` would bring the model's timestep back to the host.
            # With a control, it keeps its host values: ``get_control``'s range check reads them.
            call.set("timestep", device_twin(timestep, x.device) if run.controlled else upload(timestep, x.device))
        call.set("x", x)
        return call.forward(executor)

    return predict_noise


def _zero_memory_required(*args, **kwargs) -> int:
    return 0


def _control_replay(run):
    """How controls' models are replayed in this run (replay execution), else None: (their stand-ins, the
    dispatch before each, whether their outputs stay on the device: torchax's ``resident_outputs``)."""
    replayed = run.state.replayed_models
    if run.options.execution != "replay" or replayed is None:
        return None
    return replayed.for_module, run.backend.step_boundary, getattr(run.backend, "resident_outputs", False) is True


def calc_cond_batch(executor, *args, **kwargs):
    """Batch every compatible cond together, always: the graph must not follow free memory. Controls'
    strengths are data, T2I-Adapters stay on the device (:func:`..control.during_model_call`)."""
    call = Call.through(executor, args, kwargs, fallback=CALC_COND_BATCH_FORM)
    model, conds = call.get("model"), call.get("conds")
    had_own = "memory_required" in vars(model)
    saved = vars(model).get("memory_required")
    model.memory_required = _zero_memory_required
    run = _RUN.get()
    controls = (control.during_model_call(conds, _control_replay(run)) if run is not None and run.controlled
                else contextlib.nullcontext())
    try:
        with controls:
            return executor(*args, **kwargs)
    finally:
        if had_own:
            model.memory_required = saved
        else:
            del model.memory_required
