"""The VAE and text-encoder calls compiled in earlier sessions, so a restart can compile them up front.

The warm set (``registry.py``) holds the diffusion model's signatures; its re-warm runs before a
model's first step, when no VAE is known. A VAE's programs are per input shape (a latent size, a tile),
so this file keeps, per VAE model class and weight layout, the shapes its single-tensor ``decode`` /
``encode`` calls compiled. At that VAE's first call in a new process they are compiled before the call
(``vae_patch``): a later prompt at a recorded size compiles nothing. torch_xla 2.9's persistent cache
does not load on PJRT (REFERENCE.md), so without this the first decode at each size after a restart
compiles again. A text encoder's programs are per token bucket and call options (ComfyUI's layer choice,
a mask or none): its entries keep the whole call's form (``call_form.py``), made again with blank tensors
at its first use (``text_encoder_patch``). Versioned JSON in the cache dir, written atomically; memory
only without one.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ValidationError

log = logging.getLogger("comfy_tpu")

PART_SHAPES_FORMAT = "comfy-tpu-part-shapes"
PART_SHAPES_VERSION = 1


class PartShape(BaseModel, frozen=True):
    """One compiled call: ``module`` (its class) with weights of ``layout``, ``method`` on one tensor of
    ``shape`` / ``dtype`` (a VAE), or with the arguments ``call`` records (a text encoder: ``call_form``)."""

    module: str
    layout: str
    method: str
    shape: tuple[int, ...]
    dtype: str
    call: str = ""


class PartShapesFile(BaseModel):
    format: str = PART_SHAPES_FORMAT
    version: int = PART_SHAPES_VERSION
    entries: list[PartShape] = []


def layout_key(layout: object) -> str:
    """A short stable name of a weight layout (shapes, dtypes, shardings)."""
    return hashlib.sha1(repr(layout).encode()).hexdigest()[:16]


class PartShapes:
    """The recorded shapes (loaded at start, saved on each new one)."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self._entries: list[PartShape] = []
        self._earlier: frozenset[PartShape] = frozenset()  # those read from the file at start
        if path is not None and path.exists():
            try:
                loaded = PartShapesFile.model_validate_json(path.read_text(encoding="utf-8"))
                if loaded.format != PART_SHAPES_FORMAT or loaded.version != PART_SHAPES_VERSION:
                    raise ValueError(f"format {loaded.format!r} version {loaded.version} is not ours")
                self._entries = list(dict.fromkeys(loaded.entries))
                self._earlier = frozenset(self._entries)
            except (OSError, ValueError, ValidationError) as exc:
                log.warning("comfy-tpu: %s is unreadable (%s); starting without recorded VAE / text-encoder calls", path,
                            str(exc).splitlines()[0])

    def recorded(self, module: str, layout: str, earlier_only: bool = False) -> list[PartShape]:
        """The entries of ``module`` with weights of ``layout``; ``earlier_only``: those of earlier sessions
        (a module of the same class and layout used in this session compiled its own already)."""
        return [entry for entry in self._entries if entry.module == module and entry.layout == layout
                and (not earlier_only or entry in self._earlier)]

    def record(self, entry: PartShape) -> None:
        if entry in self._entries:
            return
        self._entries.append(entry)
        self._save()

    def _save(self) -> None:
        """Atomic write: a crash never leaves a half-written file."""
        if self.path is None:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".part_shapes-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(PartShapesFile(entries=self._entries).model_dump_json(indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("comfy-tpu: could not write %s (%s); the recorded calls stay in memory", self.path, exc)


def part_shapes_file(cache_dir: Optional[Path], backend_name: str) -> Optional[Path]:
    """The file of a backend's recorded shapes (each backend's programs are its own)."""
    if cache_dir is None:
        return None
    return cache_dir / ("part_shapes.json" if backend_name == "torch_xla" else f"part_shapes-{backend_name}.json")
