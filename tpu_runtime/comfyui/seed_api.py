"""The seed document's spellings of the pack's API inside a running ComfyUI: ``comfy.tpu_xla`` and
``comfy.cli_args.args.tpu_*``.

Scripts written against the seed document do ``from comfy.tpu_xla import get_tpu_stats, tpu_manager,
create_execution_signature`` and ``args.tpu_shape_padding_multiple = 128``. The pack writes no file
into ComfyUI's core, so ``comfy.tpu_xla`` is an alias of :mod:`tpu_runtime.api` (the very module,
one set of state) registered in ``sys.modules`` and as an attribute of the ``comfy`` package.

:func:`register` runs only when the TPU path comes on (``runtime.start``): with the pack disabled
such scripts fail with ``ModuleNotFoundError`` / ``AttributeError`` instead of silently doing
nothing. :func:`unregister` (``runtime.stop``) takes both away again.
"""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("comfy_tpu")

ALIAS = "comfy.tpu_xla"
_ATTRIBUTE = ALIAS.rpartition(".")[2]


def register() -> bool:
    """Make ``comfy.tpu_xla`` and ``args.tpu_*`` available; idempotent. False outside ComfyUI."""
    try:
        import comfy
        import comfy.cli_args
    except ImportError:
        log.debug("comfy-tpu: no ComfyUI in this process: %s not registered", ALIAS)
        return False
    from tpu_runtime import api
    from tpu_runtime.comfyui import seed_args

    # Global by necessity: the import system finds a module that no file provides only through
    # sys.modules, and ``import comfy.tpu_xla; comfy.tpu_xla.x`` reads the package attribute.
    sys.modules[ALIAS] = api
    setattr(comfy, _ATTRIBUTE, api)
    seed_args.install(comfy.cli_args.args)
    return True


def unregister() -> None:
    """Undo :func:`register` (only what it put there; no-op otherwise)."""
    from tpu_runtime import api
    from tpu_runtime.comfyui import seed_args

    if sys.modules.get(ALIAS) is api:
        del sys.modules[ALIAS]
    comfy = sys.modules.get("comfy")
    if comfy is not None and getattr(comfy, _ATTRIBUTE, None) is api:
        delattr(comfy, _ATTRIBUTE)
    cli_args = sys.modules.get("comfy.cli_args")
    if cli_args is not None:
        seed_args.uninstall(cli_args.args)
