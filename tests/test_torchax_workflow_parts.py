"""The VAE and the text encoders on the device under torchax (issue 29): ``module_programs`` through the
torchax backend's ``capture_function`` / ``run_program``, in one fresh child.

Flux's 16-channel VAE (full size, random weights: decode of an 8x8 latent, encode of a 64x64 image) and
Flux's text encoders (tiny CLIP-L + T5, two prompts of different lengths in one bucket): each call is one
jitted program per shape, compiled once (JAX compile events) and replayed with 0 compiles and 0 weight
uploads, within 1e-4 of ComfyUI's own decode/encode on the host (same weights). When ComfyUI unloads the
models, the device copies of their weights are dropped (a cached model would otherwise hold the chip), and
the next decode and encode upload them again and compile nothing.
"""
from __future__ import annotations

import importlib.util

import pytest

from tests.child import run_child

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchax") is None, reason="torchax is not installed")

TOLERANCE = 1e-4  # fp32 on both sides
#: Programs per call: the VAE's decode and encode one each; Flux's text encode CLIP-L and T5.
PROGRAMS = {"decode": 1, "encode": 1, "text": 2}


@pytest.fixture(scope="module")
def torchax_run():
    return run_child("cases_text_encoders:torchax_parts", timeout=900,
                     env={"COMFY_TPU_BACKEND": "torchax", "COMFY_TPU_VAE": "device", "COMFY_TPU_TEXT_ENCODERS": "device"})


@pytest.mark.parametrize("call", list(PROGRAMS))
def test_vae_and_text_encoders_are_jitted_programs_under_torchax(torchax_run, call):
    first, second = torchax_run[call]
    count = PROGRAMS[call]
    assert first["where"] == second["where"] == "device", torchax_run
    assert first["compiles"] >= count and first["executions"] == count, first
    assert second["compiles"] == 0 and second["executions"] == count, second
    assert second["weight_uploads"] == 0, second  # the weights went up once, with the first call
    assert torchax_run["vae_device"] == "cpu:0" and torchax_run["on_device"], torchax_run
    assert not torchax_run["lazy"], torchax_run["lazy"]


@pytest.mark.parametrize("call", list(PROGRAMS))
def test_torchax_results_match_comfyuis_on_the_host(torchax_run, call):
    for run in torchax_run[call]:
        diff = run["diff"] if isinstance(run["diff"], float) else max(run["diff"].values())
        assert diff <= TOLERANCE and run["scale"] > 0.5, run


def test_unloading_drops_the_device_copies_and_the_next_call_compiles_nothing(torchax_run):
    unload = torchax_run["unload"]
    assert all(count > 0 for count in unload["held_loaded"].values()), unload
    assert unload["held_unloaded"] == {"vae": 0, "text": 0}, unload
    assert unload["compiles"] == 0 and unload["weight_uploads"] > 0, unload  # uploaded again, nothing compiled
    assert all(count > 0 for count in unload["held_again"].values()), unload
    text_diff = unload["text_diff"] if isinstance(unload["text_diff"], float) else max(unload["text_diff"].values())
    assert unload["image_diff"] <= TOLERANCE and text_diff <= TOLERANCE, unload
