"""Bodies of ``tests/test_text_encoders_spmd.py``'s fresh-process cases (and ``bench/bench_encoder_shard.py``):
Flux's text encoders (tiny CLIP-L + T5, ComfyUI's own classes, random weights) on the device under a mesh.

The CLIP is made as a loader makes it (for the XLA device) and again on the host (ComfyUI's own encode, the
same weights). Two prompts of different token lengths within one bucket are encoded on both. What comes
back: per encode its compiles, executions, device-to-host transfers, seconds and distance to the host's
result; per weight and buffer of the device CLIP model its shape, bytes, sharding and the bytes each device holds (the
backend's own reading: torch_xla's shard indices, JAX's shards of the torchax twins); the pack's measure of
the CLIP model's bytes per chip (``Placement.figures``).
"""
from __future__ import annotations

#: Flux: T5 past its tokenizer's minimum (256 tokens), two lengths within one 128-token bucket.
PROMPTS = ("cat " * 260, "dog " * 290)


def flux_encode_split(nodes, comfy_places_on_device: bool = False) -> dict:
    """``comfy_places_on_device``: ComfyUI's ``text_encoder_initial_device`` answers the load device, as it
    does for a text encoder that fits the memory ComfyUI is told (M chips' worth under a 'model' axis): the
    CLIP would be made whole on the device; ``made_on`` says where its weights were right after it was made."""
    import time

    import comfy.model_management as mm
    import torch

    from bench import workflow_parts
    from tests.cases_text_encoders import _diff
    from tpu_runtime import runtime
    from tpu_runtime.comfyui.text_encoder_patch import encoders

    state = runtime.current()
    backend = state.backend
    stock = mm.text_encoder_initial_device
    if comfy_places_on_device:
        mm.text_encoder_initial_device = lambda load_device, *args, **kwargs: load_device
    try:
        with torch.inference_mode():  # as ComfyUI's loader nodes run
            device_clip = workflow_parts.build_text_encoder("flux", seed=5)
    finally:
        mm.text_encoder_initial_device = stock
    made_on = sorted({str(p.device.type) for p in device_clip.cond_stage_model.parameters()})
    host_clip = workflow_parts.build_text_encoder("flux", seed=5, host=True)
    runs = []
    for text in PROMPTS:
        tokens = workflow_parts.fold_t5_tokens(host_clip.tokenize(text))
        before, start = backend.counters(), time.perf_counter()
        with torch.inference_mode():
            device = device_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        seconds, after = time.perf_counter() - start, backend.counters()
        with torch.inference_mode():
            host = host_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        runs.append({**{key: after[key] - before[key] for key in ("compiles", "executions", "transfers_to_host")},
                     "seconds": seconds, "diff": _diff(device, host), "scale": float(host["cond"].abs().max()),
                     "t5_length": len(tokens["t5xxl"][0]), "cond_device": str(device["cond"].device)})
    transformers = encoders(device_clip.cond_stage_model)
    model = device_clip.cond_stage_model
    modules = dict(model.named_modules())
    weights = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        owner = modules[name.rpartition(".")[0]]
        weights[name] = {"shape": list(tensor.shape), "numel": tensor.numel(),
                         "bytes": tensor.numel() * tensor.element_size(), "floating": tensor.is_floating_point(),
                         "linear": isinstance(owner, torch.nn.Linear), "embedding": isinstance(owner, torch.nn.Embedding),
                         "sharding": backend.tensor_sharding(tensor), "per_device": backend.device_bytes(tensor)}
    parts = state.device_parts
    programs = [parts.programs(t, "").figures() for t in transformers]
    figures = state.placement.figures() if state.placement is not None else []
    held_before, before = state.placement.held_per_chip() if state.placement is not None else 0, backend.counters()
    mm.unload_all_models()  # ComfyUI's own unload: the split weights come back to the host part by part
    after, host_weights = backend.counters(), dict(host_clip.cond_stage_model.named_parameters())
    unload = {"compiles": after["compiles"] - before["compiles"],
              "left_on_device": sum(backend.is_device(p.device) for p in model.parameters()),
              "equal_to_the_host_model": all(torch.equal(p.detach().cpu(), host_weights[name].detach())
                                             for name, p in model.named_parameters()),
              "held_per_chip": [held_before, state.placement.held_per_chip() if state.placement is not None else 0]}
    return {"runs": runs, "weights": weights, "made_on": made_on, "unload": unload, "backend": backend.name, "model_axis": backend.model_axis(),
            "devices": backend.device_total(), "mesh": backend.mesh_description(),
            "figures": figures,
            "on_device": [parts.loaded_for_device(t) for t in transformers],
            "programs": programs,
            "lazy": parts.stats()["lazy"]}
