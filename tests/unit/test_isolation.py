"""The unit layer imports neither torch_xla nor ComfyUI (checked in a clean process: in a full
suite run other tests have imported both by the time this runs)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent
ROOT = UNIT.parents[1]


def test_unit_modules_import_no_torch_xla_and_no_comfyui():
    modules = [f"tests.unit.{path.stem}" for path in sorted(UNIT.glob("*.py")) if path.stem != "__init__"]
    script = ("import importlib, sys\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch_xla', 'comfy', 'comfy_extras', "
              "'nodes'))\n"
              "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
