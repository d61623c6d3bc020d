"""Which padding mode disturbs the borders least (figures, not a test).

Eager CPU, tiny SD1.5-architecture model, ComfyUI's ``comfy.sample.sample``: a latent of a size off
the bucket is sampled (a) as it is and (b) padded to the bucket with each mode, then cropped. The
difference on the outermost latent rows/columns next to the padding, and in the interior, says how
much the padding leaks into the picture.

    .venv/bin/python bench/bench_padding.py
"""
from __future__ import annotations

import os
import sys

os.environ["COMFY_TPU_DISABLE"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    from bench.comfy_host import import_comfy

    import_comfy(load_pack=False)
    import torch

    import comfy.sample
    from bench import tiny_model
    from tpu_runtime.sampling import padding

    patcher = tiny_model.build_patcher("tiny", seed=0, load_device=torch.device("cpu"))
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    rows = ["| size -> bucket | sampler | mode | max diff, 2 border rows/cols | mean diff, border | "
            "max diff, interior |", "|---|---|---|---|---|---|"]
    for size, sampler in ((120, "euler"), (104, "euler"), (120, "dpmpp_2m")):
        h = w = size // 8
        ph, pw = padding.padded_hw(h, w, 64)
        latent = torch.zeros(1, 4, h, w)
        noise = comfy.sample.prepare_noise(latent, 7)
        with torch.inference_mode():
            reference = comfy.sample.sample(patcher, noise, 8, 7.0, sampler, "normal", pos, neg, latent, seed=7)
            for mode in ("zeros", "replicate", "reflect", "circular"):
                out = comfy.sample.sample(patcher, padding.pad(noise, ph, pw, mode), 8, 7.0, sampler, "normal", pos,
                                          neg, padding.pad(latent, ph, pw, mode), seed=7)[..., :h, :w]
                diff = (out - reference).abs()
                border = torch.cat([diff[..., -2:, :].flatten(), diff[..., :, -2:].flatten()])
                interior = diff[..., : h - 4, : w - 4]
                rows.append(f"| {size} -> {ph * 8} | {sampler} | {mode} | {border.max():.3f} | {border.mean():.4f} | "
                            f"{interior.max():.2e} |")
                print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
