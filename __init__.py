"""comfy-tpu: ComfyUI custom-node pack that runs diffusion sampling on TPUs through PyTorch/XLA.

ComfyUI loads this file as a module named after the folder. The pack's two packages are imported
under their own names (``tpu_runtime``, ``tpu_nodes``, as ``pip install`` would name them) straight
from this folder, which is never put on ``sys.path``: the pack's ``tests``, ``bench``, ``scripts``
and ``install`` stay out of every ComfyUI process's top-level names, and code that does
``import tpu_runtime`` gets the very module the pack runs (one state).
"""
import importlib.util
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_log = logging.getLogger("comfy_tpu")


def _import_own(name: str):
    """The pack's package ``name``, imported from this folder (or the copy already imported from it)."""
    folder = os.path.join(_HERE, name)
    existing = sys.modules.get(name)
    if existing is not None:
        existing_dir = os.path.dirname(getattr(existing, "__file__", None) or "")
        if os.path.realpath(existing_dir) == os.path.realpath(folder):
            return existing
        _log.warning("comfy-tpu: another %s was imported (%s); the pack replaces it with its own (%s)", name,
                     existing_dir or "?", folder)
        for loaded in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            del sys.modules[loaded]
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


try:
    _import_own("tpu_runtime")
    from tpu_runtime import runtime as _runtime

    # Only inside ComfyUI (it imports model_management before loading custom nodes); a test runner
    # or packaging tool importing this folder as a package gets no side effects.
    if "comfy.model_management" in sys.modules:
        _STATE = _runtime.start()
        _nodes = _import_own("tpu_nodes")
        _nodes.register_routes(_STATE)

        async def comfy_entrypoint():
            """ComfyUI's V3 entry point: the pack's nodes, bound to its state."""
            return _nodes.TPUExtension(_STATE)
except Exception as _exc:  # logged with its traceback; ComfyUI then runs as stock, never taken down by us
    _log.exception("comfy-tpu: failed to start, ComfyUI runs as stock: %s", _exc)
