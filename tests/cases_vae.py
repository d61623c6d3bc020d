"""Bodies of ``tests/test_vae_device.py``'s fresh-process cases: Flux's and Wan 2.1's VAEs on the device.

Each VAE is made twice from one random state dict: as a loader makes it (on the device
``vae_device()`` answers: the XLA device) and on the host (``device=cpu``: ComfyUI's own decode), so
every device result is compared with ComfyUI's on the same weights.
"""
from __future__ import annotations

import logging


def _vaes(kind: str):
    import comfy.sd
    import torch

    from bench import workflow_parts

    state_dict = workflow_parts.vae_state_dict(kind, seed=3)
    return comfy.sd.VAE(sd=state_dict), comfy.sd.VAE(sd=dict(state_dict), device=torch.device("cpu"))


def _measured(backend, call):
    before = backend.counters()
    result = call()
    after = backend.counters()
    return result, {"compiles": after["compiles"] - before["compiles"],
                    "transfers": after["transfers_to_host"] - before["transfers_to_host"]}


def other_vaes(nodes) -> dict:
    import torch

    from tpu_runtime import runtime

    state = runtime.current()
    backend, parts = state.backend, state.device_parts
    generator = torch.Generator().manual_seed(0)
    result = {}
    latents = {"flux": (1, 16, 8, 8), "wan21": (1, 16, 3, 8, 8)}  # Wan: 3 latent frames -> 9 frames
    for kind, shape in latents.items():
        device_vae, host_vae = _vaes(kind)
        assert backend.is_device(device_vae.device) and host_vae.device.type == "cpu"
        first, decode = _measured(backend, lambda: device_vae.decode(torch.randn(shape, generator=generator)))
        latent = torch.randn(shape, generator=generator)
        image, again = _measured(backend, lambda: device_vae.decode(latent))
        where = parts.stats()["vae"]["where"]
        again["diff"] = float((image - host_vae.decode(latent)).abs().max())
        result[kind] = {"decode": decode, "again": again, "where": where,
                        "programs": parts.programs(device_vae.first_stage_model, kind).figures()["programs"],
                        "shape": list(image.shape)}
        if kind == "flux":
            result["flux_tiled"] = _tiled(backend, parts, device_vae, host_vae, generator)
            result["flux_encode"] = _encode(backend, device_vae, host_vae, generator)
    result["fallback"] = _fallback(state, generator)
    return result


def _tiled(backend, parts, device_vae, host_vae, generator) -> dict:
    """ComfyUI's tiled decode (three passes of overlapping tiles): a program per tile shape."""
    import torch

    shapes = set()
    host_model = host_vae.first_stage_model
    method = host_model.decode
    latent = torch.randn(1, 16, 12, 12, generator=generator)
    tiles = dict(tile_x=8, tile_y=8, overlap=2)

    calls = []

    def counting(samples, *args, **kwargs):
        calls.append(tuple(samples.shape))
        shapes.add(tuple(samples.shape))
        return method(samples, *args, **kwargs)

    host_model.decode = counting  # ComfyUI's host decode, seeing each tile
    try:
        host = host_vae.decode_tiled(latent, **tiles)
    finally:
        del host_model.decode
    programs = parts.programs(device_vae.first_stage_model, "flux")
    shapes.add((1, 16, 8, 8))  # the plain decodes' program, made before
    image, first = _measured(backend, lambda: device_vae.decode_tiled(latent, **tiles))
    _, again = _measured(backend, lambda: device_vae.decode_tiled(latent, **tiles))
    return {"tile_shapes": len(shapes), "tiles": len(calls), "programs": programs.figures()["programs"], "first": first,
            "again": again, "diff": float((image - host).abs().max())}


def _encode(backend, device_vae, host_vae, generator) -> dict:
    import torch

    pixels = torch.rand(1, 64, 64, 3, generator=generator)
    _, first = _measured(backend, lambda: device_vae.encode(pixels))
    other = torch.rand(1, 64, 64, 3, generator=generator)
    latent, again = _measured(backend, lambda: device_vae.encode(other))
    return {"transfers": again["transfers"], "first_compiles": first["compiles"], "again_compiles": again["compiles"],
            "diff": float((latent - host_vae.encode(other)).abs().max())}


def _fallback(state, generator) -> dict:
    """A device failure (here: the program cannot be made) sends the VAE to the host, said once."""
    import torch

    device_vae, host_vae = _vaes("wan21")
    latent = torch.randn(1, 16, 1, 8, 8, generator=generator)
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "runs on the host from now on" in record.getMessage():
                records.append(record)

    handler = Catch()
    logging.getLogger("comfy_tpu").addHandler(handler)
    backend = state.backend
    capture = backend.capture_program

    def broken(*args, **kwargs):
        raise RuntimeError("injected: the device cannot compile this")

    backend.capture_program = broken
    try:
        image = device_vae.decode(latent)
        again = device_vae.decode(latent)
    finally:
        backend.capture_program = capture
        logging.getLogger("comfy_tpu").removeHandler(handler)
    reference = host_vae.decode(latent)
    return {"where": state.device_parts.stats()["vae"]["where"], "logged": len(records),
            "device_after": str(device_vae.device),
            "diff": max(float((image - reference).abs().max()), float((again - reference).abs().max()))}


def warmed_workflow(nodes) -> dict:
    """``tpu_manager.warmup`` with the workflow's VAE and CLIP at a size, then that workflow at the size:
    text encode, sample, decode compile nothing."""
    import torch

    from bench import tiny_model, workflow_parts
    from tpu_runtime import runtime
    from tpu_runtime.api import tpu_manager

    backend = runtime.current().backend
    patcher = tiny_model.build_patcher("tiny", seed=0)
    vae, clip = workflow_parts.build_vae("sd15"), workflow_parts.build_clip_l()
    shape = [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]  # CLIPTextEncode's form
    with torch.inference_mode():
        tpu_manager.warmup(patcher, 64, 64, positive=shape, negative=shape, vae=vae, clip=clip)
    before = backend.counters()
    with torch.inference_mode():
        conds = []
        for text in ("a photo of a cat", "blurry"):
            cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
            conds.append([[cond, {"pooled_output": pooled}]])
        samples = nodes.common_ksampler(patcher, 7, 2, 7.0, "euler", "normal", conds[0], conds[1],
                                        {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
        image = vae.decode(samples)
    after = backend.counters()
    return {"compiles": after["compiles"] - before["compiles"], "image": list(image.shape),
            "parts": runtime.current().device_parts.stats()}


def vae_shapes_across_restart(nodes, latents: list) -> dict:
    """Decodes of Wan 2.1's VAE at ``latents`` (shapes) in order: each one's compiles, and the log's re-warm
    line. Run twice with one cache dir: the second process is a restart."""
    import torch

    from bench import workflow_parts
    from tpu_runtime import runtime

    backend = runtime.current().backend
    vae = workflow_parts.build_vae("wan21", seed=3)
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "re-warmed" in record.getMessage():
                records.append(record.getMessage())

    handler = Catch()
    logging.getLogger("comfy_tpu").addHandler(handler)
    compiles = []
    try:
        for shape in latents:
            before = backend.counters()["compiles"]
            with torch.inference_mode():
                vae.decode(torch.randn(shape))
            compiles.append(backend.counters()["compiles"] - before)
    finally:
        logging.getLogger("comfy_tpu").removeHandler(handler)
    return {"compiles": compiles, "rewarmed": records}
