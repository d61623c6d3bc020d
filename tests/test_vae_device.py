"""The whole workflow on the device (issue 29): text encode, sample, VAE decode.

Through the server, a txt2img prompt with ComfyUI's full-size SD1.5 VAE and CLIP-L (random weights, built
from ComfyUI's own classes by the test nodes) at 512x512: the VAE decode and both text encodes run as
device programs, the image comes back in one transfer, a second prompt at that size (another seed and
another prompt text) compiles nothing, and the image is within 2/255 of the same prompt with the pack's
``COMFY_TPU_VAE=host`` / ``COMFY_TPU_TEXT_ENCODERS=host`` (ComfyUI's own decode and encode on the host).
Each server is a fresh process with its own cache dir. Flux's 16-channel VAE (decode, tiled decode, encode)
and Wan 2.1's causal video VAE run in a fresh child process (``cases_vae``), with the fallback to the host.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.child import run_child
from tests.server import ComfyServer

#: On the PJRT CPU device the parts' default (auto) is the host: the device is asked for.
ENV = {"COMFY_TPU_ENABLE": "1", "PJRT_DEVICE": "CPU", "COMFY_TPU_AUTOCAST_BF16": "0", "COMFY_TPU_VAE": "device",
       "COMFY_TPU_TEXT_ENCODERS": "device"}
SIZE = 512
IMAGE_TOLERANCE = 2  # of 255


def workflow(seed: int, text: str, size: int = SIZE) -> dict:
    """Tiny diffusion model, CLIP-L text encodes, KSampler (1 step), SD1.5 VAE decode, SaveImage."""
    return {
        "1": {"class_type": "TPUTestTinyModel", "inputs": {"seed": 0}},
        "2": {"class_type": "TPUTestCLIP", "inputs": {"seed": 0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": text}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": 1, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "TPUTestVAE", "inputs": {"kind": "sd15", "seed": 0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"wf{seed}"}},
    }


def _image(server: ComfyServer, entry: dict) -> np.ndarray:
    from PIL import Image

    (image,) = entry["outputs"]["9"]["images"]
    return np.asarray(Image.open(server.output / image.get("subfolder", "") / image["filename"])).astype(np.int16)


def _run(server: ComfyServer, prompt: dict) -> tuple[dict, dict]:
    """The prompt's image and the change of the pack's figures over it."""
    before = server.get("/tpu/stats")
    entry = server.run_prompt(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log()[-3000:])
    after = server.get("/tpu/stats")
    parts = {}
    for part in ("vae", "text_encoders"):
        was, now = before["workflow_parts"][part], after["workflow_parts"][part]
        parts[part] = {"where": now["where"], **{key: now[key] - was[key] for key in (
            "calls", "compiles", "transfers_to_host")}}
    figures = {"parts": parts, "compiles": after["xla"]["compiles"] - before["xla"]["compiles"],
               "programs": after["workflow_parts"]["programs"], "lazy": after["workflow_parts"]["lazy"],
               "replays": after["workflow_parts"]["replays"] - before["workflow_parts"]["replays"]}
    return {"image": _image(server, entry)}, figures


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device")
    server = ComfyServer(tmp, env={**ENV, "COMFY_TPU_CACHE_DIR": str(tmp / "cache")})
    try:
        server.wait_ready()
        first = _run(server, workflow(11, "a photo of a cat"))
        second = _run(server, workflow(12, "a watercolor of a lighthouse at dusk"))
        yield first, second, server.log()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def host_image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host")
    server = ComfyServer(tmp, env={**ENV, "COMFY_TPU_CACHE_DIR": str(tmp / "cache"), "COMFY_TPU_VAE": "host",
                                   "COMFY_TPU_TEXT_ENCODERS": "host"})
    try:
        server.wait_ready()
        image, figures = _run(server, workflow(11, "a photo of a cat"))
        yield image["image"], figures
    finally:
        server.stop()


def test_decode_and_text_encode_run_as_device_programs(device_runs):
    (_, first), _, log = device_runs
    assert first["parts"]["vae"] == {"where": "device", "calls": 1, "compiles": 1, "transfers_to_host": 1}, first
    # Two prompts texts (positive, negative): each one program run, one transfer; one program for both.
    assert first["parts"]["text_encoders"]["where"] == "device", first
    assert first["parts"]["text_encoders"]["calls"] == 2, first
    assert first["parts"]["text_encoders"]["transfers_to_host"] == 2, first
    assert first["programs"] == 2 and first["replays"] == 3 and not first["lazy"], first


def test_a_second_prompt_at_that_size_compiles_nothing(device_runs):
    _, (image, second), _ = device_runs
    assert second["compiles"] == 0, second
    assert second["parts"]["vae"] == {"where": "device", "calls": 1, "compiles": 0, "transfers_to_host": 1}, second
    # ComfyUI re-encodes only the changed text: one call, a replay of the same program.
    assert second["parts"]["text_encoders"]["calls"] == 1, second
    assert second["parts"]["text_encoders"]["compiles"] == 0, second
    assert second["replays"] == 2 and second["programs"] == 2, second
    assert image["image"].shape == (SIZE, SIZE, 3)


def test_the_image_matches_comfyuis_own_decode_on_the_host(device_runs, host_image):
    (device, _), _, _ = device_runs
    host, figures = host_image
    assert figures["parts"]["vae"]["where"] == "host" and figures["parts"]["text_encoders"]["where"] == "host"
    assert 20 < host.mean() < 235 and host.std() > 5, "a saturated image would prove nothing"
    assert np.abs(device["image"] - host).max() <= IMAGE_TOLERANCE


@pytest.fixture(scope="module")
def other_vaes():
    return run_child("cases_vae:other_vaes", timeout=1500, env={"COMFY_TPU_VAE": "device"})


@pytest.mark.parametrize("kind", ["flux", "wan21"])
def test_flux_and_wan_vaes_decode_on_the_device(other_vaes, kind):
    run = other_vaes[kind]
    assert run["decode"]["compiles"] >= 1 and run["decode"]["transfers"] == 1, run
    assert run["again"]["compiles"] == 0 and run["again"]["transfers"] == 1, run
    assert run["again"]["diff"] <= IMAGE_TOLERANCE / 255, run
    assert run["programs"] == 1 and run["where"] == "device", run


def test_flux_vae_tiled_decode_is_a_program_per_tile_shape(other_vaes):
    run = other_vaes["flux_tiled"]
    assert run["programs"] == run["tile_shapes"], run  # the tiles' shapes and the plain decode's
    assert run["again"]["transfers"] == run["tiles"], run  # each tile's result comes back once
    assert run["again"]["compiles"] == 0 and run["diff"] <= IMAGE_TOLERANCE / 255, run


def test_flux_vae_encodes_on_the_device(other_vaes):
    run = other_vaes["flux_encode"]
    assert run["transfers"] == 1 and run["again_compiles"] == 0 and run["diff"] <= 1e-3, run


def test_a_vae_that_fails_on_the_device_decodes_on_the_host(other_vaes):
    run = other_vaes["fallback"]
    assert run["where"] == "host" and run["diff"] == 0.0 and run["logged"] == 1, run


def test_after_a_warm_up_with_the_vae_and_clip_the_workflow_compiles_nothing():
    run = run_child("cases_vae:warmed_workflow", timeout=900,
                    env={"COMFY_TPU_VAE": "device", "COMFY_TPU_TEXT_ENCODERS": "device"})
    assert run["compiles"] == 0, run
    assert run["image"] == [1, 64, 64, 3] and run["parts"]["vae"]["where"] == "device", run
    assert run["parts"]["text_encoders"]["where"] == "device", run
