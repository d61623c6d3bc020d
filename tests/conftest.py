"""Fixtures: the real ComfyUI 0.3.75 in-process with the pack loaded on PJRT CPU, tiny models."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.suite_threads import share_cores_between_workers
from tests.suite_xla_flags import with_suite_flags

# Before torch_xla or ComfyUI is imported anywhere in the test process.
os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.setdefault("COMFY_TPU_ENABLE", "1")
os.environ.setdefault("COMFY_TPU_AUTOCAST_BF16", "0")
os.environ.setdefault("COMFY_TPU_CACHE_DIR", tempfile.mkdtemp(prefix="comfy-tpu-test-cache-"))
os.environ["XLA_FLAGS"] = with_suite_flags(os.environ.get("XLA_FLAGS", ""))  # children inherit it

import pytest
import torch

from tests.fresh_process import BOTH_BACKENDS_MARKER, MARKER, in_child, regroup
from tests.scope_order import RECORD_ENV, SecondsRecorder, order_items, recorded_seconds, scope_of

#: Where ``make test`` keeps the snapshot of the user's ComfyUI taken before the first test (see
#: ``comfyui_before``); unset, each test session takes its own.
SNAPSHOT_ENV = "COMFY_TPU_TEST_COMFYUI_SNAPSHOT"


def pytest_configure(config) -> None:
    threads = share_cores_between_workers()  # before any child starts: children inherit it
    if threads:
        torch.set_num_threads(threads)  # torch is imported already (the pack's __init__ imports it)
    config.addinivalue_line("markers", f"{MARKER}: run this module in a fresh pytest process with its own "
                                       "cache dir (it counts compiles)")
    config.addinivalue_line("markers", f"{BOTH_BACKENDS_MARKER}: a {MARKER} module run once per backend "
                                       "(torch_xla, torchax), unless COMFY_TPU_BACKEND names one")
    config.addinivalue_line("markers", "slow: a long test (the soak through the server); in `make test`, "
                                       "left out of `make test-fast`")
    config.addinivalue_line("markers", "compat: also in the compat layer (`make test-compat`: the newest checked "
                                       "ComfyUI, 0.33.0, in its own venv)")
    config.addinivalue_line("markers", "runs_last: run after every other test of the session, to see what "
                                       "the whole suite left behind")
    record = os.environ.get(RECORD_ENV)
    if record and not in_child() and not hasattr(config, "workerinput"):  # the controller only
        config.pluginmanager.register(SecondsRecorder(Path(record)), "comfy-tpu-scope-seconds")


def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N --dist loadscope`` (``make test``): each module's in-process tests stay on one
    worker, so its module-scoped fixtures (most start a child or a server) are made once, not once per
    worker; each fresh-process item (tests/fresh_process.py) is a scope of its own, for whichever worker
    is free. (xdist's ``loadgroup`` marks no longer reach its scheduler on pytest 9.2.) Scopes are taken
    in the collection's order, which ``pytest_collection_modifyitems`` makes longest first (xdist's own
    reorder, by number of tests, put the long one-test children last)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False

    class ModulesAndFreshProcesses(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ModulesAndFreshProcesses(config, log)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: a fresh process runs what was selected
def pytest_collection_modifyitems(session, config, items: list) -> None:
    """Marked modules go to fresh processes; scopes go longest first (tests/scope_order.py); tests marked
    ``runs_last`` go to the end, whatever their file's place in the order."""
    regroup(session, items)
    if not in_child():
        order_items(items, recorded_seconds())
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)  # stable: order kept


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's ``nodes`` module, with the pack loaded and its patches in force."""
    from tests.comfy_env import import_comfy

    return import_comfy(load_pack=True)


@pytest.fixture(scope="session")
def backend(comfy):
    from tpu_runtime import runtime

    state = runtime.current()
    assert state is not None and state.on, state.decision.reason if state else "the pack did not start"
    return state.backend


@pytest.fixture(scope="session")
def tiny(comfy):
    """(XLA patcher, eager-CPU patcher with the same weights, positive, negative)."""
    from bench import tiny_model

    xla = tiny_model.build_patcher("tiny", seed=0)
    cpu = tiny_model.build_patcher("tiny", seed=0, load_device=torch.device("cpu"))
    return xla, cpu, tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)


@pytest.fixture(scope="session", autouse=True)
def comfyui_before():
    """The ComfyUI at ``COMFYUI_PATH`` as the suite found it (None without one), taken before the first
    test, so before any server starts: ``test_server_untouched`` compares against it, last."""
    from tests.comfy_env import comfyui_path
    from tests.comfyui_state import ComfyUIState

    try:
        return ComfyUIState.taken_once(comfyui_path(), os.environ.get(SNAPSHOT_ENV))
    except RuntimeError:  # no ComfyUI: the tests that need one say so themselves
        return None
