"""One boundary with ComfyUI: outside ``tpu_runtime/comfyui/`` no runtime module imports ComfyUI's modules
(``comfy``, ``comfy_extras``, ``comfy_execution``, ``comfy_api``, ``nodes``, ``server``, ``folder_paths``,
``latent_preview``, ``comfyui_version``); they ask the boundary. The UI nodes (``tpu_nodes``) are ComfyUI
nodes and may."""
from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "tpu_runtime"
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_execution", "comfy_api", "nodes", "server", "folder_paths",
                 "latent_preview", "comfyui_version", "execution"}


def comfy_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        found += [name for name in names if name.split(".")[0] in COMFY_MODULES]
    return found


def test_only_the_boundary_imports_comfyui():
    outside = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        relative = path.relative_to(RUNTIME).as_posix()
        if relative.startswith("comfyui/"):
            continue
        found = comfy_imports(ast.parse(path.read_text()))
        if found:
            outside[relative] = found
    assert outside == {}, outside


def test_the_check_sees_lazy_and_from_imports():
    source = "def f():\n    import comfy.samplers\n    from comfy_execution.utils import x\n    from . import comfy\n"
    assert comfy_imports(ast.parse(source)) == ["comfy.samplers", "comfy_execution.utils"]
