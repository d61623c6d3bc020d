"""A text encoder's call kept as JSON for a re-warm after a restart, and made again (pure logic)."""
from __future__ import annotations

import torch

from tpu_runtime.cache import call_form


def test_a_call_comes_back_with_tensors_of_its_shapes_and_its_values():
    embeds = torch.zeros(2, 77, 8)
    mask = torch.ones(2, 77, dtype=torch.long)
    text = call_form.encode((None, mask), {"embeds": embeds, "num_tokens": [5, 9], "intermediate_output": -2,
                                           "dtype": torch.float32, "embeds_info": [], "layers": (1, "all"),
                                           "extra": {"a": 1.5}},
                            on_device=lambda tensor: tensor is mask, marked=embeds)
    assert text == call_form.encode((None, mask), {"embeds": embeds, "num_tokens": [5, 9], "intermediate_output": -2,
                                                   "dtype": torch.float32, "embeds_info": [], "layers": (1, "all"),
                                                   "extra": {"a": 1.5}},
                                    on_device=lambda tensor: tensor is mask, marked=embeds)  # canonical
    forms = []

    def make(form):
        forms.append(form)
        return torch.full(form.shape, 3, dtype=form.dtype)

    args, kwargs = call_form.decode(text, make)
    assert args[0] is None and args[1].shape == (2, 77) and args[1].dtype == torch.long
    assert kwargs["embeds"].shape == (2, 77, 8) and kwargs["dtype"] is torch.float32
    assert kwargs["num_tokens"] == [5, 9] and kwargs["intermediate_output"] == -2 and kwargs["embeds_info"] == []
    assert kwargs["layers"] == (1, "all") and kwargs["extra"] == {"a": 1.5}
    assert sorted((f.on_device, f.marked) for f in forms) == [(False, True), (True, False)]


def test_a_call_holding_another_kind_of_value_is_not_recorded():
    assert call_form.encode((object(),), {}, on_device=lambda tensor: False) is None
    assert call_form.encode((), {"ids": {1: 2}}, on_device=lambda tensor: False) is None


def test_an_unreadable_form_says_so():
    import pytest

    for text in ("{not json", '{"args": [{"what": 1}], "kwargs": {}}', '{"args": [{"torch_dtype": "nope"}], "kwargs": {}}'):
        with pytest.raises(ValueError):
            call_form.decode(text, lambda form: torch.zeros(form.shape))
