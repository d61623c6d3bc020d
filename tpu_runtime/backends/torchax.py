"""The torchax backend (PyTorch on JAX): the one place that talks to torchax and JAX.

Why a second backend: torch_xla 2.9 cannot load its persistent compilation cache on a TPU
(pytorch/xla#9094), so each restart recompiles every graph; JAX's persistent cache loads everywhere.

Design (see docs/torchax.md): ComfyUI keeps the diffusion model where it keeps CPU models (torch
tensors in host memory); the pack's device is ``torch.device("cpu", 0)``, a CPU device that compares
unequal to ComfyUI's plain ``cpu``, so the pack knows which models are its own. The sampler's math runs
on the host in torch (it is a few small element-wise ops a step: the host is the cheapest place for
it); only the diffusion model runs on the JAX device, as one ``jax.jit`` program per call signature
whose arguments are the call's tensors and the model's weights. Weights live on the device as twins
of ComfyUI's torch tensors, looked up by identity and version at each call, so a LoRA patched in or out
(ComfyUI replaces or rewrites the tensors) uploads the changed weights and compiles nothing.

One backend per process: on a TPU torch_xla and ``jax[tpu]`` each pin a libtpu and claim the chip.
"""
from __future__ import annotations

import contextlib
import logging
import time
import weakref
from typing import Any, Callable, ContextManager, Optional

import torch

from tpu_runtime.backends.torchax_autocast import LowerPrecision
from tpu_runtime.backends.torchax_resident import ResidentOps, ResidentTensor
from tpu_runtime.backends.torchax_shard import WeightSplits, bytes_per_device

log = logging.getLogger("comfy_tpu")

#: JAX's monitoring events the counters are made of (jax/_src/dispatch.py, compiler.py).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"
CACHE_READ_EVENT = "/jax/compilation_cache/cache_retrieval_time_sec"

#: The pack's device for the torchax backend: host memory, but not ComfyUI's ``cpu`` (see module doc).
PACK_DEVICE = torch.device("cpu", 0)


class JaxCompileFigures:
    """Compiles and compile seconds, counted from JAX's own monitoring events.

    A backend compile event fires for a compile and for a persistent-cache load alike (JAX times
    ``compile_or_get_cached``); a cache hit is subtracted to count the compiles XLA really ran."""

    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def on_event(self, event: str, *args: Any, **kwargs: Any) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    def on_duration(self, event: str, duration: float, *args: Any, **kwargs: Any) -> None:
        self.events[event] = self.events.get(event, 0) + 1
        self.seconds[event] = self.seconds.get(event, 0.0) + float(duration)

    def compiles(self) -> int:
        return self.events.get(BACKEND_COMPILE_EVENT, 0) - self.events.get(CACHE_HIT_EVENT, 0)

    def compile_seconds(self) -> float:
        """Seconds XLA spent compiling, or loading a compiled program from the persistent cache (what
        torch_xla's CompileTime measures)."""
        return self.seconds.get(BACKEND_COMPILE_EVENT, 0.0)

    def program_seconds(self) -> float:
        """Seconds spent making programs in all: JAX's trace of the model's Python, lowering, compiling."""
        return sum(self.seconds.get(event, 0.0) for event in (TRACE_EVENT, LOWER_EVENT, BACKEND_COMPILE_EVENT))


class WeightTwins:
    """Device copies of ComfyUI's torch weights, found by the tensor's identity and version.

    A weight ComfyUI replaced (``set_attr_param``: a LoRA patched in or out) is a new tensor: uploaded
    once, the old twin dropped when the old tensor goes. A weight written in place bumps its version
    (outside inference mode; an inference tensor keeps no version, and ComfyUI replaces rather than
    rewrites weights there)."""

    def __init__(self, upload: Callable[[torch.Tensor], Any]) -> None:
        self._upload = upload
        self._twins: dict[int, tuple[Any, Optional[int], Any]] = {}  # id -> (weakref, version, array)
        self.uploads = 0

    def arrays(self, weights: list[torch.Tensor]) -> list[Any]:
        found = []
        twins = self._twins
        for weight in weights:
            version = None if weight.is_inference() else weight._version
            entry = twins.get(id(weight))
            if entry is None or entry[0]() is not weight or entry[1] != version:
                entry = (weakref.ref(weight, self._forget(id(weight))), version, self._upload(weight))
                twins[id(weight)] = entry
                self.uploads += 1
            found.append(entry[2])
        return found

    def twin(self, weight: torch.Tensor) -> Optional[Any]:
        """The device array of ``weight`` as last uploaded (None: not uploaded, or changed since)."""
        entry = self._twins.get(id(weight))
        version = None if weight.is_inference() else weight._version
        return entry[2] if entry is not None and entry[0]() is weight and entry[1] == version else None

    def forget(self, weight: torch.Tensor) -> bool:
        """Drop ``weight``'s twin: the next use uploads it again (its placement changed, its model was
        unloaded). True if it had one."""
        entry = self._twins.get(id(weight))
        if entry is None or entry[0]() is not weight:
            return False
        del self._twins[id(weight)]
        return True

    def _forget(self, key: int) -> Callable[[Any], None]:
        twins = self._twins

        def forget(ref: Any) -> None:
            entry = twins.get(key)
            if entry is not None and entry[0] is ref:
                del twins[key]

        return forget

    def __len__(self) -> int:
        return len(self._twins)


def host_array(tensor: torch.Tensor) -> Any:
    """A numpy array of a CPU tensor's values; bf16 through its bits (numpy has no bf16 of its own,
    JAX reads ml_dtypes' one)."""
    import ml_dtypes

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def host_tensor(array: Any) -> torch.Tensor:
    """A writable CPU tensor of a JAX array's values (one device-to-host copy; bf16 through its bits)."""
    import numpy as np

    values = np.array(array)  # a copy: the buffer JAX hands back is read-only, ComfyUI may write its result
    if str(values.dtype) == "bfloat16":
        return torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(values)


class JaxProgram:
    """One jitted diffusion-model call: ``jax.jit`` of the model's functional call over its inputs."""

    __slots__ = ("jitted", "input_count", "weight_count")

    def __init__(self, jitted: Callable, input_count: int, weight_count: int) -> None:
        self.jitted = jitted
        self.input_count = input_count
        self.weight_count = weight_count


class TorchaxBackend:
    """torchax implementation of :class:`~tpu_runtime.backends.xla.Backend` (replay execution only)."""

    name = "torchax"
    #: Programs are made from a function of the inputs (``capture_function``), not from a lazy trace.
    traces_functions = True
    #: Execution modes this backend runs; the others are said once and run in replay.
    execution_modes = ("replay",)
    #: Where a model runs when it cannot be traced (the stand-in's fallback line).
    fallback_runs = "eagerly on the host CPU"
    #: ``run_program(..., resident=True)`` keeps the outputs on the device (``torchax_resident``): a
    #: ControlNet's outputs reach the diffusion model's program without a trip through the host.
    resident_outputs = True
    #: ComfyUI's weights stay host tensors (their twins are on the device): ``weight_shard.Placement`` plans and
    #: marks them as it does torch_xla's device tensors, and the twins are uploaded split.
    weights_on_host = True

    def __init__(self, persistent_cache_dir: Optional[str] = None,
                 spmd_request: tuple[str, Optional[str]] = ("off", None)) -> None:
        import jax
        import jax.monitoring

        from tpu_runtime.backends.torchax_torch_compat import import_torchax

        torchax, env = import_torchax()  # on torch >= 2.13 with placeholders for the aten names it lacks
        self._jax = jax
        self._torchax = torchax
        self.figures = JaxCompileFigures()
        jax.monitoring.register_event_listener(self.figures.on_event)
        jax.monitoring.register_event_duration_secs_listener(self.figures.on_duration)
        self.persistent_cache_error: Optional[str] = None
        self.persistent_cache_dir: Optional[str] = None
        if persistent_cache_dir:
            try:
                jax.config.update("jax_compilation_cache_dir", persistent_cache_dir)
                jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
                jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
                self.persistent_cache_dir = persistent_cache_dir
            except Exception as exc:  # logged, and the runtime works without it: no cache, said in stats
                self.persistent_cache_error = f"{type(exc).__name__}: {exc}"
                log.warning("comfy-tpu: JAX persistent cache not set at %s: %s", persistent_cache_dir,
                            self.persistent_cache_error)
        self._env = env
        self._mesh = None
        self._devices = jax.devices()
        self._jax_device = self._devices[0]
        #: Each weight's split over the mesh's 'model' axis (``torchax_shard``): its twin is uploaded with it.
        self.splits = WeightSplits(lambda: self._mesh)
        self.twins = WeightTwins(self._upload_weight)  # split as planned, or replicated over the mesh
        #: Call inputs a run passes unchanged to every call (a ControlNet's hint), held on the device while their host
        #: tensor lives, found by identity as the weights' twins are: one upload a run instead of one a call.
        self.held_inputs = WeightTwins(lambda tensor: self._upload(tensor, self._placement(tensor)))
        #: Host seconds spent blocked on the device (the compute of the programs): bench_step_host's meter;
        #: and spent sending a call's tensors up and its outputs back (bench_backends' share of a step).
        self.device_wait_s = 0.0
        self.dispatch_s = 0.0
        self.upload_s = 0.0
        self.fetch_s = 0.0
        self._counts = {"executions": 0, "transfers_to_host": 0, "transfers_to_device": 0, "device_ops": 0}
        self._resident = ResidentOps(self._env, self._counts, host_tensor)
        self.spmd = self._plan_mesh(*spmd_request)
        #: The autocast dtype while the model call's ``autocast`` is entered (None: none): read while tracing.
        self._autocast_dtype: Optional[torch.dtype] = None

    def _plan_mesh(self, mode: str, mesh_spec: Optional[str]) -> "Any":
        """COMFY_TPU_SPMD / COMFY_TPU_MESH applied to the JAX devices: a ``jax.sharding.Mesh`` whose 'data'
        axis splits the model call's batch (weights replicated), or one device (problems said)."""
        from tpu_runtime.backends.device import plan_spmd

        plan = plan_spmd(mode, mesh_spec, len(self._devices))
        for line in plan.problems:
            log.error("comfy-tpu: %s", line)
        if plan.on:
            import numpy as np
            from jax.sharding import Mesh

            grid = np.array(self._devices).reshape(tuple(plan.axes.values()))
            self._mesh = Mesh(grid, tuple(plan.axes))
            ways = plan.axes.get("model", 1)
            log.info("comfy-tpu: JAX mesh %s over %d devices; the diffusion model's batch is split over 'data', "
                     "%s", plan.mesh, len(self._devices),
                     f"its weights over 'model' ({ways} ways)" if ways > 1 else "weights are replicated")
        return plan

    def _placement(self, tensor: Optional[torch.Tensor] = None) -> Any:
        """Where an array goes: the one device, or on the mesh a call tensor whose rows divide over 'data'
        split by rows and anything else (weights) replicated."""
        if self._mesh is None:
            return self._jax_device
        from jax.sharding import NamedSharding, PartitionSpec

        ways = self.shard_count()
        if tensor is not None and tensor.dim() > 0 and tensor.shape[0] % ways == 0:
            return NamedSharding(self._mesh, PartitionSpec("data"))
        return NamedSharding(self._mesh, PartitionSpec())

    # -- devices -------------------------------------------------------------------------------
    def device(self) -> torch.device:
        return PACK_DEVICE

    def is_device(self, device: Any) -> bool:
        if isinstance(device, str):
            device = torch.device(device) if device.startswith("cpu:") else None
        return isinstance(device, torch.device) and device.type == "cpu" and device.index == 0

    def device_type(self) -> str:
        return str(self._jax_device.platform).upper()

    def device_count(self) -> int:
        return len(self._devices)

    def device_attributes(self) -> dict[str, Any]:
        kind = getattr(self._jax_device, "device_kind", None)
        return {"device_kind": kind} if kind and self.device_type() == "TPU" else {}

    def jax_device(self) -> Any:
        return self._jax_device

    # -- execution -----------------------------------------------------------------------------
    def step_boundary(self) -> None:
        """Nothing to cut: the sampler's math runs eagerly on the host, the model call is one program."""

    def wait_device(self) -> None:
        """Each model call returns its output to the host, so nothing is pending between calls."""

    def materialize(self, tensors: list[torch.Tensor]) -> None:
        """Host tensors are always materialised."""

    def tensor_token(self, tensor: torch.Tensor) -> Any:
        version = None if tensor.is_inference() else tensor._version
        return id(tensor), version

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_to_host(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """A program's outputs are host tensors already (``run_program`` fetched them)."""
        return list(tensors)

    def replicated(self, tensor: torch.Tensor) -> torch.Tensor:
        """A jitted program's outputs come to the host whole (``run_program`` fetches them): nothing to ask."""
        return tensor

    def data_tensor(self, tensor: torch.Tensor) -> bool:
        """Every tensor of a model call is program input (none is read on the host while tracing)."""
        return True

    def autocast(self, dtype: torch.dtype) -> ContextManager:
        """bf16 autocast for what JAX traces inside (``torchax_autocast.LowerPrecision``: torchax's own fails on
        ``torch.cat`` of a list and misses ``F.linear``); a replayed program keeps the casts it was traced with."""
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return self._autocasting(dtype)

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """The autocast the next trace gets (None: none): part of a replayed call's key, as it changes the program."""
        return self._autocast_dtype

    @contextlib.contextmanager
    def _autocasting(self, dtype: torch.dtype) -> Any:
        saved, self._autocast_dtype = self._autocast_dtype, dtype
        try:
            yield
        finally:
            self._autocast_dtype = saved

    def compile_module(self, module: torch.nn.Module) -> Any:
        raise NotImplementedError("compiled (dynamo) execution is not available on the torchax backend")

    def _upload_weight(self, tensor: torch.Tensor) -> Any:
        """A weight's twin: split over 'model' as planned (each device gets its part only), else replicated."""
        return self._upload(tensor, self.splits.sharding(tensor))

    def _upload(self, tensor: torch.Tensor, placement: Any = None) -> Any:
        """A host tensor to the device, converted on the host: torchax's own ``t2j`` turns bf16 into
        float32 and back with a JAX op, one small compile per weight shape (measured: 76 compiles)."""
        if isinstance(tensor, ResidentTensor):  # already on the device (a ControlNet's merged output)
            return tensor.jax() if self._mesh is None else self._jax.device_put(tensor.jax(), placement)
        self._counts["transfers_to_device"] += 1
        return self._jax.device_put(host_array(tensor), placement or self._placement())

    def held_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as a device-resident tensor, uploaded the first time it is seen while it lives (then the
        same array each call): for a host tensor a run passes unchanged to every call, such as a ControlNet's
        hint (ComfyUI computes it once a run and drops it at the run's end)."""
        if isinstance(tensor, ResidentTensor):
            return tensor
        return self._resident.wrap(self.held_inputs.arrays([tensor])[0])

    # -- programs ------------------------------------------------------------------------------
    def capture_function(self, function: Callable[[list[torch.Tensor]], list[torch.Tensor]], inputs: list[torch.Tensor],
                         weight_count: int, split: Optional[Callable[[Callable], Callable]] = None) -> JaxProgram:
        """A program computing ``function(inputs)``: ``jax.jit`` of it, its tensors seen as torchax
        tensors (the model's Python runs once per signature, while JAX traces it). The last
        ``weight_count`` inputs are weights (uploaded once, as twins). Compiles on its first run. ``split``:
        what makes the program of the traced function instead of ``jax.jit`` (the block programs' chain)."""
        env = self._env
        tensor_type = self._torchax.tensor.Tensor

        def traced(arrays: list[Any]) -> list[Any]:
            # Outside inference mode (ComfyUI samples inside it): there aten.conv2d reaches torchax
            # undecomposed, with its default arguments dropped, which torchax 0.0.13 cannot take.
            lower = self._autocast_dtype
            with torch.inference_mode(False), torch.no_grad(), env, (
                    LowerPrecision(lower) if lower is not None else contextlib.nullcontext()):
                outputs = function([tensor_type(array, env) for array in arrays])
            return [output.jax() for output in outputs]

        jitted = split(traced) if split is not None else self._jax.jit(traced)
        return JaxProgram(jitted, len(inputs) - weight_count, weight_count)

    def run_program(self, program: JaxProgram, inputs: list[torch.Tensor], *args: Any, resident: bool = False,
                    **kwargs: Any) -> list[torch.Tensor]:
        """Run a program: the call's tensors uploaded (device-resident ones as they are), the weights' twins,
        the outputs back to the host; ``resident``: the outputs stay on the device as
        :class:`ResidentTensor` (dispatched, not waited for: no host sync)."""
        calls = inputs[:program.input_count]
        start = time.perf_counter()
        arrays = [self._upload(tensor, self._placement(tensor)) for tensor in calls] + self.twins.arrays(
            inputs[program.input_count:])
        self.upload_s += time.perf_counter() - start
        start = time.perf_counter()
        outputs = program.jitted(arrays)
        self.dispatch_s += time.perf_counter() - start  # JAX's CPU client may run the program inside the call
        if resident:
            self._counts["executions"] += 1
            return [self._resident.wrap(output) for output in outputs]
        start = time.perf_counter()
        self._jax.block_until_ready(outputs)
        fetched = time.perf_counter()
        self.device_wait_s += fetched - start
        self._counts["executions"] += 1
        self._counts["transfers_to_host"] += len(outputs)
        results = [host_tensor(output) for output in outputs]
        self.fetch_s += time.perf_counter() - fetched
        return results

    def capture_program(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> Any:
        raise NotImplementedError("the torchax backend makes programs from functions (capture_function)")

    def reset_compiler(self) -> None:
        """Nothing to reset: no dynamo."""

    def compiler_counters(self) -> dict[str, int]:
        return {"dynamo_frames": 0, "dynamo_graphs": 0, "dynamo_graph_breaks": 0, "captured_graph_calls": 0}

    # -- metrics -------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Compiles and cache figures from JAX's monitoring events; executions and transfers counted here."""
        events = self.figures.events
        hits, misses = events.get(CACHE_HIT_EVENT, 0), events.get(CACHE_MISS_EVENT, 0)
        return {
            **self.compiler_counters(),
            "compiles": self.figures.compiles(),
            **self._counts,
            "xla_tensors_live": len(self.twins),
            "uncached_compiles": self.figures.compiles(),
            "cached_compiles": hits,
            "persistent_cache_hits": hits,
            "persistent_cache_misses": misses,
            "persistent_cache_deserialize_failures": 0,
            "jax_traces": events.get(TRACE_EVENT, 0),
            "weight_uploads": self.twins.uploads,  # weights sent to the device (first use, or changed)
            "held_input_uploads": self.held_inputs.uploads,  # held call inputs sent (a ControlNet's hint: once a run)
        }

    def compile_seconds(self) -> float:
        return self.figures.compile_seconds()

    def program_seconds(self) -> float:
        return self.figures.program_seconds()

    def fallback_ops(self) -> dict[str, int]:
        """torchax has no CPU fallback: an op it cannot lower fails the trace (the model then runs on the host)."""
        return {}

    def memory_info(self, device: Any) -> Optional[tuple[int, int]]:
        """(free, total) bytes of the JAX device, or None where it keeps no statistics (the CPU)."""
        try:
            stats = self._jax_device.memory_stats()
        except Exception as exc:  # the caller then uses host RAM figures
            log.debug("comfy-tpu: JAX answered no memory query: %s", exc)
            return None
        if not stats or not stats.get("bytes_limit"):
            return None
        total = int(stats["bytes_limit"])
        return total - int(stats.get("bytes_in_use", 0)), total

    # -- mesh ----------------------------------------------------------------------------------
    def mesh_description(self) -> str:
        return self.spmd.mesh

    def spmd_mesh(self) -> "Any":
        """The JAX mesh under SPMD (attention splits its calls over it), else None."""
        return self._mesh

    def shard_count(self) -> int:
        """How many ways the batch is split (the 'data' axis size; 1 without a mesh)."""
        return self.spmd.axes.get("data", 1) if self.spmd.on else 1

    def shard_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host tensors carry no placement: ``run_program`` splits a call's rows when it uploads them."""
        return tensor

    def model_axis(self) -> int:
        """How many ways weights are split (the mesh's 'model' axis; 1 without one)."""
        return self.spmd.axes.get("model", 1) if self.spmd.on else 1

    def set_model_axis(self, size: int) -> None:
        """Re-plan the mesh as ``data=devices/size,model=size`` (auto mode, a model too big for one chip).
        Twins already uploaded keep their shardings (JAX reshards an input where a program needs it)."""
        from tpu_runtime.backends.device import plan_spmd
        from tpu_runtime.settings.tpu_settings import format_mesh

        devices = len(self._devices)
        if not self.spmd.on or size < 1 or devices % size:
            raise ValueError(f"a model axis of {size} does not divide the {devices} devices of the mesh")
        plan = plan_spmd("on", format_mesh({"data": devices // size, "model": size}), devices)
        self.spmd = self._plan_mesh("on", plan.mesh).model_copy(
            update={"reason": "auto mode: a model bigger than one chip"})

    def device_total(self) -> int:
        return len(self._devices) if self.spmd.on else 1

    def release_weights(self, module: torch.nn.Module) -> int:
        """Drop the device copies (twins) of ``module``'s parameters and buffers: ComfyUI unloaded it. Its
        weights are host tensors that the loader keeps for a later prompt, so their twins would hold the
        chip's memory as long as the model is cached; a later use uploads them again (no compile).
        Returns how many were dropped."""
        dropped = 0
        for tensor in [*module.parameters(), *module.buffers()]:
            dropped += self.twins.forget(tensor)
        return dropped

    def shard_tensor(self, tensor: torch.Tensor, spec: tuple[Optional[str], ...]) -> None:
        """Record a weight's split; its twin is (re)uploaded split at its next use."""
        self.splits.mark(tensor, spec)
        self.twins.forget(tensor)

    def tensor_sharding(self, tensor: torch.Tensor) -> str:
        return self.splits.describe(tensor)

    def device_bytes(self, tensor: torch.Tensor) -> list[int]:
        """Bytes of ``tensor`` on each device: read from its twin's shards once uploaded, else as planned."""
        devices = list(self._mesh.devices.flat) if self._mesh is not None else [self._jax_device]
        twin = self.twins.twin(tensor)
        if twin is not None:
            return bytes_per_device(twin, devices)
        nbytes = tensor.numel() * tensor.element_size()
        spec = self.splits.spec(tensor) if self._mesh is not None else None
        ways = 1
        for axis in spec or ():
            ways *= self._mesh.shape[axis] if axis else 1
        return [nbytes // ways] * len(devices)

    def gather_on_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """The weight itself: ComfyUI's weights are host tensors here (only their twins are split)."""
        return tensor
