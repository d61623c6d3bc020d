"""Runs ComfyUI's own ``nodes.common_ksampler`` and measures it with torch_xla's counters."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch


#: The backend this test process runs (COMFY_TPU_BACKEND; tests/fresh_process.py runs the modules marked
#: ``both_backends`` once per backend).
BACKEND = os.environ.get("COMFY_TPU_BACKEND", "torch_xla").strip().lower() or "torch_xla"
#: The execution modes each backend runs (torchax: replay only, its model program made by JAX).
BACKEND_MODES = {"torch_xla": ("replay", "compiled", "lazy"), "torchax": ("replay",)}


def backend_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    """``modes`` less those this process's backend does not run."""
    return tuple(mode for mode in modes if mode in BACKEND_MODES.get(BACKEND, modes))


@dataclass
class Measured:
    samples: torch.Tensor
    compiles: int
    executions: int
    transfers_to_host: int
    fallbacks: dict
    dynamo_frames: int = 0   # dynamo's frame compilations (first captures and recompiles)
    dynamo_graphs: int = 0   # graphs dynamo captured
    model_calls: int = 0     # model evaluations (step boundaries) of the run
    captured_graph_calls: int = 0  # runs of dynamo-captured graphs


def ksample(comfy, patcher, positive, negative, *, steps: int, sampler: str = "euler", scheduler: str = "normal",
            cfg: float = 7.0, seed: int = 42, batch: int = 1, size: int = 128, denoise: float = 1.0,
            latent: Optional[torch.Tensor] = None, noise_mask: Optional[torch.Tensor] = None,
            backend=None, inference_mode: bool = True) -> Measured:
    """One KSampler run as the KSampler node makes it (or, ``inference_mode=False``, as a script
    calling ``common_ksampler`` would), with XLA's counters diffed around it."""
    samples = latent if latent is not None else torch.zeros(batch, 4, size // 8, size // 8)
    latent_dict = {"samples": samples}
    if noise_mask is not None:
        latent_dict["noise_mask"] = noise_mask
    before = backend.counters() if backend else None
    fallbacks_before = backend.fallback_ops() if backend else {}
    with torch.inference_mode(inference_mode):
        out = comfy.common_ksampler(patcher, seed, steps, cfg, sampler, scheduler, positive, negative, latent_dict,
                                    denoise=denoise)[0]["samples"]
    if backend is None:
        return Measured(out, 0, 0, 0, {})
    after = backend.counters()
    fallbacks = {k: v - fallbacks_before.get(k, 0) for k, v in backend.fallback_ops().items()
                 if v != fallbacks_before.get(k, 0)}
    from tpu_runtime import runtime

    history = runtime.current().run_history
    delta = {key: after[key] - before[key] for key in after}
    return Measured(out, delta["compiles"], delta["executions"], delta["transfers_to_host"], fallbacks,
                    dynamo_frames=delta["dynamo_frames"], dynamo_graphs=delta["dynamo_graphs"],
                    model_calls=history[-1].model_calls, captured_graph_calls=delta["captured_graph_calls"])


@contextlib.contextmanager
def run_options(**update):
    """Runs inside use these run options; the test defaults are restored after."""
    from tpu_runtime import runtime

    state = runtime.current()
    saved = state.options
    state.options = saved.model_copy(update=update)
    try:
        yield
    finally:
        state.options = saved


@contextlib.contextmanager
def execution_mode(mode: str):
    """Runs inside use ``mode`` (compiled or lazy); the test default is restored after."""
    with run_options(execution=mode):
        yield mode


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()
