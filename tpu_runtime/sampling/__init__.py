"""ComfyUI's sampling on the XLA device, attached through ComfyUI's own wrapper hooks.

Wrappers (``comfy.patcher_extension.WrappersMP``), added to the model options of every sampling
call whose model loads on the XLA device (:mod:`.attach`):

* ``OUTER_SAMPLE`` (:mod:`.outer`): keeps the host schedule, pads the latent to its bucket, meters
  the run (XLA counters), names CPU fallbacks and tells the observers (the cache).
* ``PREPARE_SAMPLING`` (:mod:`.outer`): the model load is metered apart.
* ``SAMPLER_SAMPLE``, ``PREDICT_NOISE``, ``CALC_COND_BATCH`` (:mod:`.steps`): host sigmas, host-drawn
  noise, one step boundary before each model evaluation, honest pacing, fixed cond batching.
* ``APPLY_MODEL`` (:mod:`.model_call`): bf16 autocast, the batch split over the mesh, conv kernel
  twins, and in compiled mode the captured diffusion model.

:mod:`.run` holds what one run is (:class:`SamplingRun`) and what it is told to (:class:`RunObserver`).
"""
from __future__ import annotations

from tpu_runtime.sampling.attach import WRAPPER_KEY, attach
from tpu_runtime.sampling.run import EXPECTED_TRANSFERS, RunObserver, SamplingRun, current_run, padded_shape

__all__ = ["WRAPPER_KEY", "attach", "EXPECTED_TRANSFERS", "RunObserver", "SamplingRun", "current_run",
           "padded_shape"]
