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
    result["lazy"] = state.device_parts.stats()["lazy"]
    return result
