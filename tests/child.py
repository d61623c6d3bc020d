"""Fresh processes for tests that count compiles.

torch_xla keeps every graph it compiled for the life of the process, so a compile count taken after
other tests ran can pass only because they compiled the graph first. Each body run here gets a new
Python process with its own ``COMFY_TPU_CACHE_DIR``; it returns a JSON-able dict to the test.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from tests.suite_xla_flags import with_suite_flags
from tests.zygote import run_python

PACK_DIR = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "CHILD-RESULT "


class ChildFailed(AssertionError):
    pass


def run_child(target: str, *, cache_dir: Optional[str] = None, env: Optional[dict[str, str]] = None,
              timeout: float = 1200, **kwargs: Any) -> dict[str, Any]:
    """Run ``tests.<module>:<function>(nodes, **kwargs)`` in a new process; its dict, plus ``log``."""
    cache_dir = cache_dir or tempfile.mkdtemp(prefix="comfy-tpu-child-cache-")
    child_env = {**os.environ, "PJRT_DEVICE": "CPU", "COMFY_TPU_ENABLE": "1", "COMFY_TPU_AUTOCAST_BF16": "0",
                 "COMFY_TPU_CACHE_DIR": cache_dir, "PYTHONUNBUFFERED": "1", **(env or {})}
    child_env["XLA_FLAGS"] = with_suite_flags(child_env.get("XLA_FLAGS", ""))
    out = run_python([sys.executable, str(PACK_DIR / "tests" / "child_main.py"), target, json.dumps(kwargs)],
                     env=child_env, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if out.returncode != 0 or not lines:
        raise ChildFailed(f"child {target} exited {out.returncode}:\n{out.stderr[-4000:]}\n{out.stdout[-2000:]}")
    return {**json.loads(lines[-1][len(RESULT_PREFIX):]), "log": out.stderr, "cache_dir": cache_dir}
