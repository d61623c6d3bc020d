"""Bodies run in fresh processes (``tests/child.py``) by the attention route tests: every family of the
tiny zoo sampled with one attention implementation forced, through ComfyUI's hook or, as on a ComfyUI
without it, through the pack's patch of ``optimized_attention`` (``comfyui/attention_patch.py``)."""
from __future__ import annotations

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (imported before ComfyUI's own ``tests``)

SIZE = 64
FRAMES = 2
STEPS = 2


def routed_families(nodes, via: str, families: list) -> dict:
    """Each family, 2 euler steps with the implementation ``COMFY_TPU_ATTENTION`` forces, compared with
    eager CPU (ComfyUI's own attention on the host); ``via="patch"`` installs the patch first and counts
    the calls it routed."""
    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime
    from tpu_runtime.comfyui import attention_patch
    from tpu_runtime.execution.attention import route

    state = runtime.current()
    backend = state.backend
    routed = {}
    if via == "patch":
        routed = attention_patch.install(
            state.patches, lambda: route.router_for(state.options.attention, backend.name, backend.device_type()),
            lambda tensor: route.on_device(backend.name, tensor))
    out = {}
    for name in families:
        before = sum(r.routed_calls for r in routed.values())
        xla = tiny_zoo.build_patcher(name, seed=0, dtype=torch.float32)
        cpu = tiny_zoo.build_patcher(name, seed=0, load_device=torch.device("cpu"), dtype=torch.float32)
        positive, negative = tiny_zoo.conditioning(name, 1, size=SIZE), tiny_zoo.conditioning(name, 2, size=SIZE)
        shape, cfg = tiny_zoo.latent_shape(name, size=SIZE, frames=FRAMES), tiny_zoo.family(name).cfg
        run = ksample(nodes, xla, positive, negative, steps=STEPS, cfg=cfg, seed=3, latent=torch.zeros(shape),
                      backend=backend)
        eager = ksample(nodes, cpu, positive, negative, steps=STEPS, cfg=cfg, seed=3, latent=torch.zeros(shape))
        out[name] = {"max_diff": max_abs_diff(run.samples, eager.samples),
                     "routed": sum(r.routed_calls for r in routed.values()) - before,
                     "finite": bool(torch.isfinite(run.samples).all())}
    return {"families": out, "options_attention": state.options.attention}
