"""Every family of the tiny zoo with one attention implementation forced (#30), in fresh processes:
through ComfyUI's ``optimized_attention_override`` hook, and through the pack's patch of
``optimized_attention`` that a ComfyUI without the hook gets (``comfyui/attention_patch.py``; ComfyUI
0.3.75 has the hook, so the test installs the patch itself: its routed function is then first in line
and every device attention call it counts goes to the router). Parity with eager CPU running ComfyUI's
own attention."""
from __future__ import annotations

import pytest

from tests.child import run_child

FAMILIES = ["sd15", "sdxl", "sd3", "flux", "wan"]
PARITY = 1e-3


@pytest.mark.parametrize("implementation,via", [("blockwise", "patch"), ("blockwise", "hook"), ("sdpa", "hook")])
def test_every_family_with_the_implementation_forced(implementation, via):
    result = run_child("cases_attention:routed_families", via=via, families=FAMILIES,
                       env={"COMFY_TPU_ATTENTION": implementation})
    families = result["families"]
    print(implementation, via, families)
    assert set(families) == set(FAMILIES)
    for name, figures in families.items():
        assert figures["finite"] and figures["max_diff"] < PARITY, (name, figures)
        if via == "patch":
            assert figures["routed"] > 0, (name, figures)  # the patch, not ComfyUI's hook, routed it
