"""ComfyUI's process around the sampler: the prompt and node executing now, the frontend, the user folder.

Each answers None (or a default) outside a running ComfyUI (a script, a test, the doctor)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional


def executing_context() -> Optional[object]:
    """ComfyUI's executing context (``prompt_id``, ``node_id``), None when nothing executes."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:  # outside ComfyUI, or a ComfyUI without it
        return None
    return get_executing_context()


def executing_prompt_id() -> Optional[str]:
    return getattr(executing_context(), "prompt_id", None)


def executing_node_id() -> Optional[str]:
    node_id = getattr(executing_context(), "node_id", None)
    return str(node_id) if node_id is not None else None


def progress_text_sender() -> Optional[Callable[[str, str], None]]:
    """``PromptServer.send_progress_text`` (text under a node in the frontend), None without a server."""
    try:
        from server import PromptServer
    except ImportError:  # ComfyUI imported as a library, no server module
        return None
    instance = getattr(PromptServer, "instance", None)
    return getattr(instance, "send_progress_text", None) if instance is not None else None


def prompt_server() -> Optional[object]:
    """ComfyUI's running ``PromptServer``, None when there is none."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def user_directory() -> Optional[Path]:
    """ComfyUI's user folder, None outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return None
    return Path(folder_paths.get_user_directory())
