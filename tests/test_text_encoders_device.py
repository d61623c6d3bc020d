"""T5-XXL and umt5 on the device (issue 29): SD3's (CLIP-L + CLIP-G + T5), Flux's (CLIP-L + T5) and Wan 2.1's
(umt5) text encoders, tiny and with random weights, built from ComfyUI's own classes, in one fresh child.

Each model encodes two prompts of different token lengths (past T5's tokenizer minimum, so the lengths
really differ; SD3's CLIP prompts 3 and 4 chunks) within one length bucket: each encoder's call is one
program, traced and compiled on the first prompt and replayed on the second, which compiles nothing;
each call's result comes back in one transfer; both match ComfyUI's own encode on the host (the padding
to the bucket, masked, changes nothing).
"""
from __future__ import annotations

import pytest

from tests.child import run_child

#: Also in the compat layer (`make test-compat`, ComfyUI 0.33.0).
pytestmark = pytest.mark.compat

TOLERANCE = 1e-4  # fp32 on both sides; the results are of order 1..10
#: Encoder calls per encode: SD3 CLIP-L, CLIP-G and T5; Flux CLIP-L and T5; Wan umt5.
ENCODERS = {"sd3": 3, "flux": 2, "wan21": 1}


@pytest.fixture(scope="module")
def encoded():
    return run_child("cases_text_encoders:t5_encoders", timeout=900, env={"COMFY_TPU_TEXT_ENCODERS": "device"})


@pytest.mark.parametrize("kind", list(ENCODERS))
def test_t5_text_encoders_run_as_programs_per_length_bucket(encoded, kind):
    run = encoded[kind]
    first, second = run["runs"]
    count = ENCODERS[kind]
    assert run["on_device"] == [True] * count, run
    assert first["where"] == second["where"] == "device", run
    assert first["compiles"] >= count and first["transfers"] == count, run
    assert second["compiles"] == 0 and second["transfers"] == count, run
    assert run["programs"] == [{"programs": 1, "traces": 1, "replays": 2}] * count, run
    assert not encoded["lazy"], encoded["lazy"]


@pytest.mark.parametrize("kind", list(ENCODERS))
def test_t5_text_encoders_match_comfyuis_encode_on_the_host(encoded, kind):
    for run in encoded[kind]["runs"]:
        assert run["diff"] and max(run["diff"].values()) <= TOLERANCE, run
        assert run["scale"] > 0.5, "a blank result would prove nothing"
        assert run["cond_device"] == "cpu", run


def test_the_prompts_differ_in_length_within_one_bucket(encoded):
    from tpu_runtime.execution.token_buckets import chunk_bucket, length_bucket

    sd3 = [run["lengths"] for run in encoded["sd3"]["runs"]]
    assert len(sd3[0]["l"]) != len(sd3[1]["l"]) and chunk_bucket(len(sd3[0]["l"])) == chunk_bucket(len(sd3[1]["l"]))
    for kind, key in (("sd3", "t5xxl"), ("flux", "t5xxl"), ("wan21", "umt5xxl")):
        lengths = [run["lengths"][key] for run in encoded[kind]["runs"]]
        lengths = [value[0] if isinstance(value, list) else value for value in lengths]
        assert lengths[0] != lengths[1] and length_bucket(lengths[0]) == length_bucket(lengths[1]), (kind, lengths)
        assert lengths[0] % 128, "a length on a bucket's edge would not be padded"


def test_a_prompt_with_a_textual_inversion_vector_matches_the_host(encoded):
    """Not ids only: ComfyUI's own lookup on the device feeds the program; still one program, no lazy run."""
    run = encoded["wan21_vector"]
    assert run["shape"] == [1, 171, 64] and max(run["diff"].values()) <= TOLERANCE, run
    assert not encoded["lazy"], encoded["lazy"]
