"""``runtime.start`` builds one state object and hands it on; nothing else holds a copy.

The XLA runtime and ComfyUI are stood in for: a :class:`FakeBackend` (typed against ``Backend``) is
what ``create_backend`` returns, and installing the patches (which needs ComfyUI) is recorded only.
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

from tests.unit.fake_backend import FakeBackend
from tpu_runtime.backends import xla as backend_mod
from tpu_runtime.settings import live as live_settings
from tpu_runtime.comfyui import patches
from tpu_runtime import runtime, state as state_mod
from tpu_runtime.backends.device import SpmdPlan
from tpu_runtime.settings.run_options import OPTIONS_KEY, RunOptions
from tpu_runtime.sampling import padded_shape
from tpu_runtime.settings.tpu_settings import env_var, fields_where


class StartedFakeBackend(FakeBackend):
    """What ``runtime.start`` and ``device.describe`` read of a started backend, beyond the protocol."""

    persistent_cache_dir = None
    spmd = SpmdPlan(on=False, reason="one XLA device")

    def device_count(self) -> int:
        return 1

    def device_attributes(self) -> dict:
        return {}


@contextlib.contextmanager
def no_pack_started():
    """Start from no pack state, and put back the one before (the test process's) after."""
    previous = state_mod.current()
    state_mod.set_current(None)
    try:
        yield
    finally:
        state_mod.set_current(previous)


@pytest.fixture
def started(monkeypatch, mocker, tmp_path):
    """Start the pack with COMFY_TPU_ENABLE=1 on the fake backend; put the previous state back after."""
    for field in fields_where():
        monkeypatch.delenv(env_var(field), raising=False)
    monkeypatch.setenv("COMFY_TPU_ENABLE", "1")
    monkeypatch.setenv("COMFY_TPU_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("COMFY_TPU_SYNC_STEPS", "3")
    fake = StartedFakeBackend()
    create = mocker.patch.object(backend_mod, "create_backend", return_value=fake)
    install = mocker.patch.object(patches, "install", side_effect=lambda s: setattr(s, "patches", mocker.Mock()))
    with no_pack_started():
        yield SimpleNamespace(state=runtime.start(), backend=fake, create=create, install=install)


def test_start_builds_one_state_and_hands_it_on(started):
    state = started.state
    assert state.on and state.backend is started.backend and runtime.current() is state
    started.install.assert_called_once_with(state)
    assert state.observers == [state.manager] and state.manager.state is state
    assert state.options == RunOptions.from_settings(state.settings) and state.options.sync_steps == 3
    assert state.manager.options is state.options  # the manager reads the pack's one set, no copy
    assert runtime.start() is state, "a second start changes nothing"


def test_a_live_change_reaches_the_wrappers_and_the_manager_alike(started):
    state = started.state
    live_settings.change("shape_padding_multiple", 128, source="test")
    assert state.options.shape_padding_multiple == 128 and state.manager.options is state.options
    assert live_settings.current("shape_padding_multiple") == 128


def test_per_model_overrides_reach_the_signature_options(started):
    manager = started.state.manager
    model = SimpleNamespace(model_options={"transformer_options": {OPTIONS_KEY: {"shape_padding_multiple": 128,
                                                                                 "autocast_bf16": False}}})
    options = manager.options_for(model)
    assert (options.shape_padding_multiple, options.autocast_bf16) == (128, False)
    assert padded_shape((1, 4, 17, 17), options) == (1, 4, 32, 32)
    assert padded_shape((1, 4, 17, 17), manager.options_for(SimpleNamespace())) == (1, 4, 24, 24)


def test_stop_uninstalls_and_a_forced_start_reuses_the_backend(started):
    state = started.state
    runtime.stop()
    state.patches.uninstall.assert_called_once_with()
    assert state.observers == []
    again = runtime.start(force=True)
    assert again is not state and again.backend is started.backend
    started.create.assert_called_once()  # the XLA runtime is started once per process


def test_settings_that_keep_the_path_off_start_nothing(monkeypatch, mocker):
    monkeypatch.setenv("COMFY_TPU_DISABLE", "1")
    monkeypatch.delenv("COMFY_TPU_ENABLE", raising=False)
    create = mocker.patch.object(backend_mod, "create_backend")
    with no_pack_started():
        state = runtime.start()
    assert not state.on and state.backend is None and "COMFY_TPU_DISABLE" in state.decision.reason
    create.assert_not_called()


def test_a_backend_that_cannot_start_keeps_the_path_off_with_the_reason(monkeypatch, mocker, tmp_path):
    monkeypatch.setenv("COMFY_TPU_ENABLE", "1")
    monkeypatch.setenv("COMFY_TPU_CACHE_DIR", str(tmp_path))
    mocker.patch.object(backend_mod, "create_backend",
                        side_effect=backend_mod.BackendUnavailable("the XLA runtime did not start: boom"))
    with no_pack_started():
        state = runtime.start()
    assert not state.on and "boom" in state.decision.reason


def test_the_backend_is_chosen_once_a_process_and_a_change_is_said(started, monkeypatch, caplog):
    """COMFY_TPU_BACKEND changed before a forced start: the running backend stays (one per process), and
    the log says to restart."""
    runtime.stop()
    monkeypatch.setenv("COMFY_TPU_BACKEND", "torchax")
    with caplog.at_level("ERROR", logger="comfy_tpu"):
        again = runtime.start(force=True)
    assert again.backend is started.backend and started.create.call_count == 1
    assert any("restart ComfyUI" in r.getMessage() and "torchax" in r.getMessage() for r in caplog.records)


def test_create_backend_passes_the_setting(monkeypatch, mocker, tmp_path):
    for field in fields_where():
        monkeypatch.delenv(env_var(field), raising=False)
    monkeypatch.setenv("COMFY_TPU_ENABLE", "1")
    monkeypatch.setenv("COMFY_TPU_BACKEND", "torchax")
    monkeypatch.setenv("COMFY_TPU_CACHE_DIR", str(tmp_path))
    mocker.patch.object(runtime, "detect", side_effect=lambda backend="torch_xla": _detected(backend))
    create = mocker.patch.object(backend_mod, "create_backend", return_value=StartedFakeBackend())
    mocker.patch.object(patches, "install", side_effect=lambda s: setattr(s, "patches", mocker.Mock()))
    with no_pack_started():
        runtime.start()
    cache_dir, _, name = create.call_args.args
    assert name == "torchax" and "/jax/" in cache_dir


def _detected(backend: str):
    from tpu_runtime.backends.device import DeviceReport

    return DeviceReport(torch_version="2.9.0", torch_xla_version=None, libtpu_version=None,
                        torch_xla_importable=False, backend=backend)
