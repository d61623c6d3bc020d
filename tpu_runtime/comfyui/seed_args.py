"""``comfy.cli_args.args.tpu_*``: the seed document's flags as attributes of ComfyUI's own ``args``.

The seed document's scripts read and set ``args.tpu_shape_padding_multiple`` and friends. ComfyUI
rejects unknown command-line flags, so the pack reads ``COMFY_TPU_*`` variables instead; these
attributes show the setting in force and change it for the runs to come (see
:mod:`tpu_runtime.settings.live`, which validates, applies and logs).

Why the one ``args`` object gets a subclass (``args.__class__ = TPUArgs``):

* ``args`` is the ``argparse.Namespace`` that ``comfy.cli_args`` made once; ComfyUI's modules and
  scripts hold that very object (``from comfy.cli_args import args``), so it cannot be swapped for a
  wrapper object.
* Plain attributes could neither validate a new value nor hand it to the next run.
* Properties set on ``argparse.Namespace`` itself would appear on every Namespace in the process.

A subclass whose only additions are the ``tpu_*`` properties leaves ComfyUI's own attributes as they
are (``vars(args)`` is unchanged), is idempotent (an ``args`` already of this class is left alone)
and reversible (:func:`uninstall` gives it back its own class). The class lives at module level so
``args`` stays picklable by reference.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from tpu_runtime.settings import live as live_settings
from tpu_runtime.settings.tpu_settings import env_var

log = logging.getLogger("comfy_tpu")

#: ``args`` attribute -> settings field, one per seed flag (``--tpu-sync-steps`` -> ``tpu_sync_steps``).
SEED_ARGS: dict[str, str] = {f"tpu_{field}": field for field in live_settings.SEED_FIELDS}


def _seed_property(name: str, field: str) -> property:
    def read(self: argparse.Namespace) -> Any:
        return live_settings.current(field)

    def write(self: argparse.Namespace, value: Any) -> None:
        live_settings.change(field, value, source=f"args.{name}")

    return property(read, write, doc=f"The setting in force for --{name.replace('_', '-')} "
                                     f"({env_var(field)}); setting it applies from the next run.")


class TPUArgs(argparse.Namespace):
    """ComfyUI's ``args`` plus one property per seed flag (``tpu_*``); nothing else differs."""


for _name, _field in SEED_ARGS.items():
    setattr(TPUArgs, _name, _seed_property(_name, _field))
del _name, _field


def install(args: argparse.Namespace) -> bool:
    """Give ``args`` the ``tpu_*`` properties; True when it has them (now or already)."""
    if type(args) is TPUArgs:
        return True
    if type(args) is not argparse.Namespace:
        log.warning("comfy-tpu: comfy.cli_args.args is a %s, not an argparse.Namespace: no args.tpu_* attributes",
                    type(args).__name__)
        return False
    clashes = sorted(set(SEED_ARGS) & set(vars(args)))
    if clashes:  # a ComfyUI that parses these flags itself: its values stay, ours would shadow them
        log.warning("comfy-tpu: ComfyUI's args already has %s: left as they are (the pack reads COMFY_TPU_* "
                    "variables)", ", ".join(clashes))
        return False
    args.__class__ = TPUArgs
    return True


def uninstall(args: argparse.Namespace) -> None:
    """Undo :func:`install` (no-op when it is not installed)."""
    if type(args) is TPUArgs:
        args.__class__ = argparse.Namespace
