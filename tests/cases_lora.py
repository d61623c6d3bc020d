"""Body of the LoRA state test, run in a fresh process (``tests/child.py``): a kohya-format LoRA on
every attention projection and 3x3 conv of the SD1.5-architecture model, loaded through ComfyUI's
``load_lora_for_models`` at several strengths, then removed; per state: compiles, device-to-host
transfers and parity with eager."""
from __future__ import annotations

import math

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (imported before ComfyUI's own ``tests``)

#: The states the issue names, each seen once before it comes back.
STATES = [None, 0.8, 0.6, 0.8, 1.3, None, 0.8, None]


def kohya_lora(patcher, seed: int = 7, rank: int = 4) -> tuple[dict, list[str]]:
    """A random kohya LoRA (``lora_unet_*``: ``lora_up``/``lora_down``/``alpha``) on every attention
    projection (to_q/k/v/out) and every 3x3 conv weight of the diffusion model."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state, targets = {}, []
    for key, weight in patcher.model.state_dict().items():
        if not key.startswith("diffusion_model.") or not key.endswith(".weight"):
            continue
        attention = weight.dim() == 2 and any(f".{p}." in key or key.endswith(f".{p}.weight")
                                              for p in ("to_q", "to_k", "to_v", "to_out.0"))
        conv3 = weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3)
        if not (attention or conv3):
            continue
        name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        out_features, in_features = weight.shape[:2]
        fan_in = in_features * (9 if conv3 else 1)
        down_shape = (rank, in_features, 3, 3) if conv3 else (rank, in_features)
        up_shape = (out_features, rank, 1, 1) if conv3 else (out_features, rank)
        state[f"{name}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.5
        state[f"{name}.lora_down.weight"] = torch.randn(down_shape, generator=generator) / math.sqrt(fan_in)
        state[f"{name}.alpha"] = torch.tensor(float(rank))
        targets.append(key)
    return state, targets


def lora_states(nodes, steps: int = 3, size: int = 64, states: list = STATES) -> dict:
    """The base model and its LoRA clones in the order of :data:`STATES`, as a workflow with a LoRA
    loader whose strength is changed, then bypassed, would run them."""
    import comfy.sd
    import torch

    from bench import tiny_model
    from tpu_runtime import runtime

    backend = runtime.current().backend
    base = tiny_model.build_patcher("tiny", seed=0, dtype=torch.float32)
    cpu = tiny_model.build_patcher("tiny", seed=0, load_device=torch.device("cpu"), dtype=torch.float32)
    lora, targets = kohya_lora(base)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    visits = []
    for index, strength in enumerate(states):
        model = base if strength is None else comfy.sd.load_lora_for_models(base, None, lora, strength, 0)[0]
        reference = cpu if strength is None else comfy.sd.load_lora_for_models(cpu, None, lora, strength, 0)[0]
        run = ksample(nodes, model, pos, neg, steps=steps, seed=index, size=size, backend=backend)
        eager = ksample(nodes, reference, pos, neg, steps=steps, seed=index, size=size).samples
        visits.append({"strength": strength, "compiles": run.compiles, "transfers": run.transfers_to_host,
                       "run_transfers": runtime.current().run_history[-1].transfers_to_host,
                       "max_diff": max_abs_diff(run.samples, eager)})
    return {"visits": visits, "patched": len(targets)}
