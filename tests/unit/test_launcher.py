"""The comfy-tpu CLI: flag -> env mapping, finding ComfyUI, launch end to end (a stand-in ComfyUI), the doctor's
text. The doctor run for real (it starts torch_xla) is in tests/test_doctor.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[2]
if str(PACK) not in sys.path:
    sys.path.insert(0, str(PACK))

from tpu_runtime.install import launcher  # noqa: E402
from tpu_runtime.install.launcher import ComfyUINotFound, LaunchError, find_comfyui, flags_to_env  # noqa: E402
from tpu_runtime.settings.tpu_settings import TPUSettings, load_settings  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_environ():
    """launch() exports the TPU variables into os.environ; keep tests apart."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("COMFY_TPU_") or k == "COMFYUI_PATH"]:
        del os.environ[key]
    yield
    os.environ.clear()
    os.environ.update(saved)


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_TPU_") and k != "COMFYUI_PATH"}
    env.update(extra)
    return env


# -- flags_to_env ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--tpu-enable"], {"COMFY_TPU_ENABLE": "1"}),
    (["--tpu-disable"], {"COMFY_TPU_DISABLE": "1"}),
    (["--tpu-manual-warmup"], {"COMFY_TPU_MANUAL_WARMUP": "1"}),
    (["--tpu-warmup"], {"COMFY_TPU_WARMUP": "1"}),
    (["--no-tpu-warmup"], {"COMFY_TPU_WARMUP": "0"}),
    (["--no-tpu-rewarm"], {"COMFY_TPU_REWARM": "0"}),
    (["--tpu-warmup-steps", "4"], {"COMFY_TPU_WARMUP_STEPS": "4"}),
    (["--tpu-warmup-steps=7"], {"COMFY_TPU_WARMUP_STEPS": "7"}),
    (["--tpu-autocast-bf16"], {"COMFY_TPU_AUTOCAST_BF16": "1"}),
    (["--no-tpu-autocast-bf16"], {"COMFY_TPU_AUTOCAST_BF16": "0"}),
    (["--tpu-compilation-cache"], {"COMFY_TPU_COMPILATION_CACHE": "1"}),
    (["--no-tpu-compilation-cache"], {"COMFY_TPU_COMPILATION_CACHE": "0"}),
    (["--tpu-shape-padding"], {"COMFY_TPU_SHAPE_PADDING": "1"}),
    (["--no-tpu-shape-padding"], {"COMFY_TPU_SHAPE_PADDING": "0"}),
    (["--tpu-shape-padding-multiple", "128"], {"COMFY_TPU_SHAPE_PADDING_MULTIPLE": "128"}),
    (["--tpu-debug-metrics"], {"COMFY_TPU_DEBUG_METRICS": "1"}),
    (["--tpu-sync-steps", "0"], {"COMFY_TPU_SYNC_STEPS": "0"}),
    (["--tpu-sync-steps", "5"], {"COMFY_TPU_SYNC_STEPS": "5"}),
    (["--tpu-cache-dir", "/var/cache/tpu"], {"COMFY_TPU_CACHE_DIR": "/var/cache/tpu"}),
    (["--tpu-spmd", "off"], {"COMFY_TPU_SPMD": "off"}),
    (["--tpu-mesh", "data=8"], {"COMFY_TPU_MESH": "data=8"}),
    (["--tpu-backend", "torchax"], {"COMFY_TPU_BACKEND": "torchax"}),
    ([], {}),
])
def test_each_flag_sets_its_env_var(argv, expected):
    assert flags_to_env(argv) == (expected, [])


def test_relative_cache_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env, _ = flags_to_env(["--tpu-cache-dir", "cache"])
    assert env == {"COMFY_TPU_CACHE_DIR": str(tmp_path / "cache")}


def test_flags_cover_every_setting_and_use_its_env_var():
    fields = {field for _, field, _ in launcher.BOOL_FLAGS + launcher.VALUE_FLAGS}
    assert fields == set(TPUSettings.model_fields)


def test_env_from_all_flags_is_what_settings_read(monkeypatch, tmp_path):
    env, _ = flags_to_env(["--tpu-enable", "--tpu-manual-warmup", "--no-tpu-warmup", "--no-tpu-rewarm",
                           "--tpu-warmup-steps", "3", "--no-tpu-autocast-bf16", "--no-tpu-compilation-cache",
                           "--no-tpu-shape-padding", "--tpu-shape-padding-multiple", "32", "--tpu-debug-metrics",
                           "--tpu-sync-steps", "2", "--tpu-cache-dir", str(tmp_path), "--tpu-execution", "compiled",
                           "--tpu-backend", "torchax", "--tpu-compiled-graph-break-limit", "2", "--tpu-conv-kernel-layout", "hwio",
                           "--tpu-attention", "blockwise", "--tpu-block-programs", "off", "--tpu-spmd",
                           "on", "--tpu-mesh", "data=4,model=2", "--tpu-hbm-per-chip-gib", "15.75",
                           "--tpu-vae", "host", "--tpu-text-encoders", "host"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loaded = load_settings()
    assert loaded.ok, loaded.problems
    assert loaded.settings.model_dump() == {
        "enable": True, "disable": False, "warmup": False, "rewarm": False, "warmup_steps": 3, "manual_warmup": True,
        "autocast_bf16": False, "compilation_cache": False, "shape_padding": False, "shape_padding_multiple": 32,
        "debug_metrics": True, "sync_steps": 2, "cache_dir": tmp_path, "execution": "compiled",
        "backend": "torchax", "compiled_graph_break_limit": 2, "conv_kernel_layout": "hwio", "block_programs": "off", "spmd": "on", "mesh": "data=4,model=2",
        "hbm_per_chip_gib": 15.75, "attention": "blockwise", "vae": "host", "text_encoders": "host"}


def test_last_of_an_on_off_pair_wins():
    assert flags_to_env(["--no-tpu-shape-padding", "--tpu-shape-padding"])[0] == {"COMFY_TPU_SHAPE_PADDING": "1"}
    assert flags_to_env(["--tpu-shape-padding", "--no-tpu-shape-padding"])[0] == {"COMFY_TPU_SHAPE_PADDING": "0"}


def test_unknown_args_pass_through_in_order():
    env, passthrough = flags_to_env(["--port", "8189", "--tpu-enable", "--listen", "0.0.0.0", "--cpu",
                                     "--preview-method=auto", "--tpu-sync-steps", "1", "--verbose", "DEBUG"])
    assert env == {"COMFY_TPU_ENABLE": "1", "COMFY_TPU_SYNC_STEPS": "1"}
    assert passthrough == ["--port", "8189", "--listen", "0.0.0.0", "--cpu", "--preview-method=auto",
                           "--verbose", "DEBUG"]


def test_args_after_dashdash_pass_through_untouched():
    env, passthrough = flags_to_env(["--tpu-disable", "--port", "1", "--", "--tpu-enable", "--", "x"])
    assert env == {"COMFY_TPU_DISABLE": "1"}
    assert passthrough == ["--port", "1", "--tpu-enable", "--", "x"]


@pytest.mark.parametrize("argv", [["--tpu-enabled"], ["--tpu-en"], ["--no-tpu-debug-metrics"],
                                  ["--tpu-warmup-step=3"]])
def test_unknown_tpu_flag_is_an_error_not_passed_to_comfyui(argv):
    with pytest.raises(LaunchError, match="unknown TPU flag"):
        flags_to_env(argv)


def test_bad_int_value_is_rejected():
    with pytest.raises(SystemExit) as exc:
        flags_to_env(["--tpu-warmup-steps", "many"])
    assert exc.value.code == 2


# -- find_comfyui ------------------------------------------------------------------------------
def _fake_comfyui(root: Path, main_py: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(main_py)
    (root / "custom_nodes").mkdir(exist_ok=True)
    return root


def test_find_comfyui_from_env_beats_flag_and_pack(tmp_path):
    env_dir = _fake_comfyui(tmp_path / "from_env")
    cli_dir = _fake_comfyui(tmp_path / "from_cli")
    assert find_comfyui(str(cli_dir), {"COMFYUI_PATH": str(env_dir)}, pack_dirs=[]) == env_dir
    assert find_comfyui(str(cli_dir), {}, pack_dirs=[]) == cli_dir


def test_find_comfyui_env_without_main_py_is_an_error(tmp_path):
    with pytest.raises(ComfyUINotFound, match="COMFYUI_PATH=.* has no main.py"):
        find_comfyui(None, {"COMFYUI_PATH": str(tmp_path)}, pack_dirs=[])


def test_find_comfyui_through_symlinked_pack(tmp_path):
    comfy = _fake_comfyui(tmp_path / "ComfyUI")
    real_pack = tmp_path / "src" / "comfy-tpu"
    real_pack.mkdir(parents=True)
    linked = comfy / "custom_nodes" / "comfy-tpu"
    linked.symlink_to(real_pack, target_is_directory=True)
    # as given (not resolved): <ComfyUI>/custom_nodes/comfy-tpu -> <ComfyUI>
    assert find_comfyui(None, {}, pack_dirs=[linked]) == comfy
    # the resolved path alone does not lead there
    with pytest.raises(ComfyUINotFound):
        find_comfyui(None, {}, pack_dirs=[real_pack])


def test_find_comfyui_resolves_an_alias_of_the_pack(tmp_path):
    comfy = _fake_comfyui(tmp_path / "ComfyUI")
    real_pack = comfy / "custom_nodes" / "comfy-tpu"
    real_pack.mkdir()
    alias = tmp_path / "elsewhere" / "pack"
    alias.parent.mkdir()
    alias.symlink_to(real_pack, target_is_directory=True)
    assert find_comfyui(None, {}, pack_dirs=[alias]) == comfy


def test_find_comfyui_error_says_to_set_comfyui_path(tmp_path):
    lonely = tmp_path / "a" / "b" / "pack"
    lonely.mkdir(parents=True)
    with pytest.raises(ComfyUINotFound, match="set COMFYUI_PATH"):
        find_comfyui(None, {}, pack_dirs=[lonely])


def test_launch_without_comfyui_exits_2(tmp_path, monkeypatch, capsys):
    lonely = tmp_path / "a" / "b" / "pack"
    lonely.mkdir(parents=True)
    monkeypatch.setattr(launcher, "_default_pack_dirs", lambda: [lonely])
    assert launcher.main(["launch", "--tpu-enable"]) == 2
    assert "COMFYUI_PATH" in capsys.readouterr().err


# -- launch end to end -------------------------------------------------------------------------
_RECORDING_MAIN = textwrap.dedent("""
    import json, os, sys
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "launched.json"), "w") as f:
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "python": sys.executable,
                   "env": {k: v for k, v in os.environ.items() if k.startswith("COMFY_TPU_")}}, f)
    sys.exit(3)
""")


def test_launch_passes_env_and_args_to_comfyui_main(tmp_path):
    comfy = _fake_comfyui(tmp_path / "ComfyUI", _RECORDING_MAIN)
    proc = subprocess.run(
        [sys.executable, "-m", "tpu_runtime", "launch", "--tpu-enable", "--no-tpu-warmup", "--port", "8189",
         "--tpu-warmup-steps", "3", "--tpu-cache-dir", "rel/cache", "--listen", "--", "--tpu-debug-metrics"],
        cwd=PACK, env=_child_env(COMFYUI_PATH=str(comfy)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr  # ComfyUI's exit code comes back
    seen = json.loads((comfy / "launched.json").read_text())
    assert seen["argv"] == ["--port", "8189", "--listen", "--tpu-debug-metrics"]
    assert seen["env"] == {"COMFY_TPU_ENABLE": "1", "COMFY_TPU_WARMUP": "0", "COMFY_TPU_WARMUP_STEPS": "3",
                           "COMFY_TPU_CACHE_DIR": str(PACK / "rel" / "cache")}
    assert Path(seen["cwd"]).resolve() == comfy.resolve()
    assert seen["python"] == sys.executable


def test_launch_finds_the_comfyui_a_symlinked_pack_sits_in(tmp_path):
    comfy = _fake_comfyui(tmp_path / "ComfyUI", _RECORDING_MAIN)
    linked = comfy / "custom_nodes" / "comfy-tpu"
    linked.symlink_to(PACK, target_is_directory=True)
    # a shell in the symlinked folder: PWD is the logical path, getcwd() the resolved one
    proc = subprocess.run([sys.executable, "-m", "tpu_runtime", "launch", "--tpu-debug-metrics", "--cpu"],
                          cwd=linked, env=_child_env(PWD=str(linked)), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr
    seen = json.loads((comfy / "launched.json").read_text())
    assert seen["argv"] == ["--cpu"]
    assert seen["env"] == {"COMFY_TPU_DEBUG_METRICS": "1"}


def test_launch_refuses_invalid_settings_before_starting(tmp_path, capsys):
    comfy = _fake_comfyui(tmp_path / "ComfyUI", _RECORDING_MAIN)
    os.environ["COMFYUI_PATH"] = str(comfy)
    assert launcher.main(["launch", "--tpu-shape-padding-multiple", "12"]) == 2
    assert "COMFY_TPU_SHAPE_PADDING_MULTIPLE='12' is not valid" in capsys.readouterr().err
    assert not (comfy / "launched.json").exists()


# -- doctor ------------------------------------------------------------------------------------
def test_doctor_text_shows_report_settings_and_decision():
    data = {"report": {"torch_version": "2.9.0", "torch_xla_version": None, "libtpu_version": None,
                       "device": None, "device_type": "unknown", "device_count": 0, "tpu_type": "unknown",
                       "hbm_per_chip_bytes": 16 * 2**30, "error": "torch_xla is not installed"},
            "settings": {"non_defaults": {"sync_steps": 4}, "cache_dir": None, "execution": "lazy", "problems": []},
            "decision": {"on": False, "reason": "torch_xla is not installed"}}
    text = launcher.format_doctor(data)
    assert "torch_xla    missing" in text
    assert "HBM per chip 16.0 GiB" in text
    assert "problem      torch_xla is not installed" in text
    assert "COMFY_TPU_SYNC_STEPS=4" in text
    assert "execution    lazy" in text
    assert text.splitlines()[-1] == "TPU path OFF: torch_xla is not installed"


def test_doctor_text_says_which_attention_runs():
    data = {"report": {"torch_version": "2.9.0", "torch_xla_version": "2.9.0", "libtpu_version": "0.0.21",
                       "device": "xla:0", "device_type": "TPU", "device_count": 4, "tpu_type": "v5e",
                       "hbm_per_chip_bytes": 16 * 2**30, "error": None, "spmd": True, "mesh": "data=2,model=2"},
            "settings": {"non_defaults": {}, "cache_dir": None, "execution": "replay", "problems": [],
                         "attention": "auto"},
            "decision": {"on": True, "reason": "TPU found"}}
    line = next(text for text in launcher.format_doctor(data).splitlines() if text.startswith("  attention"))
    assert "auto: SDPA below 4,096 tokens, Pallas flash (blockwise when masked) from 4,096" in line
    assert "on mesh data=2,model=2" in line and "(COMFY_TPU_ATTENTION)" in line
    data["report"].update(spmd=False, device_type="CPU")
    data["settings"]["attention"] = "flash"
    line = next(text for text in launcher.format_doctor(data).splitlines() if text.startswith("  attention"))
    assert "flash: memory-bounded blockwise at every length (torch_xla's Pallas flash kernel runs on a TPU only" in line
    assert "mesh" not in line


def test_doctor_says_when_torchax_runs_with_the_placeholders():
    """torchax 0.0.13 on torch 2.14 loads with the pack's placeholders (the doctor says so); on torch 2.9 it needs
    none (no line)."""
    def text(torch_version: str) -> str:
        report = {"torch_version": torch_version, "torch_xla_version": None, "libtpu_version": None, "device": "cpu:0",
                  "device_type": "CPU", "device_count": 1, "tpu_type": "n/a", "hbm_per_chip_bytes": None, "error": None,
                  "backend": "torchax", "backend_reason": "auto off a TPU: torchax", "torchax_version": "0.0.13",
                  "jax_version": "0.10.2"}
        return launcher.format_doctor({"report": report, "settings": {"non_defaults": {}, "cache_dir": None,
                                                                      "execution": "replay", "problems": []},
                                       "decision": {"on": True, "reason": "enabled"}})

    newest = text("2.14.1+cu130")
    assert "backend      torchax (auto off a TPU: torchax)" in newest
    assert "torch compat torchax 0.0.13 names aten ops torch 2.14.1+cu130 removed" in newest
    assert "torch compat" not in text("2.9.0")
    assert "torch_xla    missing: no release for torch 2.14.1+cu130" in newest
    assert "torch_xla    missing (python install.py in the pack folder)" in text("2.9.0")
