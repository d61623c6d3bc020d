"""The main job: a txt2img KSampler run twice on the XLA device, with the figures that matter.

``python -m bench.demo [--ckpt NAME] [--steps 8 12] [--size 256]``. With ``--ckpt`` (a file in
ComfyUI's models/checkpoints) it runs the checkpoint with its CLIP and VAE; otherwise a small
random-weight SD1.5-architecture UNet (built from ComfyUI's classes) and a latent-to-RGB preview.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.setdefault("COMFY_TPU_ENABLE", "1")


def _image_from_latent(latent, latent_format):
    """A viewable image from a latent without a VAE: ComfyUI's latent-to-RGB factors, upscaled 8x."""
    import torch

    factors = torch.tensor(latent_format.latent_rgb_factors, dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->bhwr", latent.float(), factors)
    rgb = (rgb - rgb.amin()) / (rgb.amax() - rgb.amin() + 1e-6)
    return rgb.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", default=os.environ.get("COMFY_TPU_DEMO_CKPT"))
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 12])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sampler", default="euler")
    args = parser.parse_args(argv)

    from bench.comfy_host import import_comfy

    nodes = import_comfy(load_pack=True)
    import torch

    from bench import tiny_model
    from tpu_runtime import runtime

    state = runtime.current()
    print(f"comfy-tpu demo: TPU path {'on' if state and state.decision.on else 'off'}"
          f" ({state.decision.reason if state else 'not started'})")
    backend = state.backend if state else None
    if state is None or not state.on:
        print("The TPU path is off; nothing to show. Run `python -m tpu_runtime doctor` to see why.")
        return 1
    if args.ckpt:
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(args.ckpt)[:3]
        positive = nodes.CLIPTextEncode().encode(clip, "a lighthouse on a cliff at dawn")[0]
        negative = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
        label = args.ckpt
    else:
        model, vae = tiny_model.build_patcher("tiny", seed=0), None
        positive, negative = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
        label = "tiny random SD1.5-architecture UNet"
    print(f"model: {label}; device {model.load_device}; {args.size}x{args.size}; sampler {args.sampler}")
    latent = nodes.EmptyLatentImage().generate(args.size, args.size, 1)[0]

    rows = []
    for run, steps in enumerate(args.steps, start=1):
        before, fallbacks_before = backend.counters(), backend.fallback_ops()
        start = time.perf_counter()
        with torch.inference_mode():
            samples = nodes.common_ksampler(model, 1000 + run, steps, 7.0, args.sampler, "normal", positive,
                                            negative, latent)[0]
            image = (vae.decode(samples["samples"]) if vae is not None
                     else _image_from_latent(samples["samples"], model.model.latent_format))
        wall = time.perf_counter() - start
        after = backend.counters()
        fallbacks = {k: v - fallbacks_before.get(k, 0) for k, v in backend.fallback_ops().items()
                     if v != fallbacks_before.get(k, 0)}
        saved = nodes.SaveImage().save_images(image, filename_prefix=f"comfy-tpu-demo-run{run}")
        name = saved["ui"]["images"][0]["filename"]
        rows.append((run, steps, wall, after["compiles"] - before["compiles"],
                     after["executions"] - before["executions"],
                     after["transfers_to_host"] - before["transfers_to_host"],
                     after["dynamo_frames"] - before["dynamo_frames"],
                     ", ".join(f"{k} x{v}" for k, v in fallbacks.items()) or "none", name))

    print()
    options = state.options
    kernels = ("native (the torchax backend makes no kernel twins)" if getattr(backend, "traces_functions", False)
               else f"{options.conv_kernel_layout} (COMFY_TPU_CONV_KERNEL_LAYOUT; auto = hwio on the PJRT CPU device)")
    print(f"execution mode: {options.execution} (COMFY_TPU_EXECUTION); conv kernels: {kernels}")
    print(f"{'run':>3} {'steps':>5} {'wall s':>8} {'XLA compiles':>12} {'executions':>10} {'to-host':>7} "
          f"{'dynamo captures':>15}  {'CPU fallbacks':<14} image")
    for run, steps, wall, compiles, executions, transfers, captures, fallbacks, name in rows:
        print(f"{run:>3} {steps:>5} {wall:>8.2f} {compiles:>12} {executions:>10} {transfers:>7} {captures:>15}  "
              f"{fallbacks:<14} output/{name}")
    totals = backend.counters()
    program_s = getattr(backend, "program_seconds", None)
    print(f"backend: {backend.name} (COMFY_TPU_BACKEND); XLA compile seconds in this process (compiles or "
          f"persistent-cache loads, warm-ups included): {backend.compile_seconds():.2f}"
          + (f"; with JAX's tracing and lowering: {program_s():.2f}" if program_s else "")
          + f"; persistent cache: {totals['persistent_cache_hits']} hit(s), "
            f"{totals['persistent_cache_misses']} miss(es)")
    print("\nA second run with another seed and step count compiles nothing: the step graph does not "
          "depend on the step index, step count, sigma or cfg value.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
