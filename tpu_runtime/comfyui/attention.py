"""ComfyUI's own attention functions the pack's router falls back to or compares with."""
from __future__ import annotations

from typing import Any


def attention_pytorch(*args: Any, **kwargs: Any) -> Any:
    """ComfyUI's PyTorch SDPA attention (``comfy.ldm.modules.attention.attention_pytorch``), as called."""
    from comfy.ldm.modules.attention import attention_pytorch as comfy_sdpa

    return comfy_sdpa(*args, **kwargs)
