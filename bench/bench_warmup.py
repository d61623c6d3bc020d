"""Warm-up cost per sampler, each in a fresh process with an empty cache dir (tiny SD1.5-architecture
model, 128x128, batch 1, cfg 7, PJRT CPU, fp32), and what the runs after it compiled: 4/12/20/30 steps
with four schedulers, img2img, a size in the same bucket and a script's call outside inference mode.

    python bench/bench_warmup.py [sampler ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.child import run_child  # noqa: E402

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "lcm", "ddim",
            "uni_pc"]


def main(samplers: list[str]) -> None:
    print("| sampler | warm-up steps | graphs compiled | warm-up s | runs after it | compiles in them |")
    print("|---|---|---|---|---|---|")
    for sampler in samplers:
        result = run_child("cases_warmup:coverage", sampler=sampler)
        warm, runs = result["warmup"], result["runs"]
        print(f"| {sampler} | {warm['steps']} | {warm['graphs']} | {warm['seconds']:.1f} | {len(runs)} | "
              f"{sum(r['compiles'] for r in runs.values())} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or SAMPLERS)
