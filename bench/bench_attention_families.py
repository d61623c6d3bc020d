"""Every family of the tiny zoo on torchax, one fresh child per attention implementation forced (one
device, fp32, 64x64, euler, 2 steps, two runs): what the router sent each implementation, the first run's
compiles and compile seconds, each run's wall seconds, the max difference from eager CPU. With ``flash``
the Pallas kernel runs in Pallas's TPU interpret mode off a TPU: where its cost in the families suite
(``tests/test_attention_forced_families.py``) goes.

    python bench/bench_attention_families.py [flash sdpa blockwise ...]
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.child import run_child  # noqa: E402

FAMILIES = ["sd15", "sdxl", "sd3", "flux", "wan"]


def main(implementations: list[str]) -> None:
    print("| implementation | family | calls routed | first run: compiles (compile s) | first run s | "
          "second run s (compiles) | max abs vs eager (1st / 2nd) |")
    print("|---|---|---|---|---|---|---|")
    for implementation in implementations:
        start = time.perf_counter()
        result = run_child("cases_attention_forced:forced_families", families=FAMILIES,
                           env={"COMFY_TPU_BACKEND": "torchax", "COMFY_TPU_ATTENTION": implementation})
        child_s = time.perf_counter() - start
        for name, figures in result["families"].items():
            first, second = figures["runs"]
            calls = ", ".join(f"{key} {count}" for key, count in sorted(first["calls"].items()))
            print(f"| {implementation} | {name} | {calls} | {first['compiles']} ({first['compile_s']:.1f}) | "
                  f"{first['wall_s']:.1f} | {second['wall_s']:.2f} ({second['compiles']}) | "
                  f"{first['max_diff']:.1e} / {second['max_diff']:.1e} |", flush=True)
        print(f"| {implementation} | (child, all five) | | | {child_s:.0f} s, load average "
              f"{os.getloadavg()[0]:.1f} | | |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["flash", "sdpa"])
