"""The conditioning layout a signature records: shapes and kinds, never tensor or float values; a
re-warm rebuilds zeros of exactly those; older warm sets (no layout) still load and are matched."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tpu_runtime.cache.layout import ConditioningLayout, comfy_form, layout_of, rebuild
from tpu_runtime.cache.registry import SignatureRegistry
from tpu_runtime.cache.signature import ExecutionSignature
from tpu_runtime.cache.warmup import WarmupArgumentError
from tpu_runtime.comfyui import conditioning as model_conditioning

FLUX = [[torch.randn(1, 16, 64), {"pooled_output": torch.randn(1, 32), "guidance": 3.5}]]
SD3 = [[torch.randn(1, 154, 4096), {"pooled_output": torch.randn(1, 2048)}]]


def conds(conditioning: list) -> dict:
    return {"positive": comfy_form(conditioning), "negative": comfy_form(conditioning)}


def test_the_layout_holds_every_tensor_shape_and_dtype_and_which_options_are_present():
    layout = layout_of(conds(FLUX), uncond_pass=False)
    (cond,) = layout.positive
    assert cond.cross_attn.shape == (1, 16, 64) and cond.cross_attn.dtype == "float32"
    assert {o.name: o.kind for o in cond.options} == {"guidance": "float", "pooled_output": "tensor"}
    assert layout.negative == ()  # no uncond pass: the model never sees the negative
    assert len(layout_of(conds(FLUX), uncond_pass=True).negative) == 1


def test_values_are_data_shapes_are_not():
    other_values = [[torch.zeros(1, 16, 64), {"pooled_output": torch.ones(1, 32), "guidance": 4.0}]]
    assert layout_of(conds(FLUX), True) == layout_of(conds(other_values), True)
    assert hash(layout_of(conds(FLUX), True)) == hash(layout_of(conds(other_values), True))
    wider = [[torch.zeros(1, 16, 64), {"pooled_output": torch.ones(1, 48), "guidance": 4.0}]]
    assert layout_of(conds(FLUX), True) != layout_of(conds(wider), True)
    no_guidance = [[torch.zeros(1, 16, 64), {"pooled_output": torch.ones(1, 32)}]]
    assert layout_of(conds(FLUX), True) != layout_of(conds(no_guidance), True)
    area = [[torch.zeros(1, 16, 64), {"pooled_output": torch.ones(1, 32), "guidance": 3.5, "area": (8, 8, 0, 0)}]]
    assert layout_of(conds(FLUX), True) != layout_of(conds(area), True)


def test_rebuild_gives_zeros_of_the_recorded_shapes_and_the_recorded_values():
    reference = [[torch.zeros(1, 4, 64, dtype=torch.float16),
                  {"reference_latents": [torch.randn(1, 16, 8, 8)], "area": (8, 8, 0, 0), "strength": 0.7}]]
    layout = layout_of(conds(FLUX + reference), uncond_pass=False)
    positive, negative = rebuild(ConditioningLayout.model_validate_json(layout.model_dump_json()))
    assert layout_of(conds(positive), False) == layout
    assert layout_of({"positive": comfy_form(negative)}, False) == layout  # no uncond pass: the positive's twin
    (flux_tensor, flux_options), (tensor, options) = positive
    assert flux_tensor.shape == (1, 16, 64) and not flux_tensor.any() and flux_options["guidance"] == 3.5
    assert tensor.dtype == torch.float16 and options["reference_latents"][0].shape == (1, 16, 8, 8)
    assert options["area"] == [8, 8, 0, 0] and options["strength"] == 0.7


def test_objects_cannot_be_rebuilt_and_say_so():
    layout = layout_of({"positive": [{"cross_attn": torch.zeros(1, 77, 768), "hooks": object()}]}, False)
    assert "hooks" in layout.unreproducible()
    with pytest.raises(ValueError, match="hooks"):
        rebuild(layout)


def _signature(layout=None) -> ExecutionSignature:
    return ExecutionSignature(model_fingerprint="f" * 16, latent_shape=(16, 8, 8), batch_size=1,
                              context_tokens=(16,), uncond_pass=False, compute_dtype="float32", sampler="sample_euler",
                              conditioning=layout)


def test_the_layout_is_a_graph_field_and_a_signature_without_one_names_the_recorded(tmp_path):
    flux, sd3 = _signature(layout_of(conds(FLUX), False)), _signature(layout_of(conds(SD3), False))
    assert flux != sd3 and flux != _signature() and "conditioning" in flux.differences(sd3)[0]
    registry = SignatureRegistry(tmp_path, {"torch": "x"})
    registry.record(flux, 3, 1.0)
    assert registry.is_cached(flux) and not registry.is_cached(sd3)
    assert registry.is_cached(_signature()) and registry.get(_signature()).signature == flux


def test_an_older_warm_set_without_layouts_loads_and_a_set_aside_one_is_not_pending(tmp_path):
    old = _signature().model_dump(mode="json")
    del old["conditioning"]
    entry = {"signature": old, "first_seen": "2026-01-01T00:00:00+00:00", "last_used": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "warm_set.json").write_text(json.dumps({"format": "comfy-tpu-warm-set", "version": 1,
                                                        "entries": [entry]}))
    registry = SignatureRegistry(tmp_path, {"torch": "x"})
    assert registry.pending_rewarm("f" * 16) == [_signature()]
    registry.set_aside(_signature(), "RuntimeError: bad shape")
    assert registry.pending_rewarm("f" * 16) == []
    again = SignatureRegistry(tmp_path, {"torch": "x"})  # persisted
    assert again.pending_rewarm("f" * 16) == [] and again.get(_signature()).rewarm_failed == "RuntimeError: bad shape"


def _model(name: str, unet_config: dict, adm: int = 0, latent_dims: int = 2, diffusion=None):
    inner = type(name, (), {})()
    inner.model_config = SimpleNamespace(unet_config=unet_config)
    inner.adm_channels = adm
    inner.latent_format = SimpleNamespace(latent_channels=16, latent_dimensions=latent_dims)
    inner.diffusion_model = diffusion or SimpleNamespace()
    return SimpleNamespace(model=inner)


@pytest.mark.parametrize("model, tokens, shape, options", [
    (_model("BaseModel", {"context_dim": 768}), None, (1, 77, 768), {}),
    (_model("SDXL", {"context_dim": 2048, "adm_in_channels": 2816}, adm=2816), None, (1, 77, 2048),
     {"pooled_output": (1, 1280)}),
    (_model("SD3", {"adm_in_channels": 2048, "context_embedder_config": {"params": {"in_features": 4096}}}, adm=2048),
     154, (1, 154, 4096), {"pooled_output": (1, 2048)}),
    (_model("Flux", {"context_in_dim": 4096, "vec_in_dim": 768, "guidance_embed": True}), 256, (1, 256, 4096),
     {"pooled_output": (1, 768), "guidance": None}),
    (_model("WAN21", {"text_dim": 4096}, latent_dims=3, diffusion=SimpleNamespace(text_len=512)), None,
     (1, 512, 4096), {}),
])
def test_config_conditioning_per_family(model, tokens, shape, options):
    ((tensor, got),) = model_conditioning.config_conditioning(model, tokens)
    assert tuple(tensor.shape) == shape
    assert {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else None) for k, v in got.items()} == options


def test_config_conditioning_asks_for_what_the_config_does_not_say():
    with pytest.raises(WarmupArgumentError, match="text tokens"):
        model_conditioning.config_conditioning(_model("Flux", {"context_in_dim": 4096, "vec_in_dim": 768}))
    with pytest.raises(WarmupArgumentError, match="pooled_output"):
        model_conditioning.config_conditioning(_model("SD21UNCLIP", {"context_dim": 1024, "adm_in_channels": 2048},
                                                      adm=2048))


def test_a_video_model_gets_frames():
    wan = _model("WAN21", {"text_dim": 4096}, latent_dims=3)
    assert model_conditioning.latent_shape(wan, 64, 48, 1, frames=3) == (1, 16, 3, 6, 8)
    assert model_conditioning.latent_shape(_model("Flux", {}), 64, 48, 2, frames=3) == (2, 16, 6, 8)
