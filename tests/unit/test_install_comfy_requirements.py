"""scripts/install_comfy_requirements.py: ComfyUI's requirements go in, the torch stack stays (both venvs:
0.3.75's in .venv, 0.33.0's in the compat layer's)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_comfy_requirements.py"
_spec = importlib.util.spec_from_file_location("install_comfy_requirements", SCRIPT)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

#: The start of ComfyUI 0.33.0's requirements.txt, as it ships.
REQUIREMENTS_033 = """comfyui-frontend-package==1.48.7
torch
torchsde
torchvision
torchaudio
numpy>=1.25.0
comfy-kitchen==0.2.31

#non essential dependencies:
kornia>=0.7.1
"""


def test_the_torch_lines_and_comments_are_dropped():
    assert script.kept_lines(REQUIREMENTS_033) == ["comfyui-frontend-package==1.48.7", "torchsde", "numpy>=1.25.0",
                                                   "comfy-kitchen==0.2.31", "kornia>=0.7.1"]


def test_a_pinned_line_with_a_version_or_marker_is_dropped_too():
    assert script.kept_lines("torch>=2.4\ntorchvision ; sys_platform != 'darwin'\ntorch_xla[tpu]==2.9.0\nav\n") == ["av"]


def test_the_installed_stack_becomes_constraints(mocker):
    installed = {"torch": "2.9.0", "torch-xla": "2.9.0", "torch_xla": "2.9.0", "torchvision": "0.24.0"}

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    mocker.patch.object(script.importlib.metadata, "version", side_effect=version)
    assert script.installed_pins() == ["torch==2.9.0", "torch-xla==2.9.0", "torchvision==0.24.0"]


def test_a_missing_requirements_file_is_named(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "requirements.txt"
    monkeypatch.setattr(script.sys, "argv", ["install_comfy_requirements.py", str(missing)])
    assert script.main() == 2
    assert str(missing) in capsys.readouterr().err
