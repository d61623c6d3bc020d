"""The workflow's other parts on the device: ComfyUI's VAE and text encoders (``COMFY_TPU_VAE``,
``COMFY_TPU_TEXT_ENCODERS``).

This object decides where each part runs, keeps the programs of each module that runs there (weakly
keyed by the module: they go when ComfyUI drops the model) and the figures ``/tpu/stats`` shows: per
part, where its last call ran, its calls and seconds.
"""
from __future__ import annotations

import logging
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Optional

import torch
from pydantic import BaseModel

from tpu_runtime.cache.part_shapes import PartShapes
from tpu_runtime.execution.module_programs import CallPrograms

log = logging.getLogger("comfy_tpu")

Part = Literal["vae", "text_encoders"]
#: Backends whose programs these parts can run as (torch_xla: lazy traces; torchax: jitted functions).
DEVICE_BACKENDS = ("torch_xla", "torchax")


class PartFigures(BaseModel):
    """What ``/tpu/stats`` says of one part."""

    setting: str
    where: str  # "device", "host", or "not run yet"
    calls: int = 0
    seconds: float = 0.0
    last_seconds: float = 0.0
    fell_back: Optional[str] = None  # why the last failure sent it to the host
    compiles: int = 0  # XLA compiles during its calls (all of them)
    transfers_to_host: int = 0  # device-to-host transfers during its calls


def placement(setting: str, backend_name: str, device_type: str) -> str:
    """Where a part goes: ``device`` when it is asked for (``auto``: on a TPU) and the backend runs it there.

    ``auto`` keeps the parts on the host off a TPU: on the PJRT CPU device XLA's programs run on the same
    cores as PyTorch's own decode and were slower than it (bench/RESULTS.md, bench_workflow.py)."""
    wanted = setting == "device" or (setting == "auto" and device_type.upper() == "TPU")
    return "device" if wanted and backend_name in DEVICE_BACKENDS else "host"


class DeviceParts:
    """Where the VAE and the text encoders run, their programs and figures."""

    def __init__(self, backend: Any, vae: str, text_encoders: str, shapes: Optional[PartShapes] = None,
                 rewarm: bool = True) -> None:
        self._backend = backend
        #: The VAE call shapes compiled in this and earlier sessions; compiled at a VAE's first use when
        #: ``rewarm`` (``COMFY_TPU_REWARM``).
        self.shapes = shapes if shapes is not None else PartShapes(None)
        self.rewarm = rewarm
        self._used: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()
        self.settings = {"vae": vae, "text_encoders": text_encoders}
        device_type = backend.device_type()
        self.where = {part: placement(value, backend.name, device_type) for part, value in self.settings.items()}
        self._programs: "weakref.WeakKeyDictionary[torch.nn.Module, CallPrograms]" = weakref.WeakKeyDictionary()
        #: Modules loaded for the device (a text encoder whose CLIP's load device is the pack's): on torchax
        #: their weights are host tensors, so where they run is known from here, not from the weights.
        self._for_device: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()
        self._figures = {part: PartFigures(setting=value, where="not run yet") for part, value in self.settings.items()}
        for part, value in self.settings.items():
            if value == "device" and self.where[part] == "host":
                log.info("comfy-tpu: %s stay on the host with the %s backend (device programs for them are "
                         "torch_xla and torchax only)", "the VAE" if part == "vae" else "text encoders", backend.name)

    def on_device(self, part: Part) -> bool:
        return self.where[part] == "device"

    def first_use(self, module: torch.nn.Module) -> bool:
        """True the first time it is asked of ``module`` in this process."""
        if module in self._used:
            return False
        self._used.add(module)
        return True

    def load_for_device(self, module: torch.nn.Module) -> None:
        self._for_device.add(module)

    def loaded_for_device(self, module: torch.nn.Module) -> bool:
        return module in self._for_device

    def programs(self, module: torch.nn.Module, name: str) -> CallPrograms:
        """The programs of ``module`` (made on first use)."""
        found = self._programs.get(module)
        if found is None:
            found = self._programs[module] = CallPrograms(self._backend, module, name)
        return found

    @contextmanager
    def timed(self, part: Part, where: str) -> Iterator[None]:
        """Times one call of a part and records where it ran."""
        start, before = time.perf_counter(), self._backend.counters()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            after = self._backend.counters()
            figures = self._figures[part]
            figures.where, figures.calls = where, figures.calls + 1
            figures.compiles += after["compiles"] - before["compiles"]
            figures.transfers_to_host += after["transfers_to_host"] - before["transfers_to_host"]
            figures.seconds += seconds
            figures.last_seconds = seconds

    def warm(self, vae: Any, clip: Any, latent_shape: tuple[int, ...]) -> dict[str, int]:
        """Compile the parts' programs for a size ahead of a prompt: ``vae.decode`` of a blank latent of the
        sampler's ``latent_shape``, ``clip`` encoding an empty prompt (one 77-token CLIP chunk, T5 at its
        tokenizer's minimum length: the buckets of any prompt under 75 tokens without weights). Parts on the host are skipped. Returns the compiles."""
        before = self._backend.counters()["compiles"]
        with torch.inference_mode():
            if vae is not None and self.on_device("vae"):
                vae.decode(torch.zeros(latent_shape))
            if clip is not None and self.on_device("text_encoders"):
                clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
        compiles = self._backend.counters()["compiles"] - before
        log.info("comfy-tpu: warm-up of the VAE/text encoders at latent %s: %d compile(s)", list(latent_shape),
                 compiles)
        return {"compiles": compiles}

    def fell_back(self, part: Part, reason: str) -> None:
        self._figures[part].fell_back = reason

    def stats(self) -> dict[str, Any]:
        totals = {"programs": 0, "traces": 0, "replays": 0}
        lazy = []
        for programs in list(self._programs.values()):
            for key, value in programs.figures().items():
                totals[key] += value
            if programs.lazy_reason:
                lazy.append(f"{programs.name}: {programs.lazy_reason}")
        return {**{part: figures.model_dump() for part, figures in self._figures.items()}, **totals,
                "lazy": lazy}
