"""ControlNets (and T2I-Adapters) in the conditioning, with no host sync and no recompile per value.

ComfyUI's ``ControlBase.get_control`` runs before each model call and, left alone, reads the device
timestep on the host (``t[0] > self.timestep_range[0]``: two syncs a call), ``pre_run`` computes the
start/end timesteps from the device schedule (``.item()``), and the strength is a Python float
multiplied into the control's outputs (torch_xla bakes 0 and 1 into the graph as constants).

Here, for a run whose conditioning holds a control:

* the k-diffusion samplers' ``s_in = x.new_ones([batch])`` is a host tensor, so the model's timestep
  (``sigma * s_in``) is computed on the host and enters the device as data that keeps its host values
  (a :class:`~.host_values.DeviceTwin`, see ``steps.predict_noise_wrapper``): the range check in
  ``get_control`` is answered on the host, with no transfer; the on/off decision comes from host values;
* ``pre_run`` converts the start/end percents with the host copy of the model's schedule
  (:func:`pre_run_control`, installed by ``patches``);
* during each model call the strength of every control in the chain is a host scalar, uploaded as
  data when it meets the control's outputs: any strength runs the same graph; a T2I-Adapter's model
  stays on the device (ComfyUI moves it back to the CPU after each use);
* the diffusion model itself gets the timestep as a plain device tensor (``model_call``): in a
  replayed program, math on a twin's host copy would be a constant.

In replay execution (the default) each ControlNet's model is replayed as the diffusion model is: traced
once per call shape, then run as its own program, its Python not run again (:func:`control_models_replayed`).
A model call with a control then runs the sampler's math, the control's program, a small graph of its
outputs and the model's input, and the model's program. In the other modes the control model is traced
in the small graph before each model call. On torchax (replay only) the control's program keeps its outputs
on the JAX device (``backends.torchax_resident``): ComfyUI's merge of them (the strength, the chain) runs
there op by op, and the diffusion model's program takes them with no trip through the host; a
T2I-Adapter's model is replayed the same way.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional

import torch

from tpu_runtime.execution.host_values import as_host
from tpu_runtime.execution.stand_in import ModelStandIn


def controls_in(conds: Any) -> list[Any]:
    """Every control object (ControlNet, T2I-Adapter, and the ones they chain) in ComfyUI's conds
    (a dict of lists, or a list of lists, of cond dicts), each once, in the order met."""
    found: list[Any] = []
    seen: set[int] = set()
    groups = conds.values() if isinstance(conds, dict) else conds
    for group in groups or ():
        for cond in group or ():
            control = cond.get("control") if isinstance(cond, dict) else None
            while control is not None and id(control) not in seen:
                seen.add(id(control))
                found.append(control)
                control = getattr(control, "previous_controlnet", None)
    return found


@contextlib.contextmanager
def strengths_as_data(conds: Any) -> Iterator[None]:
    """For the length of one model call, every control's strength is a host scalar (uploaded as data
    where it meets the control's outputs) instead of a Python float (a graph constant when it is 0 or 1)."""
    saved: list[tuple[Any, Any]] = []
    try:
        for control in controls_in(conds):
            strength = getattr(control, "strength", None)
            if isinstance(strength, (int, float)) and not isinstance(strength, bool):
                saved.append((control, strength))
                control.strength = as_host(torch.tensor(float(strength), dtype=torch.float32))
        yield
    finally:
        for control, strength in saved:
            control.strength = strength


class _StaysOnDevice:
    """A T2I-Adapter's model as ``T2IAdapter.get_control`` sees it during a model call: ``.cpu()``, which
    ComfyUI calls after computing the adapter's features once a run, leaves it on the device (moving it
    back would read every weight back to the host: a transfer each; it is moved there again next run)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    def to(self, *args: Any, **kwargs: Any) -> "_StaysOnDevice":
        self._module.to(*args, **kwargs)
        return self

    def cpu(self) -> "_StaysOnDevice":
        return self


@contextlib.contextmanager
def adapters_stay_on_device(conds: Any) -> Iterator[None]:
    """For the length of one model call, T2I-Adapters' models are not moved back to the CPU."""
    saved: list[tuple[Any, Any]] = []
    try:
        for control in controls_in(conds):
            module = vars(control).get("t2i_model")
            if isinstance(module, torch.nn.Module):
                saved.append((control, module))
                control.t2i_model = _StaysOnDevice(module)
        yield
    finally:
        for control, module in saved:
            control.t2i_model = module


#: A ControlNet model's keyword inputs that a run passes unchanged to every call: ComfyUI's ``get_control``
#: computes ``cond_hint`` once a run (``hint=self.cond_hint``), so a backend that holds inputs on the device
#: (torchax) uploads it once a run, not once a call.
HELD_CONTROL_INPUTS = ("hint",)


@contextlib.contextmanager
def control_models_replayed(conds: Any, stand_in_for: Callable[[torch.nn.Module, str], Any],
                            before_call: Callable[[], None], resident: bool = False) -> Iterator[None]:
    """For the length of one model call, every ControlNet's model (``control_model``) is its replayed
    stand-in (``stand_in_for(module, label)``); ``before_call`` dispatches what was traced before it, so
    the control's inputs are device data when its program runs. ``resident`` (torchax: the backend keeps a
    program's outputs on the device only when asked): the stand-ins' outputs stay on the device, and a
    T2I-Adapter's model (``t2i_model``, run once a run) is replayed too, or it would run on the host."""
    saved: list[tuple[Any, str, Any, Any]] = []
    names = ("control_model", "t2i_model") if resident else ("control_model",)
    try:
        for control in controls_in(conds):
            for name in names:
                held = vars(control).get(name)
                module = held._module if isinstance(held, _StaysOnDevice) else held
                if not isinstance(module, torch.nn.Module) or isinstance(module, ModelStandIn):
                    continue
                stand_in = stand_in_for(module, f"{type(control).__name__} ({type(module).__name__})")
                stand_in.before_call = before_call
                stand_in.resident_outputs = resident
                stand_in.held_inputs = HELD_CONTROL_INPUTS if resident else ()
                saved.append((control, name, held, stand_in))
                setattr(control, name, _StaysOnDevice(stand_in) if isinstance(held, _StaysOnDevice) else stand_in)
        yield
    finally:
        for control, name, held, stand_in in saved:
            setattr(control, name, held)
            stand_in.before_call = None
            stand_in.resident_outputs = False
            stand_in.held_inputs = ()


@contextlib.contextmanager
def during_model_call(conds: Any, replay: Optional[tuple] = None) -> Iterator[None]:
    """What one model call (``calc_cond_batch``) of a run with controls runs inside; ``replay``
    (``stand_in_for``, ``before_call``[, ``resident``]) replays the controls' models (:func:`control_models_replayed`)."""
    replayed = control_models_replayed(conds, *replay) if replay is not None else contextlib.nullcontext()
    with strengths_as_data(conds), adapters_stay_on_device(conds), replayed:
        yield


class HostOnesLatent(torch.Tensor):
    """The latent as a k-diffusion sampler function receives it: ``x.new_ones([batch])`` (the samplers'
    ``s_in``) is a host tensor, so ``sigma * s_in`` stays on the host; every other op gives ordinary
    tensors."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if func is torch.Tensor.new_ones and args and _batch_sized(args[0], args[1:], kwargs):
                latent = args[0]
                return as_host(torch.ones(latent.shape[0], dtype=kwargs.get("dtype") or latent.dtype))
            return func(*args, **kwargs)


def _batch_sized(latent: torch.Tensor, size_args: tuple, kwargs: dict) -> bool:
    """Whether ``new_ones`` asks for one value per batch item (``[x.shape[0]]``) and nothing else."""
    if set(kwargs) - {"dtype"}:
        return False
    size = size_args[0] if len(size_args) == 1 and isinstance(size_args[0], (list, tuple, torch.Size)) else size_args
    return len(size) == 1 and int(size[0]) == latent.shape[0]


def plain_latent(tensor: Any) -> Any:
    """The latent as an ordinary tensor (drops :class:`HostOnesLatent`)."""
    return tensor.as_subclass(torch.Tensor) if isinstance(tensor, HostOnesLatent) else tensor


def host_timestep_sampler(function: Callable) -> Callable:
    """``function`` (a k-diffusion sampler) called with a latent whose ``s_in`` is a host tensor."""

    @functools.wraps(function)
    def sampler_function(model, x, *args, **kwargs):
        if isinstance(x, torch.Tensor) and not x.is_nested:
            x = x.as_subclass(HostOnesLatent)
        return plain_latent(function(model, x, *args, **kwargs))

    return sampler_function


def host_percent_to_sigma(host_model_sampling: Any) -> Callable[[float], float]:
    """ComfyUI's ``percent_to_sigma`` computed on the host copy of the schedule (no ``.item()`` of a
    device value)."""

    def percent_to_sigma(percent: float) -> float:
        value = host_model_sampling.percent_to_sigma(percent)
        return float(value)

    return percent_to_sigma


def pre_run_control(original: Callable, host_model_sampling: Callable[[Any], Any],
                    is_xla: Callable[[Any], bool]) -> Callable:
    """``comfy.samplers.pre_run_control`` that, for a model on the XLA device, runs ComfyUI's own with the
    schedule's ``percent_to_sigma`` answered from its host copy for the length of the call: whatever
    ComfyUI's pre-run does (2026 ComfyUI also pre-runs each control's ``multigpu_clones``), it does, without
    an ``.item()`` of a device value. Elsewhere ComfyUI's own, untouched."""

    def pre_run(*args, **kwargs):
        model = args[0] if args else kwargs.get("model")
        sampling = getattr(model, "model_sampling", None)
        if not is_xla(getattr(model, "device", None)) or sampling is None:
            return original(*args, **kwargs)
        had_own = "percent_to_sigma" in vars(sampling)
        saved = vars(sampling).get("percent_to_sigma")
        vars(sampling)["percent_to_sigma"] = host_percent_to_sigma(host_model_sampling(sampling))
        try:
            return original(*args, **kwargs)
        finally:
            if had_own:
                vars(sampling)["percent_to_sigma"] = saved
            else:
                del vars(sampling)["percent_to_sigma"]

    return pre_run


def has_controls(guider: Optional[Any]) -> bool:
    """Whether a guider's conds (as processed for this run) hold a control."""
    conds = getattr(guider, "conds", None) or getattr(guider, "original_conds", None)
    return bool(controls_in(conds or {}))


def _control_model(control: Any) -> Any:
    return getattr(control, "control_model", None) or getattr(control, "t2i_model", None)


def _describe(control: Any) -> str:
    """One control in a signature: its class, its model's fingerprint, whether a range switches it off."""
    from tpu_runtime.cache.signature import cached_fingerprint

    model = _control_model(control)
    fingerprint = cached_fingerprint(model) if isinstance(model, torch.nn.Module) else "none"
    ranged = tuple(getattr(control, "timestep_percent_range", (0.0, 1.0))) != (0.0, 1.0)
    return f"{type(control).__name__}/{fingerprint}{'/ranged' if ranged else ''}"


def control_layout(groups: dict) -> tuple[str, ...]:
    """What the controls in the conditioning change in the graphs, as a signature field: for each cond
    (``{"positive": [cond dict or [tensor, dict]], ...}``) its chain of controls and whether it also
    reaches the uncond pass. Strength and range values are left out (data, or host decisions)."""
    layout = []
    for name in sorted(groups):
        for cond in groups[name] or ():
            options = cond[1] if isinstance(cond, (list, tuple)) and len(cond) > 1 else cond
            control = options.get("control") if isinstance(options, dict) else None
            chain = []
            while control is not None and len(chain) < 64:
                chain.append(_describe(control))
                control = getattr(control, "previous_controlnet", None)
            if chain:
                to_uncond = ":to_uncond" if options.get("control_apply_to_uncond") else ""
                layout.append(f"{name}:{'+'.join(chain)}{to_uncond}")
    return tuple(layout)
