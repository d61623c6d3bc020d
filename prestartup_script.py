"""Runs before ``comfy.model_management`` is imported (ComfyUI's prestartup hook).

When the TPU path will be on and there is no CUDA, put ComfyUI in CPU mode (so it starts on a TPU
VM without ``--cpu``: importing model_management without CUDA would crash), and ask for PyTorch
SDPA attention, which XLA lowers well. Nothing here imports torch_xla.
"""
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def _prepare() -> None:
    from tpu_runtime.prestartup import prepare_comfy_args

    prepare_comfy_args()


try:
    _prepare()
except Exception as exc:  # never stop ComfyUI from starting
    logging.getLogger("comfy_tpu").warning("comfy-tpu prestartup skipped: %s", exc)
