"""Every COMFY_TPU_* variable is parsed and validated; bad values are named, never raised."""
from __future__ import annotations

import json

import pytest

from tpu_runtime.backends.device import PathDecision, DeviceReport, decide_path
from tpu_runtime.settings.tpu_settings import TPUSettings, env_var, load_settings

BOOL_FIELDS = ["enable", "disable", "warmup", "rewarm", "manual_warmup", "autocast_bf16", "compilation_cache",
               "shape_padding", "debug_metrics"]
BAD_VALUES = {
    **{field: ["maybe", "2"] for field in BOOL_FIELDS},
    "warmup_steps": ["0", "many"],
    "shape_padding_multiple": ["12", "-64"],
    "sync_steps": ["-1", "often"],
    "execution": ["eager", "COMPILED ", "jit"],
    "compiled_graph_break_limit": ["-1", "some"],
    "conv_kernel_layout": ["oihw", "nhwc", "yes"],
    "spmd": ["maybe", "2", "yes"],
    "mesh": ["model=4", "data=0", "data", "data=2,data=2", "data=four"],
    "vae": ["gpu", "on", "tpu"],
    "text_encoders": ["cpu", "1"],
}
GOOD_VALUES = {
    "warmup_steps": ("4", 4), "shape_padding_multiple": ("128", 128), "sync_steps": ("3", 3),
    "cache_dir": ("/tmp/ct", "/tmp/ct"), "enable": ("yes", True), "disable": ("on", True),
    "manual_warmup": ("true", True), "rewarm": ("off", False), "debug_metrics": ("1", True), "warmup": ("no", False),
    "autocast_bf16": ("off", False), "compilation_cache": ("0", False), "shape_padding": ("false", False),
    "execution": ("compiled", "compiled"), "compiled_graph_break_limit": ("3", 3),
    "conv_kernel_layout": ("native", "native"),
    "spmd": ("OFF", "off"), "mesh": (" data = 4 , model=2", "data=4,model=2"),
    "vae": (" Host", "host"), "text_encoders": ("Device", "device"),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for field in TPUSettings.model_fields:
        monkeypatch.delenv(env_var(field), raising=False)
    monkeypatch.delenv("COMFY_TPU_SETTINGS_FILE", raising=False)


def test_defaults_match_the_documented_table():
    loaded = load_settings()
    assert loaded.ok
    s = loaded.settings
    assert (s.enable, s.disable, s.warmup, s.warmup_steps, s.manual_warmup, s.autocast_bf16, s.compilation_cache,
            s.shape_padding, s.shape_padding_multiple, s.debug_metrics, s.sync_steps, s.cache_dir, s.execution,
            s.compiled_graph_break_limit) == (
        None, False, True, 1, False, True, True, True, 64, False, 0, None, "replay", 0)
    assert s.non_defaults() == {}
    assert (s.spmd, s.mesh, s.conv_kernel_layout, s.rewarm) == ("auto", None, "auto", True)
    assert (s.vae, s.text_encoders) == ("auto", "auto")


@pytest.mark.parametrize("field,value", [(f, v) for f, values in BAD_VALUES.items() for v in values])
def test_bad_value_is_named_with_what_is_accepted(monkeypatch, field, value):
    monkeypatch.setenv(env_var(field), value)
    loaded = load_settings()
    assert not loaded.ok
    message = loaded.problems[0].message()
    assert env_var(field) in message and repr(value) in message and "expected" in message
    decision, _ = decide_path(loaded, lambda: pytest.fail("must not probe the device"))
    assert not decision.on and env_var(field) in decision.reason


@pytest.mark.parametrize("field", sorted(GOOD_VALUES))
def test_good_value_is_parsed(monkeypatch, field):
    raw, expected = GOOD_VALUES[field]
    monkeypatch.setenv(env_var(field), raw)
    loaded = load_settings()
    assert loaded.ok, loaded.problems
    value = getattr(loaded.settings, field)
    assert (str(value) if field == "cache_dir" else value) == expected
    assert field in loaded.settings.non_defaults()


def test_enable_and_disable_together_is_refused(monkeypatch):
    monkeypatch.setenv("COMFY_TPU_ENABLE", "1")
    monkeypatch.setenv("COMFY_TPU_DISABLE", "1")
    loaded = load_settings()
    assert not loaded.ok and "COMFY_TPU_ENABLE and COMFY_TPU_DISABLE" in loaded.problems[0].message()


def test_settings_file_is_read_and_env_wins(monkeypatch, tmp_path):
    path = tmp_path / "tpu.json"
    path.write_text(json.dumps({"warmup_steps": 3, "COMFY_TPU_SYNC_STEPS": 2}))
    monkeypatch.setenv("COMFY_TPU_SETTINGS_FILE", str(path))
    monkeypatch.setenv("COMFY_TPU_SYNC_STEPS", "5")
    loaded = load_settings()
    assert loaded.ok and loaded.settings.warmup_steps == 3 and loaded.settings.sync_steps == 5


def test_toml_settings_file(monkeypatch, tmp_path):
    path = tmp_path / "tpu.toml"
    path.write_text("warmup = false\nshape_padding_multiple = 128\n")
    monkeypatch.setenv("COMFY_TPU_SETTINGS_FILE", str(path))
    loaded = load_settings()
    assert loaded.ok and loaded.settings.warmup is False and loaded.settings.shape_padding_multiple == 128


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_broken_settings_file_is_named(monkeypatch, tmp_path, content):
    path = tmp_path / "tpu.json"
    path.write_text(content)
    monkeypatch.setenv("COMFY_TPU_SETTINGS_FILE", str(path))
    loaded = load_settings()
    assert not loaded.ok and "COMFY_TPU_SETTINGS_FILE" in loaded.problems[0].message() and str(path) in \
        loaded.problems[0].message()


def test_missing_settings_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("COMFY_TPU_SETTINGS_FILE", str(tmp_path / "nope.json"))
    loaded = load_settings()
    assert not loaded.ok and "nope.json" in loaded.problems[0].message()


def _report(device_type: str = "CPU", error=None) -> DeviceReport:
    return DeviceReport(torch_version="2.9.0", torch_xla_version="2.9.0", libtpu_version=None,
                        torch_xla_importable=True, device="xla:0", device_type=device_type, device_count=1,
                        error=error)


def test_path_decisions(monkeypatch):
    monkeypatch.setenv("COMFY_TPU_DISABLE", "1")
    assert decide_path(load_settings(), lambda: pytest.fail("no probe when disabled"))[0] == PathDecision(
        on=False, reason="disabled by COMFY_TPU_DISABLE")
    monkeypatch.delenv("COMFY_TPU_DISABLE")
    monkeypatch.setenv("COMFY_TPU_ENABLE", "1")
    assert decide_path(load_settings(), lambda: _report("CPU"))[0].on
    off = decide_path(load_settings(), lambda: _report(error="torch_xla is not installed"))[0]
    assert not off.on and "torch_xla is not installed" in off.reason
    monkeypatch.delenv("COMFY_TPU_ENABLE")
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    assert decide_path(load_settings(), lambda: _report("TPU"))[0].on
    assert not decide_path(load_settings(), lambda: _report("CPU"))[0].on
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    auto = decide_path(load_settings(), lambda: pytest.fail("auto mode with no TPU runtime must not probe"))[0]
    assert not auto.on and "COMFY_TPU_ENABLE=1" in auto.reason


# -- SPMD: the mode and mesh meet the device count (pure; the sampling itself is in test_spmd.py) --
def test_spmd_auto_turns_on_with_several_devices_over_one_data_axis():
    from tpu_runtime.backends.device import plan_spmd

    plan = plan_spmd("auto", None, 8)
    assert plan.on and plan.mesh == "data=8" and plan.axes == {"data": 8} and not plan.problems
    assert not plan_spmd("auto", None, 1).on and not plan_spmd("auto", None, 1).problems
    assert not plan_spmd("off", None, 8).on and "COMFY_TPU_SPMD=off" in plan_spmd("off", None, 8).reason


def test_spmd_on_with_one_device_says_so_and_runs_on_one():
    from tpu_runtime.backends.device import plan_spmd

    plan = plan_spmd("on", None, 1)
    assert not plan.on and "COMFY_TPU_SPMD=on" in plan.problems[0]


@pytest.mark.parametrize("mesh", ["data=3", "data=4,model=4"])
def test_mesh_that_does_not_fit_the_devices_is_named(mesh):
    from tpu_runtime.backends.device import plan_spmd

    plan = plan_spmd("auto", mesh, 8)
    assert not plan.on and plan.mesh == "single"
    assert f"COMFY_TPU_MESH={mesh!r}" in plan.problems[0] and "8 XLA devices" in plan.problems[0]


def test_a_fitting_two_axis_mesh_is_kept():
    from tpu_runtime.backends.device import plan_spmd

    plan = plan_spmd("on", "data=4,model=2", 8)
    assert plan.on and plan.axes == {"data": 4, "model": 2} and plan.mesh == "data=4,model=2"


def test_spmd_cannot_start_once_tensors_exist():
    from tpu_runtime.backends.device import plan_spmd

    plan = plan_spmd("auto", None, 4, locked=True)
    assert not plan.on and "before any XLA tensor" in plan.problems[0]
