"""Body of the torchax weight-split test (tests/test_torchax_shard.py), in one fresh process whose JAX has 4
CPU devices and a ``data=1,model=4`` mesh: per family, a run, a second run with other steps, scheduler, cfg
and seed, a LoRA clone (LoraLoader's path, patched on the host weights, their twins uploaded split) and the
base again, each against the same model eager on the CPU. What each device holds is read from the weights'
twins' own JAX shards, independently of the pack's figures."""
from __future__ import annotations

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (before ComfyUI's own ``tests``)

SIZE = 64


def _held(backend, model) -> dict:
    """Bytes each device holds of the model's weight twins, from the arrays' shards; the largest twin whole."""
    from tpu_runtime.backends.torchax_shard import bytes_per_device

    devices = list(backend._mesh.devices.flat)
    per_device, total, whole, largest_whole, missing = [0] * len(devices), 0, 0, 0, 0
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b is not None]
    for _, tensor in tensors:
        twin = backend.twins.twin(tensor)
        if twin is None:
            missing += 1
            continue
        nbytes = int(twin.nbytes)
        held = bytes_per_device(twin, devices)
        total += nbytes
        if min(held) == nbytes:
            whole += nbytes
            largest_whole = max(largest_whole, nbytes)
        per_device = [a + b for a, b in zip(per_device, held)]
    return {"total": total, "per_device": per_device, "whole": whole, "largest_whole": largest_whole,
            "missing": missing}


def split_runs(nodes, families: list) -> dict:
    import torch

    from bench import tiny_zoo
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    cpu = torch.device("cpu")
    result = {"backend": backend.name, "model_axis": backend.model_axis(), "devices": backend.device_total(),
              "families": {}}
    for name in families:
        fam = tiny_zoo.family(name)
        on_device = tiny_zoo.build_patcher(name, seed=0, dtype=torch.float32)
        on_cpu = tiny_zoo.build_patcher(name, seed=0, load_device=cpu, dtype=torch.float32)
        positive, negative = tiny_zoo.conditioning(name, 1, size=SIZE), tiny_zoo.conditioning(name, 2, size=SIZE)
        shape = tiny_zoo.latent_shape(name, size=SIZE, frames=2)
        settings = [dict(steps=3, scheduler="normal", cfg=fam.cfg, seed=10),
                    dict(steps=4, scheduler="karras", cfg=fam.cfg * 1.5 if fam.cfg > 1 else fam.cfg, seed=11)]
        lora_device, lora_keys = tiny_zoo.lora_clone(on_device)
        lora_cpu, _ = tiny_zoo.lora_clone(on_cpu)
        visits = [("base", on_device, on_cpu, settings[0]), ("base", on_device, on_cpu, settings[1]),
                  ("lora", lora_device, lora_cpu, settings[0]), ("base", on_device, on_cpu, settings[0])]
        runs = []
        for label, model, reference_model, run_settings in visits:
            run = ksample(nodes, model, positive, negative, sampler="euler", latent=torch.zeros(shape),
                          backend=backend, **run_settings)
            reference = ksample(nodes, reference_model, positive, negative, sampler="euler",
                                latent=torch.zeros(shape), **run_settings).samples
            runs.append({"model": label, "compiles": run.compiles, "transfers": run.transfers_to_host,
                         "model_calls": run.model_calls, "fallbacks": run.fallbacks,
                         "diff": max_abs_diff(run.samples, reference), "abs_max": float(reference.abs().max()),
                         "held": _held(backend, model.model.diffusion_model)})
            if label == "lora":
                lora_specs = {key: backend.tensor_sharding(model.model.get_parameter(key)) for key in lora_keys}
        plain = ksample(nodes, on_cpu, positive, negative, sampler="euler", latent=torch.zeros(shape), **settings[0])
        lora_ref = ksample(nodes, lora_cpu, positive, negative, sampler="euler", latent=torch.zeros(shape), **settings[0])
        result["families"][name] = {"runs": runs, "lora_keys": lora_keys, "lora_specs": lora_specs,
                                    "lora_effect": max_abs_diff(plain.samples, lora_ref.samples)}
    result["spmd"] = state.manager.spmd_stats()
    result["replay_fallbacks"] = state.replayed_models.fallbacks()
    return result
