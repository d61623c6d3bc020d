"""Conv kernels handed to XLA as HWIO twins (``tpu_runtime.backends.kernel_layout``): results match eager
CPU, twins are made once per weight and remade when the weight changes (a LoRA-style patch and its
removal), layers with their own weight function keep it, and ``native`` leaves every layer alone."""
from __future__ import annotations

import os

import pytest
import torch

from tests.sampling_harness import execution_mode, ksample, max_abs_diff, run_options

pytestmark = pytest.mark.fresh_process  # counts compiles: see tests/fresh_process.py

PARITY = 1e-3
CONV_KEY = "diffusion_model.input_blocks.0.0.weight"  # the UNet's first conv


def _pair(seed: int):
    from bench import tiny_model

    return (tiny_model.build_patcher("tiny", seed=seed),
            tiny_model.build_patcher("tiny", seed=seed, load_device=torch.device("cpu")))


def _conditioning():
    from bench import tiny_model

    return tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)


def _conv_layers(patcher) -> list[torch.nn.Module]:
    return [m for m in patcher.model.diffusion_model.modules() if isinstance(m, torch.nn.Conv2d)]


def _lora_like(patcher, diff: torch.Tensor):
    """A clone of ``patcher`` whose first conv weight gets ``diff`` added, as a LoRA would."""
    patched = patcher.clone()
    patched.add_patches({CONV_KEY: (diff,)}, 1.0)
    return patched


@pytest.mark.parametrize("mode", ["replay", "lazy", "compiled"])
def test_twins_made_once_and_remade_when_the_weight_changes(comfy, backend, mode):
    from tpu_runtime import runtime

    twins = runtime.current().kernel_twins
    xla, cpu = _pair(seed=11)
    pos, neg = _conditioning()
    convs = len(_conv_layers(xla))
    diff = torch.randn(_conv_layers(cpu)[0].weight.shape, generator=torch.Generator().manual_seed(3)) * 0.5
    with execution_mode(mode), run_options(conv_kernel_layout=os.environ.get("KL", "hwio")):
        made = twins.made
        first = ksample(comfy, xla, pos, neg, steps=3, backend=backend)
        assert twins.made - made == convs, "every conv layer gets its twin on the first run"
        again = ksample(comfy, xla, pos, neg, steps=5, backend=backend)
        assert twins.made - made == convs, "twins are kept while the weights are unchanged"
        assert again.compiles == 0 and again.executions <= (1 if mode == "lazy" else 2) * again.model_calls + 2

        patched = ksample(comfy, _lora_like(xla, diff), pos, neg, steps=3, backend=backend)
        assert twins.made - made > convs, "a patched weight gets a new twin"
        restored = ksample(comfy, xla, pos, neg, steps=3, backend=backend)

    assert max_abs_diff(first.samples, ksample(comfy, cpu, pos, neg, steps=3).samples) <= PARITY
    assert max_abs_diff(again.samples, ksample(comfy, cpu, pos, neg, steps=5).samples) <= PARITY
    patched_reference = ksample(comfy, _lora_like(cpu, diff), pos, neg, steps=3).samples
    assert max_abs_diff(patched.samples, patched_reference) <= PARITY
    assert max_abs_diff(patched.samples, first.samples) > 100 * PARITY, "the patch changes the result"
    assert max_abs_diff(restored.samples, first.samples) <= PARITY, "a stale twin outlived the patch"
    from tpu_runtime.backends.kernel_layout import HwioKernel

    for layer in _conv_layers(xla):
        assert not any(isinstance(f, HwioKernel) for f in layer.weight_function), "a twin outlived the call"


def test_layers_with_their_own_weight_function_keep_it(comfy, backend):
    xla, cpu = _pair(seed=12)
    pos, neg = _conditioning()
    calls: list[int] = []

    def doubled(weight):  # a weight function of the user's (as LoRA's low-VRAM patches install)
        calls.append(1)
        return weight * 2

    with run_options(conv_kernel_layout="hwio"):
        ksample(comfy, xla, pos, neg, steps=1, backend=backend)  # loaded (a load resets weight functions)
        ksample(comfy, cpu, pos, neg, steps=1)
        own = _conv_layers(xla)[0]
        own.weight_function = [doubled]
        _conv_layers(cpu)[0].weight_function = [doubled]
        run = ksample(comfy, xla, pos, neg, steps=3, backend=backend)
    assert calls, "the layer's own function was replaced by a twin"
    assert own.weight_function == [doubled]
    reference = ksample(comfy, cpu, pos, neg, steps=3).samples
    assert max_abs_diff(run.samples, reference) <= PARITY


def test_native_layout_makes_no_twins(comfy, backend):
    from tpu_runtime import runtime

    xla, cpu = _pair(seed=13)
    pos, neg = _conditioning()
    twins = runtime.current().kernel_twins
    with run_options(conv_kernel_layout="native"):
        made = twins.made
        run = ksample(comfy, xla, pos, neg, steps=3, backend=backend)
    assert twins.made == made
    assert max_abs_diff(run.samples, ksample(comfy, cpu, pos, neg, steps=3).samples) <= PARITY


@pytest.mark.parametrize("setting, device_type, expected", [
    ("auto", "CPU", True), ("auto", "TPU", False), ("hwio", "TPU", True), ("native", "CPU", False)])
def test_auto_means_hwio_on_the_cpu_device_only(setting, device_type, expected):
    from tpu_runtime.backends.kernel_layout import resolve

    assert resolve(setting, device_type) is expected
