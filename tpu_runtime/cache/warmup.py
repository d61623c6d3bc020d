"""Warm-up: compile a signature's graphs by sampling a few steps at it, with conditioning of its shapes.

Because the per-step graph does not depend on the step index or count, a warm-up needs only the
steps that reach every distinct graph of a sampler: the latent preparation, each kind of step
(first, middle, last for multistep samplers) and the result. Measured per sampler in fresh processes
(tests/test_warmup_coverage.py): euler-like samplers need 2 steps (the first step's graph, and a later
one that also holds the previous update); multistep and two-call samplers 3. UniPC runs one graph
shape for every step and step count (:mod:`.unipc`): 2 steps reach its first and its last.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

STEPS_TO_COVER = {"euler": 2, "euler_ancestral": 2, "ddim": 2, "lcm": 2, "ddpm": 2, "uni_pc": 2, "uni_pc_bh2": 2}
DEFAULT_STEPS = 3
#: What the warm-up node and API take to warm every sampler of :data:`WARMED_BY_ALL` at once.
ALL_SAMPLERS = "(all samplers)"

#: The samplers whose parity and compile counts the suite checks. In replay execution (the default) the
#: model's program is shared, so each after the first adds only its own small graphs.
WARMED_BY_ALL = ("euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "lcm",
                 "ddim", "uni_pc")


class WarmupArgumentError(ValueError):
    """A warm-up asked with an input it cannot use (the message names it): the node shows it as its status."""


def warmup_steps(sampler_name: str, minimum: int = 1) -> int:
    """The steps a warm-up of ``sampler_name`` samples (at least ``minimum``)."""
    return max(STEPS_TO_COVER.get(sampler_name, DEFAULT_STEPS), minimum)


def with_control(positive: list, negative: list, control_net: Any, width: int, height: int,
                 percent: tuple[float, float] = (0.0, 1.0)) -> tuple[list, list]:
    """(positive, negative) with ``control_net`` applied as ``ControlNetApplyAdvanced`` applies it: a
    copy per chain, a blank hint of the image's size (the graphs see only its shape), strength 1 (the
    strength is data)."""
    if not callable(getattr(control_net, "copy", None)) or not callable(getattr(control_net, "get_control", None)):
        raise WarmupArgumentError(f"control_net must be a ControlNet or T2I-Adapter as ComfyUI loads it, not "
                         f"{type(control_net).__name__}")
    start, end = (float(value) for value in percent)
    if not 0.0 <= start <= end <= 1.0:
        raise WarmupArgumentError(f"control_percent must be (start, end) with 0 <= start <= end <= 1, not {percent}")
    hint = torch.zeros(1, 3, height, width)
    applied: dict[int, Any] = {}
    out = []
    for conditioning in (positive, negative):
        conds = []
        for tensor, options in conditioning:
            options = dict(options)
            previous = options.get("control")
            if id(previous) not in applied:
                applied[id(previous)] = control_net.copy().set_cond_hint(hint, 1.0, (start, end))
                applied[id(previous)].set_previous_controlnet(previous)
            options["control"] = applied[id(previous)]
            options["control_apply_to_uncond"] = False
            conds.append([tensor, options])
        out.append(conds)
    return out[0], out[1]


def control_states(positive: Optional[list], negative: Optional[list]) -> list[tuple[Optional[list], Optional[list]]]:
    """The conditionings a warm-up samples: as given; when a control's start/end range switches it off for
    some steps, instead once with copies of the controls on for every step (each kind of step with them
    on) and once with copies off for every step (start = end = 100%: each kind of step with them off)."""
    from tpu_runtime.sampling.control import controls_in

    groups = [[options for _, options in conditioning] for conditioning in (positive or [], negative or [])]
    ranged = any(tuple(getattr(c, "timestep_percent_range", (0.0, 1.0))) != (0.0, 1.0) for c in controls_in(groups))
    if not ranged:
        return [(positive, negative)]
    states = []
    for percent in ((0.0, 1.0), (1.0, 1.0)):
        copies: dict[int, Any] = {}  # shared by positive and negative: a control they share stays one object
        states.append(tuple(_with_range(conditioning, percent, copies) for conditioning in (positive, negative)))
    return states


def _with_range(conditioning: Optional[list], percent: tuple[float, float], copies: dict[int, Any]) -> Optional[list]:
    """``conditioning`` with each control chain copied (once, into ``copies``) at the start/end range
    ``percent``. ComfyUI batches cond and uncond together only when they hold the same control object."""
    if conditioning is None:
        return None

    def copied(control: Any) -> Any:
        if control is None:
            return None
        if id(control) not in copies:
            twin = control.copy()
            twin.timestep_percent_range = percent
            twin.set_previous_controlnet(copied(getattr(control, "previous_controlnet", None)))
            copies[id(control)] = twin
        return copies[id(control)]

    out = []
    for tensor, options in conditioning:
        options = dict(options)
        if "control" in options:
            options["control"] = copied(options["control"])
        out.append([tensor, options])
    return out
