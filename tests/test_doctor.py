"""``comfy-tpu doctor --json`` run for real in a child process: it starts torch_xla (PJRT CPU), so it
is not a unit test (the doctor's text and the launcher are in tests/unit/test_launcher.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_TPU_") and k != "COMFYUI_PATH"}
    env.update(extra)
    return env


def _doctor_json(**env: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tpu_runtime", "doctor", "--json"], cwd=PACK,
                          env=_child_env(PJRT_DEVICE="CPU", **env), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_doctor_json_enabled_on_cpu():
    data = _doctor_json(COMFY_TPU_ENABLE="1")
    assert data["report"]["device_type"] == "CPU"
    assert data["report"]["torch_xla_version"] == "2.9.0"
    assert data["decision"]["on"] is True
    assert data["settings"]["non_defaults"] == {"enable": True}


def test_doctor_json_disabled_says_why():
    data = _doctor_json(COMFY_TPU_DISABLE="1", COMFY_TPU_CACHE_DIR="/tmp/tpu-cache")
    assert data["decision"]["on"] is False
    assert "COMFY_TPU_DISABLE" in data["decision"]["reason"]
    assert data["report"]["torch_xla_version"] == "2.9.0"  # still reports what is there
    assert data["settings"]["cache_dir"] == "/tmp/tpu-cache"


def test_doctor_names_the_comfyui_it_found_and_what_it_has():
    """The ComfyUI of COMFYUI_PATH (the suite's), its version against the checked range, what fell back."""
    from tests.comfy_env import comfyui_path

    comfy_dir = comfyui_path()
    version = {}
    exec((comfy_dir / "comfyui_version.py").read_text(), version)
    data = _doctor_json(COMFY_TPU_ENABLE="1", COMFYUI_PATH=str(comfy_dir))["comfyui"]
    assert data["found"] and data["version"] == version["__version__"], data
    assert data["line"].startswith(f"ComfyUI {version['__version__']} (") and "0.3.75 to 0.33.0" in data["line"]
    features = {f["name"]: f for f in data["features"]}
    assert features["sampler wrappers"]["status"] == "device" and features["uni_pc one-graph"]["status"] == "device"
    names = [s["name"] for s in data["samplers"]]
    assert "euler_ancestral" in names and all(s["path"] == "device" for s in data["samplers"]), data["samplers"]
    noise = {s["name"]: s["noise"] for s in data["samplers"]}
    assert noise["euler_ancestral"] == "host default" and noise["dpmpp_2m_sde"] == "host brownian"
    assert noise["euler"] == "none"
