"""The ComfyUI the tests run is the tree ``COMFYUI_PATH`` names, not another one found on the way.

``bench/comfy_host.comfyui_path`` falls back to other folders when ``COMFYUI_PATH`` holds no ComfyUI,
so a compat layer pointed at a broken copy would quietly test 0.3.75 again. In the compat layer
(``make test-compat``: ``COMFYUI_PATH`` = the copy of 0.33.0) these tests prove the 0.33 tree runs;
in the main suite, that 0.3.75 does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.comfy_env import comfyui_path, import_comfy_core, tree_version

pytestmark = pytest.mark.compat


def test_comfyui_path_is_the_tree_the_tests_use():
    named = os.environ.get("COMFYUI_PATH")
    if not named:
        pytest.skip("COMFYUI_PATH is not set: the tests use the ComfyUI the pack sits in or `make setup`'s")
    assert comfyui_path().resolve() == Path(named).resolve(), \
        f"COMFYUI_PATH={named} holds no ComfyUI (main.py and comfy/): the tests fell back to {comfyui_path()}"


def test_the_running_comfyui_is_the_version_of_that_tree():
    root = import_comfy_core().resolve()
    import comfy.model_management
    import comfyui_version

    for module in (comfyui_version, comfy.model_management):
        assert Path(module.__file__).resolve().is_relative_to(root), \
            f"{module.__name__} comes from {module.__file__}, not from {root} (sys.path: {sys.path[:4]})"
    assert comfyui_version.__version__ == tree_version(root), (comfyui_version.__version__, root)
