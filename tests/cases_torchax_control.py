"""Body of the torchax ControlNet test (tests/test_torchax_control.py), run in one fresh process: the
ControlNet cases of ``cases_control`` (ComfyUI's own nodes and ``common_ksampler``, parity with eager CPU)
and a T2I-Adapter and an SDXL-shaped ControlNet, under ``COMFY_TPU_BACKEND=torchax``."""
from __future__ import annotations

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (before ComfyUI's own ``tests``)


def torchax_controls(nodes, cases: dict, families: dict) -> dict:
    """``cases_control.control_runs`` of ``cases``, then ``family_runs`` of each family at its strengths;
    plus the device ops and host transfers counted by the backend over everything."""
    from tests import cases_control
    from tpu_runtime import runtime

    backend = runtime.current().backend
    result = {"backend": backend.name, "controls": cases_control.control_runs(nodes, cases, size=64)}
    result["families"] = {family: cases_control.family_runs(nodes, family, strengths)
                          for family, strengths in families.items()}
    result["counters"] = backend.counters()
    return result
