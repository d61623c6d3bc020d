"""What the test suite may not change in the ComfyUI at ``COMFYUI_PATH``, which can be a user's own.

A snapshot holds the entries of ``custom_nodes`` (where a test-node link would show in the user's UI)
and every file and folder under ``user``, ``input``, ``output`` and ``temp`` (settings, the database,
saved images: what a server writes, or deletes, in the folders ComfyUI gives it). A snapshot taken
before the suite and one taken after must be equal.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

WATCHED_FOLDERS = ("user", "input", "output", "temp")


def describe(path: Path) -> str:
    """One entry as a comparable word: a link by its target as written (not followed), a folder, or a file
    by its size and modification time (so a rewritten file shows as changed)."""
    if path.is_symlink():
        return f"link -> {os.readlink(path)}"
    if path.is_dir():
        return "folder"
    stat = path.stat()
    return f"file, {stat.st_size} bytes, mtime {stat.st_mtime_ns}"


def custom_nodes_entries(root: Path) -> dict[str, str]:
    """The top-level entries of ``custom_nodes``: what ComfyUI loads as node packs."""
    custom = root / "custom_nodes"
    return {child.name: describe(child) for child in custom.iterdir()} if custom.is_dir() else {}


def tree_entries(root: Path, folder: str) -> dict[str, str]:
    """``root/folder`` itself (so creating a missing one shows) and every file, folder and link under it
    (links not followed), by path relative to ``root``."""
    top = root / folder
    if not top.is_dir():
        return {}
    entries = {folder: "folder"}
    for parent, folders, files in os.walk(top):
        for name in folders + files:
            path = Path(parent) / name
            entries[path.relative_to(root).as_posix()] = describe(path)
    return entries


@dataclass(frozen=True)
class ComfyUIState:
    """The parts of one ComfyUI tree a test run must leave as they were."""

    root: Path
    entries: dict[str, str]

    @classmethod
    def take(cls, root: Path) -> "ComfyUIState":
        entries = {f"custom_nodes/{name}": what for name, what in custom_nodes_entries(root).items()}
        for folder in WATCHED_FOLDERS:
            entries.update(tree_entries(root, folder))
        return cls(root=root, entries=entries)

    @classmethod
    def taken_once(cls, root: Path, file: Optional[str]) -> "ComfyUIState":
        """The snapshot in ``file`` if one is there, else one taken now and written there (atomically), so
        that every process of one ``make test`` (xdist's workers, the last check's own run) compares with
        the one taken before the first test; no ``file``: taken now."""
        if file:
            path = Path(file)
            if path.is_file():
                saved = json.loads(path.read_text())
                return cls(root=Path(saved["root"]), entries=saved["entries"])
        state = cls.take(root)
        if file:
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
            with os.fdopen(handle, "w") as out:
                json.dump({"root": str(root), "entries": state.entries}, out)
            os.replace(temporary, path)
        return state

    def changes_since(self, before: "ComfyUIState") -> list[str]:
        """One line per entry added, removed or changed since ``before``; empty when nothing changed."""
        lines = []
        for key in sorted(set(self.entries) | set(before.entries)):
            old, new = before.entries.get(key), self.entries.get(key)
            if old != new:
                lines.append(f"{key}: {_change(old, new)}")
        return lines


def _change(old: Optional[str], new: Optional[str]) -> str:
    if old is None:
        return f"added ({new})"
    if new is None:
        return f"removed (was {old})"
    return f"changed ({old} -> {new})"
