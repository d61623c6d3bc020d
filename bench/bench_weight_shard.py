"""Weights split over a 'model' axis: what the split rule costs in collectives and time, against a naive split.

    python -m bench.bench_weight_shard [--families flux,sd15] [--devices 4]

Per family and per plan, in a fresh process on ``CPU_NUM_DEVICES`` PJRT CPU devices with mesh
``data=1,model=N`` (fp32, euler, 64 px): the pack's Megatron plan (``weight_shard.plan_weights``),
the naive split diffusers' Flux-on-TPU example uses (every weight's largest dimension), and all
weights whole (``data=N`` mesh, the batch split instead). It dumps XLA's optimised HLO and counts the
collectives in the model's program (the largest module): all-gathers (a split weight gathered
whole), all-reduces (Megatron's row-parallel outputs), collective-permutes and all-to-alls; it also
measures a step once compiled, and bytes per device. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
_SHAPE = re.compile(r"= (\w+)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\((.*?)\)(.*)$")
_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s64": 8, "u8": 1}
#: Ops that pass one value on unchanged in content (layout, shape, dtype): a weight through them is a weight.
_PASS_THROUGH = ("fusion", "copy", "bitcast", "transpose", "reshape", "convert")


def _size(line: str) -> int:
    match = _SHAPE.search(line)
    if not match:
        return 0
    size = 1
    for dim in filter(None, match.group(2).split(",")):
        size *= int(dim)
    return size * _BYTES.get(match.group(1), 4)


def count_collectives(hlo: str) -> dict:
    """Each collective's count in an HLO module's text; the all-gathers of a split weight (a sharded
    parameter, through layout-only ops) apart from those of activations, with the bytes they make."""
    instructions: dict[str, tuple[str, list[str], str]] = {}
    for line in hlo.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            name, op, args, rest = match.groups()
            instructions[name] = (op, re.findall(r"%([\w.\-]+)", args), line)

    def from_split_weight(name: str) -> bool:
        for _ in range(64):
            op, operands, line = instructions.get(name, ("", [], ""))
            if op == "parameter":
                return "sharding={devices=" in line
            inputs = [o for o in operands if instructions.get(o, ("",))[0] != "constant"]
            if op not in _PASS_THROUGH or len(inputs) != 1:
                return False
            name = inputs[0]
        return False

    counts = {name: 0 for name in COLLECTIVES}
    moved = 0  # bytes of every collective's result: what crosses between chips, to a first order
    weight_gathers, weight_bytes, activation_bytes = 0, 0, 0
    for name, (op, operands, line) in instructions.items():
        kind = op[:-len("-start")] if op.endswith("-start") else op
        if kind not in counts:
            continue
        counts[kind] += 1
        moved += _size(line)
        if kind == "all-gather":
            if operands and from_split_weight(operands[0]):
                weight_gathers += 1
                weight_bytes += _size(line)
            else:
                activation_bytes += _size(line)
    return {**counts, "collective_bytes": moved, "weight_gathers": weight_gathers, "weight_gather_bytes": weight_bytes,
            "activation_gather_bytes": activation_bytes}


def naive_plan(model, model_axis):
    """diffusers' example: every weight of 2+ dims split on its largest dimension (biases, norms whole)."""
    from tpu_runtime.backends.weight_shard import MODEL_AXIS, WeightPlan

    plan = WeightPlan(model_axis)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.dim() < 2:
            continue
        dims = sorted(range(tensor.dim()), key=lambda d: -tensor.shape[d])
        dim = next((d for d in dims if tensor.shape[d] % model_axis == 0), None)
        if dim is not None:
            plan.specs[name] = tuple(MODEL_AXIS if d == dim else None for d in range(tensor.dim()))
    return plan


def child(family: str, plan_name: str) -> None:
    """One family, one plan, in this process (the env holds the mesh and XLA's dump folder)."""
    sys.path.insert(0, str(PACK_DIR))
    from tests.sampling_harness import ksample  # before ComfyUI's own ``tests`` is on the path
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    import tpu_runtime.runtime as runtime
    import tpu_runtime.backends.weight_shard as weight_shard
    from bench import tiny_zoo

    if plan_name == "naive":
        weight_shard.plan_weights = naive_plan  # the Placement looks the plan function up at each model
    backend = runtime.current().backend
    patcher = tiny_zoo.build_patcher(family, seed=0, dtype=torch.float32)
    fam = tiny_zoo.family(family)
    positive, negative = tiny_zoo.conditioning(family, 1), tiny_zoo.conditioning(family, 2)
    shape = tiny_zoo.latent_shape(family, batch=1)
    first = ksample(nodes, patcher, positive, negative, steps=2, cfg=fam.cfg, latent=torch.zeros(shape), backend=backend)
    steps = 6
    start = time.perf_counter()
    run = ksample(nodes, patcher, positive, negative, steps=steps, cfg=fam.cfg, latent=torch.zeros(shape), backend=backend)
    step_ms = (time.perf_counter() - start) / steps * 1000
    placement = runtime.current().placement
    held = placement.measure(patcher.model) if placement.on else None
    print("RESULT " + json.dumps({"first_compiles": first.compiles, "compiles": run.compiles, "step_ms": round(step_ms, 1),
                                  "bytes_total": held.bytes_total if held else None,
                                  "bytes_max_device": max(held.bytes_per_device) if held else None}))


def analyse(dump: str) -> dict:
    """Collectives of the largest optimised module of an XLA dump folder (the model's program)."""
    modules = sorted(Path(dump).glob("*.cpu_after_optimizations.txt"), key=lambda p: p.stat().st_size)
    return count_collectives(modules[-1].read_text()) if modules else {}


def run_one(family: str, plan_name: str, devices: int) -> dict:
    dump = tempfile.mkdtemp(prefix=f"bench-weight-shard-hlo-{family}-{plan_name}-")
    mesh = f"data={devices}" if plan_name == "whole" else f"data=1,model={devices}"
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(devices), "COMFY_TPU_ENABLE": "1",
           "COMFY_TPU_AUTOCAST_BF16": "0", "COMFY_TPU_SPMD": "on", "COMFY_TPU_MESH": mesh,
           "COMFY_TPU_CACHE_DIR": tempfile.mkdtemp(prefix="bench-weight-shard-cache-"),
           "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text"}
    done = subprocess.run([sys.executable, "-m", "bench.bench_weight_shard", "--child", family, plan_name],
                          cwd=PACK_DIR, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result.update(analyse(dump))
    result.update(family=family, plan=plan_name, mesh=mesh)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="flux,sd15")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("FAMILY", "PLAN"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    rows = [run_one(family, plan, args.devices) for family in args.families.split(",")
            for plan in ("megatron", "naive", "whole")]
    print("| family | plan | mesh | weight all-gathers (bytes) | other all-gathers (bytes) | all-reduces | "
          "collective-permutes | all-to-alls | bytes of all collectives | bytes/device (of total) | step ms | "
          "compiles 2nd run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = f"{r['bytes_max_device']} ({r['bytes_max_device'] / r['bytes_total']:.3f})" if r["bytes_total"] else "whole"
        print(f"| {r['family']} | {r['plan']} | {r['mesh']} | {r['weight_gathers']} ({r['weight_gather_bytes']}) | "
              f"{r['all-gather'] - r['weight_gathers']} ({r['activation_gather_bytes']}) | {r['all-reduce']} | "
              f"{r['collective-permute']} | {r['all-to-all']} | {r['collective_bytes']} | {share} | {r['step_ms']} | "
              f"{r['compiles']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
