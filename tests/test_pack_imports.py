"""Loaded by ComfyUI, the pack keeps its folder off ``sys.path``: its ``tests``, ``bench``, ``scripts``
and ``install`` never become top-level names of the ComfyUI process, and ``import tpu_runtime`` gives
the very module the pack runs (one state)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.comfy_env import PACK_DIR, comfyui_path

# A ComfyUI process as main.py makes it: its own folder on sys.path (no pack helper, nothing of ours).
_CHILD = textwrap.dedent("""
    import asyncio, json, os, sys
    comfy_dir, pack_dir = sys.argv[1], sys.argv[2]
    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management
    import nodes
    loaded = asyncio.run(nodes.load_custom_node(pack_dir))
    import tpu_runtime
    import tpu_runtime.state
    ours = [os.path.realpath(pack_dir)]
    print("RESULT " + json.dumps({
        "loaded": loaded,
        "pack_on_path": [entry for entry in sys.path if entry and os.path.realpath(entry) in ours],
        "top_level": {name: getattr(sys.modules.get(name), "__file__", None) for name in
                      ("tests", "bench", "scripts", "install")},
        "tpu_runtime_file": tpu_runtime.__file__,
        "state_on": bool(tpu_runtime.state.current() and tpu_runtime.state.current().on),
        "nodes_use_this_state": sys.modules["tpu_nodes.nodes"].TPUNode.pack is tpu_runtime.state.current()
            if "tpu_nodes.nodes" in sys.modules else None,
    }))
""")


def test_a_comfyui_process_with_the_pack_has_no_pack_folder_on_sys_path():
    env = {**os.environ, "PJRT_DEVICE": "CPU", "COMFY_TPU_ENABLE": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(comfyui_path()), str(PACK_DIR)], env=env,
                         capture_output=True, text=True, timeout=600, cwd="/")
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["loaded"] and result["state_on"]
    assert result["pack_on_path"] == []
    pack = os.path.realpath(PACK_DIR)
    for name, path in result["top_level"].items():  # ComfyUI's own ``tests`` folder may be importable
        assert path is None or not os.path.realpath(path).startswith(pack + os.sep), (name, path)
    assert os.path.realpath(result["tpu_runtime_file"]) == os.path.join(pack, "tpu_runtime", "__init__.py")
