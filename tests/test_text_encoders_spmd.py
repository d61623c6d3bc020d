"""Text encoders with their weights split over the mesh's 'model' axis (issue 29), on both backends.

Flux's text encoders (tiny CLIP-L + T5, ComfyUI's own classes, random weights) on 4 CPU devices as
``data=2,model=2``, one fresh child per backend with its own cache dir (``cases_text_encoders_spmd``): the
same rule as the diffusion model's weights (``weight_shard.Placement`` at ComfyUI's load), so each device
holds 1/2 of the encoders' weights plus the small tensors left whole; two prompts of different T5 lengths
within one bucket: both within the text encoders' bound of ComfyUI's encode on the host, the second
compiles nothing, and each encode transfers what it transfers without a mesh; ComfyUI's unload brings the
split weights back without compiling (torch_xla). Auto mode (no mesh, a chip told smaller than the
encoders) gives the mesh its 'model' axis for them, on each backend (a child each).
"""
from __future__ import annotations

import importlib.util

import pytest

from tests.child import run_child
from tests.test_text_encoders_device import TOLERANCE
from tpu_runtime.backends.weight_shard import MIN_SPLIT_ELEMENTS
from tpu_runtime.execution.token_buckets import length_bucket

MESH, DEVICES, WAYS = "data=2,model=2", 4, 2
#: Device-to-host transfers per encode, as without a mesh: torch_xla one per encoder call (CLIP-L, T5: the
#: figure ``test_text_encoders_device`` asserts on one device); torchax counts each output it fetches
#: (CLIP-L's hidden states, projected and pooled output, T5's hidden states: 4, measured without a mesh too).
TRANSFERS = {"torch_xla": 2, "torchax": 4}
ENV = {"COMFY_TPU_TEXT_ENCODERS": "device", "COMFY_TPU_SPMD": "on", "COMFY_TPU_MESH": MESH}


@pytest.fixture(scope="module")
def torch_xla_run():
    return run_child("cases_text_encoders_spmd:flux_encode_split", timeout=900, comfy_places_on_device=True,
                     env={**ENV, "COMFY_TPU_BACKEND": "torch_xla", "CPU_NUM_DEVICES": str(DEVICES)})


@pytest.fixture(scope="module")
def torchax_run():
    if importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
    return run_child("cases_text_encoders_spmd:flux_encode_split", timeout=900,
                     env={**ENV, "COMFY_TPU_BACKEND": "torchax",
                          "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"})


@pytest.fixture(params=["torch_xla", "torchax"])
def run(request):
    return request.getfixturevalue(f"{request.param}_run")


def test_the_encoders_run_as_programs_on_the_mesh(run):
    assert run["mesh"] == MESH and run["devices"] == DEVICES and run["model_axis"] == WAYS, run
    assert run["on_device"] == [True, True] and not run["lazy"], run
    assert run["programs"] == [{"programs": 1, "traces": 1, "replays": 2}] * 2, run["programs"]
    assert f"FluxClipModel_ weights split over model={WAYS}" in run["log"]


def test_a_clip_comfyui_would_make_on_the_device_is_made_on_the_host(torch_xla_run):
    """Told it fits (ComfyUI's ``text_encoder_initial_device`` answers the device), ComfyUI would make the CLIP
    on the device, whole on every chip until its load split it; under a 'model' axis the pack has it made on
    the host, so its load uploads each chip's part only (and it is split: the next test)."""
    assert torch_xla_run["made_on"] == ["cpu"], torch_xla_run["made_on"]


def test_each_device_holds_half_of_the_encoders_weights(run):
    """Read from the backend's shardings: every Linear weight and every large embedding (CLIP's token table,
    T5's shared table) is split, each device holding 1/2 of it; only small tensors stay whole."""
    _check_split(run, WAYS)


def _check_split(run: dict, ways: int) -> None:
    weights = run["weights"]
    split = {name: w for name, w in weights.items() if w["per_device"] != [w["bytes"]] * DEVICES}
    for name, w in weights.items():
        large = w["linear"] and len(w["shape"]) == 2 or (w["embedding"] and w["numel"] >= MIN_SPLIT_ELEMENTS)
        if large:
            assert name in split and w["per_device"] == [w["bytes"] // ways] * DEVICES, (name, w)
        elif name not in split:
            assert w["numel"] < MIN_SPLIT_ELEMENTS or w["linear"], (name, w)
    for name in ("clip_l.transformer.text_model.embeddings.token_embedding.weight", "t5xxl.transformer.shared.weight"):
        assert name in split, name
    assert any(".DenseReluDense.wo." in name for name in split) and any(".SelfAttention.q." in name for name in split)
    total = sum(w["bytes"] for w in weights.values())
    whole = sum(w["bytes"] for name, w in weights.items() if name not in split)
    per_device = [sum(w["per_device"][d] for w in weights.values()) for d in range(DEVICES)]
    assert per_device == [(total - whole) // ways + whole] * DEVICES, (per_device, total, whole)
    assert whole < 0.01 * total, (whole, total)
    # The pack's own measure (what /tpu/stats and the chip budget read) says the same.
    figures = [f for f in run["figures"] if f["model"] == "FluxClipModel_"]
    assert len(figures) == 1 and figures[0]["bytes_per_chip"] == per_device, run["figures"]
    assert figures[0]["weight_bytes"] == total and figures[0]["whole_bytes"] == whole, figures


def test_unloading_brings_the_split_weights_back_without_compiling(torch_xla_run):
    """ComfyUI's unload (the diffusion model's hook, for any model placed split): every weight back on the
    host, equal to the host model's, nothing compiled, and the chips' budget no longer counts them."""
    unload = dict(torch_xla_run["unload"])
    held_before, held_after = unload.pop("held_per_chip")
    assert unload == {"compiles": 0, "left_on_device": 0, "equal_to_the_host_model": True}, unload
    assert held_before == max(torch_xla_run["figures"][0]["bytes_per_chip"]) and held_after == 0, (held_before, held_after)


def test_parity_with_the_host_and_a_second_prompt_compiles_nothing(run):
    _check_encodes(run)


def _check_encodes(run: dict) -> None:
    first, second = run["runs"]
    assert first["t5_length"] != second["t5_length"]
    assert length_bucket(first["t5_length"]) == length_bucket(second["t5_length"]), run["runs"]
    assert first["compiles"] > 0 and second["compiles"] == 0, run["runs"]
    for encode in run["runs"]:
        assert encode["diff"] and max(encode["diff"].values()) <= TOLERANCE, encode
        assert encode["scale"] > 0.5 and encode["cond_device"] == "cpu", encode
        assert encode["transfers_to_host"] == TRANSFERS[run["backend"]], encode


@pytest.mark.parametrize("backend", ["torch_xla", "torchax"])
def test_auto_mode_splits_a_text_encoder_bigger_than_a_chip(backend):
    """No mesh given (``COMFY_TPU_SPMD=auto``): Flux's tiny text encoders are 6.6 MB in fp32; told a chip has
    4.3 MB (0.004 GiB), auto mode gives the mesh a 'model' axis of 4 when the CLIP is made for the device
    (half of it, 3.3 MB, is over 70% of a chip) and says its plan; the encoders are then loaded split."""
    if backend == "torchax" and importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
    devices = ({"CPU_NUM_DEVICES": str(DEVICES)} if backend == "torch_xla"
               else {"XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"})
    run = run_child("cases_text_encoders_spmd:flux_encode_split", timeout=900, env={
        "COMFY_TPU_TEXT_ENCODERS": "device", "COMFY_TPU_SPMD": "auto", "COMFY_TPU_HBM_PER_CHIP_GIB": "0.004",
        "COMFY_TPU_BACKEND": backend, **devices})
    assert run["backend"] == backend
    assert "auto SPMD: FluxClipModel_ doesn't fit one chip" in run["log"], run["log"][-3000:]
    assert run["model_axis"] == 4 and run["mesh"] == "data=1,model=4", run
    _check_split(run, 4)
    _check_encodes(run)
