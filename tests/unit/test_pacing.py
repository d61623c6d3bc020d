"""``StepPacer``: one graph cut per model evaluation, progress replayed only after the device ran it."""
from __future__ import annotations

from tpu_runtime.execution.pacing import StepPacer
from tests.unit.fake_backend import FakeBackend


def _run_sampler(pacer: StepPacer, backend: FakeBackend, steps: int) -> None:
    """What a sampler does under the pack: a boundary before each model call, then its callback."""
    report = pacer.step_callback(lambda i: backend.events.append(f"callback {i}"))
    for i in range(steps):
        pacer.boundary()
        report(i)
    pacer.finish()


def test_each_boundary_waits_for_the_previous_graphs_then_dispatches(mocker):
    backend = FakeBackend()
    boundary, wait = mocker.spy(backend, "step_boundary"), mocker.spy(backend, "wait_device")
    pacer = StepPacer(backend, total_steps=3)
    for _ in range(3):
        pacer.boundary()
    assert boundary.call_count == 3 and wait.call_count == 3 and pacer.boundaries == 3
    assert backend.events == ["wait_device", "step_boundary"] * 3


def test_a_step_is_reported_once_the_device_has_run_it():
    backend = FakeBackend()
    _run_sampler(StepPacer(backend, total_steps=3), backend, steps=3)
    # Step i's update is traced after boundary i+1, dispatched at boundary i+2 and reported after the
    # wait that follows; the last steps are dispatched and waited for by finish().
    assert backend.events == [
        "wait_device", "step_boundary",                   # step 0's model call
        "wait_device", "step_boundary",                   # step 1's: dispatches step 0's update
        "wait_device", "callback 0", "step_boundary",     # step 2's: step 0 has run
        "step_boundary", "wait_device", "callback 1", "callback 2",  # finish
    ]


def test_wait_every_n_steps_blocks_on_the_device_and_reports(mocker):
    backend = FakeBackend()
    wait = mocker.spy(backend, "wait_device")
    pacer = StepPacer(backend, total_steps=4, wait_every=2)
    for _ in range(4):
        pacer.boundary()
    assert wait.call_count == 4 + 2  # one per boundary, one more every 2nd boundary


def test_finish_reports_every_step_and_none_twice():
    backend = FakeBackend()
    reported = []
    pacer = StepPacer(backend, total_steps=2)
    record = pacer.step_callback(reported.append)
    pacer.boundary()
    record(0)
    pacer.boundary()
    record(1)
    pacer.finish()
    assert reported == [0, 1]
    pacer.close()  # idempotent after finish
    assert reported == [0, 1]


def test_a_sampler_without_callback_still_paces():
    backend = FakeBackend()
    pacer = StepPacer(backend, total_steps=1)
    record = pacer.step_callback(None)
    pacer.boundary()
    record(0)
    pacer.finish()
    assert backend.events == ["wait_device", "step_boundary", "step_boundary", "wait_device"]
    assert pacer.host_trace_s >= 0 and pacer.device_wait_s >= 0
