"""The ``comfy-tpu`` command (also ``python -m tpu_runtime``): ``launch`` and ``doctor``.

ComfyUI rejects flags it does not know, so ``launch`` turns the ``--tpu-*`` flags into the
``COMFY_TPU_*`` variables the pack reads (see :mod:`tpu_runtime.settings.tpu_settings`) and starts ComfyUI's
``main.py`` with everything else passed through unchanged. ``doctor`` says what hardware was found
and whether (and why not) the TPU path would be on.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from tpu_runtime.settings.tpu_settings import all_launch_flags, env_var, load_settings, parse_mesh, value_type

COMFYUI_PATH_ENV = "COMFYUI_PATH"

#: Every ``--tpu-*`` flag, derived from the settings fields (:func:`~tpu_runtime.settings.tpu_settings.launch_flags`).
_FLAGS = all_launch_flags()
#: On/off flags: (flag, settings field, value it sets).
BOOL_FLAGS: list[tuple[str, str, bool]] = [(f.flag, f.field, f.const) for f in _FLAGS if f.const is not None]
#: Flags with a value: (flag, settings field, metavar).
VALUE_FLAGS: list[tuple[str, str, str]] = [(f.flag, f.field, f.metavar) for f in _FLAGS if f.const is None]


class ComfyUINotFound(Exception):
    """No ComfyUI folder (one holding main.py) could be found; the message says how to point at one."""


class LaunchError(Exception):
    """A launch argument that cannot be honoured (an unknown --tpu-* flag, most likely a typo)."""


# -- argument mapping (pure) -------------------------------------------------------------------
def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """The launch options, shared by the real parser and the ``--help`` text."""
    parser.add_argument("--comfyui", metavar="PATH", help=f"the ComfyUI folder (used when {COMFYUI_PATH_ENV} "
                                                          "is unset; default: the ComfyUI this pack sits in)")
    for flag, field, value in BOOL_FLAGS:
        parser.add_argument(flag, dest=field, action="store_const", const=value, default=None,
                            help=f"sets {env_var(field)}={int(value)}")
    for flag, field, metavar in VALUE_FLAGS:
        parser.add_argument(flag, dest=field, metavar=metavar, type=int if value_type(field) is int else str,
                            default=None, help=f"sets {env_var(field)}")


def _launch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-tpu launch", allow_abbrev=False,
                                     description="Start ComfyUI with the TPU settings given as flags.",
                                     epilog="Other arguments, and all after --, go to ComfyUI's main.py.")
    add_launch_arguments(parser)
    return parser


def _split_at_dashdash(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        at = list(argv).index("--")
        return list(argv[:at]), list(argv[at + 1:])
    return list(argv), []


def parse_launch(argv: Sequence[str]) -> tuple[dict[str, str], list[str], Optional[str]]:
    """(env vars to set, args for ComfyUI, --comfyui) from the launch arguments."""
    ours, after = _split_at_dashdash(argv)
    args, unknown = _launch_parser().parse_known_args(ours)
    typos = [arg for arg in unknown if arg.split("=", 1)[0].startswith(("--tpu-", "--no-tpu-"))]
    if typos:
        raise LaunchError(f"unknown TPU flag(s): {' '.join(typos)} (see comfy-tpu launch --help)")
    env: dict[str, str] = {}
    for field in dict.fromkeys(field for _, field, _ in BOOL_FLAGS + VALUE_FLAGS):
        value = getattr(args, field)
        if value is None:
            continue
        if isinstance(value, bool):
            env[env_var(field)] = "1" if value else "0"
        elif value_type(field) is Path:
            env[env_var(field)] = os.path.abspath(value)  # ComfyUI runs from its own folder
        else:
            env[env_var(field)] = str(value)
    return env, unknown + after, args.comfyui


def flags_to_env(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Map ``--tpu-*`` flags to ``COMFY_TPU_*`` variables; everything else is ComfyUI's."""
    env, passthrough, _ = parse_launch(argv)
    return env, passthrough


# -- finding ComfyUI ---------------------------------------------------------------------------
def _default_pack_dirs() -> list[Path]:
    """This pack's folder as imported, plus the shell's logical cwd when that is the pack
    (``os.getcwd()`` and ``__file__`` may already be symlink-resolved)."""
    pack = Path(os.path.abspath(__file__)).parents[2]  # tpu_runtime/install/launcher.py
    dirs = [pack]
    logical = os.environ.get("PWD")
    if logical and os.path.isabs(logical) and os.path.realpath(logical) == os.path.realpath(pack):
        dirs.insert(0, Path(logical))
    return dirs


def _is_comfyui(folder: Path) -> bool:
    return (folder / "main.py").is_file()


def find_comfyui(cli_path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
                 pack_dirs: Optional[Sequence[Path]] = None) -> Path:
    """The ComfyUI folder: ``COMFYUI_PATH``, else ``--comfyui``, else the one the pack sits in
    (``<ComfyUI>/custom_nodes/<pack>``; tried through symlinks as given and resolved)."""
    environ = os.environ if environ is None else environ
    for source, value in ((COMFYUI_PATH_ENV, environ.get(COMFYUI_PATH_ENV)), ("--comfyui", cli_path)):
        if value:
            folder = Path(value).expanduser()
            if not _is_comfyui(folder):
                raise ComfyUINotFound(f"{source}={value} has no main.py; point it at the ComfyUI folder")
            return folder.absolute()
    tried = []
    for pack in (_default_pack_dirs() if pack_dirs is None else pack_dirs):
        for form in (Path(os.path.abspath(pack)), Path(pack).resolve()):
            candidate = form.parent.parent
            if _is_comfyui(candidate):
                return candidate
            tried.append(str(candidate))
    raise ComfyUINotFound(f"cannot find ComfyUI (no main.py in {', '.join(dict.fromkeys(tried))}); "
                          f"set {COMFYUI_PATH_ENV} to the ComfyUI folder or pass --comfyui PATH")


# -- commands ----------------------------------------------------------------------------------
def launch(argv: Sequence[str]) -> int:
    """Run ComfyUI's main.py with the TPU flags as env vars; its exit code is ours."""
    try:
        env, passthrough, cli_path = parse_launch(argv)
        comfy_dir = find_comfyui(cli_path)
    except (LaunchError, ComfyUINotFound) as exc:
        print(f"comfy-tpu: {exc}", file=sys.stderr)
        return 2
    os.environ.update(env)  # check the settings ComfyUI will see before starting it
    loaded = load_settings()
    if not loaded.ok:
        for problem in loaded.problems:
            print(f"comfy-tpu: not launching: {problem.message()}", file=sys.stderr)
        return 2
    command = [sys.executable, str(comfy_dir / "main.py"), *passthrough]
    shown = " ".join(f"{k}={v}" for k, v in env.items()) or "no TPU flags"
    print(f"comfy-tpu: starting ComfyUI in {comfy_dir} ({shown})", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, cwd=comfy_dir, env=dict(os.environ))
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # ComfyUI got the same Ctrl-C; let it shut down on its own
            continue


def doctor_data() -> dict[str, Any]:
    """What doctor reports: detected hardware, settings in force and the TPU-path decision. The doctor
    starts the XLA runtime itself (in its own process) when the decision depends on the device."""
    from tpu_runtime.backends import xla as backend_mod
    from tpu_runtime.backends.device import decide_path, describe, detect  # imports torch: only here

    from tpu_runtime.backends.backend_choice import resolve as resolve_backend

    loaded = load_settings()
    choice = resolve_backend(loaded.settings.backend if loaded.ok else "torch_xla")
    installed = detect(choice.name).model_copy(update={"backend_reason": choice.reason})

    def probe():
        if installed.error:
            return installed
        try:
            backend = backend_mod.create_backend(None, (loaded.settings.spmd, loaded.settings.mesh),
                                                 installed.backend)
        except backend_mod.BackendUnavailable as exc:
            return installed.model_copy(update={"error": str(exc)})
        return describe(installed, backend)

    decision, report = decide_path(loaded, probe)
    report = report or probe()  # the doctor shows the hardware even when the settings keep the path off
    settings = loaded.settings
    return {
        "report": report.model_dump(mode="json"),
        "settings": {
            "non_defaults": {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.non_defaults().items()},
            "cache_dir": str(settings.cache_dir) if settings.cache_dir else None,
            "execution": settings.execution,
            "backend": settings.backend,
            "conv_kernel_layout": settings.conv_kernel_layout,
            "attention": settings.attention,
            "problems": [problem.message() for problem in loaded.problems],
        },
        "decision": decision.model_dump(mode="json"),
        "comfyui": _comfyui_data(),
    }


def _comfyui_data() -> dict[str, Any]:
    """What the ComfyUI the pack would run in has (its core imported here, in CPU mode), or why not."""
    try:
        comfy_dir = find_comfyui(None)
    except ComfyUINotFound as exc:
        return {"found": False, "reason": str(exc)}
    from tpu_runtime.comfyui import capabilities

    try:
        found = capabilities.detect_in(str(comfy_dir))
    except Exception as exc:  # noqa: BLE001 - the doctor reports it and goes on
        return {"found": True, "path": str(comfy_dir), "reason": f"could not import its core: "
                                                                  f"{type(exc).__name__}: {exc}"}
    return {"found": True, "path": str(comfy_dir), "line": found.line(), **found.model_dump(mode="json")}


def _model_axis(mesh: str) -> int:
    """The 'model' axis size of the mesh the report names, such as ``data=2,model=4`` (1 without one)."""
    try:
        return parse_mesh(mesh).get("model", 1)
    except ValueError:  # "single", or no mesh: no model axis
        return 1


def format_doctor(data: dict[str, Any]) -> str:
    """The doctor report as text lines."""
    r, s, d = data["report"], data["settings"], data["decision"]
    hbm = f"{r['hbm_per_chip_bytes'] / 2**30:.1f} GiB" if r["hbm_per_chip_bytes"] else "unknown"
    if not r["hbm_per_chip_bytes"] and r.get("spmd"):
        hbm += " (torch_xla answers no memory query under SPMD)"
    changed = ", ".join(f"{env_var(k)}={v}" for k, v in s["non_defaults"].items()) or "none"
    backend = r.get("backend", "torch_xla")
    lines = [
        "comfy-tpu doctor",
        f"  backend      {backend} ({r.get('backend_reason') or 'COMFY_TPU_BACKEND'})",
        f"  torch        {r['torch_version']}",
        f"  torch_xla    {r['torch_xla_version'] or _torch_xla_missing_line(r['torch_version'])}",
        *([f"  torchax      {r.get('torchax_version') or 'missing (python install.py --backend torchax)'}",
           f"  jax          {r.get('jax_version') or 'missing (python install.py --backend torchax)'}"]
          if backend == "torchax" else []),
        *([f"  torch compat {_torchax_compat_line(r['torch_version'], r.get('torchax_version'))}"]
          if backend == "torchax" and _torchax_compat_line(r["torch_version"], r.get("torchax_version")) else []),
        f"  libtpu       {r['libtpu_version'] or 'none'}",
        f"  device       {r['device'] or 'none'}",
        f"  device type  {r['device_type']} x{r['device_count']}",
        f"  TPU type     {r['tpu_type']}",
        f"  HBM per chip {hbm}",
        f"  SPMD         {'on, mesh ' + r['mesh'] if r.get('spmd') else 'off'}"
        f"{' (' + r['spmd_reason'] + ')' if r.get('spmd_reason') else ''}",
    ]
    ways = _model_axis(r.get("mesh") or "")
    if r.get("spmd") and ways > 1:
        share = (f", at most {r['hbm_per_chip_bytes'] * ways / 2**30:.1f} GiB of weights over the {ways} chips"
                 if r["hbm_per_chip_bytes"] else "")
        lines.append(f"  weights      split over 'model' ({ways} ways): each chip holds ~1/{ways} of a diffusion "
                     f"model's weights{share}")
    if r["error"]:
        lines.append(f"  problem      {r['error']}")
    lines += [f"  settings     changed from defaults: {changed}",
              f"  cache dir    {s['cache_dir'] or '<ComfyUI user dir>/comfy-tpu (default)'}",
              f"  execution    {s['execution']}",
              f"  conv kernels {s.get('conv_kernel_layout', 'auto')} (COMFY_TPU_CONV_KERNEL_LAYOUT)",
              f"  attention    {_attention_line(s.get('attention', 'auto'), backend, r['device_type'], r.get('mesh') if r.get('spmd') else 'single')}"
              " (COMFY_TPU_ATTENTION)"]
    lines += [f"  settings problem: {p}" for p in s["problems"]]
    comfy = data.get("comfyui") or {}
    if comfy.get("line"):
        lines.append(f"  ComfyUI      {comfy['path']}: {comfy['line']}")
    elif comfy:
        lines.append(f"  ComfyUI      {comfy.get('path', 'not found')}: {comfy.get('reason', '?')}")
    lines.append(f"TPU path {'ON' if d['on'] else 'OFF'}: {d['reason']}")
    return "\n".join(lines)


def _torch_xla_missing_line(torch_version: str) -> str:
    """What the doctor says of a missing torch_xla: how to install it, or that this torch has no release of it."""
    from tpu_runtime.install.plan import TORCH_XLA_PINS, minor_of, supported_torch

    if minor_of(torch_version) in TORCH_XLA_PINS:
        return "missing (python install.py in the pack folder)"
    return f"missing: no release for torch {torch_version} (torch_xla exists for torch {supported_torch()})"


def _torchax_compat_line(torch_version: str, torchax_version: Optional[str]) -> str:
    """Where this torchax needs the pack's placeholders on this torch, a line saying so (else empty)."""
    from tpu_runtime.install.plan import NEWEST_TORCH_CHECKED, torchax_needs_placeholders

    if not torchax_version or not torchax_needs_placeholders(torch_version, torchax_version):
        return ""
    return (f"torchax {torchax_version} names aten ops torch {torch_version} removed: the pack sets placeholders "
            f"while it loads (checked up to torch {NEWEST_TORCH_CHECKED}; backends/torchax_torch_compat.py)")


def _attention_line(setting: str, backend: str, device_type: str, mesh: str = "single") -> str:
    from tpu_runtime.execution.attention import choice

    return choice.describe(setting, backend, device_type, mesh or "single")


def doctor(as_json: bool) -> int:
    data = doctor_data()
    print(json.dumps(data, indent=2) if as_json else format_doctor(data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-tpu", description="Run ComfyUI on TPUs (comfy-tpu pack).")
    commands = parser.add_subparsers(dest="command", metavar="{launch,doctor}")
    add_launch_arguments(commands.add_parser(
        "launch", help="start ComfyUI with --tpu-* flags (other args go to ComfyUI)", allow_abbrev=False))
    doc = commands.add_parser("doctor", help="show the hardware found and whether the TPU path would be on")
    doc.add_argument("--json", action="store_true", help="print a JSON object")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:  # parsed on its own: unknown args belong to ComfyUI
        return launch(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return doctor(args.json)
    parser.print_help()
    return 2
