"""``make test`` takes its work units longest first (``tests/scope_order.py``), from recorded seconds."""
from __future__ import annotations

import json
from types import SimpleNamespace

from tests.scope_order import UNRECORDED_SECONDS, SecondsRecorder, longest_first, order_items, recorded_seconds
from tests.suite_xla_flags import SUITE_FLAGS, with_suite_flags

CHILD_A = "tests/test_a.py::test_a[fresh process, torch_xla, part 1 of 2]"
CHILD_B = "tests/test_a.py::test_a[fresh process, torch_xla, part 2 of 2]"


def test_a_module_is_one_scope_and_each_child_its_own():
    ids = ["tests/test_m.py::test_1", "tests/test_m.py::test_2", CHILD_A, CHILD_B]
    assert longest_first(ids, {}) == ["tests/test_m.py", CHILD_A, CHILD_B]


def test_scopes_go_longest_first_and_unrecorded_ones_count_as_long():
    ids = ["tests/test_short.py::t", "tests/test_new.py::t", CHILD_A, CHILD_B]
    seconds = {"tests/test_short.py": 5.0, CHILD_A: 300.0, CHILD_B: UNRECORDED_SECONDS + 1}
    assert longest_first(ids, seconds) == [CHILD_A, CHILD_B, "tests/test_new.py", "tests/test_short.py"]


def test_items_keep_their_order_inside_a_scope():
    items = [SimpleNamespace(nodeid=n) for n in ("tests/test_m.py::t1", CHILD_A, "tests/test_m.py::t2")]
    order_items(items, {CHILD_A: 10.0, "tests/test_m.py": 20.0})
    assert [item.nodeid for item in items] == ["tests/test_m.py::t1", "tests/test_m.py::t2", CHILD_A]


def test_the_recorder_sums_a_scopes_phases_and_keeps_other_entries(tmp_path):
    path = tmp_path / "seconds.json"
    path.write_text(json.dumps({"tests/test_other.py": 7.0, CHILD_A: 1.0}))
    recorder = SecondsRecorder(path)
    for duration in (0.5, 30.0, 0.25):  # setup, call, teardown
        recorder.pytest_runtest_logreport(SimpleNamespace(nodeid=CHILD_A, duration=duration))
    recorder.pytest_sessionfinish(None)
    assert recorded_seconds(path) == {CHILD_A: 30.8, "tests/test_other.py": 7.0}
    assert [p.name for p in tmp_path.iterdir()] == ["seconds.json"]  # no temporary file left


def test_a_broken_file_orders_nothing(tmp_path):
    path = tmp_path / "seconds.json"
    path.write_text("{not json")
    assert recorded_seconds(path) == {}
    assert recorded_seconds(tmp_path / "missing.json") == {}


def test_the_suite_flags_are_added_once_and_never_override_a_given_value():
    assert with_suite_flags("") == " ".join(SUITE_FLAGS)
    given = "--xla_force_host_platform_device_count=4"
    assert with_suite_flags(given).split() == [given, *SUITE_FLAGS]
    assert with_suite_flags(with_suite_flags(given)) == with_suite_flags(given)
    assert with_suite_flags("--xla_backend_optimization_level=3") == "--xla_backend_optimization_level=3"
