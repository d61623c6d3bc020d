"""Test-only ComfyUI nodes: a tiny random-weight SD1.5-architecture model and random conditioning.

No weights can be downloaded in CI; these let workflows through the real server sample on XLA.
"""
import importlib.util
import os
import sys

_PACK = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
_TINY_MODEL = "comfy_tpu_test_tiny_model"


def _tiny_model():
    """The pack's ``bench/tiny_model.py``, imported by path under a private name: the pack's folder
    stays off ``sys.path`` in the server processes these nodes run in."""
    module = sys.modules.get(_TINY_MODEL)
    if module is None:
        spec = importlib.util.spec_from_file_location(_TINY_MODEL, os.path.join(_PACK, "bench", "tiny_model.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[_TINY_MODEL] = module
    return module


class TPUTestTinyModel:
    CATEGORY = "testing/tpu"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})},
                "optional": {"channels": ("INT", {"default": 32, "min": 32, "max": 128, "step": 32})}}

    def build(self, seed, channels=32):
        return (_tiny_model().build_patcher("tiny", seed=seed, overrides={"model_channels": channels} if channels != 32 else None),)


class TPUTestConditioning:
    CATEGORY = "testing/tpu"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 1, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 77, "min": 1, "max": 1024})}}

    def make(self, seed, tokens):
        return (_tiny_model().sd15_conditioning(seed, tokens),)


NODE_CLASS_MAPPINGS = {"TPUTestTinyModel": TPUTestTinyModel, "TPUTestConditioning": TPUTestConditioning}
