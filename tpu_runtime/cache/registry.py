"""The compilation cache: which execution signatures were compiled, what they cost, and whether
later runs reused them, measured with XLA's own counters; persisted as a warm set.

XLA keeps the compiled executables (in memory, and on disk where the runtime can load its persistent
cache); this registry records *which* signatures are warm so that stats are honest, misses are
explained, and after a restart the recorded signatures can be compiled again before their first use.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from tpu_runtime.cache.signature import ExecutionSignature, nearest

log = logging.getLogger("comfy_tpu")

WARM_SET_FORMAT = "comfy-tpu-warm-set"
WARM_SET_VERSION = 1
WARM_SET_FILE = "warm_set.json"


def warm_set_file(backend_name: str) -> str:
    """The warm set's file name for a backend: torch_xla's is the original ``warm_set.json``."""
    return WARM_SET_FILE if backend_name == "torch_xla" else f"warm_set.{backend_name}.json"
#: The warm set keeps the signatures used most recently, at most this many: each is re-warmed (compiled)
#: after a restart, so an unbounded set would make every restart slower.
MAX_WARM_SET_ENTRIES = 64


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class SignatureStats(BaseModel):
    signature: ExecutionSignature
    first_seen: str
    last_used: str
    graphs_compiled: int = 0
    compile_seconds: float = 0.0
    #: The part of ``compile_seconds`` that was the diffusion model's own program (replay execution),
    #: shared with every other sampler of the same model program; the rest is the sampler's graphs.
    model_program_seconds: float = 0.0
    hits: int = 0
    misses: int = 0
    warm_in_this_process: bool = False
    #: torch / torch_xla / libtpu of the process that recorded it: graphs only reload into the same.
    runtime: dict[str, Optional[str]] = {}
    #: Why a re-warm of it failed ("" when none did): set aside, never re-warmed again.
    rewarm_failed: str = ""


class WarmSet(BaseModel):
    """The on-disk form (versioned JSON)."""

    format: str = WARM_SET_FORMAT
    version: int = WARM_SET_VERSION
    runtime: dict[str, Optional[str]] = {}
    entries: list[SignatureStats] = []


class RunOutcome(BaseModel):
    signature: ExecutionSignature
    hit: bool
    new_signature: bool
    reason: str = ""


class SignatureRegistry:
    """Per-signature stats plus persistence under ``cache_dir`` (memory only if it is unwritable)."""

    def __init__(self, cache_dir: Optional[Path], runtime_versions: dict[str, Optional[str]],
                 file_name: str = WARM_SET_FILE) -> None:
        self._file_name = file_name
        self._entries: dict[ExecutionSignature, SignatureStats] = {}
        self.hits = 0
        self.misses = 0
        self.runtime_versions = runtime_versions
        self.cache_dir = self._usable_dir(cache_dir)
        self._load()

    # -- persistence -----------------------------------------------------------------------------
    @staticmethod
    def _usable_dir(cache_dir: Optional[Path]) -> Optional[Path]:
        if cache_dir is None:
            return None
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".probe-", delete=True)
            probe.close()
            return cache_dir
        except OSError as exc:
            log.warning("comfy-tpu: cache dir %s is not writable (%s); the compilation cache works in memory "
                        "only this session", cache_dir, exc)
            return None

    @property
    def warm_set_path(self) -> Optional[Path]:
        return self.cache_dir / self._file_name if self.cache_dir else None

    def _load(self) -> None:
        path = self.warm_set_path
        if path is None or not path.exists():
            return
        try:
            warm = WarmSet.model_validate_json(path.read_text(encoding="utf-8"))
            if warm.format != WARM_SET_FORMAT or warm.version != WARM_SET_VERSION:
                raise ValueError(f"format {warm.format!r} version {warm.version} is not ours")
        except (OSError, ValueError, ValidationError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{dt.datetime.now():%Y%m%d-%H%M%S}")
            try:
                path.replace(aside)
            except OSError:
                aside = None
            log.warning("comfy-tpu: warm-set file %s is unreadable (%s); moved aside to %s, starting empty",
                        path, str(exc).splitlines()[0], aside)
            return
        for entry in warm.entries:  # entries of older files carry the file's runtime
            self._entries[entry.signature] = entry.model_copy(
                update={"warm_in_this_process": False, "runtime": entry.runtime or warm.runtime})
        log.info("comfy-tpu: %d recorded signature(s) loaded from %s", len(self._entries), path)

    def save(self) -> None:
        """Atomic write: a crash never leaves a half-written warm set."""
        path = self.warm_set_path
        if path is None:
            return
        warm = WarmSet(runtime=self.runtime_versions, entries=list(self._entries.values()))
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".warm_set-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(warm.model_dump_json(indent=1))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("comfy-tpu: could not write %s (%s); the cache stays in memory", path, exc)

    # -- recording -----------------------------------------------------------------------------
    def known(self) -> list[ExecutionSignature]:
        return list(self._entries)

    def get(self, signature: ExecutionSignature) -> Optional[SignatureStats]:
        """The entry of ``signature``; for one without a conditioning layout, the entry recorded with
        the same other graph fields (warm here first, then the most recently used)."""
        entry = self._entries.get(signature)
        if entry is not None or signature.conditioning is not None:
            return entry
        key = signature.key_without_conditioning()
        same = [e for s, e in self._entries.items() if s.key_without_conditioning() == key]
        return max(same, key=lambda e: (e.warm_in_this_process, e.last_used)) if same else None

    def is_cached(self, signature: ExecutionSignature) -> bool:
        entry = self.get(signature)
        return bool(entry and entry.warm_in_this_process)

    def set_aside(self, signature: ExecutionSignature, reason: str) -> None:
        """A re-warm of ``signature`` failed: keep it out of every later re-warm (persisted)."""
        entry = self._entries.get(signature)
        if entry is not None:
            entry.rewarm_failed = reason or "failed"
            self.save()

    def forget(self, signature: ExecutionSignature) -> None:
        """Drop ``signature`` (an older warm set's entry that a re-warm recorded again with its layout)."""
        if self._entries.pop(signature, None) is not None:
            self.save()

    def record(self, signature: ExecutionSignature, compiles: int, compile_seconds: float,
               model_program_seconds: float = 0.0) -> RunOutcome:
        """One sampling run at ``signature`` that made ``compiles`` new XLA compiles, of which
        ``model_program_seconds`` went to the diffusion model's own program (replay execution)."""
        now = _now()
        entry = self._entries.get(signature)
        new = entry is None
        if new:
            closest = nearest(signature, self.known())
            entry = SignatureStats(signature=signature, first_seen=now, last_used=now, runtime=self.runtime_versions)
            self._entries[signature] = entry
            reason = ("new signature: " + ", ".join(signature.differences(closest))) if closest else "first signature"
        else:
            reason = "same signature, new graph (please report)" if entry.warm_in_this_process else \
                "recorded in an earlier session, not yet compiled in this one"
        entry.last_used = now
        entry.graphs_compiled += compiles
        entry.compile_seconds += compile_seconds
        entry.model_program_seconds += min(model_program_seconds, compile_seconds)
        hit = compiles == 0
        if hit:
            entry.hits += 1
            self.hits += 1
        else:
            entry.misses += 1
            self.misses += 1
        entry.warm_in_this_process = True
        self._evict_beyond(MAX_WARM_SET_ENTRIES)
        self.save()
        return RunOutcome(signature=signature, hit=hit, new_signature=new, reason="" if hit else reason)

    def _evict_beyond(self, limit: int) -> None:
        """Forget the least recently used signatures beyond ``limit`` (those warm here go last)."""
        if len(self._entries) <= limit:
            return
        by_age = sorted(self._entries.values(), key=lambda e: (e.warm_in_this_process, e.last_used))
        for entry in by_age[:len(self._entries) - limit]:
            del self._entries[entry.signature]
        log.info("comfy-tpu: the warm set keeps the %d most recently used signatures; older ones forgotten", limit)

    def estimate_compile_seconds(self, signature: ExecutionSignature) -> Optional[float]:
        """What compiling this signature would take, from what it (or the most similar one) took.

        In replay execution that is the model's program (nothing, when another sampler compiled it in
        this process) plus the sampler's own small graphs."""
        if signature.model_program_key() is None:
            entry = self._entries.get(signature)
            if entry and entry.compile_seconds:
                return entry.compile_seconds
            closest = nearest(signature, [s for s, e in self._entries.items() if e.compile_seconds])
            return self._entries[closest].compile_seconds if closest else None
        program = 0.0 if self.model_program_warm(signature) else self._model_program_seconds(signature)
        graphs = self._sampler_graph_seconds(signature)
        if graphs is None:  # this sampler never ran: its graphs are unknown (small), the program is known
            return program or None
        return (program or 0.0) + graphs

    def model_program_warm(self, signature: ExecutionSignature) -> bool:
        """Whether the diffusion model's program for this signature is compiled in this process (a run
        of any sampler with the same model program key compiled it)."""
        key = signature.model_program_key()
        return key is not None and any(e.warm_in_this_process and s.model_program_key() == key
                                       for s, e in self._entries.items())

    def _model_program_seconds(self, signature: ExecutionSignature) -> Optional[float]:
        key = signature.model_program_key()
        same = [e.model_program_seconds for s, e in self._entries.items()
                if s.model_program_key() == key and e.model_program_seconds]
        if same:
            return max(same)
        measured = [s for s, e in self._entries.items() if e.model_program_seconds]
        closest = nearest(signature, measured)
        return self._entries[closest].model_program_seconds if closest else None

    def _sampler_graph_seconds(self, signature: ExecutionSignature) -> Optional[float]:
        """The sampler's own graphs: its entries' compile seconds less their model program's."""
        mine = [s for s, e in self._entries.items() if s.sampler == signature.sampler and s.model_program_key()
                and e.compile_seconds]
        closest = nearest(signature, mine)
        if closest is None:
            return None
        entry = self._entries[closest]
        return max(entry.compile_seconds - entry.model_program_seconds, 0.0)

    def pending_rewarm(self, model_fingerprint: str) -> list[ExecutionSignature]:
        """Recorded signatures of this model that are not compiled in this process yet (less those
        whose re-warm failed once)."""
        return [s for s, e in self._entries.items() if s.model_fingerprint == model_fingerprint
                and not e.warm_in_this_process and not e.rewarm_failed]

    def clear(self, xla_cache_dir: Optional[Path] = None) -> None:
        """Forget every signature and delete the pack's own files (nothing else in cache_dir)."""
        self._entries.clear()
        self.hits = self.misses = 0
        if self.warm_set_path and self.warm_set_path.exists():
            self.warm_set_path.unlink()
        if xla_cache_dir and self.cache_dir and xla_cache_dir.is_dir() and \
                self.cache_dir.resolve() in xla_cache_dir.resolve().parents:
            shutil.rmtree(xla_cache_dir, ignore_errors=True)

    def stats(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return {
            "cached_signatures": sum(e.warm_in_this_process for e in self._entries.values()),
            "recorded_signatures": len(self._entries),
            "signatures": [
                {**e.model_dump(mode="json", exclude={"signature"}), "signature": e.signature.model_dump(mode="json"),
                 "summary": e.signature.short()} for e in self._entries.values()],
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": (self.hits / total) if total else 0.0,
            "compiles": sum(e.graphs_compiled for e in self._entries.values()),
            "compile_seconds": round(sum(e.compile_seconds for e in self._entries.values()), 3),
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
        }
