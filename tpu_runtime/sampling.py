"""ComfyUI's sampling on the XLA device, attached through ComfyUI's own wrapper hooks.

Wrappers (``comfy.patcher_extension.WrappersMP``), added to the model options of every sampling
call whose model loads on the XLA device:

* ``OUTER_SAMPLE``: keeps the host schedule, meters the run (XLA counters), names CPU fallbacks.
* ``PREPARE_SAMPLING``: the model load (weights moved, LoRA patches applied or removed) is metered
  apart: its transfers and compiles are ComfyUI's loading, not the sampler's syncs or the signature's
  graphs.
* ``SAMPLER_SAMPLE``: hands the sampler host sigmas, host-drawn noise and honest step pacing.
* ``PREDICT_NOISE``: one step boundary before each model evaluation.
* ``CALC_COND_BATCH``: cond/uncond batching fixed, not chosen from free memory each step.
* ``APPLY_MODEL``: bf16 autocast around the model; the sampler's own math stays fp32. Under SPMD
  the model's input batch is split over the mesh (``batch_shard``). Conv layers read HWIO twins of
  their kernels where that is on (``kernel_layout``).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from . import batch_shard, compiled, kernel_layout, metrics, padding, schedule
from .signature import ExecutionSignature, build_signature
from .host_values import HostTensor, as_host, host_copy, plain, upload
from .noise import host_brownian_noise_sampler, host_default_noise_sampler, noise_kind
from .pacing import StepPacer
from .run_options import RunOptions

log = logging.getLogger("comfy_tpu")

WRAPPER_KEY = "comfy_tpu"
OPTIONS_KEY = "comfy_tpu"  # transformer_options[OPTIONS_KEY]: per-model overrides (a dict)
CORE_TORCH_COMPILE_KEY = "torch_compile_kwargs"  # set in model_options by core's TorchCompileModel node


class RunObserver:
    """Told about each sampling run on the device (the compilation cache listens here)."""

    def before_run(self, run: "SamplingRun", patcher: Any) -> None: ...
    def after_run(self, run: "SamplingRun") -> None: ...


#: Observers of every run (the cache registry adds itself when the pack starts).
OBSERVERS: list[RunObserver] = []


@dataclass
class SamplingRun:
    backend: Any
    options: RunOptions
    host_sigmas: Optional[HostTensor]
    model_name: str
    user_shape: tuple[int, ...] = ()  # the latent's shape before padding to a bucket
    signature: Optional[ExecutionSignature] = None
    pacer: Optional[StepPacer] = None
    pacers: list[StepPacer] = field(default_factory=list)
    figures: Optional[metrics.RunFigures] = None
    load_figures: metrics.RunFigures = field(default_factory=metrics.RunFigures)  # the model load's share
    notes: list[str] = field(default_factory=list)


_RUN: contextvars.ContextVar[Optional[SamplingRun]] = contextvars.ContextVar("comfy_tpu_run", default=None)
_FALLBACKS = metrics.FallbackReporter()
_SYNC_WARNED: set[str] = set()
#: Per-run figures of the latest runs, newest last (read by the demo, stats and tests).
RUN_HISTORY: list[metrics.RunFigures] = []
#: Device-to-host transfers a run may make: the result.
EXPECTED_TRANSFERS = 1


def current_run() -> Optional[SamplingRun]:
    return _RUN.get()


# -- attaching ---------------------------------------------------------------------------------
def attach(model_options: dict, backend, options: RunOptions) -> None:
    """Add the wrappers (and PyTorch SDPA attention) to one sampling call's model options."""
    import comfy.patcher_extension as pe

    if pe.get_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, model_options, is_model_options=True):
        return
    overrides = model_options.get("transformer_options", {}).get(OPTIONS_KEY, {})
    effective = options.model_copy(update={k: v for k, v in overrides.items() if k in RunOptions.model_fields})
    if effective.execution == "compiled" and CORE_TORCH_COMPILE_KEY in model_options:
        # The user's own TorchCompileModel node already compiles this model: don't capture it twice.
        effective = effective.model_copy(update={"execution": "lazy"})
    compiled_mode = effective.execution == "compiled"
    wrappers = {
        pe.WrappersMP.OUTER_SAMPLE: _outer_sample(backend, effective),
        pe.WrappersMP.PREPARE_SAMPLING: _prepare_sampling,
        pe.WrappersMP.SAMPLER_SAMPLE: _sampler_sample,
        pe.WrappersMP.PREDICT_NOISE: _predict_noise(boundary=not compiled_mode),
        pe.WrappersMP.CALC_COND_BATCH: _calc_cond_batch,
        pe.WrappersMP.APPLY_MODEL: (_compiled_apply_model if compiled_mode else _apply_model)(backend, effective),
    }
    for kind, wrapper in wrappers.items():
        pe.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper, model_options, is_model_options=True)
    transformer_options = model_options.setdefault("transformer_options", {})
    transformer_options.setdefault("optimized_attention_override", _sdpa_attention)


def _sdpa_attention(func, *args, **kwargs):
    """XLA lowers PyTorch SDPA well; ComfyUI's CPU default (sub-quadratic) loops and asks for free memory."""
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


# -- the wrappers ------------------------------------------------------------------------------
def _outer_sample(backend, options: RunOptions):
    def outer_sample(executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, latent_shapes=None):
        guider = executor.class_obj
        patcher = guider.model_patcher
        if host_copy(sigmas) is None:
            log.info("comfy-tpu: the sigmas given to the sampler are on %s; copying them to the host once",
                     sigmas.device)
        user_shape = tuple(noise.shape)
        padded = _padded_shape(user_shape, options)
        if padded != user_shape:
            noise, latent_image, denoise_mask = _pad_inputs(noise, latent_image, denoise_mask, padded)
            latent_shapes = [latent_image.shape]
        run = SamplingRun(backend=backend, options=options, host_sigmas=as_host(sigmas),
                          model_name=type(patcher.model).__name__, user_shape=user_shape)
        run.signature = _signature(guider, sampler, user_shape, tuple(noise.shape), options, len(sigmas) - 1,
                                   backend.mesh_description())
        for observer in OBSERVERS:
            observer.before_run(run, patcher)
        token = _RUN.set(run)
        meter = metrics.RunMeter(backend)
        completed = False
        try:
            # Always under inference mode, as ComfyUI's nodes run: a script calling the sampler
            # outside it (grad on, or only no_grad) traces other graphs than a warm-up did (autograd
            # and view tracking change what each step boundary materialises: measured, 2 new graphs).
            with torch.inference_mode():
                output = executor(noise, _host_tagged(latent_image), sampler, as_host(sigmas), denoise_mask,
                                  callback, disable_pbar, seed, latent_shapes=latent_shapes)
            completed = True
            # The result comes to the host here (once), then is cropped there: cropping on the device
            # would make one more graph for every size of a bucket.
            with torch.inference_mode():
                result = padding.crop(backend.to_host(output), user_shape[-2], user_shape[-1])
            # A caller outside inference mode gets an ordinary tensor, as stock ComfyUI would give it.
            return result if torch.is_inference_mode_enabled() else result.clone()
        finally:
            _RUN.reset(token)
            run.figures = meter.stop().without(run.load_figures).model_copy(update={
                "model_calls": sum(p.boundaries for p in run.pacers),
                "host_trace_s": sum(p.host_trace_s for p in run.pacers),
                "device_wait_s": sum(p.device_wait_s for p in run.pacers)})
            _after_run(run, sampler)
            if completed:
                for observer in OBSERVERS:
                    observer.after_run(run)

    return outer_sample


def _prepare_sampling(executor, model, noise_shape, conds, model_options=None):
    """ComfyUI loads the model here (and applies or removes weight patches): metered apart."""
    run = _RUN.get()
    if run is None:
        return executor(model, noise_shape, conds, model_options=model_options)
    meter = metrics.RunMeter(run.backend)
    try:
        return executor(model, noise_shape, conds, model_options=model_options)
    finally:
        run.load_figures = meter.stop()
        if run.load_figures.transfers_to_host or run.load_figures.compiles:
            log.debug("comfy-tpu: loading %s: %s", run.model_name, run.load_figures.model_dump())


def _padded_shape(shape: tuple[int, ...], options: RunOptions) -> tuple[int, ...]:
    if not options.shape_padding or len(shape) < 4:
        return shape
    height, width = padding.padded_hw(shape[-2], shape[-1], options.shape_padding_multiple)
    return (*shape[:-2], height, width)


def _pad_inputs(noise, latent_image, denoise_mask, padded: tuple[int, ...]):
    """Pad the run's inputs (on the host, before ComfyUI moves them) to the bucket shape."""
    import comfy.sampler_helpers

    height, width = padded[-2], padded[-1]
    if denoise_mask is not None:
        # At latent resolution first (as ComfyUI would), so the padding does not stretch the mask.
        denoise_mask = padding.pad(comfy.sampler_helpers.prepare_mask(denoise_mask, noise.shape, "cpu"),
                                   height, width, mode="replicate")
    return padding.pad(noise, height, width), padding.pad(latent_image, height, width), denoise_mask


def _signature(guider, sampler, user_shape, padded_shape, options: RunOptions, steps: int,
               mesh: str = "single") -> ExecutionSignature:
    tokens = []
    for conds in getattr(guider, "original_conds", {}).values():
        for cond in conds:
            cross_attn = cond.get("cross_attn") if isinstance(cond, dict) else None
            if isinstance(cross_attn, torch.Tensor) and cross_attn.dim() >= 2:
                tokens.append(int(cross_attn.shape[1]))
    cfg = getattr(guider, "cfg", 1.0)
    uncond = "negative" in getattr(guider, "original_conds", {}) and not math.isclose(float(cfg), 1.0)
    function = getattr(sampler, "sampler_function", None)
    model_dtype = guider.model_patcher.model_dtype()
    dtype = "bfloat16" if options.autocast_bf16 else str(model_dtype).removeprefix("torch.")
    return build_signature(guider.model_patcher, user_shape, padded_shape, tuple(tokens) or (0,), uncond, dtype,
                           getattr(function, "__name__", type(sampler).__name__), cfg_scale=float(cfg),
                           steps=steps, mesh=mesh, execution=options.execution)


def _host_tagged(latent: torch.Tensor) -> torch.Tensor:
    """A host latent tagged so its device copy answers ``count_nonzero(...) > 0`` on the host."""
    if latent is None or latent.is_nested or latent.device.type != "cpu":
        return latent
    return as_host(latent)


def _after_run(run: SamplingRun, sampler) -> None:
    figures = run.figures
    RUN_HISTORY.append(figures)
    del RUN_HISTORY[:-50]
    if figures.fallback_ops:
        _FALLBACKS.report(run.model_name, figures.fallback_ops)
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", type(sampler).__name__)
    # The result's own transfer is inside the metered span; anything beyond it is a sync.
    if figures.transfers_to_host > EXPECTED_TRANSFERS and name not in _SYNC_WARNED:
        _SYNC_WARNED.add(name)
        log.warning("comfy-tpu: sampler %s made %d device-to-host syncs during sampling; it runs "
                    "correctly, but slower than a sync-free sampler", name,
                    figures.transfers_to_host - EXPECTED_TRANSFERS)
    if run.options.debug_metrics:
        log.info("comfy-tpu: run figures %s", figures.model_dump())


class _HostModelWrap:
    """Just enough of a model wrapper for ``Sampler.max_denoise`` to read the host schedule."""

    def __init__(self, model_sampling) -> None:
        self.inner_model = type("InnerModel", (), {"model_sampling": model_sampling})()


@contextlib.contextmanager
def _host_sampler(sampler, model_wrap, noise: torch.Tensor, host_sigmas: HostTensor, seed,
                  user_shape: Optional[tuple[int, ...]] = None):
    """Point a KSAMPLER at host-side helpers for the length of one call, then restore it."""
    saved = dict(vars(sampler))
    try:
        if hasattr(sampler, "max_denoise"):
            ms = schedule.host_model_sampling(model_wrap.inner_model.model_sampling)
            unbound = type(sampler).max_denoise
            sampler.max_denoise = lambda _wrap, sigmas: unbound(sampler, _HostModelWrap(ms), sigmas)
        function = getattr(sampler, "sampler_function", None)
        extra = getattr(sampler, "extra_options", None)
        kind = noise_kind(function) if function is not None else None
        if kind and isinstance(extra, dict) and extra.get("noise_sampler") is None:
            noise_sampler = (host_brownian_noise_sampler(noise, host_sigmas, seed, user_shape) if kind == "brownian"
                             else host_default_noise_sampler(noise, seed, user_shape))
            sampler.extra_options = {**extra, "noise_sampler": noise_sampler}
        yield
    finally:
        vars(sampler).clear()
        vars(sampler).update(saved)


def _sampler_sample(executor, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                    denoise_mask=None, disable_pbar=False):
    run = _RUN.get()
    if run is None:
        return executor(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
    host_sigmas = run.host_sigmas
    if host_sigmas is None or host_sigmas.shape != sigmas.shape:
        host_sigmas = as_host(sigmas)  # another wrapper changed the schedule: one transfer
    total_steps = max(len(host_sigmas) - 1, 0)
    latent_image = _as_device_data(latent_image)
    pacer = StepPacer(run.backend, total_steps, wait_every=run.options.sync_steps, show_bar=not disable_pbar)
    run.pacer = pacer
    run.pacers.append(pacer)
    try:
        with _host_sampler(executor.class_obj, model_wrap, noise, host_sigmas, extra_args.get("seed"),
                           run.user_shape or None):
            samples = executor(model_wrap, host_sigmas, extra_args, pacer.step_callback(callback), noise,
                               latent_image, denoise_mask, True)
        samples = plain(samples)
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


def _predict_noise(boundary: bool):
    """Lazy mode cuts the graph before each model evaluation; compiled mode cuts it later, right
    before the captured graph runs (see :mod:`.compiled`)."""

    def predict_noise(executor, x, timestep, model_options={}, seed=None):
        run = _RUN.get()
        if run is not None and run.pacer is not None:
            if boundary:
                run.pacer.boundary()
            if isinstance(timestep, torch.Tensor) and timestep.device != x.device:
                # Samplers that pass a host sigma straight to the model (uni_pc): upload it as data, or
                # ComfyUI's ``timestep(...).to(sigma.device)`` would bring the model's timestep back to the host.
                timestep = upload(timestep, x.device)
        return executor(x, timestep, model_options, seed)

    return predict_noise


def _zero_memory_required(*args, **kwargs) -> int:
    return 0


def _calc_cond_batch(executor, model, conds, x_in, timestep, model_options):
    """Batch every compatible cond together, always: the graph must not follow free memory."""
    had_own = "memory_required" in vars(model)
    saved = vars(model).get("memory_required")
    model.memory_required = _zero_memory_required
    try:
        return executor(model, conds, x_in, timestep, model_options)
    finally:
        if had_own:
            model.memory_required = saved
        else:
            del model.memory_required


def _apply_model(backend, options: RunOptions):
    dtype = torch.bfloat16 if options.autocast_bf16 else torch.float32
    spmd = backend.shard_count() > 1
    kernels = _kernel_twins(backend, options)

    def apply_model(executor, *args, **kwargs):
        with kernels(getattr(executor.class_obj, "diffusion_model", None)), backend.autocast(dtype):
            return _execute(backend, spmd, executor, args, kwargs)

    return apply_model


def _kernel_twins(backend, options: RunOptions):
    """``twins.applied`` where conv kernels go to XLA as HWIO twins, else a no-op."""
    if kernel_layout.resolve(options.conv_kernel_layout, backend.device_type()):
        return kernel_layout.twins(backend).applied
    return lambda model: contextlib.nullcontext()


def _execute(backend, spmd: bool, executor, args, kwargs):
    if spmd:  # the batch is split over the mesh's 'data' axis
        return batch_shard.sharded_apply(backend, executor, *args, **kwargs)
    return executor(*args, **kwargs)


def _compiled_apply_model(backend, options: RunOptions):
    """APPLY_MODEL in compiled mode: the base model's diffusion model is its captured stand-in for
    the length of the call (as core's torch.compile wrapper does), under the same autocast."""
    dtype = torch.bfloat16 if options.autocast_bf16 else torch.float32
    models = compiled.registry(backend)
    spmd = backend.shard_count() > 1
    kernels = _kernel_twins(backend, options)

    def apply_model(executor, *args, **kwargs):
        base_model = executor.class_obj
        original = getattr(base_model, "diffusion_model", None)
        if not isinstance(original, torch.nn.Module) or isinstance(original, compiled.CompiledDiffusionModel):
            with backend.autocast(dtype):  # no diffusion model to capture, or already inside one
                return _execute(backend, spmd, executor, args, kwargs)
        stand_in = models.for_module(original, _model_label(base_model), options.compiled_graph_break_limit)
        run = _RUN.get()
        stand_in.before_call = run.pacer.boundary if run is not None and run.pacer is not None else None
        base_model.diffusion_model = stand_in
        try:
            with kernels(original), backend.autocast(dtype):
                return _execute(backend, spmd, executor, args, kwargs)
        finally:
            base_model.diffusion_model = original
            stand_in.before_call = None

    return apply_model


def _model_label(base_model) -> str:
    """How the log names a model: its ComfyUI config (``SD15``) and class (``BaseModel``)."""
    config = type(getattr(base_model, "model_config", None)).__name__
    return f"{config} ({type(base_model).__name__})" if config != "NoneType" else type(base_model).__name__
