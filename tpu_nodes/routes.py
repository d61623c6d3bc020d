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

import tpu_runtime
from tpu_runtime.prompt_warmup import PENDING, WarmupBlockError, parse_block

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


def on_prompt(json_data: dict) -> dict:
    """Remember a (validated) warm-up block under the prompt id the server will use."""
    try:
        request = parse_block(json_data)
    except WarmupBlockError:
        return json_data  # the middleware has already answered 400
    if request is not None and request.enabled:
        json_data.setdefault("prompt_id", str(uuid.uuid4()))
        PENDING.add(str(json_data["prompt_id"]), request)
    return json_data


def _device_info() -> dict:
    stats = tpu_runtime.get_tpu_stats()
    return {"enabled": stats["enabled"], "reason": stats["reason"], "device": stats["device"]}


def register(server) -> None:
    routes = server.routes

    @routes.get("/tpu/stats")
    async def tpu_stats(request):
        return web.json_response(tpu_runtime.get_tpu_stats())

    @routes.get("/tpu/device")
    async def tpu_device(request):
        return web.json_response(_device_info())

    @routes.post("/tpu/cache/clear")
    async def tpu_cache_clear(request):
        try:
            tpu_runtime.tpu_manager.clear_cache()
        except tpu_runtime.api.TPUPathOff as exc:
            return web.json_response({"cleared": False, "reason": str(exc)}, status=409)
        return web.json_response({"cleared": True, "stats": tpu_runtime.get_tpu_stats()})

    server.app.middlewares.append(tpu_warmup_middleware)
    server.add_on_prompt_handler(on_prompt)
