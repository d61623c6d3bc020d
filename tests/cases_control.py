"""Bodies run in fresh processes (``tests/child.py``) by the ControlNet tests (tests/test_control.py).

Every run goes through ComfyUI's own ``nodes.common_ksampler`` with controls applied by ComfyUI's own
nodes (``ControlNetApplyAdvanced``, ``ControlNetApply``), on the tiny SD1.5-architecture UNet and a
cldm ControlNet of its shape; each is compared with the same run on eager CPU (same weights, a CPU
copy of the ControlNet).
"""
from __future__ import annotations

from typing import Optional

from tests.sampling_harness import ksample, max_abs_diff  # noqa: F401  (before ComfyUI's own ``tests``)

#: Counters only the torchax backend keeps, reported per run where the backend has them: ops dispatched on
#: the device outside programs (a ControlNet's merge of its resident outputs), weights and call tensors sent, and
#: call inputs held on the device while their host tensor lives (a ControlNet's hint).
EXTRA_COUNTERS = ("device_ops", "weight_uploads", "transfers_to_device", "held_input_uploads")


def _extra(before: dict, after: dict) -> dict:
    return {name: after[name] - before[name] for name in EXTRA_COUNTERS if name in after}

#: One run's settings (the keyword arguments of ``ksample`` and of the control's application).
RUN_DEFAULTS = dict(steps=8, cfg=7.0, sampler="euler", scheduler="normal", seed=42, batch=1, strength=0.9,
                    start=0.0, end=1.0)


def _controls(nodes, pairs, pos, neg, image, run: dict, apply: str, chained: int):
    """(positive, negative) with ``chained`` ControlNets applied by the ``apply`` node, one per pair item."""
    for index in range(chained):
        control = pairs[index]
        if apply == "advanced":
            pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(
                pos, neg, control, image, run["strength"] - 0.1 * index, run["start"], run["end"])
        else:  # ControlNetApply: the positive only, control_apply_to_uncond=True
            (pos,) = nodes.ControlNetApply().apply_controlnet(pos, control, image, run["strength"] - 0.1 * index)
    return pos, neg


def control_runs(nodes, cases: dict, size: int = 128) -> dict:
    """For each case (``{"runs": [overrides...], "apply": "advanced"|"apply_to_uncond", "chained": n}``),
    its runs in order, each with its counters and its parity with eager CPU; plus one plain run (no
    control) of the default settings, measured after the same run with a control warmed its graphs."""
    import torch

    from bench import tiny_control, tiny_model
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    xla = tiny_model.build_patcher("tiny", seed=0)
    cpu = tiny_model.build_patcher("tiny", seed=0, load_device=torch.device("cpu"))
    on_xla = [tiny_control.sd15_controlnet(seed=5 + i) for i in range(2)]
    on_cpu = [tiny_control.sd15_controlnet(seed=5 + i, load_device=torch.device("cpu")) for i in range(2)]
    result: dict = {"cases": {}}
    for name, case in cases.items():
        runs = []
        for overrides in case["runs"]:
            run = {**RUN_DEFAULTS, **overrides}
            batch = run["batch"]
            pos, neg = tiny_model.sd15_conditioning(1, batch=batch), tiny_model.sd15_conditioning(2, batch=batch)
            image = tiny_control.hint_image(size=size, batch=run.get("hint_batch", 1))
            apply, chained = case.get("apply", "advanced"), case.get("chained", 1)
            sample_args = dict(steps=run["steps"], cfg=run["cfg"], sampler=run["sampler"],
                               scheduler=run["scheduler"], seed=run["seed"], batch=batch, size=size)
            xpos, xneg = _controls(nodes, on_xla, pos, neg, image, run, apply, chained)
            replays, counters = state.replayed_models.figures()["replays"], backend.counters()
            measured = ksample(nodes, xla, xpos, xneg, backend=backend, **sample_args)
            replays = state.replayed_models.figures()["replays"] - replays
            extra = _extra(counters, backend.counters())
            cpos, cneg = _controls(nodes, on_cpu, pos, neg, image, run, apply, chained)
            reference = ksample(nodes, cpu, cpos, cneg, **sample_args)
            runs.append({"run": run, "compiles": measured.compiles, "executions": measured.executions,
                         "transfers": measured.transfers_to_host, "fallbacks": measured.fallbacks,
                         "model_calls": measured.model_calls, "diff": max_abs_diff(measured.samples, reference.samples),
                         "extra": extra,
                         # the ControlNets' programs run in this run (replay execution; 0 in the other modes)
                         "control_calls": replays - measured.model_calls if state.options.execution == "replay" else 0,
                         "unchanged_by_control": max_abs_diff(ksample(nodes, cpu, pos, neg, **sample_args).samples,
                                                              reference.samples) if len(runs) == 0 else None})
        result["cases"][name] = runs
    plain = ksample(nodes, xla, tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2), backend=backend,
                    steps=RUN_DEFAULTS["steps"], size=size)
    result["plain"] = {"executions": plain.executions, "transfers": plain.transfers_to_host,
                       "model_calls": plain.model_calls}
    result["replay_fallbacks"] = state.replayed_models.fallbacks()
    result["replay"] = state.replayed_models.figures()
    return result


def warmed_control(nodes, warm_percent: list, run_percents: list, size: int = 128, steps: int = 8,
                   from_conditioning: bool = False) -> dict:
    """Warm up euler with a ControlNet through the public API (``control_net=``, or, with
    ``from_conditioning``, taken from conditioning a node applied it to), then sample for real with the
    ControlNet applied by ``ControlNetApplyAdvanced`` at each of ``run_percents`` (strengths vary):
    each real run's counters and parity with eager CPU."""
    import torch

    import tpu_runtime
    from bench import tiny_control, tiny_model
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    xla = tiny_model.build_patcher("tiny", seed=0)
    cpu = tiny_model.build_patcher("tiny", seed=0, load_device=torch.device("cpu"))
    control, control_cpu = tiny_control.sd15_controlnet(), tiny_control.sd15_controlnet(load_device=torch.device("cpu"))
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    image = tiny_control.hint_image(size=size)
    if from_conditioning:
        wpos, wneg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control, image, 1.0, *warm_percent)
        warm = tpu_runtime.tpu_manager.warmup(xla, size, size, cfg=7.0, sampler_name="euler", positive=wpos,
                                              negative=wneg)
    else:
        warm = tpu_runtime.tpu_manager.warmup(xla, size, size, cfg=7.0, sampler_name="euler", positive=pos,
                                              negative=neg, control_net=control, control_percent=tuple(warm_percent))
    result = {"warmup": {"graphs": warm.graphs_compiled, "controls": list(warm.signature.controls)}, "runs": []}
    for index, (start, end) in enumerate(run_percents):
        strength = 0.9 - 0.2 * index
        xpos, xneg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control, image, strength, start, end)
        measured = ksample(nodes, xla, xpos, xneg, steps=steps, size=size, backend=backend)
        cpos, cneg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control_cpu, image, strength, start,
                                                                      end)
        reference = ksample(nodes, cpu, cpos, cneg, steps=steps, size=size)
        result["runs"].append({"compiles": measured.compiles, "transfers": measured.transfers_to_host,
                               "fallbacks": measured.fallbacks, "diff": max_abs_diff(measured.samples,
                                                                                     reference.samples)})
    return result


def family_runs(nodes, family: str, strengths: list, size: int = 64, steps: int = 6,
                overrides: Optional[dict] = None) -> dict:
    """A control of another kind or model family, applied by ``ControlNetApplyAdvanced`` at each of
    ``strengths`` in turn: each run's counters and its parity with eager CPU (``t2i``: a T2I-Adapter on
    the tiny SD1.5-architecture UNet; ``sdxl``, ``flux``: the zoo's model with a ControlNet of its shape)."""
    import torch

    from bench import tiny_control, tiny_model, tiny_zoo
    from tpu_runtime import runtime

    state = runtime.current()
    backend = state.backend
    cpu_device = torch.device("cpu")
    if family == "t2i":
        xla = tiny_model.build_patcher("tiny", seed=0, overrides=tiny_control.T2I_UNET)
        cpu = tiny_model.build_patcher("tiny", seed=0, load_device=cpu_device, overrides=tiny_control.T2I_UNET)
        control, control_cpu = tiny_control.t2i_adapter(), tiny_control.t2i_adapter(device=cpu_device)
        pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
        latent, cfg = torch.zeros(1, 4, size // 8, size // 8), 7.0
    else:
        xla = tiny_zoo.build_patcher(family, seed=0, overrides=overrides)
        cpu = tiny_zoo.build_patcher(family, seed=0, load_device=cpu_device, overrides=overrides)
        control = tiny_control.family_controlnet(family)
        control_cpu = tiny_control.family_controlnet(family, load_device=cpu_device)
        pos, neg = tiny_zoo.conditioning(family, 1, size=size), tiny_zoo.conditioning(family, 2, size=size)
        latent, cfg = torch.zeros(tiny_zoo.latent_shape(family, size=size)), tiny_zoo.family(family).cfg
    image = tiny_control.hint_image(size=size)
    result: dict = {"runs": []}
    for strength in strengths:
        xpos, xneg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control, image, strength, 0.0, 1.0)
        replays, counters = state.replayed_models.figures()["replays"], backend.counters()
        measured = ksample(nodes, xla, xpos, xneg, steps=steps, cfg=cfg, latent=latent.clone(), backend=backend)
        replays = state.replayed_models.figures()["replays"] - replays
        extra = _extra(counters, backend.counters())
        cpos, cneg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control_cpu, image, strength, 0.0, 1.0)
        reference = ksample(nodes, cpu, cpos, cneg, steps=steps, cfg=cfg, latent=latent.clone())
        plain = ksample(nodes, cpu, pos, neg, steps=steps, cfg=cfg, latent=latent.clone())
        result["runs"].append({"strength": strength, "compiles": measured.compiles, "executions": measured.executions,
                               "transfers": measured.transfers_to_host, "fallbacks": measured.fallbacks,
                               "model_calls": measured.model_calls, "control_calls": replays - measured.model_calls,
                               "extra": extra,
                               "diff": max_abs_diff(measured.samples, reference.samples),
                               "control_effect": max_abs_diff(plain.samples, reference.samples)})
    result["replay_fallbacks"] = state.replayed_models.fallbacks()
    return result
