"""Body of the torchax mesh test, run in a fresh process (``tests/child.py``) with 4 JAX CPU devices."""
from __future__ import annotations

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (before ComfyUI's own ``tests``)


def batch_over_mesh(nodes, runs: list) -> dict:
    """Each (batch, steps) run on the mesh and on eager CPU: compiles, program runs, max |diff|."""
    import torch

    from bench import tiny_model
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    xla = tiny_model.build_patcher("tiny", seed=0)
    cpu = tiny_model.build_patcher("tiny", seed=0, load_device=torch.device("cpu"))
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    result = {"backend": backend.name, "spmd": state.manager.spmd_stats(), "runs": []}
    for batch, steps in runs:
        run = ksample(nodes, xla, pos, neg, steps=steps, batch=batch, backend=backend)
        reference = ksample(nodes, cpu, pos, neg, steps=steps, batch=batch)
        result["runs"].append({"batch": batch, "steps": steps, "compiles": run.compiles,
                               "diff": max_abs_diff(run.samples, reference.samples),
                               "shape_ok": run.samples.shape == reference.samples.shape})
    return result
