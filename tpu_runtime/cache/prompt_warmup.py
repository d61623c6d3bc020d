"""The ``tpu_warmup`` block of ``POST /prompt`` (the design document's prompt-level warm-up).

``{"tpu_warmup": {"enabled": true, "target_resolution": [W, H], "batch_size": N}}``, at the top level
of the request or in ``extra_data``. A valid block is remembered under the prompt's id and the manager
warms that signature before the prompt's first sampling step; a malformed one is rejected by the
server with a message naming the field.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class TPUWarmupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = True
    target_resolution: tuple[int, int] = Field(..., description="[width, height] in pixels")
    batch_size: int = Field(1, ge=1, le=64)

    @field_validator("target_resolution")
    @classmethod
    def _positive_multiple_of_8(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(side < 8 or side % 8 or side > 16384 for side in value):
            raise ValueError("width and height must be multiples of 8 between 8 and 16384")
        return value


class WarmupBlockError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"tpu_warmup.{field}: {message}")
        self.field = f"tpu_warmup.{field}"


def find_block(body: dict) -> Optional[Any]:
    if not isinstance(body, dict):
        return None
    if "tpu_warmup" in body:
        return body["tpu_warmup"]
    extra = body.get("extra_data")
    return extra.get("tpu_warmup") if isinstance(extra, dict) else None


def parse_block(body: dict) -> Optional[TPUWarmupRequest]:
    """The request's warm-up block, None when absent; raises WarmupBlockError naming a bad field."""
    block = find_block(body)
    if block is None:
        return None
    if not isinstance(block, dict):
        raise WarmupBlockError("", "must be an object")
    if isinstance(block.get("target_resolution"), list):
        block = {**block, "target_resolution": tuple(block["target_resolution"])}
    try:
        return TPUWarmupRequest.model_validate(block)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "?"
        raise WarmupBlockError(field.split(".")[0], error["msg"]) from None


class PendingWarmups:
    """Warm-up requests waiting for their prompt's first sampling step (thread-safe: the server
    thread adds, the execution thread takes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_prompt: dict[str, TPUWarmupRequest] = {}

    def add(self, prompt_id: str, request: TPUWarmupRequest) -> None:
        with self._lock:
            self._by_prompt[prompt_id] = request

    def take(self, prompt_id: Optional[str]) -> Optional[TPUWarmupRequest]:
        if prompt_id is None:
            return None
        with self._lock:
            return self._by_prompt.pop(prompt_id, None)

