"""The install path users take, run with ComfyUI-Manager's own code (the ``comfyui-manager`` package
from the registry, in the test extra), not an imitation of it.

Manager's ``cm-cli install <git url>`` goes into a fresh copy of ComfyUI: it must clone the pack into
``custom_nodes/comfy-tpu``, pip-install ``requirements.txt`` one line at a time, and run ``install.py``
with the pack folder as the working directory. ComfyUI's ``main.py --cpu --quick-test-for-ci`` must
then load the installed pack with the TPU path on. comfy-cli's ``comfy node install`` (which runs
``python -m cm_cli`` in the ComfyUI venv) goes the same way.

What gets installed is the committed HEAD of this checkout (a bare clone of it), not the working tree.
Manager takes a ``file://`` URL only with a host (``file://localhost/...``). cm-cli exits 0 even when
a step fails (``--exit-on-fail`` does not change that for ``install``), so the tests judge it by its
output and by the files.

Everything runs in the test venv: requirements.txt and install.py find everything already installed
there, so nothing is downloaded and no installed version changes (checked below).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.comfy_env import PACK_DIR, comfyui_path

PACK_NAME = "comfy-tpu"
# Folders at the top of a ComfyUI that the copy leaves out: what the user or earlier runs put there
# (possibly large: models), ComfyUI's own tests, and custom_nodes (the copy starts with an empty one).
SKIPPED_AT_ROOT = {"custom_nodes", "user", "input", "output", "temp", "models", "tests", "tests-unit",
                   "venv"}
PACK_FILES = ["__init__.py", "install.py", "prestartup_script.py", "requirements.txt", "pyproject.toml",
              "tpu_runtime/__init__.py", "tpu_runtime/runtime.py", "tpu_nodes/__init__.py"]
WATCHED_DISTRIBUTIONS = ["torch", "torch_xla", "numpy", "pydantic", "pydantic-settings"]
TIMEOUT = 600
# `python main.py <args>`, plus a list at exit of the modules loaded from a tpu_runtime or tpu_nodes
# folder: the test venv also has the pack installed editable (pointing at a checkout), and the
# installed pack must not run that checkout's code.
MAIN_WITH_MODULE_LIST = """
import atexit, runpy, sys
def report():
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if "tpu_runtime" in path or "tpu_nodes" in path:
            print("comfy-tpu module:", name, path, flush=True)
atexit.register(report)
sys.argv = ["main.py", *sys.argv[1:]]
runpy.run_path("main.py", run_name="__main__")
"""


# -- helpers -----------------------------------------------------------------------------------
def fresh_comfyui(dest: Path) -> Path:
    """A copy of the suite's ComfyUI (code only, about 25 MB) with an empty ``custom_nodes``: no links
    to the pack or the test nodes, no user data, models, outputs or caches."""
    source = comfyui_path()

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if name == "__pycache__" or os.path.islink(os.path.join(folder, name))}
        if Path(folder) == source:
            skipped |= {name for name in names if name in SKIPPED_AT_ROOT or name.startswith(".")}
        return skipped

    shutil.copytree(source, dest, ignore=ignore)
    (dest / "custom_nodes").mkdir()
    return dest


def bare_clone(dest: Path) -> Path:
    """The pack's repository as a bare git repository, the shape of a git server's copy."""
    subprocess.run(["git", "clone", "--quiet", "--bare", str(PACK_DIR), str(dest)], check=True,
                   capture_output=True, text=True)
    return dest


def git_head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def requirement_lines(requirements: Path) -> list[str]:
    """The lines Manager hands to pip, one by one (comments and blank lines skipped)."""
    lines = (line.split("#")[0].strip() for line in requirements.read_text().splitlines())
    return [line for line in lines if line]


def installer_env(comfyui: Path, home: Path) -> dict:
    """The environment for cm-cli and comfy-cli: this venv as the ComfyUI venv, ``COMFYUI_PATH`` at the
    copy, ``HOME`` in the test's folder (comfy-cli keeps its config in ``~/.config/comfy-cli``) while
    pip's and git's user config and caches stay where they were; wide lines (rich wraps at 80 columns
    when not on a terminal), no progress bars."""
    env = {**os.environ, "COMFYUI_PATH": str(comfyui), "PYTHONUNBUFFERED": "1", "COLUMNS": "400",
           "TQDM_DISABLE": "1", "HOME": str(home), "VIRTUAL_ENV": sys.prefix}
    env.setdefault("XDG_CONFIG_HOME", str(Path.home() / ".config"))
    env.setdefault("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    env.pop("COMFYUI_FOLDERS_BASE_PATH", None)
    env.pop("CONDA_PREFIX", None)
    home.mkdir(parents=True, exist_ok=True)
    return env


def run(command: list, cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", timeout=TIMEOUT)
    output = result.stdout
    assert result.returncode == 0, f"{command[:4]} exited {result.returncode}:\n{output[-6000:]}"
    return output


def in_this_venv(command: str) -> bool:
    """Whether a command as Manager prints it (a list's repr, brackets off) starts with a python of
    this venv (``bin/python`` or ``bin/python3``: the same interpreter)."""
    python = Path(command.split(", ", 1)[0].strip("'"))
    return python.parent == Path(sys.executable).parent and python.name.startswith("python")


def installed_versions() -> dict:
    versions = {}
    for name in WATCHED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def console_script(name: str) -> Path:
    script = Path(sys.executable).parent / name
    if not script.is_file():
        pytest.fail(f"{script} is missing: the test extra installs it (pip install -e '.[test]')")
    return script


class Install:
    """One installer run into one fresh ComfyUI."""

    def __init__(self, root: Path, url: str, output: str) -> None:
        self.root, self.url, self.output = root, url, output
        self.pack = root / "custom_nodes" / PACK_NAME


def check_install(install: Install, bare: Path) -> None:
    """What Manager must have done, read from its output and the files."""
    out = install.output
    for failure in ("An error occurred while installing", "install script failed", "Install(git-clone)",
                    "Traceback", "Failed to restore"):
        assert failure not in out, f"installer output has {failure!r}:\n{out[-6000:]}"
    assert re.search(rf"\[INSTALLED\] {re.escape(install.url)}", out), out[-6000:]

    # the clone: the bare repository's HEAD, checked out under custom_nodes/comfy-tpu
    assert f"CLONE into '{install.pack}'" in out, out[-6000:]
    assert sorted(p.name for p in (install.root / "custom_nodes").iterdir()) == [PACK_NAME]
    for name in PACK_FILES:
        assert (install.pack / name).is_file(), f"{name} missing from the installed pack"
    assert git_head(install.pack) == git_head(bare)

    # requirements.txt, one pip (or uv pip) install per line, in the file's order
    requirements = requirement_lines(install.pack / "requirements.txt")
    assert requirements, "requirements.txt names nothing"
    executed = re.findall(r"## ComfyUI-Manager: EXECUTE => \[(.*)\]", out)
    assert executed, out[-6000:]
    pip_lines = executed[:-1]
    assert [cmd.rsplit(", ", 1)[-1].strip("'") for cmd in pip_lines] == requirements, executed
    for cmd in pip_lines:
        assert in_this_venv(cmd), f"not this venv's python: {cmd}"
        assert "'pip', 'install'" in cmd, cmd  # `python -m pip install`, or `python -m uv pip install`

    # install.py, run as `python install.py`: a relative path, so only from the pack folder
    assert executed[-1].endswith(", 'install.py'") and in_this_venv(executed[-1]), executed
    after_script = out.split("EXECUTE => [" + executed[-1] + "]", 1)[1]
    assert "comfy-tpu install:" in after_script, out[-6000:]
    assert "nothing to install" in after_script, "the test venv has the matching torch_xla:\n" + after_script
    assert "Installation was successful." in after_script


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    return bare_clone(tmp_path_factory.mktemp("git") / f"{PACK_NAME}.git")


@pytest.fixture(scope="module")
def versions_before() -> dict:
    return installed_versions()


@pytest.fixture(scope="module")
def manager_install(tmp_path_factory, bare, versions_before) -> Install:
    """``cm-cli install file://localhost/<bare clone>`` into a fresh ComfyUI."""
    work = tmp_path_factory.mktemp("manager")
    root = fresh_comfyui(work / "ComfyUI")
    url = f"file://localhost{bare}"
    output = run([str(console_script("cm-cli")), "install", url], cwd=work,
                 env=installer_env(root, work / "home"))
    return Install(root, url, output)


# -- tests -------------------------------------------------------------------------------------
def test_cm_cli_clones_installs_requirements_and_runs_install_py(manager_install, bare):
    check_install(manager_install, bare)


def test_cm_cli_changes_no_installed_version(manager_install, versions_before):
    assert installed_versions() == versions_before


def test_comfyui_loads_the_installed_pack_with_tpu_path_on(manager_install, tmp_path):
    """``main.py --cpu --quick-test-for-ci`` in the copy: loads every node, then exits 0. The copy is
    the test's own, so its user folder and database may stay where ComfyUI puts them."""
    env = {**os.environ, "COMFY_TPU_ENABLE": "1", "PJRT_DEVICE": "CPU", "PYTHONUNBUFFERED": "1",
           "COMFYUI_PATH": str(manager_install.root)}
    log = run([sys.executable, "-c", MAIN_WITH_MODULE_LIST, "--cpu", "--quick-test-for-ci"],
              cwd=manager_install.root, env=env)

    assert "comfy-tpu: TPU path on" in log, log[-6000:]
    assert "comfy-tpu: failed to start" not in log, log[-6000:]
    pack = str(manager_install.pack)
    imports = log.split("Import times for custom nodes:", 1)
    assert len(imports) == 2, log[-6000:]
    listed = [line for line in imports[1].splitlines() if line.strip().endswith(pack)]
    assert listed and all("IMPORT FAILED" not in line for line in listed), imports[1][:2000]
    assert "PRESTARTUP FAILED" not in log, log[-6000:]
    assert "Cannot import" not in log, log[-6000:]

    modules = re.findall(r"^comfy-tpu module: (\S+) (.+)$", log, flags=re.M)
    assert modules, "no tpu_runtime / tpu_nodes module loaded:\n" + log[-6000:]
    installed = os.path.realpath(manager_install.pack) + os.sep
    elsewhere = [(name, path) for name, path in modules if not os.path.realpath(path).startswith(installed)]
    assert not elsewhere, f"modules loaded from outside the installed pack: {elsewhere}"


def test_comfy_cli_node_install_goes_through_manager(tmp_path, bare, versions_before):
    """``comfy --workspace <ComfyUI> --skip-prompt node install <url>``, with ``VIRTUAL_ENV`` at the
    ComfyUI venv: comfy-cli runs that venv's ``python -m cm_cli install``. Works offline."""
    root = fresh_comfyui(tmp_path / "ComfyUI")
    url = f"file://localhost{bare}"
    output = run([str(console_script("comfy")), "--workspace", str(root), "--skip-prompt", "--no-json",
                  "node", "install", url], cwd=tmp_path, env=installer_env(root, tmp_path / "home"))
    python = str(Path(sys.prefix) / "bin" / "python")
    assert f"Command: [{python!r}, '-m', 'cm_cli', 'install', {url!r}]" in output, output[-6000:]
    check_install(Install(root, url, output), bare)
    assert installed_versions() == versions_before
