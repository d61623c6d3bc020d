"""HTTP: ``GET /tpu/stats``, ``GET /tpu/device``, ``POST /tpu/cache/clear`` (also under ``/api``),
and the ``tpu_warmup`` block of ``POST /prompt``.

An on-prompt handler cannot reject a request (its return value is always queued), so a malformed
``tpu_warmup`` block is caught by an aiohttp middleware in front of ``/prompt``, which answers 400
naming the field; a valid block is remembered under the prompt id for the pack's manager.
"""
from __future__ import annotations

import json
import logging
import uuid

from aiohttp import web

from tpu_runtime.api import TPUPathOff, stats_of
from tpu_runtime.cache.prompt_warmup import WarmupBlockError, parse_block
from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")
PROMPT_PATHS = {"/prompt", "/api/prompt"}


@web.middleware
async def tpu_warmup_middleware(request: web.Request, handler):
    if request.method == "POST" and request.path in PROMPT_PATHS:
        try:
            body = await request.json()  # aiohttp keeps the body: the handler reads it again
        except (json.JSONDecodeError, UnicodeDecodeError):
            return await handler(request)
        try:
            parse_block(body)
        except WarmupBlockError as exc:
            return web.json_response({"error": {"type": "invalid_tpu_warmup", "message": str(exc),
                                                "details": exc.field, "extra_info": {}}, "node_errors": {}},
                                     status=400)
    return await handler(request)


def prompt_handler(state: PackState):
    """The on-prompt handler: remembers a (validated) warm-up block under the prompt id the server will use."""

    def on_prompt(json_data: dict) -> dict:
        try:
            request = parse_block(json_data)
        except WarmupBlockError:
            return json_data  # the middleware has already answered 400
        if request is not None and request.enabled:
            json_data.setdefault("prompt_id", str(uuid.uuid4()))
            state.pending_warmups.add(str(json_data["prompt_id"]), request)
        return json_data

    return on_prompt


def register(server, state: PackState) -> None:
    routes = server.routes

    @routes.get("/tpu/stats")
    async def tpu_stats(request):
        return web.json_response(stats_of(state))

    @routes.get("/tpu/device")
    async def tpu_device(request):
        stats = stats_of(state)
        return web.json_response({"enabled": stats["enabled"], "reason": stats["reason"], "device": stats["device"]})

    @routes.post("/tpu/cache/clear")
    async def tpu_cache_clear(request):
        if state.manager is None:
            off = TPUPathOff(f"comfy-tpu: the TPU path is off: {state.decision.reason}")
            return web.json_response({"cleared": False, "reason": str(off)}, status=409)
        state.manager.clear_cache()
        return web.json_response({"cleared": True, "stats": stats_of(state)})

    server.app.middlewares.append(tpu_warmup_middleware)
    server.add_on_prompt_handler(prompt_handler(state))
