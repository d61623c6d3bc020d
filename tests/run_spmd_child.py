"""Child process for the SPMD tests: SPMD is process-wide and must be set before any XLA device exists.

argv: a JSON list of [sampler, batch, steps] runs and the path to save the final latents to.
Runs each through ComfyUI's own ``nodes.common_ksampler`` (cfg 7, 64x64) and prints one RESULT line
with XLA's counts per run, the pack's SPMD stats and ComfyUI's memory answers.
"""
import json
import logging
import os
import sys

logging.basicConfig(level=logging.INFO)  # as ComfyUI's main.py sets up logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.sampling_harness import ksample  # noqa: E402  (before ComfyUI's own ``tests`` is on the path)
from bench.comfy_host import import_comfy  # noqa: E402

nodes = import_comfy(load_pack=True)
import torch  # noqa: E402
import comfy.model_management as mm  # noqa: E402

import tpu_runtime  # noqa: E402
import tpu_runtime.runtime as runtime  # noqa: E402
from bench import tiny_model  # noqa: E402

runs_wanted, out_path = json.loads(sys.argv[1]), sys.argv[2]
backend = runtime.current().backend
patcher = tiny_model.build_patcher("tiny", seed=0)
positive, negative = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
latents, figures = {}, []
for sampler, batch, steps in runs_wanted:
    run = ksample(nodes, patcher, positive, negative, steps=steps, sampler=sampler, batch=batch, size=64,
                  cfg=7.0, seed=11, backend=backend)
    latents[f"{sampler}/{batch}/{steps}"] = run.samples
    signature = runtime.current().manager.last_outcome.signature if runtime.current().manager.last_outcome else None
    figures.append(dict(sampler=sampler, batch=batch, steps=steps, compiles=run.compiles, executions=run.executions,
                        transfers_to_host=run.transfers_to_host, fallbacks=run.fallbacks,
                        shape=list(run.samples.shape), mesh=signature.mesh if signature else None))
torch.save(latents, out_path)
device = mm.get_torch_device()
state = runtime.current()
result = dict(runs=figures, spmd=tpu_runtime.get_tpu_stats()["spmd"], device=str(device),
              free=mm.get_free_memory(device), total=mm.get_total_memory(device), execution=state.options.execution,
              replay=state.replayed_models.figures(), replay_fallbacks=state.replayed_models.fallbacks())
print("RESULT " + json.dumps(result))
