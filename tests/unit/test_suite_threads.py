"""The thread share each parallel test worker takes (tests/suite_threads.py)."""
from __future__ import annotations

from tests.suite_threads import share_cores_between_workers, threads_per_worker


def test_each_worker_gets_its_share_of_the_cores():
    assert threads_per_worker(2, 2) == 1
    assert threads_per_worker(16, 4) == 4
    assert threads_per_worker(2, 8) == 1  # never zero
    assert threads_per_worker(3, 0) == 3


def test_only_an_xdist_worker_is_limited_and_a_value_set_is_kept(mocker):
    mocker.patch("tests.suite_threads.os.cpu_count", return_value=8)
    serial: dict = {}
    assert share_cores_between_workers(serial) is None and serial == {}
    worker = {"PYTEST_XDIST_WORKER_COUNT": "2"}
    assert share_cores_between_workers(worker) == 4
    assert worker["OMP_NUM_THREADS"] == worker["MKL_NUM_THREADS"] == "4"
    chosen = {"PYTEST_XDIST_WORKER_COUNT": "2", "OMP_NUM_THREADS": "3"}
    assert share_cores_between_workers(chosen) == 3
    assert chosen["OMP_NUM_THREADS"] == "3" and chosen["MKL_NUM_THREADS"] == "4"
