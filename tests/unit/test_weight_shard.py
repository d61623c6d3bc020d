"""The weight split over the 'model' axis, read from module structure (no ComfyUI, no torch_xla)."""
from __future__ import annotations

import torch
from torch import nn

from tests.unit.fake_backend import FakeBackend
from tpu_runtime.backends.weight_shard import (MIN_SPLIT_ELEMENTS, Placement, auto_model_axis, choose_model_axis, plan_weights,
                                      twin_spec)


class Attention(nn.Module):
    """q, k, v, out as ComfyUI's CrossAttention registers them (out inside a Sequential)."""

    def __init__(self, width: int, context: int, inner: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_k = nn.Linear(context, inner, bias=False)
        self.to_v = nn.Linear(context, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, width), nn.Dropout(0.0))


class GEGLU(nn.Module):
    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, inner * 2)


class Block(nn.Module):
    def __init__(self, width: int = 64, context: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn1 = Attention(width, width, width)
        self.attn2 = Attention(width, context, width)
        self.ff = nn.Sequential(GEGLU(width, width * 4), nn.Dropout(0.0), nn.Linear(width * 4, width))


class SingleStream(nn.Module):
    """Flux's single-stream block: a fused in-projection, a narrowing out-projection, then modulation."""

    def __init__(self, width: int = 64, mlp: int = 256) -> None:
        super().__init__()
        self.linear1 = nn.Linear(width, 3 * width + mlp)
        self.linear2 = nn.Linear(width + mlp, width)
        self.modulation = nn.Sequential(nn.Linear(width, 3 * width))


def test_attention_splits_by_heads_and_the_mlp_by_hidden_units():
    plan = plan_weights(Block(), 4)
    for name in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v", "ff.0.proj"):
        assert plan.roles[name] == "column", name
        assert plan.spec(f"{name}.weight") == ("model", None)
    for name in ("attn1.to_out.0", "attn2.to_out.0", "ff.2"):
        assert plan.roles[name] == "row", name
        assert plan.spec(f"{name}.weight") == (None, "model")
        assert plan.spec(f"{name}.bias") is None  # added once, after the partial sums meet
    assert plan.spec("ff.0.proj.bias") == ("model",)  # a column layer's bias goes with its outputs
    assert plan.spec("norm.weight") is None and plan.spec("norm.bias") is None


def test_a_narrowing_out_projection_is_row_parallel_even_before_other_layers():
    plan = plan_weights(SingleStream(), 4)
    assert plan.roles == {"linear1": "column", "linear2": "row", "modulation.0": "column"}


def test_convolutions_split_their_output_channels_and_odd_sizes_fall_back():
    model = nn.Sequential(nn.Conv2d(4, 32, 3), nn.Conv2d(32, 6, 1), nn.Conv2d(6, 3, 1))
    plan = plan_weights(model, 4)
    assert plan.spec("0.weight") == ("model", None, None, None)
    # 32 -> 6 maps back to no earlier width: a column layer; 6 does not divide by 4: its 32 inputs do.
    assert plan.spec("1.weight") == (None, "model", None, None) and plan.spec("1.bias") is None
    assert plan.spec("2.weight") is None and plan.roles["2"] == "whole"  # 3 x 6: nothing divides


def test_large_other_tensors_split_on_their_largest_dimension_small_ones_stay_whole():
    model = nn.Module()
    model.table = nn.Parameter(torch.zeros(1, MIN_SPLIT_ELEMENTS // 8, 8))
    model.scale = nn.Parameter(torch.zeros(8))
    model.register_buffer("ids", torch.zeros(MIN_SPLIT_ELEMENTS, dtype=torch.long))
    plan = plan_weights(model, 4)
    assert plan.spec("table") == (None, "model", None)
    assert plan.spec("scale") is None and plan.spec("ids") is None  # not floating point: not a weight


def test_no_model_axis_means_no_split():
    assert plan_weights(Block(), 1).specs == {}


def test_twin_spec_follows_the_permutation():
    assert twin_spec(("model", None, None, None), (2, 3, 1, 0)) == (None, None, None, "model")
    assert twin_spec(None, (2, 3, 1, 0)) is None


def test_placement_marks_device_weights_and_measures_a_quarter_per_device():
    backend = FakeBackend(model_ways=4)
    model = nn.Sequential(Block(), SingleStream())
    placement = Placement(backend)
    placement.shard_model(model, "tiny")
    weights = dict(model.named_parameters())
    assert backend.weight_specs[id(weights["0.attn1.to_q.weight"])] == ("model", None)
    assert id(weights["0.norm.weight"]) not in backend.weight_specs
    figures = placement.figures()[0]
    total = sum(t.numel() * t.element_size() for t in weights.values())
    assert figures["model"] == "tiny" and figures["weight_bytes"] == total
    whole = figures["whole_bytes"]
    assert 0 < whole < total * 0.05
    assert all(held <= total / 4 + whole for held in figures["bytes_per_chip"])
    marked = placement.marked
    placement.shard_model(model)  # already split: nothing is marked again
    assert placement.marked == marked


def test_placement_is_off_without_a_model_axis():
    backend = FakeBackend(shards=4)
    placement = Placement(backend)
    placement.shard_model(Block())
    assert not placement.on and backend.weight_specs == {} and placement.figures() == []


def test_auto_mode_picks_the_smallest_axis_that_fits():
    gib = 2**30
    assert choose_model_axis(24 * gib, 15 * gib, 8) == 4   # Flux.1-dev bf16 on v5e-8: 6 GiB a chip
    assert choose_model_axis(24 * gib, 31 * gib, 4) == 2   # on v6e-4: 12 GiB a chip, within 70% of 31
    assert choose_model_axis(2 * gib, 15 * gib, 8) == 1    # SD1.5 fits one chip: batch only
    assert choose_model_axis(200 * gib, 15 * gib, 8) == 8  # too big for any: every chip
    assert choose_model_axis(24 * gib, None, 8) == 1       # free memory unknown: nothing decided
    assert choose_model_axis(24 * gib, 15 * gib, 6) == 3   # a divisor of the device count


def test_auto_mode_says_its_plan_and_when_it_cannot_decide():
    gib = 2**30
    size, words = auto_model_axis(24 * gib, 15 * gib, 8)
    assert size == 4 and "mesh data=2,model=4" in words and "6.00 GiB of weights a chip" in words
    size, words = auto_model_axis(24 * gib, None, 8)
    assert size == 1 and "COMFY_TPU_HBM_PER_CHIP_GIB" in words


def test_a_re_planned_mesh_turns_placement_on():
    backend = FakeBackend(shards=4)
    placement = Placement(backend)
    assert not placement.on
    backend.set_model_axis(2)
    assert placement.on and backend.mesh_description() == "data=2,model=2"
    model = Block()  # placements are held weakly: the model must live
    placement.shard_model(model)
    assert placement.figures()[0]["model_axis"] == 2 and placement.held_per_chip() > 0


def test_hbm_of_a_tpu_type():
    from tpu_runtime.backends.chip_memory import GIB, hbm_of_tpu_type

    assert hbm_of_tpu_type("TPU v5 lite") == 16 * GIB and hbm_of_tpu_type("TPU v6 lite") == 32 * GIB
    assert hbm_of_tpu_type("TPU v5p") == 95 * GIB and hbm_of_tpu_type("TPU v4") == 32 * GIB
    assert hbm_of_tpu_type("n/a (not a TPU)") is None
