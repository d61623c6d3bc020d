"""Block programs: the chain (one program per block kind, called once per block) against a scan over each
run of blocks with stacked weights (figures for bench/RESULTS.md, not a test; the scan is this
experiment's, not the pack's). ``--backend torchax`` (default): chain against ``jax.lax.scan``, below;
``--backend torch_xla``: the whole graph (``off``), the chain (``on``) and the whole graph with each run of
blocks one ``torch_xla.experimental.scan`` (``scan``, see ``xla_block_scan.py``).

The scan variant rewrites a chain (``backends.torchax_blocks.JaxChain``) after it is cut: each run of
consecutive calls of one block program whose inputs are the previous call's outputs (carries), the
same values (invariants) or values from outside the run (the blocks' weights) becomes one program that
stacks the weights (``jnp.stack``, a copy per call) and scans the block over them. Each row a fresh
process with an empty cache dir, as ``bench_depth.py`` (whose child it runs):

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_block_scan.py [--families flux] [--depths 1,19]
    PJRT_DEVICE=CPU .venv/bin/python bench/bench_block_scan.py --backend torch_xla --families flux,wan \
        --depths 4,19
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "BENCH-RESULT "


def _scan_runs(chain, programs) -> int:
    """Rewrite ``chain``'s runs of one block program into scans; returns how many runs were rewritten."""
    import jax
    import jax.numpy as jnp
    from jax.extend.core import jaxpr_as_fun

    closed_of = {id(jitted): closed for closed, jitted in programs.blocks.values()}
    steps, out, rewritten, i = chain._steps, [], 0, 0
    while i < len(steps):
        j = i + 1
        while j < len(steps) and steps[j][0] is steps[i][0] and id(steps[i][0]) in closed_of:
            j += 1
        run = steps[i:j]
        made = _scan_step(run, closed_of.get(id(steps[i][0])), jax, jnp, jaxpr_as_fun) if len(run) > 1 else None
        if made is None:
            out.append(steps[i])
            i += 1
            continue
        out.append(made)
        rewritten += 1
        i = j
    chain._steps = out
    return rewritten


def _scan_step(run, closed, jax, jnp, jaxpr_as_fun):
    produced = {v for _, _, outs, _ in run for v in outs if v is not None}
    count = len(run[0][1])
    kinds, carry_from = [], {}
    for p in range(count):
        column = [inputs[p] for _, inputs, _, _ in run]
        if all(v is column[0] for v in column):
            kinds.append("same")
            continue
        sources = set()
        for k in range(1, len(run)):
            outs = run[k - 1][2]
            sources.add(next((q for q, v in enumerate(outs) if v is column[k]), None))
        if len(sources) == 1 and None not in sources and column[0] not in produced:
            kinds.append("carry")
            carry_from[p] = sources.pop()
        elif not any(v in produced for v in column):
            kinds.append("xs")
        else:
            return None
    last_outs = run[-1][2]
    carried_outputs = set(carry_from.values())
    if any(v is not None and q not in carried_outputs for q, v in enumerate(last_outs)):
        return None  # the last block's other results are read later: not scanned here
    if any(v is not None for _, _, outs, _ in run[:-1] for q, v in enumerate(outs) if q not in carried_outputs):
        return None
    carries = [p for p in range(count) if kinds[p] == "carry"]
    same = [p for p in range(count) if kinds[p] == "same"]
    xs = [p for p in range(count) if kinds[p] == "xs"]
    block = jaxpr_as_fun(closed)
    n = len(run)

    def scanned(*values):
        init = list(values[:len(carries)])
        fixed = values[len(carries):len(carries) + len(same)]
        flat = values[len(carries) + len(same):]
        stacked = [jnp.stack(flat[k * n:(k + 1) * n]) for k in range(len(xs))]

        def body(carry, per_block):
            inputs = [None] * count
            for p, value in zip(carries, carry):
                inputs[p] = value
            for p, value in zip(same, fixed):
                inputs[p] = value
            for p, value in zip(xs, per_block):
                inputs[p] = value
            outs = block(*inputs)
            return [outs[carry_from[p]] for p in carries], None

        final, _ = jax.lax.scan(body, init, stacked)
        return final

    inputs = ([run[0][1][p] for p in carries] + [run[0][1][p] for p in same]
              + [run[k][1][p] for p in xs for k in range(n)])
    outputs = [last_outs[carry_from[p]] for p in carries]
    last_reads = [v for _, _, _, reads in run for v in reads if v not in produced]
    return (jax.jit(scanned), inputs, outputs, last_reads)


def _child_with_scan(family: str, depth: int) -> dict:
    from tpu_runtime.backends import torchax_blocks

    made = {"runs": 0}
    original = torchax_blocks.make_chain

    def make_chain(traced, arrays, installed, programs):
        chain = original(traced, arrays, installed, programs)
        made["runs"] += _scan_runs(chain, programs)
        return chain

    torchax_blocks.make_chain = make_chain
    from bench import bench_depth

    result = bench_depth._child(family, depth)
    result["scanned_runs"] = made["runs"]
    return result


def _child_with_xla_scan(family: str, depth: int) -> dict:
    """bench_depth's child, block programs off, every run of blocks of the device model one scan."""
    from bench import bench_depth, tiny_zoo, xla_block_scan

    figures: dict = {}
    original = tiny_zoo.build_patcher

    def build_patcher(name, seed=0, load_device=None, dtype=None, overrides=None):
        patcher = original(name, seed, load_device=load_device, dtype=dtype, overrides=overrides)
        if load_device is None or str(load_device) != "cpu":  # the eager reference stays as ComfyUI runs it
            xla_block_scan.install(patcher.model.diffusion_model, figures)
        return patcher

    tiny_zoo.build_patcher = build_patcher
    result = bench_depth._child(family, depth)
    result["scan"] = figures
    return result


# backend -> variant -> COMFY_TPU_BLOCK_PROGRAMS of its process
VARIANTS = {"torchax": {"chain": "on", "scan": "on"}, "torch_xla": {"off": "off", "on": "on", "scan": "off"}}


def run_row(family: str, depth: int, variant: str, backend: str = "torchax", scan: str = "core",
            probe: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="comfy-tpu-scan-") as cache_dir:
        env = {**os.environ, "PJRT_DEVICE": "CPU", "COMFY_TPU_ENABLE": "1", "COMFY_TPU_AUTOCAST_BF16": "0",
               "COMFY_TPU_BACKEND": backend, "COMFY_TPU_CACHE_DIR": cache_dir, "COMFY_TPU_EXECUTION": "replay",
               "COMFY_TPU_BLOCK_PROGRAMS": VARIANTS[backend][variant], "COMFY_TPU_BENCH_SCAN": scan,
               "COMFY_TPU_BENCH_SCAN_PROBE": "1" if probe else "0"}
        command = [sys.executable, os.path.abspath(__file__), "--child", family, str(depth), variant,
                   "--backend", backend]
        out = subprocess.run(command, env=env, cwd=PACK, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(PREFIX)]
    if out.returncode or not lines:
        raise RuntimeError(f"{family} {depth} {backend} {variant} failed:\n{out.stderr[-3000:]}")
    result = json.loads(lines[-1][len(PREFIX):])
    print(family, depth, backend, variant, json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, default=None)
    parser.add_argument("--families", default="flux")
    parser.add_argument("--depths", default="1,19")
    parser.add_argument("--backend", default="torchax", choices=sorted(VARIANTS))
    parser.add_argument("--variants", default="", help="comma-separated; default: all of the backend's")
    parser.add_argument("--scan", default="core", choices=("core", "public", "public-detached"),
                        help="torch_xla: which scan runs the blocks (xla_block_scan.IMPLEMENTATION)")
    parser.add_argument("--probe", action="store_true",
                        help="torch_xla: also try scan_layers and scan on each kind (adds to the first run)")
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, PACK)
        family, depth, variant = args.child
        if variant == "scan" and args.backend == "torch_xla":
            result = _child_with_xla_scan(family, int(depth))
        elif variant == "scan":
            result = _child_with_scan(family, int(depth))
        else:
            from bench import bench_depth

            result = bench_depth._child(family, int(depth))
        print(PREFIX + json.dumps(result), flush=True)
        return 0
    lines = ["| family | depth | variant | first-run compile s (compiles) | first run s | warm s/step (compiles) "
             "| max abs diff vs eager |", "|---|---|---|---|---|---|---|"]
    for family in args.families.split(","):
        for depth in map(int, args.depths.split(",")):
            for variant in (args.variants.split(",") if args.variants else VARIANTS[args.backend]):
                r = run_row(family, depth, variant, args.backend, args.scan, args.probe)
                lines.append(f"| {family} | {depth} | {variant} | {r['first_compile_s']:.2f} ({r['first_compiles']}) "
                             f"| {r['first_wall_s']:.2f} | {r['warm_s_per_step']:.3f} ({r['warm_compiles']}) "
                             f"| {r['diff']:.1e} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
