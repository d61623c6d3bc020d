"""Longest scopes first: the order ``make test``'s workers take the suite's work units in.

Under ``pytest -n N --dist loadscope`` a worker takes one scope (a module's in-process tests, or one
fresh-process child) at a time, in the order of the collection. A long child taken last leaves the other
workers idle while it runs (measured: the four sampling-path children, 145-325 s each, started last), so
scopes go longest first, by the seconds each took in a recorded run (``scope_seconds.json``, refreshed by
running the suite with ``COMFY_TPU_TEST_RECORD_SECONDS=<file>`` and copying the file over it). A scope
with no record counts as ``UNRECORDED_SECONDS``: a new child is more likely long than short.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from tests.fresh_process import FRESH_PROCESS_ID

SECONDS_FILE = Path(__file__).with_name("scope_seconds.json")
RECORD_ENV = "COMFY_TPU_TEST_RECORD_SECONDS"
UNRECORDED_SECONDS = 90.0


def scope_of(nodeid: str) -> str:
    """The unit a worker takes: a fresh-process child alone, else the whole module."""
    return nodeid if FRESH_PROCESS_ID in nodeid else nodeid.split("::", 1)[0]


def recorded_seconds(path: Path = SECONDS_FILE) -> dict[str, float]:
    """The recorded seconds per scope; none when the file is missing or unreadable (order stays as is)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(scope): float(seconds) for scope, seconds in data.items()} if isinstance(data, dict) else {}


def longest_first(nodeids: Iterable[str], seconds: Mapping[str, float]) -> list[str]:
    """The scopes of ``nodeids`` (first-seen order) sorted by seconds, longest first; ties keep their order."""
    scopes = list(dict.fromkeys(scope_of(nodeid) for nodeid in nodeids))
    return sorted(scopes, key=lambda scope: -seconds.get(scope, UNRECORDED_SECONDS))


def order_items(items: list, seconds: Mapping[str, float]) -> None:
    """Reorder ``items`` (in place) scope by scope, longest scope first; items keep their order in a scope."""
    rank = {scope: index for index, scope in enumerate(longest_first((item.nodeid for item in items), seconds))}
    items.sort(key=lambda item: rank[scope_of(item.nodeid)])


class SecondsRecorder:
    """A pytest plugin (the controller's, under xdist) that sums each scope's setup, call and teardown
    seconds and, at the end, writes them over the entries of the file at ``path`` (atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report) -> None:
        scope = scope_of(report.nodeid)
        self.seconds[scope] = self.seconds.get(scope, 0.0) + float(report.duration)

    def pytest_sessionfinish(self, session) -> None:
        if not self.seconds:
            return
        merged = {**recorded_seconds(self.path), **{scope: round(s, 1) for scope, s in self.seconds.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(dict(sorted(merged.items(), key=lambda kv: -kv[1])), out, indent=1)
            out.write("\n")
        os.replace(tmp, self.path)
