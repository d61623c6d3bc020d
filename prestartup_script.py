"""Runs before ``comfy.model_management`` is imported (ComfyUI's prestartup hook).

When the TPU path will be on and there is no CUDA, put ComfyUI in CPU mode (so it starts on a TPU
VM without ``--cpu``: importing model_management without CUDA would crash), and ask for PyTorch
SDPA attention, which XLA lowers well. Nothing here imports torch_xla. The pack's folder is not put
on ``sys.path``: ``tpu_runtime`` is imported from it by name, as ``__init__.py`` does.
"""
import importlib.util
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _prepare() -> None:
    if "tpu_runtime" not in sys.modules:
        folder = os.path.join(_HERE, "tpu_runtime")
        spec = importlib.util.spec_from_file_location("tpu_runtime", os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules["tpu_runtime"] = module
        spec.loader.exec_module(module)
    from tpu_runtime.comfyui.prestartup import prepare_comfy_args

    prepare_comfy_args()


try:
    _prepare()
except Exception as exc:  # logged; ComfyUI must start even when the pack cannot prepare it
    logging.getLogger("comfy_tpu").warning("comfy-tpu prestartup skipped: %s", exc)
