"""Child process for the weight-sharding tests: one mesh (set by the parent's env) per process.

argv: a JSON list of tiny-zoo family names, and the path to save the latents to. For each family:
its fp32 model loaded on the XLA device through ComfyUI (``nodes.common_ksampler``), run twice with a
different step count, scheduler, cfg and seed (the second run's compiles are counted), then a LoRA
clone of it and the base again, each compared with the same model eager on the CPU. What each device
holds of the model is read from every tensor's XLA sharding here, independently of the pack's own
figures (which are printed too). Prints one RESULT line.
"""
import json
import logging
import os
import sys
import time

logging.basicConfig(level=logging.INFO)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.sampling_harness import ksample, max_abs_diff  # noqa: E402  (before ComfyUI's own ``tests``)
from bench.comfy_host import import_comfy  # noqa: E402

nodes = import_comfy(load_pack=True)
import comfy.model_management  # noqa: E402
import torch  # noqa: E402
import torch_xla  # noqa: E402

import tpu_runtime  # noqa: E402
import tpu_runtime.runtime as runtime  # noqa: E402
from bench import tiny_zoo  # noqa: E402

families, out_path = json.loads(sys.argv[1]), sys.argv[2]
state = runtime.current()
backend = state.backend
cpu = torch.device("cpu")
SIZE, FRAMES = 64, 2


def held_per_device(model: torch.nn.Module) -> dict:
    """Bytes of the model's device tensors on each device, from their shardings; the largest tensor
    left whole on every device."""
    devices = backend.device_total()
    per_device, total, whole, largest_whole = [0] * devices, 0, 0, (0, "")
    twins, whole_twins = 0, 0  # HWIO kernel twins (buffers of conv layers), and those whole on every device
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b is not None]
    for name, tensor in tensors:
        if tensor.device.type != "xla":
            continue
        nbytes = tensor.numel() * tensor.element_size()
        total += nbytes
        twin = name.endswith("comfy_tpu_hwio_kernel")
        twins += twin
        whole_twins += twin and not torch_xla._XLAC._get_xla_sharding_spec(tensor)
        if not torch_xla._XLAC._get_xla_sharding_spec(tensor):
            per_device = [held + nbytes for held in per_device]
            whole += nbytes
            largest_whole = max(largest_whole, (nbytes, name))
            continue
        for index, (_, slices) in enumerate(torch_xla._XLAC._get_local_shard_replica_and_indices([tensor])[0]):
            if slices is Ellipsis:  # replicated
                per_device[index] += nbytes
                whole += nbytes if index == 0 else 0
                largest_whole = max(largest_whole, (nbytes, name))
                continue
            count = 1
            for part, length in zip(slices, tensor.shape):
                start, stop, _ = part.indices(length)
                count *= stop - start
            per_device[index] += count * tensor.element_size()
    return {"total": total, "per_device": per_device, "whole": whole, "largest_whole": list(largest_whole),
            "twins": int(twins), "whole_twins": int(whole_twins)}


result, latents = {"families": {}}, {}
loaded = []  # every family's patchers stay alive, as ComfyUI keeps loaded models: the stats list each
for name in families:
    fam = tiny_zoo.family(name)
    xla_model = tiny_zoo.build_patcher(name, seed=0, dtype=torch.float32)
    cpu_model = tiny_zoo.build_patcher(name, seed=0, load_device=cpu, dtype=torch.float32)
    positive, negative = tiny_zoo.conditioning(name, 1, size=SIZE), tiny_zoo.conditioning(name, 2, size=SIZE)
    shape = tiny_zoo.latent_shape(name, size=SIZE, frames=FRAMES)
    # The second run changes steps, scheduler, cfg (where cfg > 1: cfg 1 drops the negative) and seed.
    settings = [dict(steps=3, scheduler="normal", cfg=fam.cfg, seed=10),
                dict(steps=4, scheduler="karras", cfg=fam.cfg * 1.5 if fam.cfg > 1 else fam.cfg, seed=11)]
    lora_xla, lora_keys = tiny_zoo.lora_clone(xla_model)
    lora_cpu, _ = tiny_zoo.lora_clone(cpu_model)
    loaded += [(xla_model, cpu_model), (lora_xla, lora_cpu)]
    visits = [("base", xla_model, cpu_model, settings[0]), ("base", xla_model, cpu_model, settings[1]),
              ("lora", lora_xla, lora_cpu, settings[0]), ("base", xla_model, cpu_model, settings[0])]
    runs = []
    for index, (label, on_xla, on_cpu, run_settings) in enumerate(visits):
        start = time.perf_counter()
        run = ksample(nodes, on_xla, positive, negative, sampler="euler", latent=torch.zeros(shape), backend=backend,
                      **run_settings)
        wall = time.perf_counter() - start
        reference = ksample(nodes, on_cpu, positive, negative, sampler="euler", latent=torch.zeros(shape),
                            **run_settings).samples
        latents[f"{name}/{index}"] = run.samples
        held = held_per_device(on_xla.model)
        runs.append({"model": label, **run_settings, "compiles": run.compiles, "transfers_to_host": run.transfers_to_host,
                     "fallbacks": run.fallbacks, "max_diff": max_abs_diff(run.samples, reference),
                     "abs_max": float(reference.abs().max()), "finite": bool(torch.isfinite(run.samples).all()),
                     "wall_s": round(wall, 2), "held": held})
    lora_specs = {key: torch_xla._XLAC._get_xla_sharding_spec(tiny_zoo_weight)
                  for key in lora_keys
                  for tiny_zoo_weight in [lora_xla.model.get_parameter(key)]} if lora_keys else {}
    result["families"][name] = {"runs": runs, "lora_keys": lora_keys, "lora_specs": lora_specs,
                                "lora_effect": max_abs_diff(ksample(nodes, lora_cpu, positive, negative, sampler="euler",
                                                                    latent=torch.zeros(shape), **settings[0]).samples,
                                                            ksample(nodes, cpu_model, positive, negative, sampler="euler",
                                                                    latent=torch.zeros(shape), **settings[0]).samples)}
stats = tpu_runtime.get_tpu_stats()
# ComfyUI unloads every model (to its offload device, the host): split weights come back part by part.
before, held_before = backend.counters(), state.placement.held_per_chip()
comfy.model_management.unload_all_models()
after, held_after = backend.counters(), state.placement.held_per_chip()
left_on_device = sum(tensor.device.type == "xla" for on_xla, _ in loaded
                     for tensor in list(on_xla.model.parameters()) + list(on_xla.model.buffers()))
unloaded_equal = all(torch.equal(on_xla.model.state_dict()[key].cpu(), value)
                     for on_xla, on_cpu in loaded[::2] for key, value in on_cpu.model.state_dict().items())
result["unload"] = {"compiles": after["compiles"] - before["compiles"], "left_on_device": int(left_on_device),
                    "equal_to_the_host_models": unloaded_equal, "held_per_chip": [held_before, held_after]}
torch.save(latents, out_path)
result.update(spmd=stats["spmd"], execution=state.options.execution, twins_made=state.kernel_twins.made,
              replay=state.replayed_models.figures(), replay_fallbacks=state.replayed_models.fallbacks(),
              model_axis=backend.model_axis(), devices=backend.device_total())
print("RESULT " + json.dumps(result))
