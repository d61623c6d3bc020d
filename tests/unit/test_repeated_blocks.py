"""Finding repeated blocks (``tpu_runtime/execution/repeated_blocks.py``): pure structure, plain torch modules."""
from __future__ import annotations

import torch

from tpu_runtime.execution.repeated_blocks import block_structure, find_repeated_blocks


class Block(torch.nn.Module):
    def __init__(self, width: int = 8, flag: bool = False, inner: int = 0) -> None:
        super().__init__()
        self.flag = flag
        self.proj = torch.nn.Linear(width, width)
        self.norm = torch.nn.LayerNorm(width)
        self.inner = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, width))
                                          for _ in range(inner)])


class Model(torch.nn.Module):
    def __init__(self, blocks: list[torch.nn.Module]) -> None:
        super().__init__()
        self.stem = torch.nn.Linear(8, 8)
        self.blocks = torch.nn.ModuleList(blocks)


def _groups(model):
    return [(g.path, g.indices) for g in find_repeated_blocks(model)]


def test_members_built_alike_are_one_kind():
    assert _groups(Model([Block() for _ in range(4)])) == [("blocks", (0, 1, 2, 3))]


def test_another_width_or_a_config_flag_is_another_kind():
    model = Model([Block(), Block(), Block(width=16), Block(flag=True), Block(flag=True), Block()])
    assert _groups(model) == [("blocks", (0, 1, 5)), ("blocks", (3, 4))]  # the 16-wide one repeats nowhere


def test_a_block_alone_is_not_repeated():
    assert _groups(Model([Block(), Block(width=16)])) == []


def test_another_dtype_is_another_kind():
    model = Model([Block(), Block(), Block().to(torch.float16), Block().to(torch.float16)])
    assert _groups(model) == [("blocks", (0, 1)), ("blocks", (2, 3))]


def test_a_list_inside_a_repeated_block_is_part_of_its_program():
    model = Model([Block(inner=3), Block(inner=3)])
    assert _groups(model) == [("blocks", (0, 1))]


def test_inner_lists_repeat_when_their_owners_do_not():
    model = Model([Block(inner=3), Block(width=16)])
    assert _groups(model) == [("blocks.0.inner", (0, 1, 2))]


def test_a_tensor_kept_outside_parameters_is_never_shared():
    odd = Block()
    odd.table = torch.zeros(3)  # would be baked into a shared program
    model = Model([Block(), odd, Block()])
    assert _groups(model) == [("blocks", (0, 2))]


def test_an_instance_forward_is_never_shared():
    patched = Block()
    patched.forward = lambda x: x
    assert _groups(Model([Block(), patched])) == []


def test_weight_functions_are_not_structure():
    a, b = Block(), Block()
    b.proj.weight_function = [lambda weight: weight * 2]  # per call: part of a call's key instead
    assert block_structure(a) == block_structure(b)


def test_a_list_of_single_layers_is_no_stack_of_blocks():
    model = Model([])
    model.heads = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(4)])
    assert _groups(model) == []
