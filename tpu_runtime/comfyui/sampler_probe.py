"""How a sampler function of the running ComfyUI draws its noise, found by running it (a tiny CPU probe).

The pack gives ancestral and SDE samplers host-drawn noise (no device generator on XLA). Which noise a
sampler builds when given none (ComfyUI's ``default_noise_sampler``, its ``BrownianTreeNoiseSampler``, or
none) decides what to give it; a table written against one ComfyUI would drift on the next. The probe runs
the sampler for four steps on a 1x4x4x4 CPU latent with a stand-in denoiser while those two constructors are
watched (a few milliseconds a sampler), once per function and process.
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from types import SimpleNamespace
from typing import Callable, Literal, Optional

import torch
from pydantic import BaseModel

Kind = Optional[Literal["default", "brownian"]]


class NoiseProbe(BaseModel):
    """What one sampler function did on the probe."""

    builds: Kind = None          # the noise sampler it built when given none
    takes_noise_sampler: bool = False
    uses_given: bool = False     # given one, it drew from it and built none
    error: str = ""              # the probe itself failed (the sampler needs inputs it was not given)

    @property
    def kind(self) -> Kind:
        """What the pack gives it: host noise of the kind it builds itself, when it can be given one."""
        return self.builds if self.takes_noise_sampler and self.uses_given else None


class _Built(Exception):
    """Raised by a watched constructor: the sampler built this kind of noise sampler."""


class _Denoiser:
    """What k-diffusion samplers use of ``KSamplerX0Inpaint``: a call that runs the post-cfg functions (cfg_pp
    samplers read the uncond prediction through them) and the model sampling."""

    def __init__(self, model_sampling) -> None:
        patcher = SimpleNamespace(get_model_object=lambda name: model_sampling)
        self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=model_sampling),
                                           model_patcher=patcher)

    def __call__(self, x, sigma, denoise_mask=None, model_options={}, seed=None, **kwargs):
        denoised = x * 0.5
        for function in model_options.get("sampler_post_cfg_function", []):
            denoised = function({"denoised": denoised, "cond_denoised": denoised, "uncond_denoised": denoised,
                                 "model": None, "sigma": sigma, "input": x, "model_options": model_options,
                                 "cond": None, "uncond": None, "cond_scale": 1.0})
        return denoised


@contextlib.contextmanager
def _watched():
    import comfy.k_diffusion.sampling as k

    saved = k.default_noise_sampler, k.BrownianTreeNoiseSampler

    def built(kind):
        def constructor(*args, **kwargs):
            raise _Built(kind)
        return constructor

    k.default_noise_sampler, k.BrownianTreeNoiseSampler = built("default"), built("brownian")
    try:
        yield
    finally:
        k.default_noise_sampler, k.BrownianTreeNoiseSampler = saved


def _run(function: Callable, **options) -> Kind:
    import comfy.model_sampling as ms

    model_sampling = type("ModelSampling", (ms.EPS, ms.ModelSamplingDiscrete), {})()
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([3.0, 1.5, 0.7, 0.3, 0.0])
    try:
        with torch.inference_mode():
            function(_Denoiser(model_sampling), x, sigmas, extra_args={"seed": 7, "model_options": {}},
                     callback=None, disable=True, **options)
    except _Built as exc:
        return exc.args[0]
    return None


def takes_noise_sampler(function: Callable) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "noise_sampler" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def probe(function: Callable) -> NoiseProbe:
    """Run ``function`` on the probe: what it builds alone, and whether it uses a noise sampler given to it."""
    takes = takes_noise_sampler(function)
    draws: list[tuple[float, float]] = []

    def given(sigma, sigma_next):
        draws.append((float(sigma), float(sigma_next)))
        return torch.zeros(1, 4, 4, 4)

    try:
        with _watched(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the samplers' own warnings about the probe's inputs
            builds = _run(function)
            built_when_given = _run(function, noise_sampler=given) if takes else None
    except Exception as exc:  # noqa: BLE001 - a sampler that needs more than the probe gives: said, not fatal
        return NoiseProbe(takes_noise_sampler=takes, error=f"{type(exc).__name__}: {exc}"[:200])
    return NoiseProbe(builds=builds, takes_noise_sampler=takes, uses_given=takes and built_when_given is None
                      and bool(draws))


class SamplerProbes:
    """Each sampler function's probe, run once per process (a function object is the key: ComfyUI's are
    module-level functions that live as long as the process)."""

    def __init__(self) -> None:
        self._probes: dict[Callable, NoiseProbe] = {}

    def __call__(self, function: Callable) -> NoiseProbe:
        if function not in self._probes:
            self._probes[function] = probe(function)
        return self._probes[function]
