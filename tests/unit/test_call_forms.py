"""The pack's functions in ComfyUI's place, called the way 2026 ComfyUI calls them (fakes shaped like
ComfyUI master's code, for what no ComfyUI here has): unknown keywords reach ComfyUI, an interrupt that is a
``BaseException`` still closes the run, ``patch_weight_to_device``'s new arguments are honoured, dynamic VRAM
is turned off before ComfyUI decides it."""
from __future__ import annotations

import argparse
import sys
import types

import pytest
import torch

from tests.unit.fake_backend import FakeBackend
from tpu_runtime.backends.device import PathDecision
from tpu_runtime.comfyui import patches, prestartup
from tpu_runtime.sampling import current_run, outer
from tpu_runtime.settings.run_options import RunOptions
from tpu_runtime.settings.tpu_settings import load_settings
from tpu_runtime.state import PackState


class InterruptProcessingException(BaseException):
    """As 2026 ComfyUI defines it: not an ``Exception``, so ``except Exception`` does not see it."""


class _Executor:
    def __init__(self, original, class_obj=None):
        self.original, self.class_obj = original, class_obj

    def __call__(self, *args, **kwargs):
        return self.original(*args, **kwargs)


class _Patcher:
    def __init__(self):
        self.model = types.SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2))

    def model_dtype(self):
        return torch.float32


class _Guider:
    """What ``outer_sample`` reads of a ``CFGGuider``; its ``outer_sample`` has a keyword no ComfyUI has yet."""

    def __init__(self, interrupt: bool):
        self.model_patcher, self.original_conds, self.cfg, self.interrupt = _Patcher(), {}, 1.0, interrupt
        self.seen = {}

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, latent_shapes=None, future_option=None):
        self.seen = {"sigmas": sigmas, "future_option": future_option, "seed": seed}
        if self.interrupt:
            raise InterruptProcessingException()
        return latent_image + 1


class _Observer:
    def __init__(self):
        self.before, self.after = 0, 0

    def before_run(self, run, patcher):
        self.before += 1

    def after_run(self, run):
        self.after += 1


def _state() -> PackState:
    return PackState(loaded=load_settings(), decision=PathDecision(on=True, reason="test"), backend=FakeBackend())


def _sample(state, guider):
    wrapper = outer.outer_sample_wrapper(state, RunOptions(shape_padding=False))
    sampler = types.SimpleNamespace(sampler_function=lambda *a, **k: None)
    latent = torch.zeros(1, 4, 8, 8)
    return wrapper(_Executor(guider.outer_sample, guider), torch.zeros(1, 4, 8, 8), latent, sampler,
                   torch.tensor([1.0, 0.5, 0.0]), None, None, False, 3, latent_shapes=None, future_option="kept")


def test_an_interrupt_that_is_a_base_exception_closes_the_run_and_records_nothing():
    state, observer = _state(), _Observer()
    state.observers.append(observer)
    with pytest.raises(InterruptProcessingException):
        _sample(state, _Guider(interrupt=True))
    assert current_run() is None  # the run is closed: the next one starts clean
    assert (observer.before, observer.after) == (1, 0) and len(state.run_history) == 1
    guider = _Guider(interrupt=False)
    out = _sample(state, guider)  # and the next run is right
    assert torch.equal(out, torch.ones(1, 4, 8, 8)) and (observer.before, observer.after) == (2, 1)
    assert guider.seen["future_option"] == "kept" and guider.seen["seed"] == 3


def test_prepare_sampling_forwards_2026_keywords():
    def prepare_sampling(model, noise_shape, conds, model_options=None, force_full_load=False, force_offload=False):
        return force_full_load, force_offload

    assert outer.prepare_sampling(_Executor(prepare_sampling), "m", (1,), {}, model_options={},
                                  force_full_load=True, force_offload=True) == (True, True)


class _MastersModelPatcher:
    """``patch_weight_to_device`` as ComfyUI master has it."""

    def __init__(self):
        self.patches, self.calls = {"w": []}, []

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False,
                               force_cast=False):
        self.calls.append((key, device_to, inplace_update, return_weight, force_cast))
        return "patched weight" if return_weight else None


@pytest.fixture
def masters_model_patcher(monkeypatch):
    module = types.ModuleType("comfy.model_patcher")
    module.ModelPatcher = _MastersModelPatcher
    comfy = types.ModuleType("comfy")
    comfy.model_patcher, comfy.utils = module, types.ModuleType("comfy.utils")
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", module)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    return _MastersModelPatcher


@pytest.mark.parametrize("placement_on", [False, True])
def test_patch_weight_to_device_honours_return_weight_and_force_cast(masters_model_patcher, placement_on):
    state = types.SimpleNamespace(placement=types.SimpleNamespace(on=placement_on))
    split_patch = patches._split_before_patch(lambda device: device == "xla:0", state)
    patcher = masters_model_patcher()
    # Checkpoint saving: ComfyUI returns the patched weight and leaves the model alone: its own call, as given.
    assert split_patch(patcher, "w", "xla:0", return_weight=True, force_cast=True) == "patched weight"
    assert patcher.calls[-1] == ("w", "xla:0", False, True, True)
    if not placement_on:  # nothing to split: every argument reaches ComfyUI, positional ones too
        split_patch(patcher, "w", "xla:0", True, False, True)
        assert patcher.calls[-1] == ("w", "xla:0", True, False, True)


def test_dynamic_vram_is_turned_off_before_comfyui_decides_it(monkeypatch, caplog):
    # 2026 cli_args: ComfyUI enables comfy-aimdo after the prestartup scripts, from these flags.
    args = argparse.Namespace(cpu=True, enable_dynamic_vram=True, disable_dynamic_vram=False,
                              use_split_cross_attention=False, use_quad_cross_attention=False,
                              use_sage_attention=False, use_flash_attention=False, use_pytorch_cross_attention=False)
    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = args
    monkeypatch.setitem(sys.modules, "comfy", types.ModuleType("comfy"))
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
    monkeypatch.setattr(prestartup, "needs_cpu_mode", lambda: True)
    monkeypatch.setattr(prestartup, "path_may_be_on", lambda: True)
    prestartup.prepare_comfy_args()
    assert args.disable_dynamic_vram is True and args.enable_dynamic_vram is False
    assert "CUDA-only" in caplog.text
    old = argparse.Namespace(cpu=True, use_pytorch_cross_attention=False)  # 0.3.75: no such flags, left alone
    cli_args.args = old
    prestartup.prepare_comfy_args()
    assert not hasattr(old, "disable_dynamic_vram")
