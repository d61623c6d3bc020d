"""Random-weight VAEs and CLIP-L built from ComfyUI's own classes (tests, bench): the workflow's other parts.

No weights can be downloaded in CI. ``comfy.sd.VAE`` picks its model from a state dict's keys, so each
VAE is made as ComfyUI makes a checkpoint's: its model class built once, filled with seeded random
weights (ComfyUI's layers skip init: left alone they hold garbage), and its state dict handed to
``comfy.sd.VAE``. CLIP-L is ``comfy.sd.CLIP`` with ComfyUI's ``SD1ClipModel`` and its tokenizer.
"""
from __future__ import annotations

from typing import Literal

import torch

VaeKind = Literal["sd15", "flux", "wan21"]
#: Wan 2.1's causal video VAE, scaled down (ComfyUI reads ``dim`` from the state dict); full size is 96.
WAN21_TINY_DIM = 8
#: SD/SDXL (4 channels) and Flux/SD3 (16) share ComfyUI's default AutoencoderKL config, full size.
_SD_DDCONFIG = {'double_z': True, 'resolution': 256, 'in_channels': 3, 'out_ch': 3, 'ch': 128,
                'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_resolutions': [], 'dropout': 0.0}


def fill_random(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights with unit-scale activations: kernels ~ N(0, 1/fan_in), norms' scales 1, biases small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if tensor.dim() >= 2:
                fan_in = tensor[0].numel()
                value = torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5
            elif leaf in ("gamma", "weight") and ("norm" in name or leaf == "gamma"):
                value = torch.ones(tensor.shape)
            else:
                value = torch.randn(tensor.shape, generator=generator) * 0.02
            tensor.copy_(value.to(tensor.dtype))


def vae_state_dict(kind: VaeKind, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict ``comfy.sd.VAE`` recognizes as ``kind``'s VAE, with random weights."""
    if kind == "wan21":
        import comfy.ldm.wan.vae

        model = comfy.ldm.wan.vae.WanVAE(dim=WAN21_TINY_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                         attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    else:
        from comfy.ldm.models.autoencoder import AutoencodingEngine

        ddconfig = {**_SD_DDCONFIG, "z_channels": 4 if kind == "sd15" else 16}
        model = AutoencodingEngine(
            regularizer_config={'target': "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={'target': "comfy.ldm.modules.diffusionmodules.model.Encoder", 'params': ddconfig},
            decoder_config={'target': "comfy.ldm.modules.diffusionmodules.model.Decoder", 'params': ddconfig})
    fill_random(model, seed)
    return model.state_dict()


def build_vae(kind: VaeKind = "sd15", seed: int = 0):
    """``comfy.sd.VAE`` of ``kind`` (made for the device ``vae_device()`` answers, as a loader makes it)."""
    import comfy.sd

    return comfy.sd.VAE(sd=vae_state_dict(kind, seed))


def build_clip_l(seed: int = 0):
    """``comfy.sd.CLIP`` with SD1.5's CLIP-L (full size, random weights) and ComfyUI's CLIP tokenizer."""
    import comfy.sd
    import comfy.sd1_clip

    class Target:
        params: dict = {}
        clip = comfy.sd1_clip.SD1ClipModel
        tokenizer = comfy.sd1_clip.SD1Tokenizer

    clip = comfy.sd.CLIP(Target())
    fill_random(clip.cond_stage_model, seed)
    return clip


TextEncoderKind = Literal["sd3", "flux", "wan21"]
#: Scaled-down text encoders (ComfyUI reads these keys over its JSON configs: ``<model_name>_model_config``).
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
             "projection_dim": 32}
#: T5's vocabulary, scaled down: callers fold the real tokenizer's ids into it (``fold_t5_tokens``).
T5_TINY_VOCAB = 256


def tiny_t5(d_model: int) -> dict:
    return {"d_model": d_model, "d_ff": 32, "d_kv": 8, "num_heads": 2, "num_layers": 2, "vocab_size": T5_TINY_VOCAB}


def build_text_encoder(kind: TextEncoderKind, seed: int = 0, host: bool = False):
    """``comfy.sd.CLIP`` with ``kind``'s text encoders (SD3: CLIP-L + CLIP-G + T5-XXL; Flux: CLIP-L + T5-XXL;
    Wan 2.1: umt5-XXL), tiny and fp32 with random weights, and ComfyUI's tokenizer for it (Wan's needs the
    sentencepiece model of a real checkpoint: its tokens are given by the caller, CLIP-L's tokenizer stands
    in). ``host``: on the CPU, as ComfyUI's own encode."""
    import comfy.sd
    import comfy.sd1_clip
    from comfy.text_encoders import flux, sd3_clip, wan

    if kind == "sd3":  # SD3 pads CLIP-L+G's width to T5's 4096 and joins them: T5 keeps its width
        clip, tokenizer = sd3_clip.sd3_clip(), sd3_clip.SD3Tokenizer
        configs = {"clip_l": TINY_CLIP, "clip_g": TINY_CLIP, "t5xxl": tiny_t5(4096)}
    elif kind == "flux":
        clip, tokenizer = flux.flux_clip(), flux.FluxTokenizer
        configs = {"clip_l": TINY_CLIP, "t5xxl": tiny_t5(64)}
    else:
        clip, tokenizer = wan.te(), comfy.sd1_clip.SD1Tokenizer
        configs = {"umt5xxl": tiny_t5(64)}
    options = {f"{name}_model_config": dict(config) for name, config in configs.items()}
    options["dtype"] = torch.float32
    if host:
        options.update(load_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                       initial_device=torch.device("cpu"))

    class Target:
        params: dict = {}

    Target.clip, Target.tokenizer = clip, tokenizer
    made = comfy.sd.CLIP(Target(), model_options=options)
    fill_random(made.cond_stage_model, seed)
    return made


def fold_t5_tokens(tokens: dict) -> dict:
    """``tokens`` (a tokenizer's output) with T5's ids folded into :data:`T5_TINY_VOCAB` (pad 0 and end 1 kept)."""
    return {key: [[(token % T5_TINY_VOCAB, *rest) for token, *rest in chunk] for chunk in chunks]
            if key == "t5xxl" else chunks for key, chunks in tokens.items()}
