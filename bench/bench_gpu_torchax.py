"""Real-size SDXL-, Flux- and Wan-shaped models through the pack's torchax backend on an NVIDIA GPU (issue 31).

A 2-core CPU cannot give real-size figures; JAX's CUDA build can run the same backend on a GPU. Each model
is built from ComfyUI's own classes (``comfy.supported_models`` SDXL, Flux, WAN21_T2V) at its released
size (the configs ComfyUI's model detection gives the real checkpoints: SDXL base, Flux.1-dev, Wan 2.1
T2V 1.3B), with seeded random weights (bench/tiny_zoo.py's filling), and sampled through
``nodes.common_ksampler`` with ``COMFY_TPU_BACKEND=torchax``. Per model it prints:

* **compile s**: JAX's backend-compile seconds of the first run in a fresh process with an empty cache;
* **s/step**: wall seconds a step over a second run (programs compiled, weights on the device);
* **restart compile s**: the same first run in a second process on the same JAX cache folder (what a
  ComfyUI restart costs: programs loaded from JAX's persistent cache).

On a GPU machine (one process per model and phase; ~40 GB of host RAM for Flux's bf16 weights):

    python3 -m venv /tmp/gpu && /tmp/gpu/bin/pip install torch torchvision "jax[cuda12]==0.10.2" torchax==0.0.13
    /tmp/gpu/bin/python scripts/install_comfy_requirements.py "$COMFYUI_PATH/requirements.txt"
    /tmp/gpu/bin/pip install -e . && COMFYUI_PATH=... /tmp/gpu/bin/python bench/bench_gpu_torchax.py
    # options: --models sdxl,flux,wan --steps 4 --dtype bf16 --sdxl-px 1024 --flux-px 1024 --wan-px 480x832 --wan-frames 21

``--tiny`` runs the same code path with bench/tiny_zoo.py's small configs on JAX's CPU device (64 px, fp32,
2 steps): the proof here that the script works (about a minute on 2 cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "GPU-BENCH-RESULT "
MODELS = ("sdxl", "flux", "wan")

#: The released models' configs, as ComfyUI's model detection reads them from the checkpoints.
REAL = {
    "sdxl": dict(
        unet_config=dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                         num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                         num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                         transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048,
                         num_head_channels=64, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                         use_temporal_attention=False, use_temporal_resblock=False),
        context_dim=2048, tokens=77, pooled=1280),
    "flux": dict(  # Flux.1-dev
        unet_config=dict(image_model="flux", guidance_embed=True, in_channels=16, out_channels=16, vec_in_dim=768,
                         context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19,
                         depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True),
        context_dim=4096, tokens=512, pooled=768),
    "wan": dict(  # Wan 2.1 T2V 1.3B
        unet_config=dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16, dim=1536,
                         ffn_dim=8960, freq_dim=256, text_dim=4096, num_heads=12, num_layers=30, window_size=(-1, -1),
                         qk_norm=True, cross_attn_norm=True, eps=1e-6),
        context_dim=4096, tokens=512),
}


def real_family(name: str):
    """The zoo's family ``name`` at its released size."""
    from bench import tiny_zoo

    return dataclasses.replace(tiny_zoo.family(name), **REAL[name])


def latent_shape(fam, height: int, width: int, frames: int) -> tuple[int, ...]:
    if fam.video:
        return (1, fam.latent_channels, frames, height // 8, width // 8)
    return (1, fam.latent_channels, height // 8, width // 8)


def _child(name: str, args: argparse.Namespace) -> dict:
    sys.path.insert(0, PACK)
    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime

    state = runtime.current()
    if state is None or not state.decision.on or state.backend is None or state.backend.name != "torchax":
        return {"error": f"the torchax backend is not on: {state.decision.reason if state else 'no pack state'}"}
    backend = state.backend
    fam = tiny_zoo.family(name) if args.tiny else real_family(name)
    height, width = args.px[name]
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    built = time.perf_counter()
    patcher = tiny_zoo.build_patcher(fam, seed=0, dtype=dtype)
    build_s = time.perf_counter() - built
    params = sum(p.numel() for p in patcher.model.diffusion_model.parameters())
    latent = {"samples": torch.zeros(latent_shape(fam, height, width, args.wan_frames))}
    positive, negative = tiny_zoo.conditioning(fam, 1, size=width), tiny_zoo.conditioning(fam, 2, size=width)

    def sample(steps: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = nodes.common_ksampler(patcher, 42, steps, fam.cfg, "euler", "normal", positive, negative,
                                        latent)[0]["samples"]
        if not torch.isfinite(out).all():
            raise RuntimeError(f"{name}: the sampled latent is not finite")
        return time.perf_counter() - start

    before, seconds = backend.counters(), backend.compile_seconds()
    first_wall = sample(args.steps)
    middle, compile_s = backend.counters(), backend.compile_seconds() - seconds
    wall = sample(args.steps)
    after = backend.counters()
    return {"model": name, "device": str(getattr(backend.jax_device(), "device_kind", None) or backend.device_type()),
            "params": params, "dtype": args.dtype, "latent": list(latent["samples"].shape), "steps": args.steps,
            "build_s": round(build_s, 2), "first_run_wall_s": round(first_wall, 2), "compile_s": round(compile_s, 2),
            "compiles": middle["compiles"] - before["compiles"], "cache_hits": middle["persistent_cache_hits"]
            - before["persistent_cache_hits"], "s_per_step": round(wall / args.steps, 4),
            "second_run_compiles": after["compiles"] - middle["compiles"]}


def _run(name: str, cache_dir: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "COMFY_TPU_ENABLE": "1", "COMFY_TPU_BACKEND": "torchax", "COMFY_TPU_CACHE_DIR": cache_dir,
           "COMFY_TPU_AUTOCAST_BF16": "0"}
    if args.tiny:
        env.update(JAX_PLATFORMS="cpu", PJRT_DEVICE="CPU")
    command = [sys.executable, os.path.abspath(__file__), "--child", name, *sys.argv[1:]]
    out = subprocess.run(command, env=env, cwd=PACK, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(PREFIX)]
    if out.returncode or not lines:
        return {"model": name, "error": f"exit {out.returncode}: {out.stderr[-2000:]}"}
    return json.loads(lines[-1][len(PREFIX):])


def _pixels(text: str) -> tuple[int, int]:
    """``1024`` or ``480x832`` (height x width) -> (height, width)."""
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="tiny_zoo's configs on JAX's CPU device (proof run)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=None, help="steps a run (default 4; --tiny 2)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="weights (default bf16; --tiny fp32)")
    parser.add_argument("--sdxl-px", default=None, help="default 1024 (--tiny 64)")
    parser.add_argument("--flux-px", default=None, help="default 1024 (--tiny 64)")
    parser.add_argument("--wan-px", default=None, help="height x width, default 480x832 (--tiny 64)")
    parser.add_argument("--wan-frames", type=int, default=None, help="latent frames, default 21 (81 video frames; "
                                                                     "--tiny 2)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (2 if tiny else 4)
    args.dtype = args.dtype or ("fp32" if tiny else "bf16")
    args.wan_frames = args.wan_frames or (2 if tiny else 21)
    args.px = {"sdxl": _pixels(args.sdxl_px or ("64" if tiny else "1024")),
               "flux": _pixels(args.flux_px or ("64" if tiny else "1024")),
               "wan": _pixels(args.wan_px or ("64" if tiny else "480x832"))}
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    return args


def main() -> int:
    argv = sys.argv[1:]
    if "--child" in argv:
        at = argv.index("--child")
        name, rest = argv[at + 1], argv[:at] + argv[at + 2:]
        print(PREFIX + json.dumps(_child(name, parse(rest))), flush=True)
        return 0
    args = parse(argv)
    rows, failed = [], False
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"comfy-tpu-gpu-{name}-") as cache_dir:
            first = _run(name, cache_dir, args)
            print(json.dumps(first), flush=True)
            restart = _run(name, cache_dir, args) if "error" not in first else {"error": "not run"}
            print(json.dumps({"restart": restart}), flush=True)
        failed |= "error" in first or "error" in restart
        rows.append((first, restart))
    print("\n| model | device | params | dtype | latent | s/step | compile s | restart compile s | restart compiles |")
    print("|---|---|---|---|---|---|---|---|---|")
    for first, restart in rows:
        if "error" in first:
            print(f"| {first['model']} | failed: {first['error'][-200:]!r} |")
            continue
        print(f"| {first['model']} | {first['device']} | {first['params'] / 1e6:.1f} M | {first['dtype']} | "
              f"{'x'.join(map(str, first['latent']))} | {first['s_per_step']} | {first['compile_s']} | "
              f"{restart.get('compile_s', '-')} | {restart.get('compiles', '-')} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
