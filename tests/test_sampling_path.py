"""The sampling path's acceptance figures (issue: one graph per step, no host syncs), in both
execution modes (compiled: dynamo + openxla; lazy: lazy tensor tracing).

Exact counts from torch_xla.debug.metrics and dynamo's counters, tiny SD1.5-architecture model,
128x128, PJRT CPU, autocast off, ComfyUI's own ``nodes.common_ksampler``; parity against eager CPU
with the same weights.
"""
from __future__ import annotations

import pytest
import torch

from tests.sampling_harness import BACKEND, backend_modes, execution_mode, ksample, max_abs_diff, run_options

# Counts compiles (see tests/fresh_process.py); run once per backend.
pytestmark = [pytest.mark.fresh_process(chunks=4), pytest.mark.both_backends]

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "lcm", "ddim",
            "uni_pc", "uni_pc_bh2"]
#: The other execution modes run one sampler of each kind: one model call a step, two calls a step,
#: multistep, Brownian and default noise, host-solved (lazy mode fuses the model into each sampler's
#: graph, so there each costs a model compile).
KIND_SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "beta"]
DEFAULT_MODE = "replay"
PARITY = 1e-3
#: Graph executions per model call: lazy runs one graph a step; compiled and replay run the sampler's
#: math (lazy, cut at the boundary) and then the captured or replayed model graph.
EXECUTIONS_PER_CALL = {"lazy": 1, "compiled": 2, "replay": 2}


_EAGER: dict[tuple, object] = {}


def eager_reference(comfy, cpu, pos, neg, kind: str = "", **kwargs):
    """The eager-CPU run for these inputs, computed once and shared by both execution modes."""
    key = (kind, tuple(sorted(kwargs.items())))
    if key not in _EAGER:
        _EAGER[key] = ksample(comfy, cpu, pos, neg, **kwargs, **(_variant_inputs(kind) if kind else {}))
    return _EAGER[key]


MODES = backend_modes(("replay", "compiled", "lazy"))
#: Per test: the (mode, sampler) pairs it runs. The default mode runs every sampler; the others one
#: sampler of each kind (lazy mode fuses the model into each sampler's graph: each costs a model compile).
MODE_SAMPLERS = {
    "test_sampler_compiles_nothing_after_first_run": [
        (mode, sampler) for mode in MODES for sampler in (SAMPLERS if mode == DEFAULT_MODE else KIND_SAMPLERS)],
    "test_variants": [(mode, sampler) for mode in MODES
                      for sampler in (["euler", "dpmpp_2m", "uni_pc"] if mode == DEFAULT_MODE else ["euler"])],
}
#: Tests whose subject does not depend on the mode (schedulers are sigmas, data; bf16 autocast wraps
#: every mode's model call alike): run in the default mode only.
DEFAULT_MODE_ONLY = {"test_schedulers_are_data_not_graphs", "test_bf16_autocast_parity"}


#: The compat layer (`make test-compat`, another ComfyUI) runs these samplers in the default mode (the
#: contact surface with ComfyUI, its sampler functions, noise and schedules, is the same in every mode):
#: one of each kind, and lcm, whose noise 2026 ComfyUI seeds otherwise (all 11 took 19 min there, loaded).
COMPAT_TESTS = {"test_sampler_compiles_nothing_after_first_run"}
COMPAT_SAMPLERS = {"euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "lcm", "uni_pc"}


def pytest_generate_tests(metafunc) -> None:
    """Which execution modes (and samplers) each test runs in; one process switches modes per group."""
    name = metafunc.function.__name__
    if name in MODE_SAMPLERS:
        pairs = [pytest.param(mode, sampler, marks=pytest.mark.compat if name in COMPAT_TESTS and mode == DEFAULT_MODE
                              and sampler in COMPAT_SAMPLERS
                              else ()) for mode, sampler in MODE_SAMPLERS[name]]
        metafunc.parametrize(["mode", "sampler"], pairs, indirect=["mode"], scope="module")
    elif "mode" in metafunc.fixturenames:
        modes = [DEFAULT_MODE] if name in DEFAULT_MODE_ONLY else list(MODES)
        metafunc.parametrize("mode", modes, indirect=True, scope="module")


@pytest.fixture(scope="module")
def mode(request, comfy):
    with execution_mode(request.param) as name:
        yield name


def assert_run_figures(run, steps: int, mode: str, *, first: bool) -> None:
    if not first:
        assert run.compiles == 0, f"{run.compiles} new XLA graphs compiled on a repeat signature"
        assert run.dynamo_frames == 0, f"dynamo recompiled {run.dynamo_frames} frames on a repeat signature"
    if mode != "compiled":
        assert run.dynamo_frames == run.dynamo_graphs == run.captured_graph_calls == 0, f"{mode} mode used dynamo"
    else:
        assert run.dynamo_graphs <= (1 if first else 0), f"{run.dynamo_graphs} dynamo graphs: graph breaks?"
        assert run.captured_graph_calls == run.model_calls, "a model call ran without its captured graph"
    assert steps <= run.model_calls <= 2 * steps
    if BACKEND == "torchax":
        # The sampler's math runs on the host in torch; each model call is one JAX program whose output
        # (one tensor) comes back to the host, and nothing else runs on the device.
        assert run.executions == run.model_calls, f"{run.executions} programs for {run.model_calls} model calls"
        assert run.transfers_to_host == run.model_calls, f"{run.transfers_to_host} transfers, {run.model_calls} calls"
    else:
        assert run.transfers_to_host <= 2, f"{run.transfers_to_host} device-to-host transfers"
        # A first run may also make the HWIO twins of the conv kernels (one small graph, once per weight).
        twins = 1 if first else 0
        assert run.executions <= EXECUTIONS_PER_CALL[mode] * run.model_calls + 2 + twins, \
            f"{run.executions} graph executions for {run.model_calls} model calls"
    assert not run.fallbacks, f"CPU-fallback ops during sampling: {run.fallbacks}"
    assert torch.isfinite(run.samples).all()


def test_sampler_compiles_nothing_after_first_run(comfy, backend, tiny, mode, sampler):
    xla, cpu, pos, neg = tiny
    for index, steps in enumerate((6, 12)):  # a new step count after the first: nothing compiles
        run = ksample(comfy, xla, pos, neg, steps=steps, sampler=sampler, backend=backend)
        assert run.samples.device.type == "cpu"
        assert_run_figures(run, steps, mode, first=index == 0)
        reference = eager_reference(comfy, cpu, pos, neg, steps=steps, sampler=sampler)
        assert max_abs_diff(run.samples, reference.samples) <= PARITY, sampler


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_schedulers_are_data_not_graphs(comfy, backend, tiny, mode, scheduler):
    xla, cpu, pos, neg = tiny
    ksample(comfy, xla, pos, neg, steps=6, scheduler=scheduler, backend=backend)  # may compile (first use)
    run = ksample(comfy, xla, pos, neg, steps=9, scheduler=scheduler, cfg=5.5, seed=7, backend=backend)
    assert_run_figures(run, 9, mode, first=False)
    reference = eager_reference(comfy, cpu, pos, neg, steps=9, scheduler=scheduler, cfg=5.5, seed=7)
    assert max_abs_diff(run.samples, reference.samples) <= PARITY


def _variant_inputs(kind: str):
    generator = torch.Generator().manual_seed(3)
    latent = torch.randn(1, 4, 16, 16, generator=generator)
    if kind == "batch2":
        return dict(batch=2)
    if kind == "cfg1":
        return dict(cfg=1.0)
    if kind == "img2img":
        return dict(latent=latent, denoise=0.6)
    if kind == "mask":
        mask = torch.zeros(1, 1, 128, 128)
        mask[..., 32:96, 32:96] = 1.0
        return dict(latent=latent, noise_mask=mask)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["batch2", "cfg1", "img2img", "mask"])
def test_variants(comfy, backend, tiny, mode, sampler, kind):
    xla, cpu, pos, neg = tiny
    inputs = _variant_inputs(kind)
    for index, steps in enumerate((6, 12)):
        run = ksample(comfy, xla, pos, neg, steps=steps, sampler=sampler, backend=backend, **inputs)
        assert_run_figures(run, steps, mode, first=index == 0)
        reference = eager_reference(comfy, cpu, pos, neg, steps=steps, sampler=sampler, kind=kind)
        assert run.samples.shape == reference.samples.shape
        assert max_abs_diff(run.samples, reference.samples) <= PARITY


def test_step_count_independent_of_cfg_and_seed(comfy, backend, tiny, mode):
    xla, _, pos, neg = tiny
    ksample(comfy, xla, pos, neg, steps=4, cfg=7.0, backend=backend)
    for cfg, seed, steps in ((3.0, 1, 5), (11.5, 99, 17)):
        run = ksample(comfy, xla, pos, neg, steps=steps, cfg=cfg, seed=seed, backend=backend)
        assert run.compiles == 0 and run.dynamo_frames == 0


def test_bf16_autocast_parity(comfy, backend, tiny, mode):
    xla, cpu, pos, neg = tiny
    with run_options(autocast_bf16=True):
        run = ksample(comfy, xla, pos, neg, steps=6, backend=backend)
        again = ksample(comfy, xla, pos, neg, steps=12, backend=backend)
    # torch_xla: one transfer a run; torchax: one a model call (its sampler's math runs on the host).
    transfers = again.model_calls if BACKEND == "torchax" else 2
    assert again.compiles == 0 and again.dynamo_frames == 0 and again.transfers_to_host <= transfers
    reference = eager_reference(comfy, cpu, pos, neg, steps=6)
    assert torch.isfinite(run.samples).all()
    # The random tiny model's latents reach ~150 (a trained model's stay near unit scale), so the
    # bf16 bound is taken relative to the latent's magnitude: 3e-2 per unit of scale.
    scale = max(1.0, reference.samples.abs().max().item())
    print(f"bf16 parity ({BACKEND}): max |diff| {max_abs_diff(run.samples, reference.samples):.4g}, scale {scale:.4g}")
    assert max_abs_diff(run.samples, reference.samples) <= 3e-2 * scale
    # And it computed in bf16: further from fp32 than fp32 programs get (measured: under 1e-6 of the scale).
    assert max_abs_diff(run.samples, reference.samples) > 1e-4 * scale
