"""The torchax backend's pure parts (no JAX needed): it implements the Backend protocol, keeps device
twins of weights in step with the tensors ComfyUI holds, and counts compiles from JAX's events."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from tpu_runtime.backends import torchax as backend_torchax
from tpu_runtime.backends.xla import Backend
from tpu_runtime.backends.torchax import (BACKEND_COMPILE_EVENT, CACHE_HIT_EVENT, TRACE_EVENT, JaxCompileFigures,
                                         TorchaxBackend, WeightTwins, host_array, host_tensor)


def test_every_protocol_method_is_implemented():
    declared = {name for name in vars(Backend) if not name.startswith("_")} | set(Backend.__annotations__)
    missing = sorted(name for name in declared if not hasattr(TorchaxBackend, name) and name != "spmd")
    assert not missing, missing


def _twins():
    uploads = []
    return WeightTwins(lambda tensor: uploads.append(tensor.tolist()) or ("array", len(uploads))), uploads


def test_a_weight_is_uploaded_once_while_unchanged():
    twins, uploads = _twins()
    weight = torch.ones(3)
    first = twins.arrays([weight])
    assert twins.arrays([weight]) == first and len(uploads) == 1


def test_a_weight_written_in_place_is_uploaded_again():
    twins, uploads = _twins()
    weight = torch.ones(3)
    twins.arrays([weight])
    weight.add_(1)
    twins.arrays([weight])
    assert len(uploads) == 2


def test_a_replaced_weight_is_uploaded_and_the_old_twin_goes_with_its_tensor():
    twins, uploads = _twins()
    old = torch.ones(3)
    twins.arrays([old])
    new = torch.full((3,), 2.0)  # ComfyUI's set_attr_param: a new tensor in the slot (a LoRA patched in)
    twins.arrays([new])
    assert len(uploads) == 2 and len(twins) == 2
    del old
    assert len(twins) == 1


def test_compiles_exclude_persistent_cache_loads():
    figures = JaxCompileFigures()
    for _ in range(3):
        figures.on_duration(BACKEND_COMPILE_EVENT, 2.0)
    figures.on_duration(TRACE_EVENT, 0.5)
    figures.on_event(CACHE_HIT_EVENT)
    assert figures.compiles() == 2
    assert figures.compile_seconds() == 6.0 and figures.program_seconds() == 6.5


def test_bf16_goes_through_its_bits_both_ways():
    pytest.importorskip("ml_dtypes", reason="JAX's bf16 numpy type (comes with the torchax extra)")
    tensor = torch.tensor([1.5, -2.25, 3.0e3], dtype=torch.bfloat16)
    array = host_array(tensor)
    assert str(array.dtype) == "bfloat16"
    back = host_tensor(array)
    assert back.dtype == torch.bfloat16 and torch.equal(back, tensor)
    back.add_(1)  # writable: ComfyUI may write a result in place


def test_the_pack_device_is_a_cpu_device_comfyui_tells_from_its_own():
    assert backend_torchax.PACK_DEVICE.type == "cpu" and backend_torchax.PACK_DEVICE != torch.device("cpu")
    is_device = TorchaxBackend.is_device
    assert is_device(None, torch.device("cpu", 0)) and is_device(None, "cpu:0")
    assert not is_device(None, torch.device("cpu")) and not is_device(None, "cpu")


def test_torchax_missing_is_named_with_how_to_install(monkeypatch):
    import importlib.util

    from tpu_runtime.backends import device

    real = importlib.util.find_spec
    monkeypatch.setattr(device.importlib.util, "find_spec", lambda name, *a: None if name == "torchax" else real(name))
    report = device.detect("torchax")
    assert report.backend == "torchax"
    assert "torchax is not installed" in report.error and "install.py --backend torchax" in report.error


def test_only_the_torchax_backend_imports_torchax_and_jax():
    """The backend, its attention kernels (JAX's Pallas flash, lax.scan loops), its block programs (a block
    jitted on its own, the model's jaxpr cut into a chain), its device-resident outputs and its weight
    splits, and the window that loads torchax on a torch that removed names it uses: nothing else."""
    pack = Path(__file__).resolve().parents[2]
    importers = set()
    for path in [*(pack / "tpu_runtime").rglob("*.py"), *(pack / "tpu_nodes").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(name.split(".")[0] in ("torchax", "jax", "jaxlib") for name in names):
                importers.add(path.relative_to(pack).as_posix())
    assert importers == {"tpu_runtime/backends/torchax.py", "tpu_runtime/backends/torchax_attention.py",
                         "tpu_runtime/backends/torchax_blocks.py", "tpu_runtime/backends/torchax_resident.py",
                         "tpu_runtime/backends/torchax_shard.py", "tpu_runtime/backends/torchax_torch_compat.py"}, \
        importers
