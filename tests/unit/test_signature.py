"""Execution signatures: graph fields decide equality; fingerprints read shapes, not weights."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from tpu_runtime.cache import signature as sig
from tpu_runtime.cache.signature import ExecutionSignature, build_signature, nearest

BASE = dict(model_fingerprint="f" * 16, latent_shape=(4, 64, 64), batch_size=1, context_tokens=(77,),
            uncond_pass=True, compute_dtype="bfloat16", sampler="sample_euler")


def signature(**changes) -> ExecutionSignature:
    return ExecutionSignature(**{**BASE, **changes})


def test_display_fields_do_not_change_equality_or_hash():
    a = signature(model_id="SDXL", cfg_scale=7.0, scheduler="karras", steps=20, input_shape=(1, 4, 60, 60))
    b = signature(model_id="other", cfg_scale=3.5, scheduler="normal", steps=4)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != signature(batch_size=2) and a != "not a signature"


def test_differences_name_each_graph_field_that_changed():
    assert signature(batch_size=2, execution="compiled").differences(signature()) == [
        "batch_size 1 -> 2", "execution lazy -> compiled"]
    assert signature(steps=5).differences(signature()) == []


def test_short_says_the_graph_fields():
    assert signature(model_id="SD15").short() == "SD15 4x64x64 b1 t(77,) cfg bfloat16 sample_euler single"
    assert signature(uncond_pass=False, execution="compiled").short().endswith("nocfg bfloat16 sample_euler "
                                                                               "single compiled")


def test_nearest_prefers_the_same_model_then_fewest_differences():
    wanted = signature(batch_size=2)
    same_model_far = signature(batch_size=4, sampler="sample_heun")
    same_model_near = signature(batch_size=4)
    other_model_exact = signature(model_fingerprint="0" * 16, batch_size=2)
    assert nearest(wanted, [other_model_exact, same_model_far, same_model_near]) is same_model_near
    assert nearest(wanted, [other_model_exact]) is other_model_exact
    assert nearest(wanted, []) is None


class _Diffusion(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, width, 3)


def _patcher(width: int = 8):
    """A ModelPatcher-like object: ``.model`` (the BaseModel) holding ``.diffusion_model``."""
    inner = torch.nn.Module()
    inner.diffusion_model = _Diffusion(width)
    return SimpleNamespace(model=inner)


def test_fingerprint_follows_shapes_and_dtypes_not_weights():
    a, b = _patcher(), _patcher()
    with torch.no_grad():
        b.model.diffusion_model.conv.weight.add_(1)
    assert sig.model_fingerprint(a) == sig.model_fingerprint(b)
    assert sig.model_fingerprint(a) != sig.model_fingerprint(_patcher(width=16))
    half = _patcher()
    half.model.diffusion_model.half()
    assert sig.model_fingerprint(a) != sig.model_fingerprint(half)
    assert len(sig.model_fingerprint(a)) == 16


def test_cached_fingerprint_is_computed_once_per_model(mocker):
    spy = mocker.spy(sig, "model_fingerprint")
    patcher = _patcher()
    first = sig.cached_fingerprint(patcher)
    assert sig.cached_fingerprint(patcher) == first and sig.cached_fingerprint(patcher.model) == first
    assert spy.call_count == 1


def test_build_signature_takes_the_padded_shape_and_sorted_tokens():
    patcher = _patcher()
    built = build_signature(patcher, latent_shape=(2, 4, 60, 60), padded_shape=(2, 4, 64, 64),
                            context_tokens=(154, 77, 77), uncond_pass=True, compute_dtype="float32",
                            sampler="sample_euler", cfg_scale=7, steps=30)
    assert built.latent_shape == (4, 64, 64) and built.batch_size == 2 and built.context_tokens == (77, 154)
    assert built.input_shape == (2, 4, 60, 60) and built.model_id == "Module" and built.steps == 30
    assert built.cfg_scale == 7.0 and isinstance(built.cfg_scale, float)
    assert built.model_fingerprint == sig.model_fingerprint(patcher)
