"""The pack's UI nodes (ComfyUI's V3 schema API) and HTTP routes: thin, over the tpu_runtime API."""
from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

log = logging.getLogger("comfy_tpu")


class TPUExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .nodes import NODES

        return list(NODES)


def register_routes() -> None:
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        return
    from . import routes

    routes.register(PromptServer.instance)


async def comfy_entrypoint() -> ComfyExtension:
    return TPUExtension()
