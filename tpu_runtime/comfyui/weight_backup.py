"""ComfyUI's backup of a weight a patch (a LoRA) replaces, kept on the XLA device.

Before ComfyUI patches a weight it backs it up to the offload device: ``weight.to(offload_device)``,
one device-to-host transfer per patched weight each time a LoRA clone loads (measured: 76 for a
kohya LoRA on every attention projection and 3x3 conv of the SD1.5-architecture model, at every
strength change). Where ComfyUI replaces the parameter (no in-place update) the backup is a copy on
the device instead: no transfer. A copy, not the weight itself, so that nothing written to the device
weight later reaches the backup (a wrong restore once measured 1.9 off eager: the conv twins of
``backends/kernel_layout`` were views that wrote through into the weight, since fixed there). The cost
is chip memory: the patched weights' originals stay on the chip while the LoRA is applied (ComfyUI
keeps them in host memory).
"""
from __future__ import annotations

import collections
from typing import Any, Callable

#: ComfyUI's own backup record (``model_patcher``'s ``namedtuple('Dimension', ...)``).
Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])


def backup_on_device(patch: Callable, is_xla: Callable[[Any], bool]) -> Callable:
    """``ModelPatcher.patch_weight_to_device`` (``patch``, ComfyUI's) that backs up a device weight it is
    about to replace with a copy on the device, then lets ComfyUI patch it (every other case: ComfyUI's
    path)."""
    import comfy.model_patcher

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False, *args, **kwargs):
        if key in self.patches and key not in self.backup and not (self.weight_inplace_update or inplace_update):
            weight, set_func, convert_func = comfy.model_patcher.get_key_weight(self.model, key)
            if set_func is None and convert_func is None and is_xla(weight.device) and is_xla(device_to):
                # A copy on the device: torch_xla may donate the weight's own buffer to the patched result.
                self.backup[key] = Backup(weight.detach().clone(), False)
        return patch(self, key, device_to, inplace_update, *args, **kwargs)

    return patch_weight_to_device
