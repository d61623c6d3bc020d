"""Step boundaries and honest progress.

One ``step_boundary`` (``torch_xla.sync``) before each model evaluation cuts the lazy graph so every
step traces the same graph. The host then waits for the *previous* graph only, so tracing step i+1
overlaps the device running step i, and ComfyUI's per-step callbacks (progress bar, interrupt check)
are replayed once the device has really finished that step, not when Python dispatched it.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional


class StepPacer:
    def __init__(self, backend, total_steps: int, wait_every: int = 0, show_bar: bool = False) -> None:
        self._backend = backend
        self._wait_every = wait_every
        self._pending: list[tuple[Optional[Callable], tuple, bool]] = []  # (callback, args, dispatched)
        self.boundaries = 0
        self.host_trace_s = 0.0   # host time between boundaries: tracing the next step's graph
        self.device_wait_s = 0.0  # host time blocked on the device
        self._last = time.perf_counter()
        self._bar = None
        if show_bar:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, desc="comfy-tpu", unit="step")

    def step_callback(self, callback: Optional[Callable]) -> Callable:
        """The callback to give the sampler: it records the step and replays it once it is computed."""
        def record(*args: Any) -> None:
            self._pending.append((callback, args, False))
        return record

    def boundary(self) -> None:
        """Called before each model evaluation."""
        start = time.perf_counter()
        if self.boundaries:
            self.host_trace_s += start - self._last
        self._backend.wait_device()          # graphs dispatched so far are done...
        self.device_wait_s += time.perf_counter() - start
        self._replay(dispatched_only=True)   # ...so the steps they computed can be reported
        self._backend.step_boundary()        # dispatch what was traced since the last boundary
        self._pending = [(cb, args, True) for cb, args, _ in self._pending]
        self.boundaries += 1
        if self._wait_every and self.boundaries % self._wait_every == 0:
            self._backend.wait_device()
            self._replay(dispatched_only=True)
        self._last = time.perf_counter()

    def finish(self) -> None:
        """After the sampler returns: run what is left and report every step."""
        start = time.perf_counter()
        self.host_trace_s += start - self._last
        self._backend.step_boundary()
        self._backend.wait_device()
        self.device_wait_s += time.perf_counter() - start
        self._pending = [(cb, args, True) for cb, args, _ in self._pending]
        self._replay(dispatched_only=True)
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _replay(self, dispatched_only: bool) -> None:
        while self._pending and (self._pending[0][2] or not dispatched_only):
            callback, args, _ = self._pending.pop(0)
            if self._bar is not None:
                self._bar.update(1)
            if callback is not None:
                callback(*args)
