"""comfy-tpu: ComfyUI custom-node pack that runs diffusion sampling on TPUs through PyTorch/XLA.

ComfyUI loads this file as a module named after the folder. ``tpu_runtime`` is put on ``sys.path``
and imported by its own name so that scripts and other nodes that ``import tpu_runtime`` share this
very module (one set of state), instead of a second copy.
"""
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

try:
    import tpu_runtime.runtime as _runtime

    # Only inside ComfyUI (it imports model_management before loading custom nodes); a test runner
    # or packaging tool importing this folder as a package gets no side effects.
    if "comfy.model_management" in sys.modules:
        _runtime.start()
        from tpu_nodes import comfy_entrypoint, register_routes  # noqa: F401  (V3 nodes)

        register_routes()
except Exception as _exc:  # never take ComfyUI down with us
    logging.getLogger("comfy_tpu").exception("comfy-tpu: failed to start, ComfyUI runs as stock: %s", _exc)
