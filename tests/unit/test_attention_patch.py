"""The attention patch for a ComfyUI without the override hook (``comfyui/attention_patch.py``), on fake
modules: every module holding ComfyUI's function gets the routed one, device calls go to the router,
host calls to ComfyUI's own, and uninstalling puts every module back."""
from __future__ import annotations

import sys
import types

import pytest

from tpu_runtime.comfyui import attention_patch
from tpu_runtime.comfyui.patches import Patches


class DeviceTensor:
    def __init__(self, on_device: bool) -> None:
        self.on_device = on_device


@pytest.fixture()
def comfy_modules(monkeypatch):
    def comfy_attention(q, k, v, heads, mask=None, **kwargs):
        return ("comfy", heads, mask)

    attention = types.ModuleType(attention_patch.ATTENTION_MODULE)
    attention.optimized_attention = comfy_attention
    attention.optimized_attention_masked = comfy_attention
    flux_math = types.ModuleType("comfy.ldm.flux.math")
    flux_math.optimized_attention = comfy_attention  # imported by name, as ComfyUI's models do
    unrelated = types.ModuleType("comfy.ldm.other")
    unrelated.optimized_attention = lambda *a, **k: "its own"
    outside = types.ModuleType("somebody_else")
    outside.optimized_attention = comfy_attention
    for module in (attention, flux_math, unrelated, outside):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return comfy_attention, attention, flux_math, unrelated, outside


def test_no_hook_is_found_in_a_module_without_it():
    module = types.ModuleType("no_source")  # inspect cannot read it: no hook is claimed
    assert attention_patch.has_override_hook(module) is False
    import tpu_runtime.comfyui.attention_patch as itself

    assert attention_patch.has_override_hook(itself) is True  # its source names the key


def test_every_holder_is_routed_and_put_back(comfy_modules):
    comfy_attention, attention, flux_math, unrelated, outside = comfy_modules
    calls = []

    def router(func, *args, **kwargs):
        calls.append((func, args[3]))
        return "routed"

    patches = Patches()
    routed = attention_patch.install(patches, lambda: router, lambda tensor: tensor.on_device)
    assert set(routed) == {"optimized_attention", "optimized_attention_masked"}
    assert attention.optimized_attention is routed["optimized_attention"]
    assert flux_math.optimized_attention is routed["optimized_attention"]
    assert attention.optimized_attention_masked is routed["optimized_attention_masked"]
    assert unrelated.optimized_attention is not routed["optimized_attention"]  # not ComfyUI's function
    assert outside.optimized_attention is comfy_attention  # not a ComfyUI module

    assert flux_math.optimized_attention(DeviceTensor(True), None, None, 8, transformer_options={}) == "routed"
    assert calls == [(comfy_attention, 8)]  # the router is handed ComfyUI's function, as the hook does
    assert flux_math.optimized_attention(DeviceTensor(False), None, None, 8, mask="m") == ("comfy", 8, "m")
    assert routed["optimized_attention"].routed_calls == 1

    again = attention_patch.install(patches, lambda: router, lambda tensor: tensor.on_device)
    assert again["optimized_attention"] is routed["optimized_attention"]  # idempotent: not wrapped twice

    patches.uninstall()
    assert attention.optimized_attention is comfy_attention
    assert flux_math.optimized_attention is comfy_attention
    assert attention.optimized_attention_masked is comfy_attention


def test_no_router_in_force_runs_comfyuis_own(comfy_modules):
    comfy_attention, attention, *_ = comfy_modules
    patches = Patches()
    routed = attention_patch.install(patches, lambda: None, lambda tensor: True)
    assert attention.optimized_attention(DeviceTensor(True), None, None, 4) == ("comfy", 4, None)
    assert routed["optimized_attention"].routed_calls == 0
    patches.uninstall()
