"""A real ComfyUI server (main.py) on a free loopback port, on a throwaway base directory.

ComfyUI's code runs from ``COMFYUI_PATH`` (which may be a user's own ComfyUI), but ``--base-directory``
points its ``custom_nodes``, ``models``, ``user``, ``input``, ``output`` and ``temp`` folders at a
folder of the test's own, and ``--database-url`` moves the database that would otherwise go to
``<ComfyUI>/user/comfyui.db``. So the test nodes never show in the user's UI, the server loads none of
the user's other node packs, and its settings, database, images and temp clean-up stay in the test's
folder.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from tests.comfy_env import PACK_DIR, comfyui_path

TEST_NODES = PACK_DIR / "tests" / "comfy_test_nodes"
NODE_PACKS = {"comfy-tpu": PACK_DIR, "comfy-tpu-testnodes": TEST_NODES}
BASE_FOLDERS = ("custom_nodes", "user", "input", "output", "temp")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_base_directory(base: Path) -> Path:
    """A ComfyUI base directory holding only the pack and the test nodes (as links) and empty user,
    input, output and temp folders: what one server may write to. ``--user-directory`` must exist."""
    for folder in BASE_FOLDERS:
        (base / folder).mkdir(parents=True, exist_ok=True)
    for name, target in NODE_PACKS.items():
        link = base / "custom_nodes" / name
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    return base


def base_directory_args(base: Path) -> list[str]:
    """ComfyUI's flags for a server confined to ``base``. ``--base-directory`` alone sets every folder
    but the database, whose default is next to ComfyUI's code; the user folder is named as well, since
    it is where ComfyUI keeps settings and workflows."""
    return ["--base-directory", str(base), "--user-directory", str(base / "user"),
            "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}"]


class ComfyServer:
    """ComfyUI started as ``python main.py``, with the pack and the test nodes, writing only under
    ``tmp`` (its log, and ``tmp/comfyui-base``): the ComfyUI it runs may be the user's own."""

    def __init__(self, tmp: Path, env: Optional[dict] = None, extra_args: Optional[list] = None) -> None:
        self.root = comfyui_path()
        self.base = make_base_directory(tmp / "comfyui-base")
        self.port = free_port()
        self.output = self.base / "output"
        self.log_path = tmp / "server.log"
        merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env = {key: value for key, value in merged.items() if value is not None}  # None: unset it
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(self.root / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
             *base_directory_args(self.base), "--disable-auto-launch", *(extra_args or [])],
            cwd=self.base, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}):\n{self.log()}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout: float = 600) -> dict:
        status, body = self.post("/prompt", {"prompt": prompt})
        if status != 200:
            raise AssertionError(f"/prompt answered {status}: {body}")
        return self.wait_for(body["prompt_id"], timeout)

    def wait_for(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log()}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def txt2img_prompt(steps: int = 2, seed: int = 5, size: int = 64) -> dict:
    """Tiny model -> KSampler -> SaveLatent, in ComfyUI's API format."""
    return {
        "1": {"class_type": "TPUTestTinyModel", "inputs": {"seed": 0}},
        "2": {"class_type": "TPUTestConditioning", "inputs": {"seed": 1, "tokens": 77}},
        "3": {"class_type": "TPUTestConditioning", "inputs": {"seed": 2, "tokens": 77}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "tpu_test"}},
    }
