"""The device layer inside the real ComfyUI: XLA for the diffusion model, stock devices elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from tests.comfy_env import PACK_DIR


def test_comfy_reports_the_xla_device(comfy):
    import comfy.model_management as mm
    import comfy.sd as comfy_sd

    assert str(mm.get_torch_device()) == "xla:0"
    assert hasattr(vars(comfy_sd.VAE)["decode"], "__wrapped__")  # installed again
    assert mm.text_encoder_device().type == "cpu" and mm.vae_device().type == "cpu"
    assert mm.intermediate_device().type == "cpu"
    assert mm.get_total_memory(mm.get_torch_device()) > 0 and mm.get_free_memory(mm.get_torch_device()) > 0
    assert mm.should_use_bf16(mm.get_torch_device())


def test_unet_dtype_follows_autocast(comfy):
    import comfy.model_management as mm

    from tests.sampling_harness import run_options

    assert mm.unet_dtype() == torch.float32  # the tests run with COMFY_TPU_AUTOCAST_BF16=0
    with run_options(autocast_bf16=True):
        assert mm.unet_dtype() == torch.bfloat16


def test_patches_are_idempotent_and_reversible(comfy, backend):
    import comfy.model_management as mm
    import comfy.samplers
    import tpu_runtime.comfyui.patches as patches
    from tpu_runtime import runtime

    state = runtime.current()
    patched = mm.get_torch_device
    assert patches.install(state) is state.patches  # a second install changes nothing
    assert mm.get_torch_device is patched
    original = state.patches.original("comfy.model_management", "get_torch_device")
    state.patches.uninstall()
    try:
        assert mm.get_torch_device is original
        assert mm.get_torch_device().type == "cpu"
        assert "host_model_sampling" not in comfy.samplers.calculate_sigmas.__code__.co_names
        import comfy.sd
        import comfy.sd1_clip

        # The workflow parts' patches (VAE methods, CLIP encoders) are put back too.
        assert not any(hasattr(vars(comfy.sd.VAE)[name], "__wrapped__") for name in ("decode", "encode"))
        assert not hasattr(comfy.sd1_clip.SDClipModel.forward, "__wrapped__")
    finally:
        patches.install(state)
    assert str(mm.get_torch_device()) == "xla:0"


def _child_run(tmp_path, name: str, load_pack: bool, env: dict) -> dict:
    out = tmp_path / f"{name}.pt"
    child_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    command = [sys.executable, str(PACK_DIR / "tests" / "run_ksampler.py"), "--out", str(out)]
    subprocess.run(command + (["--load-pack"] if load_pack else []), check=True, env=child_env, timeout=600)
    return torch.load(out)


def test_path_off_gives_exactly_stock_results(tmp_path):
    stock = _child_run(tmp_path, "stock", False, {"COMFY_TPU_ENABLE": None})
    disabled = _child_run(tmp_path, "disabled", True, {"COMFY_TPU_ENABLE": None, "COMFY_TPU_DISABLE": "1"})
    assert stock["device"] == disabled["device"] == "cpu"
    assert torch.equal(stock["samples"], disabled["samples"])
