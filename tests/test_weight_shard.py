"""Weights split over the mesh's 'model' axis (issue 14): SD1.5, SDXL, Flux and Wan 2.1 tiny models.

Each mesh runs in its own child process (tests/run_weight_shard_child.py; SPMD is process-wide) with
its own cache dir, driving ComfyUI's ``nodes.common_ksampler`` with fp32 weights: 4 CPU devices as
``data=1,model=4`` and ``data=2,model=2``, 8 as ``data=2,model=4``. Per family: a run, a second run
with other steps, scheduler, cfg and seed (0 compiles), a LoRA clone (LoraLoader's path, patched on
the split weights), the base again (0 compiles); each against the same model eager on the CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.comfy_env import PACK_DIR

FAMILIES = ["sd15", "sdxl", "flux", "wan"]
MESHES = {"data=1,model=4": 4, "data=2,model=2": 4, "data=2,model=4": 8}
#: The issue's parity bound for fp32 against eager CPU (these latents reach ~300: measured at most 1.7e-4).
PARITY = 1e-3
CHILD_ENV = {"PJRT_DEVICE": "CPU", "COMFY_TPU_ENABLE": "1", "COMFY_TPU_AUTOCAST_BF16": "0", "COMFY_TPU_SPMD": "on"}


def _run_child(tmp_path, name: str, devices: int, families: list[str] = FAMILIES, **env: str) -> dict:
    cache_dir, out = tmp_path / f"cache-{name}", tmp_path / f"{name}.pt"
    cache_dir.mkdir()
    env = {**os.environ, **CHILD_ENV, "CPU_NUM_DEVICES": str(devices), "COMFY_TPU_CACHE_DIR": str(cache_dir), **env}
    done = subprocess.run([sys.executable, str(PACK_DIR / "tests" / "run_weight_shard_child.py"), json.dumps(families),
                           str(out)], env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(text for text in done.stdout.splitlines() if text.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "log": done.stderr}


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("weight_shard")
    results = {mesh: _run_child(tmp_path, mesh.replace(",", "_").replace("=", ""), devices, COMFY_TPU_MESH=mesh)
               for mesh, devices in MESHES.items()}
    (tmp_path / "figures.json").write_text(json.dumps(
        {mesh: {k: v for k, v in child.items() if k != "log"} for mesh, child in results.items()}, indent=1))
    return results


def _axes(mesh: str) -> dict[str, int]:
    return {name: int(size) for name, size in (part.split("=") for part in mesh.split(","))}


@pytest.mark.parametrize("mesh", MESHES)
def test_the_mesh_has_a_model_axis_and_every_call_is_replayed(children, mesh):
    child = children[mesh]
    axes = _axes(mesh)
    assert child["spmd"]["on"] and child["spmd"]["mesh"] == mesh and child["devices"] == MESHES[mesh]
    assert child["model_axis"] == axes["model"] == child["spmd"]["model_axis"]
    assert child["spmd"]["data_axis"] == axes["data"]
    assert child["execution"] == "replay" and child["replay_fallbacks"] == {}, child["replay_fallbacks"]
    assert f"its weights split over 'model' ({axes['model']} ways)" in child["log"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mesh", MESHES)
def test_parity_with_eager_cpu_and_no_compile_after_the_first_run(children, mesh, family):
    runs = children[mesh]["families"][family]["runs"]
    first, second, lora, again = runs
    assert first["compiles"] > 0
    # Other steps, scheduler, cfg and seed; and the base model again after its LoRA clone ran.
    assert second["compiles"] == 0 and again["compiles"] == 0, (second, again)
    lora_keys = children[mesh]["families"][family]["lora_keys"]
    for run in runs:
        assert run["finite"] and not run["fallbacks"], run
        assert run["max_diff"] <= PARITY, (run["model"], run["max_diff"])
        # One transfer to the host, the result (+ ComfyUI's host backups of the LoRA's weights). A weight
        # that had landed whole on the chips before being split would add one: torch_xla re-splits a
        # tensor with device data through the host (measured), so the first run shows none did.
        assert run["transfers_to_host"] == 1 + (len(lora_keys) if run["model"] == "lora" else 0), run


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mesh", MESHES)
def test_each_device_holds_its_share_of_the_weights(children, mesh, family):
    """From the tensors' XLA shardings: at most 1/M of the bytes, plus the small tensors left whole."""
    ways = _axes(mesh)["model"]
    for run in children[mesh]["families"][family]["runs"]:
        held = run["held"]
        assert len(held["per_device"]) == MESHES[mesh]
        assert held["whole"] <= 0.05 * held["total"], held  # norms, row layers' biases, the sigma table (Flux: 3.4%)
        assert held["largest_whole"][0] <= 64 * 1024, held  # no weight matrix is whole on a chip
        assert max(held["per_device"]) <= held["total"] / ways + held["whole"], held
        assert max(held["per_device"]) < 1.5 * held["total"] / ways, held


@pytest.mark.parametrize("mesh", MESHES)
def test_the_stats_report_bytes_per_chip_as_the_shardings_say(children, mesh):
    child = children[mesh]
    reported = {entry["model"]: entry for entry in child["spmd"]["weights_per_chip"]}
    assert len(reported) >= len(FAMILIES)  # every family's base model (LoRA clones share its model)
    for entry in reported.values():
        assert entry["model_axis"] == _axes(mesh)["model"] and len(entry["bytes_per_chip"]) == MESHES[mesh]
        assert max(entry["bytes_per_chip"]) <= entry["weight_bytes"] / entry["model_axis"] + entry["whole_bytes"]
    measured = children[mesh]["families"]["wan"]["runs"][-1]["held"]  # the last model run, measured here
    assert reported["WAN21_T2V (WAN21)"]["bytes_per_chip"] == measured["per_device"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mesh", MESHES)
def test_lora_patches_stay_split(children, mesh, family):
    result = children[mesh]["families"][family]
    assert result["lora_keys"] and all(result["lora_specs"].values()), result["lora_specs"]
    # The LoRA changes the result far beyond the parity bound: a missing patch would fail parity.
    assert result["lora_effect"] > 20 * PARITY


@pytest.mark.parametrize("mesh", MESHES)
def test_conv_kernel_twins_are_split_like_their_weights(children, mesh):
    child = children[mesh]
    assert child["twins_made"] > 0  # the UNets' conv layers read HWIO twins on PJRT CPU
    for family in ("sd15", "sdxl"):
        for run in child["families"][family]["runs"]:  # the shares above include them: their layers' buffers
            assert run["held"]["twins"] > 0 and run["held"]["whole_twins"] == 0, (family, run["held"])


@pytest.mark.parametrize("mesh", MESHES)
def test_unloading_brings_split_weights_back_without_compiling(children, mesh):
    """ComfyUI unloads every model to the host: torch_xla would gather each split weight whole on the
    device with a program compiled per shape (measured: ~200 for the SD1.5 UNet); read part by part, none."""
    unload = dict(children[mesh]["unload"])
    held_before, held_after = unload.pop("held_per_chip")
    assert unload == {"compiles": 0, "left_on_device": 0, "equal_to_the_host_models": True}, unload
    # What ComfyUI's free-memory query subtracts for placed weights: none once they left the chips.
    assert held_before > 0 and held_after == 0, (held_before, held_after)


def test_auto_mode_adds_a_model_axis_for_a_model_bigger_than_a_chip(tmp_path):
    """SD1.5's tiny UNet is 6.3 MB in fp32; told a chip has 4.3 MB (0.004 GiB), auto mode splits it 4 ways
    (half of it, 3.2 MB, is over 70% of a chip) and says its plan."""
    child = _run_child(tmp_path, "auto", 4, ["sd15"], COMFY_TPU_SPMD="auto", COMFY_TPU_HBM_PER_CHIP_GIB="0.004")
    assert "auto SPMD: BaseModel doesn't fit one chip" in child["log"] and "mesh data=1,model=4" in child["log"]
    assert child["model_axis"] == 4 and child["spmd"]["mesh"] == "data=1,model=4"
    runs = child["families"]["sd15"]["runs"]
    assert runs[1]["compiles"] == 0 and all(run["max_diff"] <= PARITY for run in runs), runs
    held = runs[0]["held"]
    assert max(held["per_device"]) <= held["total"] / 4 + held["whole"], held
    free, total = child["spmd"]["memory_per_chip"]["free"], child["spmd"]["memory_per_chip"]["total"]
    assert total == int(0.004 * 2**30) and free == total - max(child["spmd"]["weights_per_chip"][0]["bytes_per_chip"])


def test_auto_mode_keeps_weights_whole_when_they_fit(tmp_path):
    child = _run_child(tmp_path, "auto-fits", 4, ["wan"], COMFY_TPU_SPMD="auto", COMFY_TPU_HBM_PER_CHIP_GIB="16")
    assert child["model_axis"] == 1 and child["spmd"]["mesh"] == "data=4" and "auto SPMD" not in child["log"]
    assert all(run["max_diff"] <= PARITY for run in child["families"]["wan"]["runs"])


def _doctor(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpu_runtime", "doctor"], cwd=PACK_DIR, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **CHILD_ENV, "CPU_NUM_DEVICES": "4", **env})


def test_doctor_shows_the_model_axis():
    out = _doctor(COMFY_TPU_MESH="data=2,model=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SPMD         on, mesh data=2,model=2" in out.stdout
    assert "weights      split over 'model' (2 ways): each chip holds ~1/2 of a diffusion model's weights" in out.stdout


def test_a_model_axis_that_does_not_fit_is_named():
    out = _doctor(COMFY_TPU_MESH="data=1,model=3")
    assert out.returncode == 0 and "SPMD         off" in out.stdout
    assert "COMFY_TPU_MESH='data=1,model=3' is not valid" in out.stderr
