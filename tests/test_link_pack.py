"""scripts/link_pack.py, the one change `make setup` makes in a ComfyUI folder: the pack's link."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
SCRIPT = PACK / "scripts" / "link_pack.py"
_spec = importlib.util.spec_from_file_location("link_pack", SCRIPT)
link_pack_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(link_pack_mod)
link_pack = link_pack_mod.link_pack


def _comfyui(tmp_path: Path) -> Path:
    (tmp_path / "ComfyUI" / "custom_nodes").mkdir(parents=True)
    return tmp_path / "ComfyUI"


def test_links_the_pack_into_custom_nodes(tmp_path):
    comfy = _comfyui(tmp_path)
    done, message = link_pack(comfy, PACK)
    link = comfy / "custom_nodes" / "comfy-tpu"
    assert done and link.is_symlink() and os.readlink(link) == str(PACK), message
    assert link_pack(comfy, PACK) == (True, f"{link} is this pack already")


def test_a_link_to_another_checkout_or_nowhere_is_pointed_here(tmp_path):
    comfy = _comfyui(tmp_path)
    link = comfy / "custom_nodes" / "comfy-tpu"
    for old_target in (tmp_path / "old-checkout", tmp_path / "gone"):
        old_target.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(old_target, target_is_directory=True)
        if old_target.name == "gone":
            old_target.rmdir()
        assert link_pack(comfy, PACK)[0]
        assert os.readlink(link) == str(PACK)


def test_the_pack_cloned_into_custom_nodes_gets_no_link_inside(tmp_path):
    comfy = _comfyui(tmp_path)
    clone = comfy / "custom_nodes" / "comfy-tpu"
    clone.mkdir()
    assert link_pack(comfy, clone) == (True, f"{clone} is this pack already")
    assert list(clone.iterdir()) == []  # `ln -sfn` made clone/comfy-tpu -> clone here


def test_another_folder_of_that_name_is_left_alone(tmp_path):
    comfy = _comfyui(tmp_path)
    other = comfy / "custom_nodes" / "comfy-tpu"
    other.mkdir()
    done, message = link_pack(comfy, PACK)
    assert not done and "left" in message and list(other.iterdir()) == []


def test_script_as_make_runs_it(tmp_path):
    comfy = tmp_path / "ComfyUI"  # no custom_nodes yet: the script makes it
    comfy.mkdir()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(comfy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "linked" in proc.stdout, proc.stderr
    assert (comfy / "custom_nodes" / "comfy-tpu").resolve() == PACK
