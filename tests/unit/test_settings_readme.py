"""The README's settings table says what TPUSettings and the launcher do: variables, defaults, flags.

The table is generated (``python -m tpu_runtime.settings.table --write``); these checks read it back
and compare it with the fields and with the launcher's real parser, not with the generator alone."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tpu_runtime.install import launcher
from tpu_runtime.settings.tpu_settings import TPUSettings, env_var
from tpu_runtime.settings.table import BEGIN, END, HEADER, README, settings_table_markdown

FIX = "run `python -m tpu_runtime.settings.table --write` (the table is made from tpu_runtime/settings/tpu_settings.py)"


def table_rows(readme: str) -> list[list[str]]:
    """The cells of each row between the markers (header first), ``\\|`` read as ``|``."""
    start, end = readme.find(BEGIN), readme.find(END)
    assert 0 <= start < end, f"README.md has no settings-table markers; {FIX}"
    lines = [line for line in readme[start + len(BEGIN):end].splitlines() if line.strip()]
    rows = [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in lines]
    return [rows[0]] + [row for row in rows[1:] if not all(set(cell) <= {"-"} for cell in row)]


def _default_word(value) -> str:
    if value is None or isinstance(value, bool):
        return {None: "unset", True: "true", False: "false"}[value]
    return f"`{value}`" if isinstance(value, str) else str(value)


def _parser_flags() -> dict[str, dict[str, str | None]]:
    """field -> {flag: metavar} from the launcher's own parser."""
    parser = argparse.ArgumentParser()
    launcher.add_launch_arguments(parser)
    flags: dict[str, dict[str, str | None]] = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith(("--tpu-", "--no-tpu-")):
                flags.setdefault(action.dest, {})[flag] = action.metavar
    return flags


def disagreements(readme: str) -> list[str]:
    """Each way the README's table and the settings disagree; empty when they agree."""
    header, *rows = table_rows(readme)
    problems = [] if tuple(header) == HEADER else [f"header {header} is not {list(HEADER)}"]
    fields = {env_var(name): name for name in TPUSettings.model_fields}
    listed = [row[0].strip("`") for row in rows]
    if listed != list(fields):
        problems.append(f"variables {listed} are not the settings' {list(fields)} (in field order)")
    parser_flags = _parser_flags()
    for row in rows:
        variable, flags_cell, default_cell = row[0].strip("`"), row[1], row[2]
        field = fields.get(variable)
        if field is None:
            continue
        default = _default_word(TPUSettings.model_fields[field].default)
        if default_cell.split(":")[0] != default:
            problems.append(f"{variable}: default {default_cell!r} does not start with {default!r}")
        spans = [span.split(" ", 1) for span in re.findall(r"`([^`]+)`", flags_cell)]
        documented = {span[0]: (span[1] if len(span) > 1 else None) for span in spans}
        if documented != parser_flags.get(field, {}):
            problems.append(f"{variable}: flags {documented} are not the launcher's {parser_flags.get(field)}")
    if not problems and readme[readme.find(BEGIN) + len(BEGIN):readme.find(END)].strip() != \
            settings_table_markdown():
        problems.append("the table's wording differs from the fields' descriptions and notes")
    return problems


def test_readme_table_agrees_with_the_settings():
    problems = disagreements(README.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems + [FIX])


def test_generated_table_agrees_with_the_settings():
    assert disagreements(f"{BEGIN}\n{settings_table_markdown()}\n{END}") == []


@pytest.mark.parametrize("old, new", [
    ("| 64 |", "| 32 |"),                                          # a default
    ("`COMFY_TPU_SYNC_STEPS`", "`COMFY_TPU_SYNC_STEP`"),           # a variable
    (", `--no-tpu-warmup`", ""),                                  # a flag missing
    ("`--tpu-warmup-steps N`", "`--tpu-warmup-steps`"),            # a metavar
    ("`--tpu-debug-metrics`", "`--tpu-debug-metrics`, `--no-tpu-debug-metrics`"),  # a flag that is not there
    ("log XLA figures", "log figures"),                            # the wording
])
def test_a_table_that_drifted_is_caught(old, new):
    readme = README.read_text(encoding="utf-8")
    assert old in readme
    assert disagreements(readme.replace(old, new, 1))


def test_a_row_missing_is_caught():
    readme = README.read_text(encoding="utf-8")
    drifted = "\n".join(line for line in readme.splitlines() if "`COMFY_TPU_MESH`" not in line)
    assert any("variables" in problem for problem in disagreements(drifted))


def test_readme_path_is_the_packs():
    assert README == Path(__file__).resolve().parents[2] / "README.md"
