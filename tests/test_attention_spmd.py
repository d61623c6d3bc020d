"""Attention under SPMD (#30): each implementation splits a call over the mesh by rows (``data``) and heads
(``model``), on 4 CPU devices as ``data=2,model=2`` and ``data=1,model=4``, in one fresh child a backend:
torch_xla's blockwise loop (sharding annotations XLA's partitioner keeps), torchax's blockwise loop and
its Pallas flash kernel (inside ``shard_map``; the kernel in Pallas's generic interpreter). Self-attention,
and cross-attention with a key-padding mask.

A whole tiny Flux model (weights split over ``model``) sampled with each implementation forced, within
1e-3 of eager CPU, its attention calls handed to the kernels with the mesh. Each call run: parity with
ComfyUI's attention on the host, 1e-5 fp32 (one device's result is checked against
the same reference in test_attention_kernels); and the program each device runs (XLA's partitioned HLO)
has no collective at all, so a device computes from its own share of q, k and v only, and its largest
tensor is at most a quarter of a whole call's scores or padded q (what one device of four holds).
torch_xla's flash kernel runs on a TPU only: its SPMD arguments are unit-tested
(tests/unit/test_attention_split.py). The start line says which attention runs, and that it splits."""
from __future__ import annotations

import importlib.util

import pytest

from tests.cases_attention_spmd import BATCH, CONTEXT, HEADS, TOKENS
from tests.child import run_child

PARITY = 1e-5
MODEL_PARITY = 1e-3  # a whole model against eager CPU, as the families suite (test_attention_routes)
DEVICES = 4
#: A device's share: a quarter of the largest whole-call tensor (fp32 scores, or q padded to 128 wide).
SHARE = BATCH * HEADS * TOKENS * max(TOKENS, CONTEXT, 128) // DEVICES
ENV = {"CPU_NUM_DEVICES": str(DEVICES), "COMFY_TPU_SPMD": "on", "COMFY_TPU_MESH": "data=2,model=2"}


def _check(result: dict, implementations: list) -> None:
    runs = result["runs"]
    print(runs)
    assert result["devices"] == DEVICES
    start = next(line for line in result["log"].splitlines() if "comfy-tpu: TPU path on" in line)
    assert "attention auto: SDPA below 4,096 tokens, memory-bounded blockwise from 4,096; on mesh data=2,model=2" \
        in start, start  # the start line says what runs, and that it splits
    assert {(r["mesh"], r["implementation"], r["cross"]) for r in runs} == {
        (mesh, impl, cross) for mesh in ("data=2,model=2", "data=1,model=4") for impl in implementations
        for cross in (False, True)}
    models = result["models"]
    print(models)
    assert [m["implementation"] for m in models] == implementations
    for model in models:  # the router ``attach`` installed had the mesh, the weights were split, parity
        assert model["mesh"] == "data=2,model=2" and model["model_axis"] == 2, model
        assert model["calls_on_mesh"] > 0 and model["diff"] <= MODEL_PARITY, model
    for run in runs:
        assert "on a mesh" in run["router"], run
        assert run["diff"] <= PARITY, run
        assert run["collectives"] == [], run
        assert run["largest_elements"] <= SHARE, run


def test_torch_xla_blockwise_splits_by_rows_and_heads(tmp_path):
    dump = tmp_path / "hlo"
    result = run_child("cases_attention_spmd:xla_split", implementations=["blockwise"], dump_dir=str(dump),
                       env={**ENV, "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text"})
    _check(result, ["blockwise"])


def test_torchax_blockwise_and_flash_split_by_rows_and_heads():
    if importlib.util.find_spec("torchax") is None:
        pytest.skip("torchax is not installed (the comfy-tpu[torchax] extra)")
    result = run_child("cases_attention_spmd:torchax_split", implementations=["blockwise", "flash"],
                       env={**ENV, "COMFY_TPU_BACKEND": "torchax",
                            "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"})
    _check(result, ["blockwise", "flash"])
