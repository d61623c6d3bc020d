"""The pack's UI nodes (ComfyUI's V3 schema API) and HTTP routes: thin, over the running pack's state."""
from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")


class TPUExtension(ComfyExtension):
    def __init__(self, state: PackState) -> None:
        self.state = state

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .nodes import bind

        return bind(self.state)


def register_routes(state: PackState) -> bool:
    """Add the routes to ComfyUI's server; False when there is none (ComfyUI used as a library)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    if getattr(PromptServer, "instance", None) is None:
        return False
    from . import routes

    routes.register(PromptServer.instance, state)
    return True
