"""After a restart, a VAE's first call compiles the shapes it compiled in earlier sessions (issue 29's
re-warm): the diffusion model's re-warm knows no VAE, so the VAE's own shapes are kept in the cache dir
(``cache/part_shapes.py``) and compiled at its first use. Two fresh processes, one cache dir.
"""
from __future__ import annotations

import tempfile

import pytest

from tests.child import run_child

#: Also in the compat layer (`make test-compat`, ComfyUI 0.33.0).
pytestmark = pytest.mark.compat

#: Wan 2.1's causal video VAE (tiny): one latent frame at two sizes.
SMALL, WIDE = [1, 16, 1, 8, 8], [1, 16, 1, 8, 12]
ENV = {"COMFY_TPU_VAE": "device"}


def test_a_restarted_process_compiles_the_recorded_vae_shapes_at_first_use():
    cache = tempfile.mkdtemp(prefix="comfy-tpu-vae-rewarm-")
    first = run_child("cases_vae:vae_shapes_across_restart", cache_dir=cache, env=ENV, timeout=900,
                      latents=[SMALL, WIDE])
    assert all(count >= 1 for count in first["compiles"]) and not first["rewarmed"], first
    restarted = run_child("cases_vae:vae_shapes_across_restart", cache_dir=cache, env=ENV, timeout=900,
                          latents=[SMALL, WIDE, SMALL])
    assert restarted["rewarmed"] == ["comfy-tpu: re-warmed 2 VAE WanVAE shape(s) recorded in earlier sessions"], \
        restarted
    small, wide, again = restarted["compiles"]
    assert small >= 2 and wide == 0 and again == 0, restarted  # both shapes compiled before the first decode
