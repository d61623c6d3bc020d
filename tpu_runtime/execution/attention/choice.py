"""Which attention implementation runs a call: the setting, the sequence lengths, the backend, the device.

Why by length: below about 4,096 tokens the scores fit and XLA's own fusion of SDPA is as fast as any
kernel; above, they stop fitting (Flux 1024²: 1 GB of bf16 scores per layer and batch row; Wan 2.1
720p: 11.4 GB for one head), and published TPU ports switch to Pallas flash/splash there (diffusers
uses flash at >= 4,096 tokens)."""
from __future__ import annotations

from typing import Literal, NamedTuple

Implementation = Literal["sdpa", "blockwise", "flash"]
Setting = Literal["auto", "sdpa", "blockwise", "flash"]
#: In ``auto``, calls whose query or key length reaches this leave SDPA.
AUTO_MIN_TOKENS = 4096


class Choice(NamedTuple):
    """The implementation, and (when it is not what was asked) why, for a one-time log line."""

    implementation: Implementation
    note: str = ""


def choose(setting: Setting, backend: str, device_type: str, q_tokens: int, k_tokens: int, masked: bool) -> Choice:
    """The implementation for one call. ``auto``: SDPA below AUTO_MIN_TOKENS; above it the Pallas flash
    kernel on a TPU when the call has no mask (a mask would be its seq x seq bias), else blockwise."""
    on_tpu = device_type.upper() == "TPU"
    if setting == "sdpa":
        return Choice("sdpa")
    if setting == "blockwise":
        return Choice("blockwise")
    if setting == "flash":
        if backend == "torchax":
            return Choice("flash", "" if on_tpu else "Pallas flash runs in TPU interpret mode off a TPU (slow)")
        if on_tpu:
            return Choice("flash")
        return Choice("blockwise", f"torch_xla's Pallas flash kernel runs on a TPU only, not on {device_type}")
    if max(q_tokens, k_tokens) < AUTO_MIN_TOKENS:
        return Choice("sdpa")
    return Choice("flash" if on_tpu and not masked else "blockwise")


def describe(setting: Setting, backend: str, device_type: str, mesh: str = "single") -> str:
    """What runs, in words (the start line and the doctor); ``mesh``: the SPMD mesh (``data=2,model=2``)
    or ``single``."""
    big = f"{AUTO_MIN_TOKENS:,}"
    split = ("" if mesh == "single" else
             f"; on mesh {mesh} blockwise and flash split each call by rows over 'data' and heads over 'model'"
             + ("" if device_type.upper() == "TPU" or backend != "torchax" else
                " (flash in Pallas's generic interpreter there, not its TPU interpret mode)"))
    if setting == "auto":
        above = ("Pallas flash (blockwise when masked)" if device_type.upper() == "TPU"
                 else "memory-bounded blockwise")
        return f"auto: SDPA below {big} tokens, {above} from {big}{split}"
    picked = choose(setting, backend, device_type, AUTO_MIN_TOKENS, AUTO_MIN_TOKENS, False)
    words = {"sdpa": "PyTorch SDPA at every length", "blockwise": "memory-bounded blockwise at every length",
             "flash": "Pallas flash at every length"}[picked.implementation]
    return f"{setting}: {words}" + (f" ({picked.note})" if picked.note else "") + (
        split if picked.implementation != "sdpa" else "")
