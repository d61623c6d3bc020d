"""Fresh test processes forked from one that already imported torch, torch_xla and the other big libraries.

Every fresh child of the suite (``tests/child.py``'s ``run_child``, a fresh-process module's pytest) used to
spend 7-10 s of CPU importing torch, torch_xla, torchvision, torch's compiler stack and aiohttp before its
test began, about a hundred times a run. The zygote, one per test process, imports those once and forks a
child per request. The fork is taken before any runtime starts (the zygote never touches a device: checked,
torch_xla's runtime must be uninitialised and no torch thread pool made), so each child still starts its
own PJRT client, its own compilation cache and its own graph caches: as fresh for XLA as a new interpreter.
The child gets the requested argv, environment and working directory, runs the script or module as
``python`` would, and writes its output to files; its exit status comes back through a file the last
``atexit`` step writes.

``COMFY_TPU_TEST_ZYGOTE=0`` runs children as plain subprocesses (as does any failure to start the zygote).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ENABLE_ENV = "COMFY_TPU_TEST_ZYGOTE"
#: Imported once in the zygote: what every child imports anyway (ComfyUI and torch_xla bring them), whose
#: import starts no thread or device. Not jax/torchax: a torch_xla child never imports them (torchax's
#: import registers things with torch), so they would make it differ from a new interpreter.
PRELOAD = ("torch", "torch_xla", "torch_xla.core.xla_model", "torch_xla.runtime", "torchvision", "torch._dynamo",
           "torch._inductor.lowering", "aiohttp", "numpy", "safetensors", "einops", "PIL.Image", "yaml",
           "transformers", "scipy")


class ChildResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


# ----------------------------------------------------------------------------------------------- client

class Zygote:
    """The client side: starts the zygote process on first use, asks it for children."""

    _instance: Optional["Zygote"] = None

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="comfy-tpu-zygote-")
        self._socket_path = os.path.join(self._dir, "socket")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen([sys.executable, __file__, self._socket_path], env=env,
                                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(self._dir, "log"), "w"))
        self.started_env = {k: v for k, v in env.items() if _read_at_start(k)}
        atexit.register(self._process.kill)
        deadline = time.monotonic() + 180
        while not os.path.exists(self._socket_path + ".ready"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test zygote did not start: {Path(self._dir, 'log').read_text()[-2000:]}")
            time.sleep(0.05)

    @classmethod
    def shared(cls) -> Optional["Zygote"]:
        """This process's zygote; None when it is turned off or could not start (children are then spawned)."""
        if os.environ.get(ENABLE_ENV, "1") == "0" or sys.platform != "linux":
            return None
        if cls._instance is None or cls._instance._process.poll() is not None:
            try:
                cls._instance = Zygote()
            except (OSError, RuntimeError) as exc:
                print(f"comfy-tpu tests: no zygote ({exc}); spawning children", file=sys.stderr)
                os.environ[ENABLE_ENV] = "0"
                return None
        return cls._instance

    def run(self, argv: list[str], env: dict[str, str], cwd: str, timeout: Optional[float]) -> ChildResult:
        """``argv`` (``[python, script, ...]`` or ``[python, "-m", module, ...]``) in a forked child."""
        work = tempfile.mkdtemp(prefix="child-", dir=self._dir)
        files = {name: os.path.join(work, name) for name in ("stdout", "stderr", "status")}
        request = json.dumps({"argv": argv[1:], "env": env, "cwd": cwd, "files": files}).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self._socket_path)
            conn.sendall(len(request).to_bytes(8, "big") + request)
            conn.settimeout(timeout)
            pid = int(_read(conn, 32).decode())
            try:
                while conn.recv(4096):  # EOF: the child's process ended (its copy of the socket closed)
                    pass
            except socket.timeout:
                if pid:
                    os.killpg(pid, signal.SIGKILL)  # the child leads its own session
                raise subprocess.TimeoutExpired(argv, timeout) from None
        stdout, stderr = (Path(files[name]).read_text(errors="replace") for name in ("stdout", "stderr"))
        try:
            returncode = int(Path(files["status"]).read_text())
        except (OSError, ValueError):  # died before its last atexit step (a signal, a crash in C)
            returncode, stderr = -9, stderr + "\n[the forked child died without an exit status]"
        return ChildResult(returncode, stdout, stderr)


def run_python(argv: list[str], *, env: dict[str, str], cwd: Optional[str] = None,
               timeout: Optional[float] = None) -> ChildResult:
    """A Python child (``argv[0]`` is ``sys.executable``): forked from the zygote, else spawned."""
    zygote = Zygote.shared()
    cwd = str(cwd or os.getcwd())
    same_start = zygote is not None and argv[0] == sys.executable and \
        {k: v for k, v in env.items() if _read_at_start(k)} == zygote.started_env
    if same_start:  # an interpreter started as the zygote was (PYTHONPATH and the like are read at start)
        return zygote.run(argv, env, cwd, timeout)
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return ChildResult(out.returncode, out.stdout, out.stderr)


def _read_at_start(name: str) -> bool:
    """Environment an interpreter reads when it starts (a fork keeps the zygote's)."""
    return name.startswith("PYTHON") and name != "PYTHONUNBUFFERED"


# ----------------------------------------------------------------------------------------------- server

def _serve(socket_path: str) -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a library this ComfyUI does not need: a child imports what it needs itself
            pass
    _check_nothing_started()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(16)
    Path(socket_path + ".ready").touch()
    parent = os.getppid()
    server.settimeout(5)
    while True:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            if os.getppid() != parent:  # the test process is gone
                return
            continue
        conn.settimeout(None)
        size = int.from_bytes(_read(conn, 8), "big")
        request = json.loads(_read(conn, size))
        if os.fork() == 0:
            server.close()
            _child(conn, request)  # never returns
        conn.close()


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("the request was cut short")
        data += chunk
    return data


def _check_nothing_started() -> None:
    """A fork is fresh only if nothing ran: no XLA runtime, no JAX backend, no torch thread pool."""
    torch_xla = sys.modules.get("torch_xla")
    if torch_xla is not None and torch_xla._XLAC._xla_runtime_is_initialized():
        raise SystemExit("the zygote started torch_xla's runtime: its children would share it")
    jax_bridge = sys.modules.get("jax._src.xla_bridge")
    if jax_bridge is not None and getattr(jax_bridge, "_backends", None):
        raise SystemExit("the zygote started a JAX backend: its children would share it")


def _child(conn: socket.socket, request: dict) -> None:
    """In the forked child: become ``python argv...`` in the requested environment, then exit."""
    import runpy

    files = request["files"]
    status = {"code": 1}

    def write_status() -> None:  # runs after every atexit step the child's own code registers
        Path(files["status"]).write_text(str(status["code"]))
        conn.close()  # the client's EOF: only now, with the status written (the closure keeps it open till then)

    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the zygote ignores it; the child's subprocesses need it
        os.setsid()
        conn.sendall(str(os.getpid()).encode().ljust(32))
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(files[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        _redo_import_time_env()
        _fresh_logging()
        atexit.register(write_status)
        argv = request["argv"]
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = request["cwd"]
            run = lambda: runpy.run_module(argv[1], run_name="__main__", alter_sys=True)  # noqa: E731
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            run = lambda: runpy.run_path(argv[0], run_name="__main__")  # noqa: E731
        try:
            run()
            status["code"] = 0
        except SystemExit as exit_:
            code = exit_.code
            status["code"] = code if isinstance(code, int) else (0 if code is None else 1)
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            status["code"] = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(status["code"])  # the interpreter's own shutdown: atexit steps (torch_xla's too), then the status


def _fresh_logging() -> None:
    """Logging as a new interpreter has it: a library's import may have configured the root logger (a
    ``logging.warning`` at import adds a handler), which would make the child's ``basicConfig`` a no-op."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def _redo_import_time_env() -> None:
    """What torch_xla's import did to the environment, redone for the child's own environment."""
    torch_xla = sys.modules.get("torch_xla")
    for name in ("_setup_default_env", "_setup_xla_flags"):
        step = getattr(torch_xla, name, None)
        if step is not None:
            step()


if __name__ == "__main__":
    _serve(sys.argv[1])
