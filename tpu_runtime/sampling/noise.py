"""Noise for ancestral and SDE samplers, drawn on the host and uploaded.

ComfyUI draws sampler noise with ``torch.Generator(device=x.device)``, which XLA does not support,
and builds SDE Brownian trees from ``zeros_like(x).cpu()`` (a device-to-host sync). Drawing from a CPU
generator seeded the same way gives exactly the noise ComfyUI makes on the CPU for that seed. A run
padded to a shape bucket draws at the user's own shape and pads with zeros, as the initial noise is
padded: the same noise as stock ComfyUI where the user's latent is, none in the border.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Optional

import torch

from tpu_runtime.comfyui import samplers
from tpu_runtime.comfyui.sampler_probe import takes_noise_sampler
from tpu_runtime.sampling import padding
from tpu_runtime.execution.host_values import plain

if TYPE_CHECKING:
    from tpu_runtime.comfyui.sampler_probe import NoiseProbe

log = logging.getLogger("comfy_tpu")

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _to_bucket(noise: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Noise drawn at the user's shape, zero-padded to the run's (bucket) shape, on ``like``'s device."""
    return padding.pad(noise, like.shape[-2], like.shape[-1]).to(like.device)


def host_default_noise_sampler(like: torch.Tensor, seed: Optional[int],
                               shape: Optional[tuple[int, ...]] = None) -> NoiseSampler:
    """ComfyUI's own ``default_noise_sampler`` on a CPU latent of ``shape`` (default: like's): the draws
    (and the seeding) of that ComfyUI's CPU run, uploaded to ``like.device``."""
    draw = samplers.default_noise_sampler(tuple(shape or like.shape), like.dtype, seed)

    def sample(sigma, sigma_next):
        return _to_bucket(draw(sigma, sigma_next), like)

    return sample


def host_brownian_noise_sampler(like: torch.Tensor, sigmas: torch.Tensor, seed: Optional[int],
                                shape: Optional[tuple[int, ...]] = None) -> NoiseSampler:
    """ComfyUI's ``BrownianTreeNoiseSampler`` built on a host stand-in for the latent (of ``shape``)."""
    host_sigmas = plain(sigmas)
    sigma_min, sigma_max = host_sigmas[host_sigmas > 0].min(), host_sigmas.max()
    tree = samplers.brownian_noise_sampler(tuple(shape or like.shape), like.dtype, sigma_min, sigma_max, seed)

    def sample(sigma, sigma_next):
        return _to_bucket(tree(plain(sigma), plain(sigma_next)), like)

    return sample


#: How each of ComfyUI's sampler functions draws noise when it is given no ``noise_sampler``, keyed
#: by the function's ``__name__`` (what ``KSAMPLER.sampler_function`` holds for each entry of
#: ``comfy.samplers.KSampler.SAMPLERS`` in ComfyUI 0.3.75, plus the built-in custom-sampler nodes'):
#: ``"default"``: it takes a ``noise_sampler`` and falls back to ``default_noise_sampler`` (a
#: ``torch.Generator`` on the latent's device: on XLA that raises, so a host one must be given even
#: where the noise is scaled by 0, as in ``res_multistep`` and ``dpm_adaptive``); ``"brownian"``: it falls
#: back to ``BrownianTreeNoiseSampler`` (the ``_gpu`` variants too: the pack draws them on the
#: host, like the CPU ones); ``None``: it takes no ``noise_sampler``, so none can be given.
#: ``tests/test_noise_table.py`` checks every entry against what the function really does.
NOISE_KINDS: dict[str, Optional[str]] = {
    # No noise sampler parameter.
    "sample_euler": None,              # euler, and ddim (ComfyUI runs ddim as euler)
    "sample_euler_cfg_pp": None,       # builds a default one itself (eta 0): cannot be given one
    "sample_heun": None,
    "sample_heunpp2": None,
    "sample_dpm_2": None,
    "sample_lms": None,
    "dpm_fast_function": None,         # comfy.samplers' wrapper; builds a default one itself (eta 0)
    "sample_dpmpp_2m": None,
    "sample_dpmpp_2m_cfg_pp": None,
    "sample_ipndm": None,
    "sample_ipndm_v": None,
    "sample_deis": None,
    "sample_gradient_estimation": None,
    "sample_gradient_estimation_cfg_pp": None,
    "sample_unipc": None,
    "sample_unipc_bh2": None,
    "sample_lcm_upscale": None,        # comfy_extras: draws randn_like on the device itself
    "sample_euler_pp": None,           # comfy_extras
    # default_noise_sampler.
    "sample_euler_ancestral": "default",
    "sample_euler_ancestral_cfg_pp": "default",
    "sample_dpm_2_ancestral": "default",
    "dpm_adaptive_function": "default",  # comfy.samplers' wrapper: passes **extra_options on
    "sample_dpmpp_2s_ancestral": "default",
    "sample_dpmpp_2s_ancestral_cfg_pp": "default",
    "sample_ddpm": "default",
    "sample_lcm": "default",
    "sample_res_multistep": "default",
    "sample_res_multistep_cfg_pp": "default",
    "sample_res_multistep_ancestral": "default",
    "sample_res_multistep_ancestral_cfg_pp": "default",
    "sample_er_sde": "default",
    "sample_seeds_2": "default",
    "sample_seeds_3": "default",
    "sample_sa_solver": "default",
    "sample_sa_solver_pece": "default",
    # BrownianTreeNoiseSampler.
    "sample_dpmpp_sde": "brownian",
    "sample_dpmpp_sde_gpu": "brownian",
    "sample_dpmpp_2m_sde": "brownian",
    "sample_dpmpp_2m_sde_gpu": "brownian",
    "sample_dpmpp_2m_sde_heun": "brownian",  # no tree in its own body: 2m_sde builds it
    "sample_dpmpp_2m_sde_heun_gpu": "brownian",
    "sample_dpmpp_3m_sde": "brownian",
    "sample_dpmpp_3m_sde_gpu": "brownian",
}

#: Modules whose sampler functions the table describes; a same-named function elsewhere is unknown.
COMFY_MODULE_PREFIXES = ("comfy.", "comfy_extras.")

#: Unknown sampler functions already named in the log (once each).
_UNKNOWN_LOGGED: set[str] = set()


def noise_kind(sampler_function: Callable, probe: Optional[Callable[[Callable], "NoiseProbe"]] = None) -> Optional[str]:
    """'brownian', 'default' or None (give the sampler no noise sampler).

    With ``probe`` (the running ComfyUI's sampler run on a tiny CPU latent, see
    :mod:`tpu_runtime.comfyui.sampler_probe`), what the sampler really builds decides: a table entry that
    disagrees with it (a ComfyUI that changed the sampler) is said once and the probe wins, and a sampler
    the table does not know gets the noise it would build itself, so its draws are a CPU run's. Where the
    probe cannot run the sampler, and without one, :data:`NOISE_KINDS` decides, and a sampler it does not
    know gets host default noise when it declares a ``noise_sampler`` parameter: left without one, a sampler
    that falls back to ComfyUI's ``default_noise_sampler`` fails on XLA (no device generator), and
    independent Gaussian draws are valid noise for any sampler (only bit-parity with a CPU run is lost). One
    that declares none gets nothing: passing it an unknown keyword would raise. Each decision about a
    sampler outside the table, or against it, is logged once per function.
    """
    name = getattr(sampler_function, "__name__", None)
    module = getattr(sampler_function, "__module__", None) or ""
    label = f"{module}.{name}" if name else repr(sampler_function)
    in_table = name in NOISE_KINDS and module.startswith(COMFY_MODULE_PREFIXES)
    probed = probe(sampler_function) if probe is not None else None
    if probed is not None and not probed.error:
        if in_table and probed.kind == NOISE_KINDS[name]:
            return probed.kind
        if label not in _UNKNOWN_LOGGED:
            _UNKNOWN_LOGGED.add(label)
            if in_table:
                log.warning("comfy-tpu: ComfyUI's sampler %s draws %s noise, not %s as in the pack's table "
                            "(checked on ComfyUI 0.3.75): it gets what it draws now", label,
                            probed.kind or "no", NOISE_KINDS[name] or "no")
            else:
                log.info("comfy-tpu: sampler %s is not in the pack's noise table; probed on the CPU: it gets %s",
                         label, f"host {probed.kind} noise, as it draws itself" if probed.kind else "no noise sampler")
        return probed.kind
    if in_table:
        return NOISE_KINDS[name]
    takes = takes_noise_sampler(sampler_function)
    if label not in _UNKNOWN_LOGGED:
        _UNKNOWN_LOGGED.add(label)
        reason = f" (the probe could not run it: {probed.error})" if probed is not None else ""
        if takes:
            log.warning("comfy-tpu: sampler %s is not in the pack's noise table%s: it gets host default noise "
                        "(valid noise, though not bit-identical to a CPU run if it draws a Brownian tree)", label,
                        reason)
        else:
            log.info("comfy-tpu: sampler %s is not in the pack's noise table and takes no noise_sampler%s: "
                     "none is given", label, reason)
    return "default" if takes else None
