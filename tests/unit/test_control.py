"""``control`` without ComfyUI or XLA: control objects are stand-ins with ComfyUI's attribute names;
the "device" is PyTorch's ``meta`` device, so a value read back must come from a host copy."""
from __future__ import annotations

import pytest
import torch

from tpu_runtime.sampling import control
from tpu_runtime.execution.host_values import DeviceTwin, HostTensor, device_twin
from tpu_runtime.cache.warmup import WarmupArgumentError, control_states, with_control

META = torch.device("meta")


class FakeControl:
    """What ``control`` reads of ComfyUI's ControlBase."""

    def __init__(self, strength=1.0, previous=None, percent=(0.0, 1.0)) -> None:
        self.strength = strength
        self.previous_controlnet = previous
        self.timestep_percent_range = percent
        self.control_model = torch.nn.Linear(2, 3)
        self.seen_strength = None

    def copy(self):
        return FakeControl(self.strength, self.previous_controlnet, self.timestep_percent_range)

    def set_cond_hint(self, hint, strength=1.0, percent=(0.0, 1.0)):
        self.hint, self.strength, self.timestep_percent_range = hint, strength, percent
        return self

    def set_previous_controlnet(self, previous):
        self.previous_controlnet = previous
        return self

    def get_control(self, *args):
        return None


def test_controls_in_follows_chains_once_each():
    first = FakeControl()
    second = FakeControl(previous=first)
    conds = {"positive": [{"control": second}], "negative": [{"control": second}, {"other": 1}]}
    assert control.controls_in(conds) == [second, first]
    assert control.controls_in([[{"control": first}]]) == [first]
    assert control.controls_in({}) == []


def test_strengths_are_host_scalars_for_the_call_and_restored_after():
    first = FakeControl(strength=1.0)
    second = FakeControl(strength=0.5, previous=first)
    with control.strengths_as_data([[{"control": second}]]):
        assert isinstance(first.strength, HostTensor) and isinstance(second.strength, HostTensor)
        assert float(second.strength) == 0.5 and float(first.strength) == 1.0
        out = torch.ones(2, device=META)
        out *= second.strength  # meets a device tensor: uploaded as data, computed there
        assert not isinstance(out, HostTensor) and out.device == META
    assert first.strength == 1.0 and second.strength == 0.5
    assert type(first.strength) is float


def test_the_latent_gives_a_host_s_in_and_plain_tensors_otherwise():
    x = torch.zeros(2, 4, 8, 8, device=META).as_subclass(control.HostOnesLatent)
    s_in = x.new_ones([x.shape[0]])
    assert isinstance(s_in, HostTensor) and s_in.tolist() == [1.0, 1.0]
    assert type(x.new_ones([3, 3])) is torch.Tensor and type(x + 1) is torch.Tensor
    timestep = torch.tensor(3.5).as_subclass(HostTensor) * s_in
    assert isinstance(timestep, HostTensor) and timestep.tolist() == [3.5, 3.5]  # computed on the host
    twin = device_twin(timestep, META)
    assert isinstance(twin, DeviceTwin) and twin.device == META
    assert bool(twin[0] > 3.0) and not bool(twin[0] < 1.0)  # get_control's range check, on the host
    assert type(control.plain_latent(x)) is torch.Tensor


def test_a_sampler_function_gets_the_latent_and_returns_a_plain_tensor():
    seen = {}

    def sample_euler(model, x, sigmas, extra_args=None):
        seen["s_in"] = x.new_ones([x.shape[0]])
        return x

    wrapped = control.host_timestep_sampler(sample_euler)
    assert wrapped.__name__ == "sample_euler"
    out = wrapped(None, torch.zeros(1, 4, 2, 2), None)
    assert type(out) is torch.Tensor and isinstance(seen["s_in"], HostTensor)


def _masters_pre_run_control(model, conds):
    """Shaped like ComfyUI master's ``pre_run_control``: the schedule's ``percent_to_sigma`` read at call
    time, each control pre-run and then its ``multigpu_clones``."""
    s = model.model_sampling
    percent_to_timestep_function = lambda a: s.percent_to_sigma(a)  # noqa: E731
    for x in conds:
        if "control" in x:
            x["control"].pre_run(model, percent_to_timestep_function)
            for device, clone in x["control"].multigpu_clones.items():
                clone.pre_run(model, percent_to_timestep_function)


def test_pre_run_runs_comfyuis_own_with_the_host_schedule_for_xla_models_only():
    calls = []

    class HostSchedule:
        def percent_to_sigma(self, percent):
            return torch.tensor(10.0 * (1 - percent))

    class DeviceSchedule:
        def percent_to_sigma(self, percent):
            raise AssertionError("read the device schedule (an .item() of a device value)")

    class Model:
        device = "xla:0"

        def __init__(self):
            self.model_sampling = DeviceSchedule()

    class Recorder(FakeControl):
        def __init__(self, clones=()):
            super().__init__()
            self.multigpu_clones = dict(clones)

        def pre_run(self, model, percent_to_sigma):
            calls.append(percent_to_sigma(0.25))

    pre_run = control.pre_run_control(_masters_pre_run_control, lambda ms: HostSchedule(),
                                      lambda device: device == "xla:0")
    model = Model()
    pre_run(model, [{"control": Recorder(clones={"cuda:1": Recorder()})}, {}])
    assert calls == [7.5, 7.5] and all(type(c) is float for c in calls)  # the control and its clone
    assert "percent_to_sigma" not in vars(model.model_sampling)  # put back after the call
    cpu_model = Model()
    cpu_model.device = "cpu"
    with pytest.raises(AssertionError, match="device schedule"):  # ComfyUI's own, untouched
        pre_run(cpu_model, [{"control": Recorder()}])


def test_the_layout_names_chains_uncond_and_ranges_but_not_values():
    first = FakeControl(strength=0.3)
    second = FakeControl(strength=0.9, previous=first, percent=(0.2, 0.8))
    groups = {"positive": [[torch.zeros(1), {"control": second, "control_apply_to_uncond": True}]],
              "negative": [{"cross_attn": None}]}
    layout = control.control_layout(groups)
    assert len(layout) == 1 and layout[0].startswith("positive:FakeControl/") and layout[0].endswith(":to_uncond")
    assert "/ranged+FakeControl/" in layout[0]
    second.strength = 0.1
    assert control.control_layout(groups) == layout
    assert control.control_layout({"positive": [[torch.zeros(1), {}]]}) == ()


def test_the_warmup_applies_a_control_like_the_node_and_warms_its_off_steps_when_ranged():
    net = FakeControl()
    previous = FakeControl()
    positive = [[torch.zeros(1, 77, 768), {"control": previous}]]
    negative = [[torch.zeros(1, 77, 768), {}]]
    pos, neg = with_control(positive, negative, net, 64, 64, (0.0, 1.0))
    assert pos[0][1]["control"].previous_controlnet is previous and neg[0][1]["control"].previous_controlnet is None
    assert tuple(pos[0][1]["control"].hint.shape) == (1, 3, 64, 64) and "control" not in negative[0][1]
    assert control_states(pos, neg) == [(pos, neg)]
    ranged = with_control(positive, negative, net, 64, 64, (0.2, 0.8))
    states = control_states(*ranged)
    assert len(states) == 2
    off = states[1][0][0][1]["control"]  # every step off: a copy at start = end = 100%
    assert off.timestep_percent_range == (1.0, 1.0) and off.previous_controlnet.timestep_percent_range == (1.0, 1.0)
    shared = with_control(positive, positive, net, 64, 64, (0.2, 0.8))
    for state in control_states(*shared):  # a control shared by cond and uncond stays one object
        assert state[0][0][1]["control"] is state[1][0][1]["control"]
    on = states[0][0][0][1]["control"]  # every step on: a copy at the full range, its chain copied too
    assert on is not ranged[0][0][1]["control"] and on.timestep_percent_range == (0.0, 1.0)
    assert ranged[0][0][1]["control"].timestep_percent_range == (0.2, 0.8)
    assert on.previous_controlnet is not previous and on.previous_controlnet.timestep_percent_range == (0.0, 1.0)


@pytest.mark.parametrize("bad, percent", [(object(), (0.0, 1.0)), (FakeControl(), (0.8, 0.2)),
                                          (FakeControl(), (0.0, 1.5))])
def test_the_warmup_says_what_is_wrong_with_a_control_argument(bad, percent):
    with pytest.raises(WarmupArgumentError, match="control"):
        with_control([[torch.zeros(1), {}]], [[torch.zeros(1), {}]], bad, 64, 64, percent)


def test_an_adapter_model_stays_on_the_device_during_a_call_only():
    adapter = FakeControl()
    module = torch.nn.Linear(2, 2)
    adapter.t2i_model = module
    with control.during_model_call([[{"control": adapter}]]):
        proxy = adapter.t2i_model
        assert proxy is not module and proxy.cpu() is proxy and proxy.to(torch.float32) is proxy
        assert proxy.in_features == 2 and proxy(torch.ones(1, 2)).shape == (1, 2)
        assert isinstance(adapter.strength, HostTensor)
    assert adapter.t2i_model is module and adapter.strength == 1.0


def test_the_model_call_gets_plain_tensors_for_twins():
    from tpu_runtime.execution.host_values import without_twins

    timestep = device_twin(torch.tensor([2.0, 2.0]), META)
    shared = torch.ones(2, device=META)
    args, kwargs = without_twins(((torch.zeros(1, device=META), timestep),
                                  {"transformer_options": {"sigmas": timestep}, "control": {"input": [shared, shared]}}))
    assert type(args[1]) is torch.Tensor and type(kwargs["transformer_options"]["sigmas"]) is torch.Tensor
    assert kwargs["control"]["input"][0] is shared and kwargs["control"]["input"][1] is shared


def test_without_a_twin_the_model_call_keeps_its_containers():
    """Every model call goes through without_twins: with none to strip, nothing is rebuilt (ComfyUI's
    transformer_options dict stays the object the model's code may write into)."""
    from tpu_runtime.execution.host_values import without_twins

    options = {"patches": {}, "sigmas": torch.ones(1, device=META)}
    call = ((torch.zeros(1, device=META),), {"transformer_options": options})
    assert without_twins(call) is call and call[1]["transformer_options"] is options
