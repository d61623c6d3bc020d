"""Bodies run in fresh processes (``tests/child.py``) by ``test_attention_spmd``: one attention call split
over the pack's SPMD mesh (``data=2,model=2``, then ``model=4``: ``Backend.set_model_axis``) on 4 CPU
devices, each implementation through the router ``attach`` installs, its inputs split as the model's are
(rows over ``data``, the q/k/v projections' features, i.e. heads, over ``model``). Per run: the max
difference from ComfyUI's attention on the host, and the program each device runs (XLA's partitioned,
optimized HLO): its collectives and its largest tensor. First, a whole tiny Flux model sampled on the
``data=2,model=2`` mesh with the implementation forced (its weights split over ``model``), against
eager CPU."""
from __future__ import annotations

import glob
import os
import re

from tests.sampling_harness import max_abs_diff  # noqa: F401  (imported before ComfyUI's own ``tests``)

BATCH, HEADS, DIM, TOKENS, CONTEXT = 2, 4, 64, 256, 77
COLLECTIVES = re.compile(r"\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")
MESHES = [2, 4]  # the model axis: data=2,model=2, then data=1,model=4


def _inputs(cross: bool):
    """q, k, v as ``(batch, tokens, heads * dim)``; cross-attention gets a bool key-padding mask."""
    import torch

    gen = torch.Generator().manual_seed(7 if cross else 3)
    keys = CONTEXT if cross else TOKENS
    q = torch.randn(BATCH, TOKENS, HEADS * DIM, generator=gen)
    k, v = (torch.randn(BATCH, keys, HEADS * DIM, generator=gen) for _ in range(2))
    mask = None
    if cross:
        mask = torch.rand(BATCH, 1, keys, generator=gen) > 0.3
        mask[..., 0] = True
    return q, k, v, mask


def _reference(q, k, v, mask):
    from tpu_runtime.comfyui.attention import attention_pytorch

    return attention_pytorch(q, k, v, HEADS, mask=mask)


def _program_figures(text: str) -> dict:
    from tpu_runtime.execution.attention import program_audit

    largest = max(program_audit.shapes(text), key=lambda s: s.nbytes)
    return {"collectives": sorted(set(COLLECTIVES.findall(text))), "largest": str(largest),
            "largest_elements": largest.nbytes // 4}


def _newest_dump(dump_dir: str, seen: set) -> str:
    found = set(glob.glob(os.path.join(dump_dir, "*after_optimizations.txt"))) - seen
    seen |= found
    return max(found, key=os.path.getsize)  # the attention program (the others move tensors)


def _model_on_mesh(nodes, state, implementation: str) -> dict:
    """Tiny Flux (2 heads), 2 euler steps on the mesh with ``implementation`` forced for this model (its
    own override), against eager CPU; how many attention calls the router handed a kernel with the mesh."""
    import torch

    from bench import tiny_zoo
    from tests.sampling_harness import ksample
    from tpu_runtime.execution.attention import route
    from tpu_runtime.settings.run_options import OPTIONS_KEY

    name, backend = "flux", state.backend
    device = tiny_zoo.build_patcher(name, seed=0, dtype=torch.float32)
    device.model_options.setdefault("transformer_options", {})[OPTIONS_KEY] = {"attention": implementation}
    cpu = tiny_zoo.build_patcher(name, seed=0, load_device=torch.device("cpu"), dtype=torch.float32)
    positive, negative = tiny_zoo.conditioning(name, 1, size=64), tiny_zoo.conditioning(name, 2, size=64)
    latent, cfg = torch.zeros(tiny_zoo.latent_shape(name, size=64)), tiny_zoo.family(name).cfg
    router = route.router_for(implementation, backend.name, backend.device_type(), backend.spmd_mesh())
    before = router.calls_on_mesh
    run = ksample(nodes, device, positive, negative, steps=2, cfg=cfg, seed=3, latent=latent, backend=backend)
    eager = ksample(nodes, cpu, positive, negative, steps=2, cfg=cfg, seed=3, latent=latent)
    return {"mesh": backend.mesh_description(), "implementation": implementation, "model_axis": backend.model_axis(),
            "diff": max_abs_diff(run.samples, eager.samples), "calls_on_mesh": router.calls_on_mesh - before}


def xla_split(nodes, implementations: list, dump_dir: str) -> dict:
    """torch_xla SPMD: each implementation and case on each mesh; the program from XLA's dump."""
    import torch
    import torch_xla

    from tpu_runtime import runtime
    from tpu_runtime.sampling.attach import attention_router

    state = runtime.current()
    backend = state.backend
    device = torch_xla.device()
    models = [_model_on_mesh(nodes, state, implementation) for implementation in implementations]
    runs, seen = [], set(glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")))
    for model_axis in MESHES:
        if model_axis != backend.model_axis():
            backend.set_model_axis(model_axis)
        for implementation in implementations:
            router = attention_router(state, implementation)
            for cross in (False, True):
                q, k, v, mask = _inputs(cross)
                with torch.inference_mode():
                    moved = [t.to(device) for t in (q, k, v)]
                    for t in moved:
                        backend.shard_tensor(t, ("data", None, "model"))
                    mask_on = None if mask is None else mask.to(device)
                    out = router(None, *moved, HEADS, mask=mask_on, transformer_options={}).cpu()
                runs.append({"mesh": backend.mesh_description(), "implementation": implementation, "cross": cross,
                             "router": repr(router), "diff": max_abs_diff(out, _reference(q, k, v, mask)),
                             **_program_figures(open(_newest_dump(dump_dir, seen)).read())})
    return {"runs": runs, "models": models, "devices": backend.device_total()}


def torchax_split(nodes, implementations: list) -> dict:
    """torchax on a JAX mesh: each implementation and case on each mesh, jitted with the inputs split as
    the model's; the program from ``jit(...).lower(...).compile().as_text()`` (per device)."""
    import jax
    import torch
    import torchax
    from jax.sharding import NamedSharding, PartitionSpec

    from tpu_runtime import runtime
    from tpu_runtime.backends.torchax import host_array, host_tensor
    from tpu_runtime.sampling.attach import attention_router

    state = runtime.current()
    backend = state.backend
    env = torchax.default_env()
    models = [_model_on_mesh(nodes, state, implementation) for implementation in implementations]
    runs = []
    for model_axis in MESHES:
        if model_axis != backend.model_axis():
            backend.set_model_axis(model_axis)
        mesh = backend.spmd_mesh()
        for implementation in implementations:
            router = attention_router(state, implementation)
            for cross in (False, True):
                q, k, v, mask = _inputs(cross)

                def program(*arrays):
                    with torch.inference_mode(False), torch.no_grad(), env:
                        tensors = [torchax.tensor.Tensor(a, env) for a in arrays]
                        given_mask = tensors[3] if len(tensors) > 3 else None
                        return router(None, *tensors[:3], HEADS, mask=given_mask, transformer_options={}).jax()

                split = NamedSharding(mesh, PartitionSpec("data", None, "model"))
                arrays = [jax.device_put(host_array(t), split) for t in (q, k, v)]
                if mask is not None:
                    arrays.append(jax.device_put(host_array(mask), NamedSharding(mesh, PartitionSpec("data"))))
                compiled = jax.jit(program).lower(*arrays).compile()
                out = host_tensor(compiled(*arrays))
                runs.append({"mesh": backend.mesh_description(), "implementation": implementation, "cross": cross,
                             "router": repr(router), "diff": max_abs_diff(out, _reference(q, k, v, mask)),
                             **_program_figures(compiled.as_text())})
    return {"runs": runs, "models": models, "devices": backend.device_total()}
