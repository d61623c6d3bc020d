"""Child process for stock-vs-pack comparisons: one KSampler run, the latent saved to a file."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

parser = argparse.ArgumentParser()
parser.add_argument("--load-pack", action="store_true")
parser.add_argument("--out", required=True)
args = parser.parse_args()

from bench.comfy_host import import_comfy  # noqa: E402

nodes = import_comfy(load_pack=args.load_pack)
import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
from bench import tiny_model  # noqa: E402

patcher = tiny_model.build_patcher("tiny", seed=0)
with torch.inference_mode():
    out = nodes.common_ksampler(patcher, 42, 4, 7.0, "euler_ancestral", "karras", tiny_model.sd15_conditioning(1),
                                tiny_model.sd15_conditioning(2), {"samples": torch.zeros(1, 4, 16, 16)})[0]["samples"]
torch.save({"samples": out, "device": str(mm.get_torch_device())}, args.out)
