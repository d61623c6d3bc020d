"""Which attention runs (pure logic): the setting, the lengths, the backend and the device; the blocks
the memory-bounded loop uses; and the audit of a lowered program's tensors."""
from __future__ import annotations

import pytest

from tpu_runtime.execution.attention import blockwise, choice, program_audit, route
from tpu_runtime.execution.attention.choice import AUTO_MIN_TOKENS, choose

WAN_720P = 21 * 45 * 80  # 75,600 tokens


@pytest.mark.parametrize("backend", ["torch_xla", "torchax"])
def test_auto_keeps_sdpa_below_the_threshold(backend):
    assert choose("auto", backend, "TPU", AUTO_MIN_TOKENS - 1, 77, False).implementation == "sdpa"
    assert choose("auto", backend, "CPU", 1024, 1024, True).implementation == "sdpa"


@pytest.mark.parametrize("backend", ["torch_xla", "torchax"])
def test_auto_uses_flash_on_a_tpu_and_blockwise_elsewhere_or_when_masked(backend):
    assert choose("auto", backend, "TPU", WAN_720P, WAN_720P, False).implementation == "flash"
    assert choose("auto", backend, "TPU", WAN_720P, WAN_720P, True).implementation == "blockwise"
    assert choose("auto", backend, "CPU", AUTO_MIN_TOKENS, AUTO_MIN_TOKENS, False).implementation == "blockwise"
    # A long query against a short context (Wan's cross-attention) leaves SDPA too: its scores are 3 GB.
    assert choose("auto", backend, "TPU", WAN_720P, 512, False).implementation == "flash"


@pytest.mark.parametrize("setting", ["sdpa", "blockwise"])
def test_a_forced_implementation_runs_at_every_length(setting):
    for tokens in (16, WAN_720P):
        assert choose(setting, "torch_xla", "CPU", tokens, tokens, True) == choice.Choice(setting)


def test_forced_flash_off_a_tpu_says_what_runs_instead():
    xla = choose("flash", "torch_xla", "CPU", 64, 64, False)
    assert xla.implementation == "blockwise" and "TPU only" in xla.note and "CPU" in xla.note
    jax = choose("flash", "torchax", "CPU", 64, 64, False)
    assert jax.implementation == "flash" and "interpret mode" in jax.note
    assert choose("flash", "torch_xla", "TPU", 64, 64, True) == choice.Choice("flash")


def test_the_description_names_what_runs():
    assert "SDPA below 4,096" in choice.describe("auto", "torch_xla", "CPU")
    assert "blockwise" in choice.describe("auto", "torch_xla", "CPU")
    assert "Pallas flash" in choice.describe("auto", "torchax", "TPU")
    assert "blockwise" in choice.describe("flash", "torch_xla", "CPU") and "TPU only" in choice.describe(
        "flash", "torch_xla", "CPU")
    assert choice.describe("sdpa", "torchax", "TPU").startswith("sdpa: PyTorch SDPA")


def test_one_router_per_setting_so_a_replayed_programs_call_key_is_stable():
    assert route.router_for("auto", "torch_xla", "CPU") is route.router_for("auto", "torch_xla", "CPU")
    assert route.router_for("auto", "torch_xla", "CPU") is not route.router_for("blockwise", "torch_xla", "CPU")


@pytest.mark.parametrize("batch,heads,q,k", [(1, 40, WAN_720P, WAN_720P), (2, 24, 4608, 4608), (2, 40, WAN_720P, 512),
                                             (1, 2, 100, 77), (16, 8, 4096, 77)])
def test_a_score_block_fits_its_budget_and_the_blocks_divide_the_padding(batch, heads, q, k):
    blocks = blockwise.block_sizes(batch, heads, q, k)
    assert batch * heads * blocks.block_q * blocks.block_k * 4 <= blockwise.SCORE_BLOCK_BYTES or blocks.block_q == 8
    assert blocks.q_padded % blocks.block_q == 0 and blocks.k_padded % blocks.block_k == 0
    assert q <= blocks.q_padded < q + blocks.block_q and k <= blocks.k_padded < k + blocks.block_k


def test_the_audit_reads_hlo_and_stablehlo_shapes():
    hlo = "%dot = f32[1,40,75600,75600]{3,2,1,0} dot(bf16[1,40,75600,128] %a, bf16[1,40,75600,128] %b)"
    mlir = "%0 = stablehlo.dot_general %a, %b : (tensor<1x40x256x128xbf16>, tensor<1x40x1024x128xbf16>) -> tensor<1x40x256x1024xf32>"
    scores = program_audit.audit(hlo, 75600, [40 * 75600 * 128])
    assert scores.largest == program_audit.TensorShape("f32", (1, 40, 75600, 75600))
    assert [s.dims for s in scores.seq_by_seq] == [(1, 40, 75600, 75600)]
    blocks = program_audit.audit(mlir, 75600, [40 * 75600 * 128])
    assert blocks.seq_by_seq == () and blocks.largest_inner.dims == (1, 40, 256, 1024)
    assert blocks.largest_inner.nbytes == 40 * 256 * 1024 * 4


def test_the_description_says_the_split_under_spmd():
    on_mesh = choice.describe("auto", "torchax", "TPU", "data=2,model=2")
    assert "on mesh data=2,model=2" in on_mesh and "heads over 'model'" in on_mesh
    assert "mesh" not in choice.describe("auto", "torchax", "TPU")
    assert "mesh" not in choice.describe("sdpa", "torch_xla", "TPU", "data=4")  # SDPA is left to the partitioner


def test_the_router_counts_the_device_calls_each_implementation_ran(mocker):
    import torch

    router = route.AttentionRouter("auto", "torch_xla", "CPU")
    mocker.patch.object(route, "comfy_sdpa", lambda q, *args, **kwargs: q)
    mocker.patch.object(route, "_kernels", lambda backend: {"blockwise": lambda call, mesh: call.q})
    on_device = mocker.patch.object(route, "on_device", return_value=True)
    short, long = torch.zeros(1, 16, 8), torch.zeros(1, AUTO_MIN_TOKENS, 8)
    router(None, short, short, short, 2)
    router(None, long, long, long, 2)
    router(None, long, short, short, 2)
    assert router.calls == {"sdpa": 1, "blockwise": 2}
    on_device.return_value = False  # a model run eagerly on the host: ComfyUI's attention, not counted
    router(None, long, long, long, 2)
    assert router.calls == {"sdpa": 1, "blockwise": 2}
