"""A replayed model's result rebuilt from its program's outputs (tpu_runtime.execution.replay): a tensor the model
returns in several places (a Flux ControlNet repeats its block outputs) is one output of the program."""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

from tpu_runtime.execution.replay import _distinct, _Program


def test_a_tensor_returned_in_several_places_is_one_program_output():
    a, b = torch.ones(2), torch.zeros(3)
    result = {"input": (a, a, b, a), "output": (b,)}
    leaves, spec = tree_flatten(result)
    distinct, positions = _distinct(leaves)
    assert len(distinct) == 2 and distinct[0] is a and distinct[1] is b
    assert positions == [0, 0, 1, 0, 1]
    program_a, program_b = torch.full((2,), 5.0), torch.full((3,), 7.0)  # what the program computed
    rebuilt = _Program(None, spec, (), (), positions).output([program_a, program_b])
    assert rebuilt["input"][0] is program_a and rebuilt["input"][3] is program_a and rebuilt["input"][2] is program_b
    assert rebuilt["output"][0] is program_b


def test_distinct_outputs_map_one_to_one():
    leaves = [torch.ones(1), torch.ones(1)]  # equal values, two tensors: two outputs
    assert _distinct(leaves)[1] == [0, 1]
    _, spec = tree_flatten((leaves[0], leaves[1]))
    out = _Program(None, spec, (), ()).output(leaves)
    assert out[0] is leaves[0] and out[1] is leaves[1]
