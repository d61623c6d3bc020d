"""Compile cost against depth (figures for bench/RESULTS.md, not a test): block programs on and off.

Each row is a fresh process with an empty cache dir (``COMFY_TPU_CACHE_DIR``), as a restarted ComfyUI:
a tiny model of the zoo (Flux hidden 64, SD3 hidden 128, Wan dim 64) at a depth, sampled through
ComfyUI's ``common_ksampler`` (euler, 64x64, fp32, replay execution):

* **first run**: one 2-step run; XLA compile seconds of the process (torch_xla ``CompileTime``) and wall;
* **warm s/step**: a 6-step run after it (best of 2), and its compiles (0 expected); ``--warm-pairs``:
  on and off on one model in one process, 6-step runs interleaved (4 each), best and median;
* **parity**: max |pack - eager CPU| of the 2-step run on the same weights.

* **host ms/model call** (torchax only): the warm run's wall less the seconds the host waited on the
  device (``TorchaxBackend.device_wait_s``), per model call: the host's own time (the sampler's math,
  uploads, a chain's dispatches). Not for torch_xla: on PJRT CPU its programs run on the host's cores
  while the host dispatches (ExecuteTime overlaps the wall time), so wall minus it is no host figure;
  bench_step_host's device-idle method is the one to extend.

    PJRT_DEVICE=CPU .venv/bin/python bench/bench_depth.py [--families flux,sd3,wan] [--depths 1,4,19] \
        [--backends torch_xla,torchax] [--modes off,on]
    PJRT_DEVICE=CPU .venv/bin/python bench/bench_depth.py --families flux --depths 1,19 \
        --backends torch_xla,torchax --mesh data=2,model=2   # under SPMD, 4 CPU devices (--devices)
    PJRT_DEVICE=CPU .venv/bin/python bench/bench_depth.py --warm-pairs --families flux --depths 19 \
        --backends torch_xla,torchax   # warm s/step on vs off, interleaved in one process
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "BENCH-RESULT "


def depth_overrides(family: str, depth: int) -> dict:
    """The zoo family at ``depth`` repeated blocks (Flux: ``depth`` double and ``2 x depth`` single ones)."""
    if family == "flux":
        return {"depth": depth, "depth_single_blocks": 2 * depth}
    if family == "sd3":  # hidden 128 (MMDiT's width is 64 x depth); the last joint block is another kind
        return {"depth": 2, "num_blocks": depth + 1}
    if family == "wan":
        return {"num_layers": depth}
    raise ValueError(f"no depth for family {family!r}")


def _child(family: str, depth: int) -> dict:
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime

    backend = runtime.current().backend
    overrides = depth_overrides(family, depth)
    fam = tiny_zoo.family(family)
    pos, neg = tiny_zoo.conditioning(family, 1), tiny_zoo.conditioning(family, 2)

    def sample(patcher, steps: int):
        latent = {"samples": torch.zeros(tiny_zoo.latent_shape(family, size=64))}
        start = time.perf_counter()
        with torch.inference_mode():
            out = nodes.common_ksampler(patcher, 42, steps, fam.cfg, "euler", "normal", pos, neg, latent)[0]["samples"]
        return out, time.perf_counter() - start

    cpu = tiny_zoo.build_patcher(family, seed=0, load_device=torch.device("cpu"), dtype=torch.float32,
                                 overrides=overrides)
    reference, _ = sample(cpu, 2)
    del cpu
    model = tiny_zoo.build_patcher(family, seed=0, dtype=torch.float32, overrides=overrides)
    out, first_wall = sample(model, 2)
    first_compile = backend.compile_seconds()
    first_compiles = backend.counters()["compiles"]
    best = None
    for _ in range(2):
        compiles = backend.counters()["compiles"]
        waited = getattr(backend, "device_wait_s", None)
        _, wall = sample(model, 6)
        calls = runtime.current().run_history[-1].model_calls
        # torchax: the host's own time per model call (the run's wall less the time it waited on the device).
        host_ms = None if waited is None else (wall - (backend.device_wait_s - waited)) / calls * 1e3
        row = (wall, backend.counters()["compiles"] - compiles, host_ms)
        best = row if best is None or row[0] < best[0] else best
    return {"first_compile_s": first_compile, "first_compiles": first_compiles, "first_wall_s": first_wall,
            "warm_s_per_step": best[0] / 6, "warm_compiles": best[1], "host_ms_per_call": best[2],
            "diff": (out.float() - reference.float()).abs().max().item(),
            "block_programs": _block_figures()}


def _warm_pair(family: str, depth: int, rounds: int = 4, steps: int = 6) -> dict:
    """Warm s/step with block programs on and off in ONE process on one model (both programs compiled first),
    runs interleaved off, on, off, on, ...: this host's load moves both alike (separate processes' warm
    figures differ by up to 2x here). Best and median of ``rounds`` runs each."""
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import statistics

    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime

    state = runtime.current()
    fam = tiny_zoo.family(family)
    pos, neg = tiny_zoo.conditioning(family, 1), tiny_zoo.conditioning(family, 2)
    model = tiny_zoo.build_patcher(family, seed=0, dtype=torch.float32, overrides=depth_overrides(family, depth))
    saved = state.options

    def sample(mode: str, count: int) -> float:
        state.options = saved.model_copy(update={"block_programs": mode})
        latent = {"samples": torch.zeros(tiny_zoo.latent_shape(family, size=64))}
        start = time.perf_counter()
        with torch.inference_mode():
            nodes.common_ksampler(model, 42, count, fam.cfg, "euler", "normal", pos, neg, latent)
        return (time.perf_counter() - start) / count

    for mode in ("off", "on"):
        sample(mode, 2)  # compiles its programs
    compiles = state.backend.counters()["compiles"]
    walls: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in ("off", "on"):
            walls[mode].append(sample(mode, steps))
    state.options = saved
    return {mode: {"best": min(w), "median": statistics.median(w)} for mode, w in walls.items()} | {
        "warm_compiles": state.backend.counters()["compiles"] - compiles, "blocks": _block_figures()}


def _block_figures() -> dict:
    from tpu_runtime import runtime

    models = runtime.current().replayed_models
    return models.block_figures() if hasattr(models, "block_figures") else {}


def mesh_env(mesh: str, devices: int) -> dict:
    """The environment of an SPMD row: ``devices`` CPU devices (PJRT's for torch_xla, JAX's for torchax)."""
    if not mesh:
        return {}
    return {"COMFY_TPU_SPMD": "on", "COMFY_TPU_MESH": mesh, "CPU_NUM_DEVICES": str(devices),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_row(family: str, depth: int, backend: str, blocks: str, child: str = "--child", mesh: str = "",
            devices: int = 4) -> dict:
    with tempfile.TemporaryDirectory(prefix="comfy-tpu-depth-") as cache_dir:
        env = {**os.environ, "PJRT_DEVICE": "CPU", "COMFY_TPU_ENABLE": "1", "COMFY_TPU_AUTOCAST_BF16": "0",
               "COMFY_TPU_BACKEND": backend, "COMFY_TPU_CACHE_DIR": cache_dir, "COMFY_TPU_EXECUTION": "replay",
               "COMFY_TPU_BLOCK_PROGRAMS": blocks, **mesh_env(mesh, devices)}
        command = [sys.executable, os.path.abspath(__file__), child, family, str(depth)]
        out = subprocess.run(command, env=env, cwd=PACK, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(PREFIX)]
    if out.returncode or not lines:
        raise RuntimeError(f"{family} {depth} {backend} {blocks} failed:\n{out.stderr[-3000:]}")
    result = json.loads(lines[-1][len(PREFIX):])
    print(family, depth, backend, blocks, json.dumps(result), flush=True)
    return result


def _warm_pairs(args) -> int:
    lines = ["| family | depth | backend | warm s/step off: best (median) | on: best (median) | on / off (best) |",
             "|---|---|---|---|---|---|"]
    for family in args.families.split(","):
        for depth in map(int, args.depths.split(",")):
            for backend in args.backends.split(","):
                r = run_row(family, depth, backend, "auto", child="--pair-child")
                off, on = r["off"], r["on"]
                lines.append(f"| {family} | {depth} | {backend} | {off['best']:.4f} ({off['median']:.4f}) | "
                             f"{on['best']:.4f} ({on['median']:.4f}) | {on['best'] / off['best']:.2f} |")
    print("\n".join(lines))
    return 0


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, default=None)
    parser.add_argument("--families", default="flux,sd3,wan")
    parser.add_argument("--depths", default="1,4,19")
    parser.add_argument("--backends", default="torch_xla")
    parser.add_argument("--modes", default="off,on")
    parser.add_argument("--warm-pairs", action="store_true",
                        help="warm s/step on vs off interleaved in one process per family, depth and backend")
    parser.add_argument("--pair-child", nargs=2, default=None)
    parser.add_argument("--mesh", default="", help="an SPMD mesh for every row, e.g. data=2,model=2")
    parser.add_argument("--devices", type=int, default=4, help="CPU devices of --mesh")
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, PACK)
        print(PREFIX + json.dumps(_child(args.child[0], int(args.child[1]))), flush=True)
        return 0
    if args.pair_child:
        sys.path.insert(0, PACK)
        print(PREFIX + json.dumps(_warm_pair(args.pair_child[0], int(args.pair_child[1]))), flush=True)
        return 0
    if args.warm_pairs:
        return _warm_pairs(args)
    lines = ["| family | depth | backend | block programs | first-run XLA compile s (compiles) | first run s "
             "| warm s/step (compiles) | host ms/model call | max abs diff vs eager |",
             "|---|---|---|---|---|---|---|---|---|"]
    for family in args.families.split(","):
        for depth in map(int, args.depths.split(",")):
            for backend in args.backends.split(","):
                for mode in args.modes.split(","):
                    r = run_row(family, depth, backend, mode, mesh=args.mesh, devices=args.devices)
                    lines.append(f"| {family} | {depth} | {backend} | {mode} | {r['first_compile_s']:.2f} "
                                 f"({r['first_compiles']}) | {r['first_wall_s']:.2f} | {r['warm_s_per_step']:.3f} "
                                 f"({r['warm_compiles']}) | {_ms(r['host_ms_per_call'])} | {r['diff']:.1e} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
