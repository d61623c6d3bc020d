"""A warm-up covers every graph its signature's runs use, proven in fresh processes (one per sampler):
after it, runs at other step counts, schedulers, seeds and cfg values, img2img, a size in the same
padding bucket and a script's call outside inference mode compile nothing."""
from __future__ import annotations

import pytest

from tests.child import run_child

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc"]
#: Also in the compat layer (`make test-compat`): a sampler that draws noise (seeded as the running ComfyUI seeds it).
COMPAT_SAMPLERS = {"euler_ancestral"}


@pytest.mark.parametrize("sampler", [pytest.param(sampler, marks=pytest.mark.compat) if sampler in COMPAT_SAMPLERS
                                     else sampler for sampler in SAMPLERS])
def test_after_a_warmup_nothing_compiles(sampler):
    result = run_child("cases_warmup:coverage", sampler=sampler)
    warm = result["warmup"]
    # graphs_compiled counts every graph the warm-up compiled in this fresh process
    assert warm["graphs"] > 0 and warm["graphs"] == warm["process_compiles"], warm
    compiled = {case: figures for case, figures in result["runs"].items() if figures["compiles"]}
    assert not compiled, f"{sampler}: compiled after the warm-up: {compiled}"
    for case, figures in result["runs"].items():
        assert figures["transfers"] == 1, (case, figures)


def test_a_batch_2_warmup_covers_batch_2_runs():
    result = run_child("cases_warmup:coverage", sampler="dpmpp_2m", batch=2)
    compiled = {case: figures for case, figures in result["runs"].items() if figures["compiles"]}
    assert not compiled, compiled
