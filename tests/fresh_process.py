"""Test modules that count compiles run in a fresh pytest process, with their own cache dir.

torch_xla keeps every graph it compiled for the life of a process: in one shared test process a
module's "0 compiles" can pass because another module compiled the graph first (how a warm-up that
missed graphs went unnoticed). A module marked ``pytestmark = pytest.mark.fresh_process`` is taken
out of the main session and run, with the tests selected from it, by a new ``pytest`` process; the
main session shows it as one item that fails with the child's report.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

IN_CHILD_ENV = "COMFY_TPU_FRESH_PROCESS_CHILD"
MARKER = "fresh_process"
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

    def __init__(self, *, nodeids: list[str], backend: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nodeids = nodeids
        self.backend = backend  # None: the session's own (COMFY_TPU_BACKEND or the default)
        self.child_output = ""

    def runtest(self) -> None:
        if self.backend == "torchax" and importlib.util.find_spec("torchax") is None:
            pytest.skip("torchax is not installed (make setup installs the comfy-tpu[torchax] extra)")
        env = {**os.environ, IN_CHILD_ENV: "1",
               "COMFY_TPU_CACHE_DIR": tempfile.mkdtemp(prefix="comfy-tpu-fresh-cache-")}
        if self.backend is not None:
            env["COMFY_TPU_BACKEND"] = self.backend
        root = Path(self.config.rootpath)
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "--tb=short", "--show-capture=no",
                              "-p", "no:cacheprovider", *self.nodeids],
                             cwd=root, env=env, capture_output=True, text=True)
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
    """Replace the marked modules' items by one :class:`FreshProcessModule` each (in place)."""
    if in_child():
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
        if module_items[0].get_closest_marker(BOTH_BACKENDS_MARKER) and "COMFY_TPU_BACKEND" not in os.environ:
            # Another backend may generate other parameters (torchax runs only replay execution): its child
            # is given the selected test functions, whose parameters it generates itself.
            functions = list(dict.fromkeys(nodeid.split("[", 1)[0] for nodeid in nodeids))
            for backend in BACKENDS:
                kept.append(FreshProcessModule.from_parent(parent, name=f"{path.stem}[fresh process, {backend}]",
                                                           nodeids=nodeids if backend == BACKENDS[0] else functions,
                                                           backend=backend))
        else:
            kept.append(FreshProcessModule.from_parent(parent, name=f"{path.stem}[fresh process]", nodeids=nodeids))
    items[:] = kept
