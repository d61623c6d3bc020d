"""Test-only ComfyUI nodes: a tiny random-weight SD1.5-architecture model and random conditioning.

No weights can be downloaded in CI; these let workflows through the real server sample on XLA.
"""
import os
import sys

_PACK = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
if _PACK not in sys.path:
    sys.path.insert(0, _PACK)


class TPUTestTinyModel:
    CATEGORY = "testing/tpu"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})},
                "optional": {"channels": ("INT", {"default": 32, "min": 32, "max": 128, "step": 32})}}

    def build(self, seed, channels=32):
        from tpu_runtime.tiny_model import build_patcher

        return (build_patcher("tiny", seed=seed, overrides={"model_channels": channels} if channels != 32 else None),)


class TPUTestConditioning:
    CATEGORY = "testing/tpu"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 77, "min": 1, "max": 1024})}}

    def make(self, seed, tokens):
        from tpu_runtime.tiny_model import sd15_conditioning

        return (sd15_conditioning(seed, tokens),)


NODE_CLASS_MAPPINGS = {"TPUTestTinyModel": TPUTestTinyModel, "TPUTestConditioning": TPUTestConditioning}
