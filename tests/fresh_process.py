"""Test modules that count compiles run in a fresh pytest process, with their own cache dir.

torch_xla keeps every graph it compiled for the life of a process: in one shared test process a
module's "0 compiles" can pass because another module compiled the graph first (how a warm-up that
missed graphs went unnoticed). A module marked ``pytestmark = pytest.mark.fresh_process`` is taken
out of the main session and run, with the tests selected from it, by a new ``pytest`` process; the
main session shows it as one item that fails with the child's report.

``pytest.mark.fresh_process(chunks=N)`` splits a long module's tests over N children (each its own
fresh process and cache dir, so each count is as strict as before: no test relies on another having
compiled first), which ``pytest -n`` (xdist) then runs side by side. A child keeps chunk ``i`` of ``N``
of the tests it collected, in their final order (module-scoped parameters stay together).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

from tests.zygote import run_python

IN_CHILD_ENV = "COMFY_TPU_FRESH_PROCESS_CHILD"
CHUNK_ENV = "COMFY_TPU_FRESH_PROCESS_CHUNK"  # "i/N": the child keeps the i-th of N slices of its tests
MARKER = "fresh_process"
FRESH_PROCESS_ID = "[fresh process"  # in the name of every item this module makes
#: A fresh-process module also marked so runs once per backend: its child gets COMFY_TPU_BACKEND.
BOTH_BACKENDS_MARKER = "both_backends"
BACKENDS = ("torch_xla", "torchax")


def selected_backends() -> tuple[str, ...]:
    """The backend COMFY_TPU_BACKEND names (the compat layer runs one), else both."""
    named = os.environ.get("COMFY_TPU_BACKEND", "").strip().lower()
    return (named,) if named else BACKENDS


def in_child() -> bool:
    return os.environ.get(IN_CHILD_ENV) == "1"


class FreshProcessModule(pytest.Item):
    """One test module run by a child pytest process."""

    def __init__(self, *, nodeids: list[str], backend: Optional[str] = None, chunk: Optional[tuple[int, int]] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.nodeids = nodeids
        self.backend = backend  # None: the session's own (COMFY_TPU_BACKEND or the default)
        self.chunk = chunk  # (i, N): the child runs the i-th of N slices of what it collects
        self.child_output = ""

    def runtest(self) -> None:
        if self.backend == "torchax" and importlib.util.find_spec("torchax") is None:
            pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
        with tempfile.TemporaryDirectory(prefix="comfy-tpu-fresh-cache-", ignore_cleanup_errors=True) as cache:
            env = {**os.environ, IN_CHILD_ENV: "1", "COMFY_TPU_CACHE_DIR": cache}
            if self.backend is not None:
                env["COMFY_TPU_BACKEND"] = self.backend
            if self.chunk is not None:
                env[CHUNK_ENV] = f"{self.chunk[0]}/{self.chunk[1]}"
            root = Path(self.config.rootpath)
            out = run_python([sys.executable, "-m", "pytest", "-q", "-ra", "--tb=short", "--show-capture=no",
                              "-p", "no:cacheprovider", *self.nodeids], cwd=str(root), env=env)
        self.child_output = out.stdout + out.stderr
        summary = self.child_output.strip().splitlines()[-1:] or ["(no output)"]
        self.add_report_section("call", "fresh process", summary[0])
        if out.returncode != 0:
            raise ChildModuleFailed(self.child_output)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ChildModuleFailed):
            return f"{len(self.nodeids)} test(s) in a fresh process failed:\n{excinfo.value.args[0][-12000:]}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.name} ({len(self.nodeids)} tests in a fresh process)"


class ChildModuleFailed(AssertionError):
    pass


def regroup(session: pytest.Session, items: list[pytest.Item]) -> None:
    """Replace the marked modules' items by :class:`FreshProcessModule` items (in place): one per module,
    backend and chunk."""
    if in_child():
        keep_chunk(items)
        return
    by_module: dict[Path, list[pytest.Item]] = {}
    kept: list[pytest.Item] = []
    for item in items:
        if item.get_closest_marker(MARKER):
            by_module.setdefault(item.path, []).append(item)
        else:
            kept.append(item)
    for path, module_items in by_module.items():
        parent = module_items[0].getparent(pytest.Module)
        nodeids = [item.nodeid for item in module_items]
        chunks = max(1, min(int(module_items[0].get_closest_marker(MARKER).kwargs.get("chunks", 1)), len(nodeids)))
        if module_items[0].get_closest_marker(BOTH_BACKENDS_MARKER) and "COMFY_TPU_BACKEND" not in os.environ:
            # Another backend may generate other parameters (torchax runs only replay execution): its child
            # is given the selected test functions, whose parameters it generates itself.
            functions = list(dict.fromkeys(nodeid.split("[", 1)[0] for nodeid in nodeids))
            runs = [(backend, nodeids if backend == BACKENDS[0] else functions) for backend in BACKENDS]
        else:
            runs = [(None, nodeids)]
        for backend, ids in runs:
            for index in range(chunks):
                label = ", ".join(part for part in (FRESH_PROCESS_ID[1:], backend,
                                                    f"part {index + 1} of {chunks}" if chunks > 1 else None) if part)
                kept.append(FreshProcessModule.from_parent(parent, name=f"{path.stem}[{label}]", nodeids=ids,
                                                           backend=backend,
                                                           chunk=(index, chunks) if chunks > 1 else None))
    # Children first: they are the longest items, so under xdist they start while the rest fills in.
    items[:] = [item for item in kept if isinstance(item, FreshProcessModule)] + \
               [item for item in kept if not isinstance(item, FreshProcessModule)]


def chunk_of(items: list, index: int, count: int) -> list:
    """The ``index``-th of ``count`` contiguous, near-equal slices of ``items``."""
    size, extra = divmod(len(items), count)
    start = index * size + min(index, extra)
    return items[start:start + size + (1 if index < extra else 0)]


def keep_chunk(items: list[pytest.Item]) -> None:
    """In a child given a chunk (``CHUNK_ENV``), keep only that slice of the collected tests."""
    spec = os.environ.get(CHUNK_ENV, "")
    if not spec:
        return
    index, count = (int(part) for part in spec.split("/"))
    items[:] = chunk_of(items, index, count)
