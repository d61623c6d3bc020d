"""install_logic's decision table and install.py run the way ComfyUI-Manager runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[1]
if str(PACK) not in sys.path:
    sys.path.insert(0, str(PACK))

from tpu_runtime.install.plan import (  # noqa: E402
    TORCH_XLA_PINS, InstallPlan, is_tpu_host, minor_of, pip_command, plan_install)

SUPPORTED = "2.5, 2.6, 2.7, 2.8, 2.9"


# -- plan_install ------------------------------------------------------------------------------
def test_pins_table_is_the_documented_one():
    assert TORCH_XLA_PINS == {"2.9": "2.9.0", "2.8": "2.8.0", "2.7": "2.7.0", "2.6": "2.6.0", "2.5": "2.5.1"}


@pytest.mark.parametrize("torch_version, xla_version, tpu, action, requirement, words", [
    # torch missing: refuse, whatever else is there
    (None, None, True, "refuse", None, ["torch is not installed", "ComfyUI"]),
    (None, "2.9.0", False, "refuse", None, ["torch is not installed"]),
    ("", None, False, "refuse", None, ["torch is not installed"]),
    # torch_xla present and matching: nothing (local version tags ignored)
    ("2.9.0", "2.9.0", True, "nothing", None, ["nothing to install", "2.9.0"]),
    ("2.9.0+cu128", "2.9.0+git1a2b", False, "nothing", None, ["nothing to install"]),
    ("2.5.1+cpu", "2.5.1", True, "nothing", None, ["nothing to install"]),
    # torch_xla present but mismatched: refuse, suggest the right one, never touch torch
    ("2.9.0", "2.8.0", True, "refuse", None, ["does not match", "torch_xla[tpu]==2.9.0", "torch stays"]),
    ("2.7.1", "2.9.0", False, "refuse", None, ["does not match", "torch_xla==2.7.0"]),
    ("2.4.1", "2.5.1", False, "refuse", None, ["does not match", SUPPORTED]),
    # torch without a torch_xla release: refuse naming the torch versions that would work
    ("2.4.1", None, True, "refuse", None, ["no torch_xla release", "2.4.1", SUPPORTED]),
    ("2.10.0.dev20250101", None, True, "refuse", None, ["no torch_xla release", SUPPORTED]),
    ("3.0.0", None, False, "refuse", None, [SUPPORTED]),
    ("not-a-version", None, False, "refuse", None, [SUPPORTED]),
    # otherwise install the pinned torch_xla; [tpu] only on a TPU host
    ("2.9.0", None, True, "install", "torch_xla[tpu]==2.9.0", ["torch_xla[tpu]==2.9.0", "torch stays"]),
    ("2.9.0+cu128", None, False, "install", "torch_xla==2.9.0", ["torch_xla==2.9.0"]),
    ("2.5.0+cpu", None, True, "install", "torch_xla[tpu]==2.5.1", ["2.5.1"]),
])
def test_plan_install_decision_table(torch_version, xla_version, tpu, action, requirement, words):
    plan = plan_install(torch_version, xla_version, tpu)
    assert isinstance(plan, InstallPlan)
    assert (plan.action, plan.requirement) == (action, requirement)
    for word in words:
        assert word in plan.message
    assert "\n" not in plan.message


@pytest.mark.parametrize("minor, xla", sorted(TORCH_XLA_PINS.items()))
def test_every_pinned_torch_installs_its_release(minor, xla):
    plan = plan_install(f"{minor}.3", None, platform_tpu=True)
    assert plan.action == "install"
    assert plan.requirement == f"torch_xla[tpu]=={xla}"


@pytest.mark.parametrize("version, minor", [
    ("2.9.0", "2.9"), ("2.10.1+cu128", "2.10"), (" 2.5.1", "2.5"), ("2", None), ("", None), (None, None),
    ("abc", None)])
def test_minor_of(version, minor):
    assert minor_of(version) == minor


@pytest.mark.parametrize("environ, dev, expected", [
    ({}, ["null", "tty", "vfio/vfio"], False),
    ({"PJRT_DEVICE": "CPU"}, ["accel"], False),
    ({"PJRT_DEVICE": "tpu"}, [], True),
    ({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, [], True),
    ({"TPU_NAME": ""}, [], False),
    ({}, ["null", "accel0"], True),
    ({}, ["vfio/vfio", "vfio/0"], True),
])
def test_is_tpu_host(environ, dev, expected):
    assert is_tpu_host(environ, dev) is expected


def test_pip_command_installs_the_requirement_and_refuses_torch():
    assert pip_command("/py", "torch_xla[tpu]==2.9.0") == ["/py", "-m", "pip", "install", "torch_xla[tpu]==2.9.0"]
    for bad in ("torch==2.9.0", "torch", "Torch[extra]>=2", " torch ~= 2.9"):
        with pytest.raises(ValueError, match="torch belongs to ComfyUI"):
            pip_command("/py", bad)


# -- install.py as ComfyUI-Manager runs it -------------------------------------------------------
_SITECUSTOMIZE = textwrap.dedent("""
    # Test harness: fake installed versions, and record (not run) subprocesses.
    import importlib.metadata as _md, json, os, subprocess

    _FAKE = json.loads(os.environ["FAKE_VERSIONS"])
    _real_version = _md.version

    def _version(name):
        key = name.lower().replace("-", "_")
        if key in _FAKE:
            if _FAKE[key] is None:
                raise _md.PackageNotFoundError(name)
            return _FAKE[key]
        return _real_version(name)

    _md.version = _version

    class _RecordingPopen:
        def __init__(self, args, *a, **kw):
            self.args, self.returncode = list(args), int(os.environ.get("FAKE_RC", "0"))
            with open(os.environ["FAKE_CALLS"], "a") as f:
                f.write(json.dumps(self.args) + "\\n")
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def wait(self, timeout=None): return self.returncode
        def poll(self): return self.returncode
        def communicate(self, input=None, timeout=None): return None, None
        def kill(self): pass

    subprocess.Popen = _RecordingPopen
""")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_TPU_", "FAKE_"))}
    env.pop("PYTHONPATH", None)
    return env


def run_install(args, tmp_path, versions=None, rc=0):
    """install.py in a subprocess with cwd = pack folder; with ``versions`` the child sees faked
    installed versions and records subprocess calls instead of running them."""
    env = _clean_env()
    calls = tmp_path / "calls.jsonl"
    if versions is not None:
        harness = tmp_path / "harness"
        harness.mkdir(exist_ok=True)
        (harness / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env.update(PYTHONPATH=str(harness), FAKE_VERSIONS=json.dumps(versions), FAKE_CALLS=str(calls),
                   FAKE_RC=str(rc))
    proc = subprocess.run([sys.executable, "install.py", *args], cwd=PACK, env=env, capture_output=True,
                          text=True, timeout=120)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return proc, recorded


def test_install_on_this_machine_has_nothing_to_do(tmp_path):
    import importlib.metadata as md

    assert (md.version("torch").split("+")[0], md.version("torch_xla")) == ("2.9.0", "2.9.0")
    proc, _ = run_install([], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "torch_xla 2.9.0 matches torch 2.9.0; nothing to install" in proc.stdout
    assert "running:" not in proc.stdout


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    proc, calls = run_install(["--dry-run", "--tpu"], tmp_path, {"torch": "2.9.0", "torch_xla": None})
    assert proc.returncode == 0, proc.stderr
    assert "torch_xla is missing: torch_xla[tpu]==2.9.0 matches torch 2.9.0" in proc.stdout
    assert f"dry run, would run: {sys.executable} -m pip install 'torch_xla[tpu]==2.9.0'" in proc.stdout
    assert calls == []


def test_dry_run_on_this_machine_changes_nothing(tmp_path):
    proc, calls = run_install(["--dry-run"], tmp_path, {})
    assert proc.returncode == 0, proc.stderr
    assert "nothing to install" in proc.stdout
    assert calls == []


def test_install_runs_pip_for_torch_xla_only_and_second_run_does_nothing(tmp_path):
    proc, calls = run_install(["--no-tpu"], tmp_path, {"torch": "2.8.0+cpu", "torch_xla": None})
    assert proc.returncode == 0, proc.stderr
    assert calls == [[sys.executable, "-m", "pip", "install", "torch_xla==2.8.0"]]
    assert all(arg.split("=")[0] != "torch" for arg in calls[0])
    # after pip did its job torch_xla 2.8.0 is there: a second run does nothing
    proc, calls = run_install(["--no-tpu"], tmp_path, {"torch": "2.8.0+cpu", "torch_xla": "2.8.0"})
    assert proc.returncode == 0
    assert "nothing to install" in proc.stdout
    assert len(calls) == 1  # still only the first run's call


def test_pip_failure_is_reported_but_exits_zero(tmp_path):
    proc, calls = run_install(["--tpu"], tmp_path, {"torch": "2.9.0", "torch_xla": None}, rc=1)
    assert proc.returncode == 0
    assert len(calls) == 1
    assert "pip failed (exit 1)" in proc.stdout


@pytest.mark.parametrize("versions, words", [
    ({"torch": "2.9.0", "torch_xla": "2.8.0"}, "does not match"),
    ({"torch": None, "torch_xla": None}, "torch is not installed"),
    ({"torch": "2.4.0", "torch_xla": None}, "no torch_xla release matches torch 2.4.0"),
])
def test_refusals_print_why_exit_zero_and_run_nothing(tmp_path, versions, words):
    proc, calls = run_install([], tmp_path, versions)
    assert proc.returncode == 0, proc.stderr
    assert words in proc.stdout
    assert calls == []


# -- the torchax backend's extra -------------------------------------------------------------------
def test_torchax_plan_adds_the_pinned_stack_and_never_torch():
    from tpu_runtime.install.plan import TORCHAX_PINS, plan_torchax_install

    plan = plan_torchax_install("2.9.0", None, None, platform_tpu=False)
    assert plan.action == "install"
    assert plan.requirement.split() == [f"torchax=={TORCHAX_PINS['torchax']}", f"jax[cpu]=={TORCHAX_PINS['jax']}"]
    command = pip_command("python", plan.requirement)
    assert command[-2:] == plan.requirement.split() and not any(arg.startswith("torch==") for arg in command)
    on_tpu = plan_torchax_install("2.9.0", None, None, platform_tpu=True)
    assert "jax[tpu]" in on_tpu.requirement and "libtpu" in on_tpu.message
    assert plan_torchax_install("2.9.0", TORCHAX_PINS["torchax"], TORCHAX_PINS["jax"], False).action == "nothing"
    assert plan_torchax_install(None, None, None, False).action == "refuse"


def test_torchax_extra_matches_the_install_pins():
    import tomllib

    from tpu_runtime.install.plan import torchax_requirements

    extra = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert extra["project"]["optional-dependencies"]["torchax"] == torchax_requirements(platform_tpu=False)


def test_torchax_on_a_torch_it_cannot_import_on_is_refused_with_what_works():
    """torchax 0.0.13 fails at import on torch >= 2.13 by itself; with the pack's placeholders it runs on torch
    2.13 - 2.15 (checked on 2.14.1 and 2.15.0): install.py installs it there, refuses a newer torch (unchecked) and says which stack
    works; the device report (start line, doctor) says the same. torch_xla's refusal names torchax where it runs."""
    from tpu_runtime.install.plan import plan_install, plan_torchax_install, torchax_torch_problem

    plan = plan_torchax_install("2.16.0", None, None, platform_tpu=False)
    assert plan.action == "refuse" and plan.requirement is None
    assert "unchecked on torch 2.16.0" in plan.message and "dim_Dimname" in plan.message
    assert "torch <= 2.15" in plan.message and "torch_xla needs torch 2.5" in plan.message
    assert plan_torchax_install("2.12.1", None, None, platform_tpu=False).action == "install"
    assert plan_torchax_install("2.14.1+cu130", None, None, platform_tpu=False).action == "install"
    assert torchax_torch_problem("2.9.0+cu128", "0.0.13") is None
    assert torchax_torch_problem("2.14.1", "0.0.13") is None
    assert torchax_torch_problem("2.15.0+cu132", "0.0.13") is None  # checked end to end
    assert "dim_Dimname" in torchax_torch_problem("2.16.0", "0.0.13")
    assert "python install.py --backend torchax" in plan_install("2.14.1", None, platform_tpu=False).message
    assert "torchax" not in plan_install("2.16.0", None, platform_tpu=False).message
    assert torchax_torch_problem("2.15.0", "0.0.99") is None  # a release nothing is known against
