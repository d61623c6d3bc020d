"""After a restart, a text encoder's first call compiles the calls it compiled in earlier sessions (issue 29's
re-warm): their programs are keyed by options and token buckets known only when ComfyUI calls, so each
compiled call's form is kept in the cache dir (``cache/part_shapes.py``, ``cache/call_form.py``) and made
again at the encoder's first use. Two fresh processes, one cache dir: Flux's (CLIP-L + T5) and SD3's
(CLIP-L + CLIP-G + T5) tiny encoders, built from ComfyUI's own classes. Under torchax JAX's persistent
cache already serves every program after a restart (counted: cache hits, 0 compiles); the re-warm there
only loads them at the first call.
"""
from __future__ import annotations

import importlib.util
import tempfile

import pytest

from tests.child import run_child

#: Bucket A: one CLIP chunk, T5 at its tokenizer's minimum (Flux 256, SD3 77 -> 128); bucket B: 4 CLIP
#: chunks, T5 301 tokens (-> 384).
BUCKET_A, BUCKET_B = "a photo of a cat", "cat " * 300
KINDS = ["flux", "sd3"]
TOLERANCE = 1e-4  # fp32 on both sides
ENV = {"COMFY_TPU_TEXT_ENCODERS": "device"}


@pytest.fixture(scope="module")
def restart():
    cache = tempfile.mkdtemp(prefix="comfy-tpu-te-rewarm-")
    first = run_child("cases_text_encoders:encoders_across_restart", cache_dir=cache, env=ENV, timeout=900,
                      kinds=KINDS, prompts=[BUCKET_A, BUCKET_B])
    second = run_child("cases_text_encoders:encoders_across_restart", cache_dir=cache, env=ENV, timeout=900,
                       kinds=KINDS, prompts=[BUCKET_A, BUCKET_B])
    return first, second


@pytest.mark.parametrize("kind", KINDS)
def test_a_restarted_process_compiles_nothing_for_a_prompt_in_another_recorded_bucket(restart, kind):
    first, second = restart
    (a1, b1), (a2, b2) = first[kind], second[kind]
    assert a1["compiles"] >= 1 and b1["compiles"] >= 1, first  # each bucket compiled in the first process
    assert not first["rewarm_log"], first["rewarm_log"]
    assert a2["compiles"] >= 1, second  # the re-warm, at the encoders' first call
    assert b2["compiles"] == 0, second
    assert not any("failed" in line for line in second["rewarm_log"]), second["rewarm_log"]
    assert any(line.startswith("comfy-tpu: re-warmed") for line in second["rewarm_log"]), second["rewarm_log"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_rewarmed_encoders_match_comfyuis_encode_on_the_host(restart, kind):
    for run in restart[1][kind]:
        assert run["diff"] and max(run["diff"].values()) <= TOLERANCE, run
        assert run["scale"] > 0.5, "a blank result would prove nothing"


@pytest.mark.skipif(importlib.util.find_spec("torchax") is None, reason="torchax is not installed")
def test_under_torchax_jaxs_persistent_cache_serves_every_encoder_program_after_a_restart():
    cache = tempfile.mkdtemp(prefix="comfy-tpu-te-rewarm-torchax-")
    env = {**ENV, "COMFY_TPU_BACKEND": "torchax"}
    first = run_child("cases_text_encoders:encoders_across_restart", cache_dir=cache, env=env, timeout=900,
                      kinds=["flux"], prompts=[BUCKET_A, BUCKET_B])
    second = run_child("cases_text_encoders:encoders_across_restart", cache_dir=cache, env=env, timeout=900,
                       kinds=["flux"], prompts=[BUCKET_A, BUCKET_B])
    (a1, b1), (a2, b2) = first["flux"], second["flux"]
    assert a1["compiles"] == b1["compiles"] == 2 and a1["cache_hits"] == b1["cache_hits"] == 0, first  # CLIP-L, T5
    # The restart's first call loads both buckets' 2 programs from JAX's cache (the re-warm asks for them).
    assert a2["compiles"] == 0 and a2["cache_hits"] == 4, second
    assert b2["compiles"] == 0 and b2["cache_hits"] == 0, second
    assert not any("failed" in line for line in second["rewarm_log"]), second["rewarm_log"]
    for run in (a2, b2):
        assert max(run["diff"].values()) <= TOLERANCE and run["scale"] > 0.5, run
