"""A fresh-process module split in N chunks (``tests/fresh_process.py``) runs every test exactly once."""
from __future__ import annotations

import pytest

from tests.fresh_process import chunk_of


@pytest.mark.parametrize("length,count", [(53, 4), (7, 3), (4, 4), (1, 1), (10, 1)])
def test_chunks_partition_the_tests_in_order(length, count):
    items = list(range(length))
    chunks = [chunk_of(items, index, count) for index in range(count)]
    assert sum(chunks, []) == items
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
