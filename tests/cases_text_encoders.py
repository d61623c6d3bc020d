"""Bodies of ``tests/test_text_encoders_device.py``'s fresh-process case: T5/umt5 text encoders on the device.

Each text encoder is made twice with the same random weights (tiny configs, ComfyUI's own classes): as a
loader makes it (on the XLA device) and on the host (ComfyUI's own encode). Two prompts per model, of
different token lengths within one bucket: the first compiles, the second compiles nothing; both match
the host's result.
"""
from __future__ import annotations

#: (first, second) prompt of each model: long enough that T5 runs past its tokenizer's minimum length
#: (SD3 77, Flux 256), so the lengths differ; CLIP's chunk counts differ too (SD3: 3 and 4 chunks).
PROMPTS = {"sd3": ("cat " * 160, "dog " * 230), "flux": ("cat " * 260, "dog " * 290)}
#: Wan: umt5 token ids (its tokenizer needs a real checkpoint's sentencepiece model): (real, padded) lengths.
WAN_TOKENS = ((100, 150), (140, 190))


def _wan_tokens(real: int, length: int, seed: int) -> dict:
    import torch

    from bench.workflow_parts import T5_TINY_VOCAB

    ids = torch.randint(2, T5_TINY_VOCAB, (real,), generator=torch.Generator().manual_seed(seed)).tolist()
    chunk = ids + [1] + [0] * (length - real - 1)  # as the tokenizer pads: end token, then pad 0
    return {"umt5xxl": [[(token, 1.0) for token in chunk]]}


def _encode_on_both(backend, device_clip, host_clip, tokens) -> tuple:
    """``tokens`` encoded by the device CLIP (the backend's counters around it), then by the host CLIP:
    (device result, host result, counters before, counters after)."""
    import torch

    before = backend.counters()
    with torch.inference_mode():
        device = device_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    after = backend.counters()
    with torch.inference_mode():
        host = host_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    return device, host, before, after


def _diff(device: dict, host: dict) -> dict:
    result = {}
    for key, value in host.items():
        if hasattr(value, "shape"):
            other = device[key]
            assert tuple(other.shape) == tuple(value.shape), (key, other.shape, value.shape)
            result[key] = float((other.float() - value.float()).abs().max())
    return result


def t5_encoders(nodes) -> dict:
    import torch

    from bench import workflow_parts
    from tpu_runtime import runtime
    from tpu_runtime.comfyui.text_encoder_patch import encoders

    state = runtime.current()
    backend = state.backend
    result = {}
    for kind in ("sd3", "flux", "wan21"):
        device_clip = workflow_parts.build_text_encoder(kind, seed=5)
        host_clip = workflow_parts.build_text_encoder(kind, seed=5, host=True)
        runs = []
        for index in range(2):
            if kind == "wan21":
                tokens, lengths = _wan_tokens(*WAN_TOKENS[index], seed=index), {"umt5xxl": WAN_TOKENS[index][1]}
            else:
                tokens = workflow_parts.fold_t5_tokens(host_clip.tokenize(PROMPTS[kind][index]))
                lengths = {key: [len(chunk) for chunk in chunks] for key, chunks in tokens.items()}
            before = backend.counters()
            with torch.inference_mode():
                device = device_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
            after, where = backend.counters(), state.device_parts.stats()["text_encoders"]["where"]
            with torch.inference_mode():
                host = host_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
            runs.append({"compiles": after["compiles"] - before["compiles"],
                         "transfers": after["transfers_to_host"] - before["transfers_to_host"],
                         "diff": _diff(device, host), "scale": float(host["cond"].abs().max()),
                         "lengths": lengths, "where": where, "cond_device": str(device["cond"].device)})
        transformers = encoders(device_clip.cond_stage_model)
        result[kind] = {"runs": runs,
                        "on_device": [backend.is_device(t.get_input_embeddings().weight.device) for t in transformers],
                        "programs": [state.device_parts.programs(t, kind).figures() for t in transformers]}
        if kind == "wan21":
            result["wan21_vector"] = _with_a_vector(backend, device_clip, host_clip)
    result["lazy"] = state.device_parts.stats()["lazy"]
    return result


def _with_a_vector(backend, device_clip, host_clip) -> dict:
    """A umt5 prompt with a textual-inversion vector among its ids: ComfyUI's own lookup on the device (the
    embeddings are the program's input), the mask kept on the host; parity with the host."""
    import torch

    tokens = _wan_tokens(100, 170, seed=7)
    vector = torch.randn(1, workflow_width(device_clip), generator=torch.Generator().manual_seed(8))
    tokens["umt5xxl"][0].insert(50, (vector, 1.0))
    device, host, before, after = _encode_on_both(backend, device_clip, host_clip, tokens)
    return {"compiles": after["compiles"] - before["compiles"], "diff": _diff(device, host),
            "shape": list(host["cond"].shape)}


def workflow_width(clip) -> int:
    from tpu_runtime.comfyui.text_encoder_patch import encoders

    return encoders(clip.cond_stage_model)[0].get_input_embeddings().weight.shape[1]


def torchax_parts(nodes) -> dict:
    """Under torchax: Flux's VAE (decode, encode) and text encoders (CLIP-L + T5) as jitted programs, twice
    each, against ComfyUI's own decode and encode on the host (the same weights)."""
    import torch

    from bench import workflow_parts
    from tpu_runtime import runtime

    state = runtime.current()
    backend, parts = state.backend, state.device_parts
    generator = torch.Generator().manual_seed(0)
    state_dict = workflow_parts.vae_state_dict("flux", seed=3)
    import comfy.sd

    device_vae = comfy.sd.VAE(sd=state_dict)
    host_vae = comfy.sd.VAE(sd=dict(state_dict), device=torch.device("cpu"))
    device_clip = workflow_parts.build_text_encoder("flux", seed=5)
    host_clip = workflow_parts.build_text_encoder("flux", seed=5, host=True)
    calls = {
        "decode": (lambda vae, x: vae.decode(x), [torch.randn(1, 16, 8, 8, generator=generator) for _ in range(2)]),
        "encode": (lambda vae, x: vae.encode(x), [torch.rand(1, 64, 64, 3, generator=generator) for _ in range(2)]),
    }
    result = {"vae_device": str(device_vae.device), "on_device": backend.is_device(device_vae.device)}
    for name, (call, inputs) in calls.items():
        runs = []
        for x in inputs:
            before = backend.counters()
            with torch.inference_mode():
                out = call(device_vae, x)
            after, where = backend.counters(), parts.stats()["vae"]["where"]
            with torch.inference_mode():
                reference = call(host_vae, x)
            runs.append({**_change(before, after), "where": where,
                         "diff": float((out - reference).abs().max()), "scale": float(reference.abs().max())})
        result[name] = runs
    runs = []
    for text in ("cat " * 260, "dog " * 290):
        tokens = workflow_parts.fold_t5_tokens(host_clip.tokenize(text))
        before = backend.counters()
        with torch.inference_mode():
            out = device_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        after, where = backend.counters(), parts.stats()["text_encoders"]["where"]
        with torch.inference_mode():
            reference = host_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        runs.append({**_change(before, after), "where": where, "diff": _diff(out, reference),
                     "scale": float(reference["cond"].abs().max())})
    result["text"] = runs
    stats = parts.stats()
    result.update(lazy=stats["lazy"], programs=stats["programs"], traces=stats["traces"], replays=stats["replays"])
    result["unload"] = _unload_and_encode_again(backend, device_vae, device_clip, host_vae, host_clip, calls["decode"])
    return result


def _unload_and_encode_again(backend, vae, clip, host_vae, host_clip, decode) -> dict:
    """ComfyUI unloads every model (as before loading another): the device copies the backend holds of the
    VAE's and the text encoders' weights, loaded and unloaded; then a decode and an encode again (what they
    compiled and uploaded, their parity with the host)."""
    import comfy.model_management
    import torch

    from bench import workflow_parts

    modules = {"vae": vae.first_stage_model, "text": clip.cond_stage_model}

    def held() -> dict:
        return {name: sum(backend.twins.twin(t) is not None for t in [*m.parameters(), *m.buffers()])
                for name, m in modules.items()}

    loaded = held()
    comfy.model_management.unload_all_models()
    unloaded = held()
    tokens = workflow_parts.fold_t5_tokens(host_clip.tokenize("cat " * 260))
    call, inputs = decode
    before = backend.counters()
    with torch.inference_mode():
        image = call(vae, inputs[0])
        text = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    after = backend.counters()
    with torch.inference_mode():
        image_diff = float((image - call(host_vae, inputs[0])).abs().max())
        text_diff = _diff(text, host_clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True))
    return {"held_loaded": loaded, "held_unloaded": unloaded, "held_again": held(), **_change(before, after),
            "image_diff": image_diff, "text_diff": text_diff}


def _change(before: dict, after: dict) -> dict:
    return {key: after[key] - before[key] for key in ("compiles", "executions", "weight_uploads")}


def parts_after_restart(nodes) -> dict:
    """One VAE decode and one text encode (Flux's, tiny text encoders): what they compiled, and what the
    persistent compilation cache served (run twice with one cache dir: the second is a restart)."""
    import torch

    from bench import workflow_parts
    from tpu_runtime import runtime

    backend = runtime.current().backend
    keys = ("compiles", "uncached_compiles", "cached_compiles", "persistent_cache_hits", "persistent_cache_misses")
    vae = workflow_parts.build_vae("flux", seed=3)
    clip = workflow_parts.build_text_encoder("flux", seed=5)
    tokens = workflow_parts.fold_t5_tokens(clip.tokenize("a photo of a cat"))
    before = backend.counters()
    with torch.inference_mode():
        vae.decode(torch.zeros(1, 16, 8, 8))
        clip.encode_from_tokens(tokens, return_pooled=True)
    after = backend.counters()
    return {key: after[key] - before[key] for key in keys}


def encoders_across_restart(nodes, kinds: list, prompts: list) -> dict:
    """Each of ``kinds``'s text encoders (tiny, random weights) encodes ``prompts`` in order: per prompt its
    compiles and its parity with ComfyUI's own encode on the host; the log's re-warm lines. Run twice with
    one cache dir: the second process is a restart (``test_text_encoder_rewarm.py``)."""
    import logging


    from bench import workflow_parts
    from tpu_runtime import runtime

    backend = runtime.current().backend
    lines: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "re-warm" in record.getMessage():
                lines.append(record.getMessage())

    handler = Catch()
    logging.getLogger("comfy_tpu").addHandler(handler)
    result: dict = {}
    try:
        for kind in kinds:
            device_clip = workflow_parts.build_text_encoder(kind, seed=5)
            host_clip = workflow_parts.build_text_encoder(kind, seed=5, host=True)
            runs = []
            for text in prompts:
                tokens = workflow_parts.fold_t5_tokens(host_clip.tokenize(text))
                device, host, before, after = _encode_on_both(backend, device_clip, host_clip, tokens)
                runs.append({"compiles": after["compiles"] - before["compiles"],
                             "cache_hits": after["persistent_cache_hits"] - before["persistent_cache_hits"],
                             "diff": _diff(device, host), "scale": float(host["cond"].abs().max()),
                             "lengths": {key: [len(chunk) for chunk in chunks] for key, chunks in tokens.items()}})
            result[kind] = runs
    finally:
        logging.getLogger("comfy_tpu").removeHandler(handler)
    result["rewarm_log"] = lines
    return result
