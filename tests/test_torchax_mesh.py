"""torchax backend: the diffusion model's batch split over a JAX mesh (COMFY_TPU_SPMD / COMFY_TPU_MESH),
on 4 JAX CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``), equal to eager CPU, and
compiling nothing for a repeat signature. One child process (the mesh is chosen before any device)."""
from __future__ import annotations

import importlib.util

import pytest

from tests.child import run_child

PARITY = 1e-3  # fp32
RUNS = [[1, 4], [1, 6], [3, 4], [3, 6], [4, 4]]  # batch 1 and 3 are 2 and 6 rows: padded to 4 and 8


@pytest.fixture(scope="module")
def mesh_run():
    if importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
    return run_child("cases_torchax_mesh:batch_over_mesh", runs=RUNS, env={
        "COMFY_TPU_BACKEND": "torchax", "COMFY_TPU_SPMD": "auto",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})


def test_the_mesh_is_on_with_every_device_on_data(mesh_run):
    spmd = mesh_run["spmd"]
    assert mesh_run["backend"] == "torchax"
    assert spmd["on"] and spmd["mesh"] == "data=4" and spmd["data_axis"] == 4, spmd


def test_every_batch_matches_eager_cpu(mesh_run):
    for run in mesh_run["runs"]:
        assert run["shape_ok"] and run["diff"] <= PARITY, run


def test_a_repeat_signature_compiles_nothing(mesh_run):
    by_batch = {}
    for run in mesh_run["runs"]:
        if run["batch"] in by_batch:
            assert run["compiles"] == 0, run
        by_batch[run["batch"]] = run
