"""Per-run figures from XLA's own counters (exact, unlike wall-clock time)."""
from __future__ import annotations

import time

from pydantic import BaseModel


class RunFigures(BaseModel):
    """What one sampling run cost on the device."""

    wall_s: float = 0.0
    compiles: int = 0
    compile_s: float = 0.0
    #: The part of ``compile_s`` spent on the diffusion model's own programs (replay execution): what
    #: a run of another sampler with the same model and shapes does not compile again.
    model_program_compile_s: float = 0.0
    executions: int = 0
    transfers_to_host: int = 0
    fallback_ops: dict[str, int] = {}
    model_calls: int = 0
    host_trace_s: float = 0.0   # host time spent tracing graphs between step boundaries
    device_wait_s: float = 0.0  # host time blocked waiting for the device

    def without(self, part: "RunFigures") -> "RunFigures":
        """These figures less a span inside them (the model load, which is not the sampling run's)."""
        fallbacks = {op: n - part.fallback_ops.get(op, 0) for op, n in self.fallback_ops.items()
                     if n > part.fallback_ops.get(op, 0)}
        return self.model_copy(update={
            "compiles": self.compiles - part.compiles, "compile_s": max(self.compile_s - part.compile_s, 0.0),
            "executions": self.executions - part.executions,
            "transfers_to_host": self.transfers_to_host - part.transfers_to_host, "fallback_ops": fallbacks})


class RunMeter:
    """Snapshot the backend's counters at start, diff them at stop."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self._start_counters = backend.counters()
        self._start_fallbacks = backend.fallback_ops()
        self._start_compile_s = backend.compile_seconds()
        self._t0 = time.perf_counter()

    def stop(self) -> RunFigures:
        counters = self._backend.counters()
        fallbacks = self._backend.fallback_ops()
        new_fallbacks = {name: count - self._start_fallbacks.get(name, 0) for name, count in fallbacks.items()
                         if count > self._start_fallbacks.get(name, 0)}
        return RunFigures(
            wall_s=time.perf_counter() - self._t0,
            compiles=counters["compiles"] - self._start_counters["compiles"],
            compile_s=self._backend.compile_seconds() - self._start_compile_s,
            executions=counters["executions"] - self._start_counters["executions"],
            transfers_to_host=counters["transfers_to_host"] - self._start_counters["transfers_to_host"],
            fallback_ops=new_fallbacks,
        )
