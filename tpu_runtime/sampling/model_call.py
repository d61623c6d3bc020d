"""One diffusion-model call (``APPLY_MODEL``): bf16 autocast around the model (the sampler's own math
stays fp32), the batch split over the mesh under SPMD, conv layers reading HWIO kernel twins where
that is on, and in compiled and replay mode a stand-in for the diffusion model."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from tpu_runtime.backends import batch_shard, kernel_layout
from tpu_runtime.execution import block_programs
from tpu_runtime.execution.host_values import without_twins
from tpu_runtime.execution.stand_in import ModelStandIn
from tpu_runtime.settings.run_options import RunOptions
from tpu_runtime.sampling.run import _RUN

if TYPE_CHECKING:
    from tpu_runtime.state import PackState


def _kernel_twins(state: "PackState", options: RunOptions):
    """``twins.applied`` where conv kernels go to XLA as HWIO twins, else a no-op."""
    if kernel_layout.resolve(options.conv_kernel_layout, state.backend.device_type()):
        return state.kernel_twins.applied
    return lambda model: contextlib.nullcontext()


def _executor(state: "PackState"):
    """Calls ``apply_model``, its batch split over the mesh's 'data' axis under SPMD."""
    backend = state.backend
    if backend.shard_count() > 1:
        return lambda executor, args, kwargs: batch_shard.sharded_apply(backend, executor, *args,
                                                                        notices=state.notices, **kwargs)
    return lambda executor, args, kwargs: executor(*args, **kwargs)


def apply_model_wrapper(state: "PackState", options: RunOptions):
    """APPLY_MODEL in lazy mode."""
    dtype = torch.bfloat16 if options.autocast_bf16 else torch.float32
    kernels = _kernel_twins(state, options)
    execute = _executor(state)
    backend = state.backend

    def apply_model(executor, *args, **kwargs):
        with kernels(getattr(executor.class_obj, "diffusion_model", None)), backend.autocast(dtype):
            return execute(executor, args, kwargs)

    return apply_model


def _stand_in_wrapper(state: "PackState", options: RunOptions, prepare):
    """APPLY_MODEL with the base model's diffusion model swapped for a stand-in for the length of the
    call (as core's torch.compile wrapper does), under the same autocast. ``prepare(base_model,
    original)`` gives the stand-in and the context to run the call in; the stand-in takes the step
    boundary right before the model runs."""
    dtype = torch.bfloat16 if options.autocast_bf16 else torch.float32
    execute = _executor(state)
    backend = state.backend

    def apply_model(executor, *args, **kwargs):
        base_model = executor.class_obj
        original = getattr(base_model, "diffusion_model", None)
        run = _RUN.get()
        # Values that keep host copies (the timestep of a run with controls, see ..control; a latent-derived
        # input) reach the model as plain device data: in a program traced once, math on a host copy
        # would be a constant, and a branch on it would be decided once for every later call.
        args, kwargs = without_twins((args, kwargs))
        if not isinstance(original, torch.nn.Module) or isinstance(original, ModelStandIn):
            with backend.autocast(dtype):  # no diffusion model to stand in for, or already inside one
                return execute(executor, args, kwargs)
        stand_in, around = prepare(base_model, original)
        stand_in.before_call = run.pacer.boundary if run is not None and run.pacer is not None else None
        base_model.diffusion_model = stand_in
        try:
            with around, backend.autocast(dtype):
                return execute(executor, args, kwargs)
        finally:
            base_model.diffusion_model = original
            stand_in.before_call = None

    return apply_model


def compiled_apply_model_wrapper(state: "PackState", options: RunOptions):
    """APPLY_MODEL in compiled mode: the diffusion model's captured stand-in, conv layers reading their
    kernel twins in every call (dynamo captures them)."""
    kernels = _kernel_twins(state, options)

    def prepare(base_model, original):
        stand_in = state.compiled_models.for_module(original, _model_label(base_model),
                                                    options.compiled_graph_break_limit)
        return stand_in, kernels(original)

    return _stand_in_wrapper(state, options, prepare)


def replayed_apply_model_wrapper(state: "PackState", options: RunOptions):
    """APPLY_MODEL in replay mode: the diffusion model's replayed stand-in; the model's graph is its own
    (the sampler's math and the input preparation are another, small one). Conv kernel twins are kept
    up to date at each call, and read by the layers only while a call is traced."""
    twins_on = kernel_layout.twins_on(options.conv_kernel_layout, state.backend)
    refresh = state.kernel_twins.kernels_for if twins_on else (lambda model: None)
    trace_context = state.kernel_twins.applied if twins_on else (lambda model: contextlib.nullcontext())

    def prepare(base_model, original):
        stand_in = state.replayed_models.for_module(original, _model_label(base_model))
        stand_in.trace_context = trace_context
        stand_in.model_token = _object_patches(base_model)
        stand_in.block_programs = block_programs.resolve(options.block_programs, state.backend)
        refresh(original)
        return stand_in, contextlib.nullcontext()

    return _stand_in_wrapper(state, options, prepare)


def _object_patches(base_model) -> tuple:
    """What ComfyUI's patcher swapped into the model (``object_patches``: modules, functions), by identity."""
    patcher = getattr(base_model, "current_patcher", None)
    patches = getattr(patcher, "object_patches", None) or {}
    return tuple(sorted((name, id(value)) for name, value in patches.items()))


def _model_label(base_model) -> str:
    """How the log names a model: its ComfyUI config (``SD15``) and class (``BaseModel``)."""
    config = type(getattr(base_model, "model_config", None)).__name__
    return f"{config} ({type(base_model).__name__})" if config != "NoneType" else type(base_model).__name__
