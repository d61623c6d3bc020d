"""The pack inside a real ComfyUI server (main.py), started the way a user starts it."""
from __future__ import annotations

import os

import pytest

from tests.comfy_env import tree_version
from tests.server import ComfyServer, txt2img_prompt

ENV_ON = {"COMFY_TPU_ENABLE": "1", "PJRT_DEVICE": "CPU", "COMFY_TPU_AUTOCAST_BF16": "0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    srv = ComfyServer(tmp, env={**ENV_ON, "COMFY_TPU_CACHE_DIR": str(tmp / "cache")})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.mark.compat
def test_system_stats_lists_the_xla_device_with_memory(server):
    stats = server.get("/system_stats")
    device = stats["devices"][0]
    assert device["type"] == "xla", stats
    assert device["vram_total"] > 0 and device["vram_free"] > 0


@pytest.mark.compat
def test_the_server_runs_the_comfyui_at_comfyui_path(server):
    """main.py of COMFYUI_PATH's tree, with its own modules (the compat layer: 0.33.0's, not 0.3.75's)."""
    assert server.get("/system_stats")["system"]["comfyui_version"] == tree_version(server.root)


@pytest.mark.compat
def test_startup_log_line_names_device_and_versions(server):
    log = server.log()
    line = next(text for text in log.splitlines() if "TPU path on" in text)
    assert "xla:0" in line and "torch_xla 2.9.0" in line and "torch 2.9.0" in line
    assert "IMPORT FAILED" not in log


@pytest.mark.compat
def test_ksampler_runs_on_the_device_through_prompt(server):
    entry = server.run_prompt(txt2img_prompt(steps=2))
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = list(server.output.glob("latents/tpu_test*.latent")) or list(server.output.rglob("tpu_test*"))
    assert saved, "SaveLatent wrote nothing"
    # Another seed and step count: the same graphs (the first prompt warmed its signature up).
    before = server.get("/tpu/stats")["xla"]
    again = server.run_prompt(txt2img_prompt(steps=3, seed=6))
    assert again["status"]["status_str"] == "success", again["status"]
    after = server.get("/tpu/stats")["xla"]
    assert after["compiles"] == before["compiles"], (before, after)


def _start_and_read_log(tmp_path, env: dict, pythonpath_prefix: str = "", extra_args=None):
    full_env = {**ENV_ON, "COMFY_TPU_CACHE_DIR": str(tmp_path / "cache"), **env}
    if pythonpath_prefix:
        full_env["PYTHONPATH"] = pythonpath_prefix + os.pathsep + os.environ.get("PYTHONPATH", "")
    srv = ComfyServer(tmp_path, env=full_env, extra_args=extra_args)
    try:
        srv.wait_ready()
        stats = srv.get("/system_stats")
        entry = srv.run_prompt(txt2img_prompt(steps=1))
        assert entry["status"]["status_str"] == "success"
        return srv.log(), stats
    finally:
        srv.stop()


def test_disabled_pack_loads_and_comfy_runs_stock(tmp_path):
    # --cpu: what stock ComfyUI needs on a machine without CUDA.
    log, stats = _start_and_read_log(tmp_path, {"COMFY_TPU_DISABLE": "1", "COMFY_TPU_ENABLE": None},
                                     extra_args=["--cpu"])
    assert stats["devices"][0]["type"] == "cpu"
    assert sum("TPU path off" in text and "COMFY_TPU_DISABLE" in text for text in log.splitlines()) == 1
    assert "IMPORT FAILED" not in log


def test_without_torch_xla_the_pack_loads_and_says_why(tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "torch_xla").mkdir(parents=True)
    (shadow / "torch_xla" / "__init__.py").write_text("raise ImportError('torch_xla hidden by the test')\n")
    log, stats = _start_and_read_log(tmp_path, {}, pythonpath_prefix=str(shadow))
    assert stats["devices"][0]["type"] == "cpu"
    assert any("TPU path off" in text and "torch_xla" in text for text in log.splitlines()), log[-3000:]
    assert "IMPORT FAILED" not in log


def test_bad_setting_is_named_and_comfy_keeps_running(tmp_path):
    log, stats = _start_and_read_log(tmp_path, {"COMFY_TPU_WARMUP_STEPS": "lots"}, extra_args=["--cpu"])
    assert stats["devices"][0]["type"] == "cpu"
    assert any("COMFY_TPU_WARMUP_STEPS='lots'" in text for text in log.splitlines())
