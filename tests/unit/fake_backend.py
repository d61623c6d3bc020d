"""A CPU stand-in for :class:`tpu_runtime.backends.xla.Backend`: every method, simple behaviour, counters.

``events`` records the calls that order matters for (``step_boundary``, ``wait_device``,
``materialize``), so a test can read the sequence; ``shards`` sets ``shard_count``, ``model_ways`` the
``model`` axis (weights marked with ``shard_tensor`` are recorded by id in ``weight_specs``).
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional

import torch

from tpu_runtime.backends.xla import Backend, CapturedModule, ReplayUnsupported


class FakeBackend:
    name = "fake"
    traces_functions = False
    execution_modes = ("replay", "compiled", "lazy")
    fallback_runs = "in lazy mode"

    def __init__(self, shards: int = 1, device: str = "cpu", model_ways: int = 1) -> None:
        self.shards = shards
        self.model_ways = model_ways
        self.weight_specs: dict[int, tuple] = {}
        self._device = torch.device(device)
        self.events: list[str] = []
        self.sharded: list[torch.Tensor] = []
        self._counters = {"compiles": 0, "executions": 0, "transfers_to_host": 0, "transfers_to_device": 0}

    def device(self) -> torch.device:
        return self._device

    def is_device(self, device: Any) -> bool:
        return torch.device(device) == self._device

    def device_type(self) -> str:
        return "FAKE"

    def step_boundary(self) -> None:
        self.events.append("step_boundary")
        self._counters["executions"] += 1

    def wait_device(self) -> None:
        self.events.append("wait_device")

    def materialize(self, tensors: list[torch.Tensor]) -> None:
        self.events.append("materialize")

    def tensor_token(self, tensor: torch.Tensor) -> Any:
        return id(tensor), tensor._version

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        self._counters["transfers_to_host"] += 1
        return tensor.to("cpu")

    def all_to_host(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        self._counters["transfers_to_host"] += 1
        return [tensor.to("cpu") for tensor in tensors]

    def replicated(self, tensor):
        return tensor

    def data_tensor(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type != "cpu"

    def autocast(self, dtype: torch.dtype) -> ContextManager:
        return contextlib.nullcontext()

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def compile_seconds(self) -> float:
        return 0.0

    def fallback_ops(self) -> dict[str, int]:
        return {}

    def memory_info(self, device: Any) -> Optional[tuple[int, int]]:
        return None

    def compile_module(self, module: torch.nn.Module) -> CapturedModule:
        captured = CapturedModule()

        def call(*args: Any, **kwargs: Any) -> Any:
            captured.graph_calls += 1
            return module(*args, **kwargs)

        captured.call = call
        return captured

    def capture_program(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> Any:
        raise ReplayUnsupported("the fake backend compiles no programs")

    def capture_function(self, function, inputs: list[torch.Tensor], weight_count: int, split=None) -> Any:
        raise ReplayUnsupported("the fake backend compiles no programs")

    def run_program(self, program: Any, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        raise ReplayUnsupported("the fake backend compiles no programs")

    def reset_compiler(self) -> None:
        self.events.append("reset_compiler")

    def compiler_counters(self) -> dict[str, int]:
        return {"dynamo_frames": 0, "dynamo_graphs": 0, "dynamo_graph_breaks": 0, "captured_graph_calls": 0}

    def mesh_description(self) -> str:
        if self.model_ways > 1:
            return f"data={self.shards},model={self.model_ways}"
        return "single" if self.shards == 1 else f"data={self.shards}"

    def spmd_mesh(self) -> Any:
        return None

    def shard_count(self) -> int:
        return self.shards

    def shard_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        self.sharded.append(tensor)
        return tensor

    def model_axis(self) -> int:
        return self.model_ways

    def set_model_axis(self, size: int) -> None:
        devices = self.device_total()
        self.shards, self.model_ways = devices // size, size

    def device_total(self) -> int:
        return self.shards * self.model_ways

    def shard_tensor(self, tensor: torch.Tensor, spec: tuple[Optional[str], ...]) -> None:
        self.weight_specs[id(tensor)] = spec

    def tensor_sharding(self, tensor: torch.Tensor) -> str:
        spec = self.weight_specs.get(id(tensor))
        return "" if spec is None else str(spec)

    def gather_on_host(self, tensor: torch.Tensor) -> torch.Tensor:
        self._counters["transfers_to_host"] += 1
        return tensor.to("cpu")

    def release_weights(self, module: torch.nn.Module) -> int:
        return 0  # its weights are the device tensors themselves (as torch_xla's)

    def device_bytes(self, tensor: torch.Tensor) -> list[int]:
        """Each device's part, as XLA would hold it: the split dim divided by the model axis."""
        size = tensor.numel() * tensor.element_size()
        spec = self.weight_specs.get(id(tensor))
        share = size // self.model_ways if spec is not None and "model" in spec else size
        return [share] * self.device_total()


def _conforms(backend: Backend) -> Backend:
    """Type-checks that FakeBackend implements the protocol (mypy/pyright read this line)."""
    return backend


_conforms(FakeBackend())
