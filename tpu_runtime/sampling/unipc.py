"""ComfyUI's UniPC samplers (``uni_pc``, ``uni_pc_bh2``) with the same device work at every step.

ComfyUI's UniPC (``comfy.extra_samplers.uni_pc``, multistep, B(h) variants) ramps its order up
(1, 2, 3) and down at the end, runs a corrector after every model call but the last, and builds each
update from as many stacked differences as its order: on XLA each combination is its own small graph,
seven in a run, and together they cost a third of a small model's warm-up. This is the same method,
computed in another form:

* **Host coefficients, fixed slots.** The solver's coefficients are computed on the host with
  ComfyUI's formulas, in float32 as it computes them, and sent as one row of data a step. The device
  combines the latent with a three-slot history of the model's predictions (slots not yet filled hold
  zeros with zero weights), so every step runs one graph whatever its order.
* **k-diffusion units.** ComfyUI keeps ``x / sqrt(1 + sigma^2)`` and turns the model's denoised output
  into noise and back; the state here is ``x`` itself and the denoised output is used as it comes
  (the two are equal: ``(x_vp - std * eps) / alpha = denoised``). The model is called as every
  k-diffusion sampler calls it, so the first model call is the same graph as euler's.
* **The corrector as a correction.** The corrector's result is written as the predictor's result plus
  a combination of the predictions (the latent's term is the same in both and cancels), so it needs
  only the model's input; the first step's "correction" is zero, in the same form as every later one.

The two agree to float32 rounding (the suite checks parity with ComfyUI's own on the CPU). As ComfyUI's
does, a schedule ending at 0 is changed in place to end at 0.001 (ComfyUI's ``KSAMPLER`` then reads
that last sigma). The callback's ``x`` is in k-diffusion units, as every other sampler's.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from tpu_runtime.execution.host_values import upload
from tpu_runtime.sampling.unipc_weights import SLOTS, end_schedule_as_comfyui, step_weights

if TYPE_CHECKING:
    from tpu_runtime.state import Notices

log = logging.getLogger("comfy_tpu")

#: ComfyUI's sampler functions this replaces, by name in ``comfy.extra_samplers.uni_pc``, and their variant.
VARIANTS = {"sample_unipc": "bh1", "sample_unipc_bh2": "bh2"}
#: What of ``comfy.extra_samplers.uni_pc`` this form reproduces.
REPRODUCED = ("sample_unipc", "sample_unipc_bh2", "predict_eps_sigma", "SigmaConvert", "model_wrapper",
              "UniPC.__init__", "UniPC.noise_prediction_fn", "UniPC.data_prediction_fn", "UniPC.model_fn",
              "UniPC.multistep_uni_pc_update", "UniPC.multistep_uni_pc_bh_update", "UniPC.sample")
#: The fingerprint (:func:`source_fingerprint`) of those in the ComfyUI this was checked against (0.3.75).
#: Where ComfyUI's differ (it changed its UniPC), ComfyUI's own runs: the parity checks hold for this one.
CHECKED_SOURCE = "17141be31ae6d7a2"


def _weighted(start: torch.Tensor, weights: torch.Tensor, offset: int, tensors: list[torch.Tensor]) -> torch.Tensor:
    result = start
    for index, tensor in enumerate(tensors):
        result = result + weights[offset + index] * tensor
    return result


def _as_is(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def sample(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
           callback: Optional[Callable] = None, disable: Any = None, *, variant: str = "bh1",
           shard_batch: Callable[[torch.Tensor], torch.Tensor] = _as_is, b_precision: str = "float32") -> torch.Tensor:
    """UniPC multistep (``variant`` bh1 or bh2) as a k-diffusion sampler function; ``sigmas`` on the host,
    at least two steps (ComfyUI's own handles one). ``shard_batch`` places the empty slots as the
    latents are placed (split over the mesh's data axis under SPMD): a slot's sharding is part of the graph."""
    extra_args = {} if extra_args is None else extra_args
    end_schedule_as_comfyui(sigmas)
    weights = step_weights(sigmas, variant, b_precision)
    s_in = x.new_ones([x.shape[0]])
    slots = [shard_batch(upload(torch.zeros(x.shape, dtype=x.dtype), x.device)) for _ in range(SLOTS)]
    model_input = x
    denoised = model(model_input, sigmas[0] * s_in, **extra_args)
    for index, step in enumerate(weights):
        row = upload(torch.tensor(step.row(), dtype=x.dtype), x.device)
        x = _weighted(model_input, row, 0, [*slots, denoised])  # the correction (zero after the first call)
        slots = [*slots[1:], denoised]
        model_input = _weighted(row[4] * x, row, 5, slots)  # the next model input, or the result
        final = index == len(weights) - 1
        if callback is not None:
            callback({"x": model_input if final else x, "i": index, "sigma": sigmas[index],
                      "sigma_hat": sigmas[index], "denoised": denoised})
        if not final:
            denoised = model(model_input, sigmas[index + 1] * s_in, **extra_args)
    return model_input


@functools.lru_cache(maxsize=None)
def source_fingerprint(module: ModuleType) -> str:
    """sha256 (16 hex digits) of the source of :data:`REPRODUCED` in ``module``; "unreadable" without it."""
    sources = []
    try:
        for name in REPRODUCED:
            value: Any = module
            for attribute in name.split("."):
                value = getattr(value, attribute)
            sources.append(inspect.getsource(value))
    except (AttributeError, OSError, TypeError):
        return "unreadable"
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()[:16]


#: How far the one-graph form may be from ComfyUI's own on the probe (|x| ~ 1 there): float32 rounding of two
#: orderings of one sum is ~1e-5; a different formula is off by far more on its small-step schedule.
PROBE_BOUND = 1e-4


def _probe_denoiser(x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
    s = sigma.view(-1, 1, 1, 1)
    return torch.tanh(0.7 * x.flip(1) / (1 + s) + 0.1 * s)


def _probe_schedules() -> list[torch.Tensor]:
    """An ordinary schedule ending at 0, and one of small steps (as high-shift flow schedules make: there
    float32 and float64 ``b`` differ)."""
    return [torch.cat([torch.exp(torch.linspace(2.7, -3.5, 7)), torch.zeros(1)]),
            torch.linspace(0.98, 0.90, 9)]


@functools.lru_cache(maxsize=None)
def _formula_matching(module: ModuleType) -> Optional[str]:
    """The ``b`` precision with which this module's UniPC gives ComfyUI's own results on the probe (a few
    milliseconds on a 1x4x4x4 CPU latent), None when neither does."""
    errors: dict[str, float] = {}
    for precision in ("float32", "float64"):
        worst = 0.0
        for variant_function, variant in (("sample_unipc", "bh1"), ("sample_unipc_bh2", "bh2")):
            for schedule in _probe_schedules():
                x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
                with torch.inference_mode():
                    theirs = getattr(module, variant_function)(_probe_denoiser, x.clone(), schedule.clone(), {}, None,
                                                               True)
                    ours = sample(_probe_denoiser, x.clone(), schedule.clone(), {}, None, True, variant=variant,
                                  b_precision=precision)
                worst = max(worst, float((ours - theirs).abs().max()))
        errors[precision] = worst
    best = min(errors, key=errors.get)
    return best if errors[best] <= PROBE_BOUND else None


def formula_for(module: Optional[ModuleType]) -> tuple[Optional[str], str]:
    """(the ``b`` precision the one-graph form uses for this ComfyUI's UniPC, or None: ComfyUI's own runs;
    why). The source this was checked against needs no probe; another is probed against ComfyUI's own."""
    if module is None:
        return None, "ComfyUI's UniPC is not imported"
    fingerprint = source_fingerprint(module)
    if fingerprint == CHECKED_SOURCE:
        return "float32", f"source {fingerprint} as checked (ComfyUI 0.3.75 to 0.33)"
    try:
        precision = _formula_matching(module)
    except Exception as exc:  # noqa: BLE001 - a UniPC the probe cannot run: ComfyUI's own runs
        return None, f"source {fingerprint}; the probe could not run it ({type(exc).__name__}: {exc})"
    if precision is None:
        return None, (f"source {fingerprint} is not the checked {CHECKED_SOURCE} and its results differ from the "
                      f"one-graph form's by more than {PROBE_BOUND} on the probe")
    return precision, f"source {fingerprint}: matches the one-graph form with b in {precision} on the probe"


def replacement_for(function: Callable, shard_batch: Callable[[torch.Tensor], torch.Tensor] = _as_is,
                    notices: Optional["Notices"] = None) -> Optional[Callable]:
    """For ComfyUI's ``sample_unipc``/``sample_unipc_bh2``, this module's sampler (ComfyUI's own for runs
    of one step, which have no update, and for options it does not know); None for every other sampler
    function, and for a ComfyUI UniPC this form does not reproduce (:func:`formula_for`, said once)."""
    variant = VARIANTS.get(getattr(function, "__name__", ""))
    if variant is None or getattr(function, "__module__", "") != "comfy.extra_samplers.uni_pc":
        return None
    module = sys.modules.get(function.__module__)
    precision, why = formula_for(module)
    if precision is None:
        if notices is None or notices.first_time("unipc source", why):
            log.warning("comfy-tpu: ComfyUI's UniPC (%s): %s: ComfyUI's own runs, correct but slower on XLA (a "
                        "small graph for each order of its steps, its solves on the host)",
                        getattr(module, "__file__", function.__module__), why)
        return None

    def sample_fixed_graph(model, noise, sigmas, extra_args=None, callback=None, disable=None, **options):
        chosen = options.get("variant", variant)
        reproduced = not set(options) - {"variant"} and chosen in VARIANTS.values()
        if not reproduced or len(sigmas) < 3 or sigmas.device.type != "cpu":
            return function(model, noise, sigmas, extra_args, callback, disable, **options)
        return sample(model, noise, sigmas, extra_args, callback, disable, variant=chosen, shard_batch=shard_batch,
                      b_precision=precision)

    return sample_fixed_graph
