"""The suite leaves the user's ComfyUI (``COMFYUI_PATH``) as it found it: no test nodes in its
``custom_nodes``, nothing written in its user, input, output or temp folders.

The check runs last (``runs_last``), so in a whole-suite run its comparison with the snapshot from
the suite's start covers every test before it, the servers of test_browser, test_server and
test_server_nodes included; run alone, it covers the server it starts itself.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.comfyui_state import ComfyUIState
from tests.server import ComfyServer, txt2img_prompt

ENV = {"COMFY_TPU_ENABLE": "1", "PJRT_DEVICE": "CPU", "COMFY_TPU_AUTOCAST_BF16": "0"}


def _exercise(srv: ComfyServer) -> None:
    """What writes into a server's folders: the test nodes sampling and SaveLatent saving, then a
    setting saved as the frontend saves one (into the user folder)."""
    entry = srv.run_prompt(txt2img_prompt(steps=1))
    assert entry["status"]["status_str"] == "success", entry["status"]
    status, body = srv.post("/settings", {"comfy-tpu.untouched-test": "written by the test"})
    assert status == 200, body


@pytest.mark.runs_last
def test_server_run_leaves_comfyui_as_it_found_it(comfyui_before, tmp_path):
    if comfyui_before is None:
        pytest.fail("no ComfyUI found: set COMFYUI_PATH or run `make setup`")
    srv = ComfyServer(tmp_path, env={**ENV, "COMFY_TPU_CACHE_DIR": str(tmp_path / "cache")})
    try:
        srv.wait_ready()
        _exercise(srv)
    finally:
        srv.stop()
    changes = ComfyUIState.take(comfyui_before.root).changes_since(comfyui_before)
    assert changes == [], (f"the tests changed {comfyui_before.root} (or a ComfyUI running from it "
                           "meanwhile did):\n" + "\n".join(changes))
    # not for want of writing: the server wrote, into its own base directory
    assert list(srv.output.rglob("tpu_test*")), "SaveLatent wrote nothing: the check would prove nothing"
    assert (srv.base / "user" / "default" / "comfy.settings.json").is_file()
    assert (srv.base / "user" / "comfyui.db").is_file()


def _fake_comfyui(root: Path) -> Path:
    for folder in ("custom_nodes/pack", "user/default", "output"):
        (root / folder).mkdir(parents=True)
    (root / "user" / "default" / "comfy.settings.json").write_text("{}")
    return root


def test_snapshot_names_every_kind_of_change(tmp_path):
    root = _fake_comfyui(tmp_path / "ComfyUI")
    before = ComfyUIState.take(root)
    assert ComfyUIState.take(root).changes_since(before) == []
    (root / "custom_nodes" / "test-nodes").symlink_to(tmp_path, target_is_directory=True)
    (root / "user" / "default" / "comfy.settings.json").write_text('{"a": 1}')
    (root / "user" / "comfyui.db").write_text("")
    (root / "output").rmdir()
    (root / "temp").mkdir()
    changes = ComfyUIState.take(root).changes_since(before)
    assert [line.split(":")[0] for line in changes] == [
        "custom_nodes/test-nodes", "output", "temp", "user/comfyui.db", "user/default/comfy.settings.json"]
    assert changes[0] == f"custom_nodes/test-nodes: added (link -> {tmp_path})"
    assert changes[1].startswith("output: removed") and "changed (file, 2 bytes" in changes[4]
