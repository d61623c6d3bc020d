"""A text encoder's re-warm after a restart, on its own (pure logic: a fake backend, a T5-shaped module): a
compiled call is recorded with its form and made again at the first use in a new process; a failing
re-warm is said once and leaves the encoder's own calls as they were."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from tests.unit.test_device_parts import ProgramBackend
from tpu_runtime.cache.part_shapes import PartShapes, part_shapes_file
from tpu_runtime.comfyui import encoder_tokens
from tpu_runtime.comfyui.text_encoder_patch import _rewarm, _t5_program_call
from tpu_runtime.execution.device_parts import DeviceParts
from tpu_runtime.state import Notices

WIDTH = 8


class Table(torch.nn.Embedding):
    def forward(self, ids, out_dtype=None):  # ComfyUI's embedding takes an output dtype
        return super().forward(ids).to(out_dtype or torch.float32)


class TinyT5(torch.nn.Module):
    """Called as ComfyUI's ``T5`` is: ``(input_ids, attention_mask, embeds=, num_tokens=, **kwargs)``."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = Table(16, WIDTH)
        self.out = torch.nn.Linear(WIDTH, WIDTH)

    def get_input_embeddings(self):
        return self.shared

    def forward(self, input_ids, attention_mask, embeds=None, num_tokens=None, **kwargs):
        return (self.out(embeds) * attention_mask.unsqueeze(-1),)


def _session(path, backend):
    parts = DeviceParts(backend, "host", "device", shapes=PartShapes(path))
    state = SimpleNamespace(notices=Notices(), backend=backend)
    return parts, state


def _call(transformer, parts, state, length: int):
    holder = encoder_tokens.TokenIds()
    programs = parts.programs(transformer, "text encoder TinyT5")
    call = _t5_program_call(transformer, programs, state, parts, holder)
    embeds = torch.zeros(1, length, WIDTH)
    holder.hold(torch.ones(1, length, dtype=torch.long), embeds)
    return call(None, None, embeds=embeds, num_tokens=[length], intermediate_output=None, dtype=torch.float32)


def test_a_restart_makes_the_recorded_calls_again_at_the_first_use(tmp_path):
    path = part_shapes_file(tmp_path, "torch_xla")
    backend = ProgramBackend()
    parts, state = _session(path, backend)
    transformer = TinyT5()
    for length in (100, 200, 120):  # buckets 128, 256, 128
        (out,) = _call(transformer, parts, state, length)
        assert out.shape == (1, length, WIDTH)
    assert backend.counters()["compiles"] == 2

    backend = ProgramBackend()  # the restart
    parts, state = _session(path, backend)
    transformer = TinyT5()
    programs = parts.programs(transformer, "text encoder TinyT5")
    _rewarm(transformer, programs, state, parts, _t5_program_call)
    assert backend.counters()["compiles"] == 2 and programs.figures()["programs"] == 2
    _call(transformer, parts, state, 250)
    assert backend.counters()["compiles"] == 2  # bucket 256: re-warmed


class FailingBackend(ProgramBackend):
    def capture_program(self, outputs, inputs):
        raise RuntimeError("compiler down")


def test_a_failing_rewarm_is_said_once_and_the_call_goes_on(tmp_path, caplog):
    path = part_shapes_file(tmp_path, "torch_xla")
    parts, state = _session(path, ProgramBackend())
    _call(TinyT5(), parts, state, 100)

    backend = FailingBackend()  # a restart where compiling fails
    parts, state = _session(path, backend)
    with caplog.at_level(logging.WARNING, logger="comfy_tpu"):
        for _ in range(2):
            transformer = TinyT5()
            programs = parts.programs(transformer, "text encoder TinyT5")
            _rewarm(transformer, programs, state, parts, _t5_program_call)
            assert programs.lazy_reason is None  # its own calls are tried as programs, as without a re-warm
    assert caplog.text.count("re-warm of text encoder TinyT5 failed") == 1, caplog.text
    assert "compiler down" in caplog.text
