"""The XLA flags every process of the suite runs with.

XLA:CPU's LLVM backend at -O0: the suite's programs are tiny, so most of a compile is LLVM's
optimisation of code that then runs for milliseconds (measured: a child module's CPU time 118 -> 83 s).
The programs XLA builds, the compile and execution counts, the transfers and the results the tests assert
on are the same; only the machine code is less optimised. Benchmarks and ``make demo`` keep XLA's default.
"""
from __future__ import annotations

SUITE_FLAGS = ("--xla_backend_optimization_level=0",)
#: For a child whose test compares compile seconds of a big program with those of small ones: XLA's
#: default level (3), where the big program's LLVM time is what a user's compile has (at -O0 the model's
#: compile shrinks more than a small graph's fixed cost).
DEFAULT_OPTIMIZATION = {"XLA_FLAGS": "--xla_backend_optimization_level=3"}


def with_suite_flags(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the suite's flags appended where it does not set them."""
    given = flags.split()
    names = {flag.split("=", 1)[0] for flag in given}
    return " ".join(given + [flag for flag in SUITE_FLAGS if flag.split("=", 1)[0] not in names])
