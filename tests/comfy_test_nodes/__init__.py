"""Test-only ComfyUI nodes: a tiny random-weight SD1.5-architecture model and random conditioning.

No weights can be downloaded in CI; these let workflows through the real server sample on XLA.
"""
import importlib.util
import os
import sys

_PACK = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
_TINY_MODEL = "comfy_tpu_test_tiny_model"


def _bench_module(private_name, file_name):
    """A module of the pack's ``bench/``, imported by path under a private name: the pack's folder
    stays off ``sys.path`` in the server processes these nodes run in."""
    module = sys.modules.get(private_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(private_name, os.path.join(_PACK, "bench", file_name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[private_name] = module
    return module


def _tiny_model():
    return _bench_module(_TINY_MODEL, "tiny_model.py")


def _workflow_parts():
    return _bench_module("comfy_tpu_test_workflow_parts", "workflow_parts.py")


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


class TPUTestVAE:
    """A random-weight VAE of ComfyUI's own classes: full-size SD1.5 or Flux (16 channels), tiny Wan 2.1."""

    CATEGORY = "testing/tpu"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["sd15", "flux", "wan21"],),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def build(self, kind, seed):
        return (_workflow_parts().build_vae(kind, seed),)


class TPUTestCLIP:
    """ComfyUI's SD1.5 CLIP-L (full size, random weights) with its own tokenizer."""

    CATEGORY = "testing/tpu"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def build(self, seed):
        return (_workflow_parts().build_clip_l(seed),)


NODE_CLASS_MAPPINGS = {"TPUTestTinyModel": TPUTestTinyModel, "TPUTestConditioning": TPUTestConditioning,
                       "TPUTestVAE": TPUTestVAE, "TPUTestCLIP": TPUTestCLIP}
