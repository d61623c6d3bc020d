"""The README's settings table, made from the :class:`~tpu_runtime.settings.tpu_settings.TPUSettings` fields.

``python -m tpu_runtime.settings.table`` prints it; ``--write`` puts it into README.md between the
markers. ``tests/unit/test_settings_readme.py`` fails when the README and the fields disagree, so the
table cannot drift from the settings it describes.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpu_runtime.settings.tpu_settings import TPUSettings, env_var, launch_flags, setting_meta

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = ("<!-- settings table: made from TPUSettings by `python -m tpu_runtime.settings.table --write`; "
         "edit tpu_runtime/settings/tpu_settings.py, not this table -->")
END = "<!-- end of the settings table -->"
HEADER = ("env var", "flag (`comfy-tpu launch`)", "default", "meaning")


def default_word(value: Any) -> str:
    """How the table shows a default: ``unset``, ``true``/``false``, a number, or a word in code."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return f"`{value}`"


def row(field: str) -> tuple[str, str, str, str]:
    """One field's cells, as Markdown (``|`` not yet escaped)."""
    info, meta = TPUSettings.model_fields[field], setting_meta(field)
    flags = ", ".join(f"`{f.flag}{' ' + f.metavar if f.metavar else ''}`" for f in launch_flags(field))
    default = default_word(info.default) + (f": {meta.default_note}" if meta.default_note else "")
    return f"`{env_var(field)}`", flags, default, info.description or ""


def settings_table_markdown() -> str:
    """The whole table, one row per field in field order."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for field in TPUSettings.model_fields:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row(field)) + " |")
    return "\n".join(lines)


def with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the table; ValueError without markers."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no settings-table markers ({BEGIN} ... {END})")
    return readme[:start] + BEGIN + "\n" + settings_table_markdown() + "\n" + readme[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpu_runtime.settings.table", description=__doc__.split("\n")[0])
    parser.add_argument("--write", nargs="?", const=str(README), metavar="README",
                        help=f"rewrite the table in this file (default {README.name} of the pack)")
    args = parser.parse_args(argv)
    if args.write is None:
        print(settings_table_markdown())
        return 0
    path = Path(args.write)
    text = path.read_text(encoding="utf-8")
    new = with_table(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    print(f"{path}: settings table {'rewritten' if new != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
