"""Conv kernels handed to XLA in the layout its CPU convolution reads (HWIO), not PyTorch's OIHW.

PyTorch keeps a Conv2d weight as OIHW; XLA:CPU's convolution reads its kernel as HWIO. With the
weight as a graph parameter, every execution of the model's graph first transposes every conv
kernel (the SD1.5 UNet at 256x256: 171 transpose-copies, 2.5 GB, a call), and in compiled mode the
argument buffers were also re-laid out on the calling thread (most of its host time). A twin of
each kernel stored HWIO on the device, handed to the conv as a permuted view, lets XLA fold the
permute into the convolution's dimension numbers: no copy a call (bench/RESULTS.md has the figures).

The twin is a non-persistent buffer of its layer (``comfy_tpu_hwio_kernel``): it moves with the
layer when ComfyUI offloads or reloads the model, ComfyUI counts its memory, it is not saved, and
dynamo treats it as a graph input (a tensor held elsewhere would be frozen into the captured graph
as a constant: measured, a stale kernel after a LoRA patch was removed). It goes in through ComfyUI's
own per-layer hook (``weight_function`` of ``comfy.ops`` layers) for the length of one model call,
only on layers with no other weight or bias function (LoRA's low-VRAM patches use the same hook:
those layers keep their own path). A twin is refilled in place when its weight changes (a new
weight object, new device data, an in-place write).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING, Iterator, Literal, Optional

import torch

if TYPE_CHECKING:
    from tpu_runtime.backends.weight_shard import Placement

KernelLayout = Literal["auto", "hwio", "native"]
BUFFER = "comfy_tpu_hwio_kernel"
TWIN_PERMUTATION = (2, 3, 1, 0)  # OIHW -> HWIO
_STATE = "_comfy_tpu_hwio_state"  # the layer's (weight ref, weight token, HwioKernel), in its __dict__


def resolve(setting: KernelLayout, device_type: str) -> bool:
    """Whether twins are used: ``auto`` means on the PJRT CPU device, the one where it was measured."""
    if setting == "auto":
        return device_type.upper() == "CPU"
    return setting == "hwio"


def twins_on(setting: KernelLayout, backend) -> bool:
    """Whether this backend runs with HWIO twins: torch_xla's (its CPU device's conv lowering) only; a
    backend that traces functions (torchax) has none."""
    return resolve(setting, backend.device_type()) and not backend.traces_functions


class HwioKernel:
    """A layer's ``weight_function``: its HWIO twin, viewed as OIHW, in the weight's dtype."""

    def __init__(self, layer: torch.nn.Module) -> None:
        # Weakly: the kernel lives in the layer's own __dict__, and a strong reference back would make a
        # cycle that only a second garbage collection frees (measured: one model's weights and twins
        # stayed on the device after ComfyUI unloaded it and collected once).
        self.layer = weakref.ref(layer)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return getattr(self.layer(), BUFFER).permute(3, 2, 0, 1).to(weight.dtype)


class KernelTwins:
    """Makes and refreshes the HWIO twins of conv layers on the device."""

    def __init__(self, backend, placement: Optional["Placement"] = None) -> None:
        self.backend = backend
        #: Under a 'model' axis, a twin is split as its weight is (permuted), never whole on a chip.
        self.placement = placement
        self.made = 0  # twins made or refilled so far (tests and stats read it)
        # Each model's conv layers, found once (walking a UNet's modules every call costs milliseconds).
        self._convs: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()

    def _conv_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        layers = self._convs.get(model)
        if layers is None:
            layers = self._convs[model] = [layer for layer in model.modules() if isinstance(layer, torch.nn.Conv2d)]
        return layers

    def _eligible(self, layer: torch.nn.Module) -> bool:
        weight = getattr(layer, "weight", None)
        return (isinstance(layer, torch.nn.Conv2d) and isinstance(weight, torch.Tensor) and weight.dim() == 4
                and hasattr(layer, "weight_function") and not layer.weight_function
                and not getattr(layer, "bias_function", None) and self.backend.is_device(weight.device))

    def kernels_for(self, model: torch.nn.Module) -> list[tuple[torch.nn.Module, HwioKernel]]:
        """Each eligible conv layer of ``model`` with its kernel function, its twin up to date.

        When any twin is stale, every twin of the model is refilled, together, in one small graph (so
        it never joins the model's own graph): the refill is then the same graph whichever layers
        changed, one compile for all states. Refilling only the changed ones made a graph per set of
        changed layers: removing a LoRA from the 20 3x3 convs it patched compiled a new one."""
        layers = [layer for layer in self._conv_layers(model) if self._eligible(layer)]
        tokens = [self.backend.tensor_token(layer.weight) for layer in layers]
        stale = any(_stale(vars(layer).get(_STATE), layer.weight, token) for layer, token in zip(layers, tokens))
        if stale:
            fresh = []
            for layer, token in zip(layers, tokens):
                state = vars(layer).get(_STATE)
                kernel = state[2] if state is not None else HwioKernel(layer)
                fresh.append(self._refill(layer, layer.weight))
                vars(layer)[_STATE] = (weakref.ref(layer.weight), token, kernel)
            self.backend.materialize(fresh)
            self.made += len(fresh)
        return [(layer, vars(layer)[_STATE][2]) for layer in layers]

    def _refill(self, layer: torch.nn.Module, weight: torch.Tensor) -> torch.Tensor:
        twin = self._fill(layer, weight)
        spec = self.placement.twin_spec(layer, TWIN_PERMUTATION) if self.placement is not None else None
        if spec is not None and not self.backend.tensor_sharding(twin):
            self.backend.shard_tensor(twin, spec)
        return twin

    @staticmethod
    def _fill(layer: torch.nn.Module, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            # A copy, not a view: on an XLA device ``contiguous()`` of the permuted weight is a view of
            # it, so a refill written into the twin would also write the weight it was made from
            # (measured: a LoRA's values written into the base model's saved weight).
            values = weight.detach().permute(*TWIN_PERMUTATION).clone()
            twin = layer._buffers.get(BUFFER)
            # A twin made under inference mode (ComfyUI's nodes, a warm-up) cannot be written in
            # place outside it (a script sampling with grad mode on): it is replaced instead.
            writable = twin is not None and (torch.is_inference_mode_enabled() or not twin.is_inference())
            if (writable and twin.device == values.device
                    and (twin.shape, twin.dtype) == (values.shape, values.dtype)):
                twin.copy_(values)  # same tensor: no new graph input shape, nothing recaptured
                return twin
            layer.register_buffer(BUFFER, values, persistent=False)
            return values

    @contextlib.contextmanager
    def applied(self, model: Optional[torch.nn.Module]) -> Iterator[int]:
        """For the length of one model call, every eligible conv layer of ``model`` reads its twin."""
        pairs = self.kernels_for(model) if isinstance(model, torch.nn.Module) else []
        saved = [vars(layer).get("weight_function", _CLASS_LEVEL) for layer, _ in pairs]
        for layer, kernel in pairs:
            vars(layer)["weight_function"] = [kernel]  # a plain attribute: no nn.Module bookkeeping
        try:
            yield len(pairs)
        finally:
            for (layer, _), before in zip(pairs, saved):
                if before is _CLASS_LEVEL:
                    vars(layer).pop("weight_function", None)
                else:
                    vars(layer)["weight_function"] = before


_CLASS_LEVEL = object()  # the layer had no weight_function of its own, only its class's


def _stale(state: Optional[tuple], weight: torch.Tensor, token: object) -> bool:
    """The layer has no twin yet, or its weight is another tensor or was written since the twin was made."""
    return state is None or state[0]() is not weight or state[1] != token
