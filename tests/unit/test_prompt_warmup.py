"""The ``tpu_warmup`` block of ``POST /prompt``: where it is found, what is accepted, errors by field."""
from __future__ import annotations

import threading

import pytest

from tpu_runtime.cache.prompt_warmup import PendingWarmups, TPUWarmupRequest, WarmupBlockError, find_block, parse_block

VALID = {"enabled": True, "target_resolution": [1024, 768], "batch_size": 2}


def test_the_block_is_found_at_the_top_level_or_in_extra_data():
    assert find_block({"tpu_warmup": VALID}) is VALID
    assert find_block({"extra_data": {"tpu_warmup": VALID}}) is VALID
    assert find_block({"tpu_warmup": VALID, "extra_data": {"tpu_warmup": {}}}) is VALID  # top level first
    assert find_block({"prompt": {}}) is None
    assert find_block({"extra_data": "x"}) is None and find_block(["not", "a", "dict"]) is None


def test_a_valid_block_parses_with_a_tuple_resolution():
    request = parse_block({"tpu_warmup": VALID})
    assert request == TPUWarmupRequest(enabled=True, target_resolution=(1024, 768), batch_size=2)
    assert parse_block({"prompt": {}}) is None
    assert parse_block({"tpu_warmup": {"target_resolution": [64, 64]}}).batch_size == 1  # defaults


@pytest.mark.parametrize("block,field", [
    ({"target_resolution": [100, 64]}, "tpu_warmup.target_resolution"),
    ({"target_resolution": [4, 64]}, "tpu_warmup.target_resolution"),
    ({"target_resolution": [16392, 64]}, "tpu_warmup.target_resolution"),
    ({"target_resolution": [64, 64, 64]}, "tpu_warmup.target_resolution"),
    ({"target_resolution": [64, 64], "batch_size": 0}, "tpu_warmup.batch_size"),
    ({"target_resolution": [64, 64], "batch_size": 65}, "tpu_warmup.batch_size"),
    ({"target_resolution": [64, 64], "batch_size": "2"}, "tpu_warmup.batch_size"),
    ({"enabled": "yes", "target_resolution": [64, 64]}, "tpu_warmup.enabled"),
    ({"enabled": True}, "tpu_warmup.target_resolution"),
    ({"target_resolution": [64, 64], "steps": 3}, "tpu_warmup.steps"),
])
def test_a_malformed_block_names_its_field(block, field):
    with pytest.raises(WarmupBlockError) as error:
        parse_block({"extra_data": {"tpu_warmup": block}})
    assert error.value.field == field and str(error.value).startswith(field + ": ")


def test_a_block_that_is_not_an_object_is_rejected():
    with pytest.raises(WarmupBlockError, match="must be an object"):
        parse_block({"tpu_warmup": [1024, 1024]})


def test_pending_warmups_are_taken_once_per_prompt():
    pending = PendingWarmups()
    request = parse_block({"tpu_warmup": VALID})
    pending.add("p1", request)
    assert pending.take(None) is None
    assert pending.take("p2") is None
    assert pending.take("p1") is request
    assert pending.take("p1") is None


def test_pending_warmups_across_threads():
    pending = PendingWarmups()
    request = parse_block({"tpu_warmup": VALID})
    threads = [threading.Thread(target=pending.add, args=(f"p{i}", request)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(pending.take(f"p{i}") is request for i in range(20))
