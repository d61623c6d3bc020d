"""The one place that talks to torch_xla.

PyTorch/XLA is being succeeded by TorchTPU: everything else in the pack calls the
:class:`Backend` interface, so a second backend can slot in without touching the sampling code.
torch_xla is imported lazily (on a TPU VM its import may need env vars set first).
"""
from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Optional, Protocol

import torch

if TYPE_CHECKING:
    from tpu_runtime.backends.device import SpmdPlan

log = logging.getLogger("comfy_tpu")


class Backend(Protocol):
    """What the sampling code needs from an accelerator runtime."""

    name: str
    #: True where programs are made from a function of the inputs (``capture_function``, torchax) rather
    #: than from the lazy trace of a call (``capture_program``, torch_xla).
    traces_functions: bool
    #: The execution modes (``COMFY_TPU_EXECUTION``) this backend runs; the first is its own.
    execution_modes: tuple[str, ...]
    #: How a model that cannot be replayed runs instead (said in the log).
    fallback_runs: str

    def device(self) -> torch.device: ...
    def is_device(self, device: Any) -> bool: ...
    def device_type(self) -> str: ...
    def step_boundary(self) -> None: ...
    def wait_device(self) -> None: ...
    def materialize(self, tensors: list[torch.Tensor]) -> None: ...
    def tensor_token(self, tensor: torch.Tensor) -> Any: ...
    def to_host(self, tensor: torch.Tensor) -> torch.Tensor: ...
    def all_to_host(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]: ...
    def replicated(self, tensor: torch.Tensor) -> torch.Tensor: ...
    def data_tensor(self, tensor: torch.Tensor) -> bool: ...
    def autocast(self, dtype: torch.dtype) -> ContextManager: ...
    def counters(self) -> dict[str, int]: ...
    def compile_seconds(self) -> float: ...
    def fallback_ops(self) -> dict[str, int]: ...
    def memory_info(self, device: Any) -> Optional[tuple[int, int]]: ...
    def compile_module(self, module: torch.nn.Module) -> "CapturedModule": ...
    def capture_program(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> Any: ...
    def capture_function(self, function: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                         inputs: list[torch.Tensor], weight_count: int,
                         split: Optional[Callable[[Callable], Callable]] = None) -> Any: ...
    def run_program(self, program: Any, inputs: list[torch.Tensor]) -> list[torch.Tensor]: ...
    def reset_compiler(self) -> None: ...
    def compiler_counters(self) -> dict[str, int]: ...
    def mesh_description(self) -> str: ...
    def spmd_mesh(self) -> Any: ...
    def shard_count(self) -> int: ...
    def shard_batch(self, tensor: torch.Tensor) -> torch.Tensor: ...
    def model_axis(self) -> int: ...
    def set_model_axis(self, size: int) -> None: ...
    def device_total(self) -> int: ...
    def shard_tensor(self, tensor: torch.Tensor, spec: tuple[Optional[str], ...]) -> None: ...
    def tensor_sharding(self, tensor: torch.Tensor) -> str: ...
    def device_bytes(self, tensor: torch.Tensor) -> list[int]: ...
    def gather_on_host(self, tensor: torch.Tensor) -> torch.Tensor: ...
    def release_weights(self, module: torch.nn.Module) -> int: ...


class ReplayUnsupported(Exception):
    """A traced call the backend cannot turn into a replayable program; the message says why."""


class CapturedModule:
    """A module as the compiler captured it; ``graph_calls`` counts runs of captured graphs, so a
    call that ran none (dynamo skipped the code) can be told from one that ran compiled."""

    def __init__(self) -> None:
        self.graph_calls = 0
        self.call: Callable = lambda *args, **kwargs: None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(*args, **kwargs)


#: Dynamo keeps this many guarded variants per code object before it silently runs eagerly; each
#: execution signature (latent bucket, batch, token length) of each model is one variant.
_DYNAMO_RECOMPILE_LIMIT = 256


class XlaBackend:
    """PyTorch/XLA (PJRT) implementation of :class:`Backend`."""

    name = "torch_xla"
    traces_functions = False
    execution_modes = ("replay", "compiled", "lazy")
    fallback_runs = "in lazy mode"

    def __init__(self, persistent_cache_dir: Optional[str] = None,
                 spmd_request: tuple[str, Optional[str]] = ("off", None)) -> None:
        import torch_xla  # noqa: F401  (lazy: the environment is settled by now)
        import torch_xla.core.xla_model as xm
        import torch_xla.debug.metrics as met
        import torch_xla.runtime as xr

        self.persistent_cache_error: Optional[str] = None
        if persistent_cache_dir:
            try:  # must come before the first computation
                xr.initialize_cache(persistent_cache_dir, readonly=False)
            except Exception as exc:  # logged, and the runtime works without it: no cache, said in stats
                self.persistent_cache_error = f"{type(exc).__name__}: {exc}"
                log.warning("comfy-tpu: XLA persistent cache not initialised at %s: %s", persistent_cache_dir,
                            self.persistent_cache_error)
        self.persistent_cache_dir = persistent_cache_dir if not self.persistent_cache_error else None

        self._torch_xla = torch_xla
        self._xm = xm
        self._met = met
        self._xr = xr
        self._device: Optional[torch.device] = None
        self._mesh = None
        self._graph_calls = 0  # runs of captured graphs, all models (compiled mode)
        self.spmd = self._start_spmd(*spmd_request)

    def _start_spmd(self, mode: str, mesh_spec: Optional[str]) -> "SpmdPlan":
        """Turn SPMD on (or not) before any XLA device or tensor exists: ``use_spmd`` must come first."""
        from tpu_runtime.backends.device import plan_spmd

        count = self.device_count()  # starts the PJRT client; creates no tensor, so SPMD can still be set
        locked = bool(self._torch_xla._XLAC._xla_get_spmd_config_is_locked())
        plan = plan_spmd(mode, mesh_spec, count, locked)
        for line in plan.problems:
            log.error("comfy-tpu: %s", line)
        if not plan.on:
            return plan
        import torch_xla.distributed.spmd as xs

        self._xr.use_spmd()
        self._xs = xs
        self._mesh = self._make_mesh(plan)
        log.info("comfy-tpu: SPMD on: %d devices, mesh %s; the diffusion model's batch is sharded over 'data', "
                 "%s", count, plan.mesh, f"its weights split over 'model' ({plan.axes['model']} ways)"
                 if plan.axes.get("model", 1) > 1 else "weights are replicated")
        return plan

    # -- devices -------------------------------------------------------------------------------
    def device(self) -> torch.device:
        if self._device is None:
            self._device = torch.device(self._torch_xla.device())
        return self._device

    def is_device(self, device: Any) -> bool:
        return getattr(device, "type", device if isinstance(device, str) else None) in ("xla",) or (
            isinstance(device, str) and device.startswith("xla"))

    def device_type(self) -> str:
        try:
            return str(self._xr.device_type())
        except RuntimeError as exc:  # shown as "unknown" (doctor, stats); nothing decides on it but auto mode
            log.warning("comfy-tpu: the XLA runtime did not say its device type: %s", exc)
            return "unknown"

    def device_count(self) -> int:
        """Every device of the runtime. Not guessed when the runtime cannot say: SPMD depends on it."""
        return int(self._xr.global_runtime_device_count())

    def device_attributes(self) -> dict[str, Any]:
        """What the runtime says of the device (TPU type, core count...), or {} where it can't."""
        try:
            if self.spmd.on:  # the SPMD device is virtual: ask the first chip (its name is not a type)
                attrs = {k: v for k, v in self._xr.global_runtime_device_attributes()[0].items() if k != "name"}
            else:
                attrs = self._torch_xla._XLAC._xla_get_device_attributes(str(self.device()))
            return dict(attrs) if attrs else {}
        except (RuntimeError, IndexError, AttributeError) as exc:  # for display only (doctor, device node)
            log.debug("comfy-tpu: no device attributes from the runtime: %s", exc)
            return {}

    # -- execution -----------------------------------------------------------------------------
    def step_boundary(self) -> None:
        """Cut the lazy graph here and dispatch it (asynchronously)."""
        self._torch_xla.sync()

    def wait_device(self) -> None:
        """Block until every dispatched graph has run (no data comes back to the host)."""
        self._xm.wait_device_ops()

    def materialize(self, tensors: list[torch.Tensor]) -> None:
        """Compute just these tensors on the device (their own small graph, dispatched
        asynchronously), so that their pending work does not join whichever graph runs next."""
        self._torch_xla._XLAC._xla_sync_multi(tensors, devices=[], wait=False)

    def tensor_token(self, tensor: torch.Tensor) -> Any:
        """Changes when the tensor's device data is replaced or written in place."""
        version = None if tensor.is_inference() else tensor._version  # an inference tensor keeps no counter
        return self._torch_xla._XLAC._xla_get_tensor_id(tensor), version

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """The run's one device-to-host transfer: its result.

        Under SPMD a result still split over the chips would be gathered by a replication program that
        torch_xla compiles anew on every transfer; asking for it replicated on the device instead
        makes that part of a cached graph (measured: 1 compile per run before, 0 after the first)."""
        return self.replicated(tensor).to("cpu")

    def replicated(self, tensor: torch.Tensor) -> torch.Tensor:
        """Under SPMD, a copy of ``tensor`` asked to be whole on every device, for a result traced into a
        program: the gather is then part of the program, not a replication program torch_xla compiles anew
        at each transfer of a still-split tensor. Without SPMD (or a scalar): ``tensor`` itself."""
        if not self.spmd.on or tensor.dim() == 0:
            return tensor
        tensor = tensor.clone()
        self._xs.mark_sharding(tensor, self._mesh, (None,) * tensor.dim())
        return tensor

    def all_to_host(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Host copies of several device tensors in one transfer (a program's outputs: a VAE's image, a
        text encoder's hidden states and pooled output)."""
        if not tensors:
            return []
        return list(self._torch_xla._XLAC._xla_get_cpu_tensors(list(tensors)))

    def data_tensor(self, tensor: torch.Tensor) -> bool:
        """Device tensors are a program's inputs; host tensors are values the trace reads (a key's part)."""
        return tensor.device.type != "cpu"

    def autocast(self, dtype: torch.dtype) -> ContextManager:
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast("xla", dtype=dtype)

    def compile_module(self, module: torch.nn.Module) -> "CapturedModule":
        """The module captured by dynamo and lowered by torch_xla's ``openxla`` backend.

        Static shapes (``dynamic=False``): XLA wants one graph per shape, which the pack's shape
        buckets already bound; symbolic shapes would reach XLA as dynamic dimensions.
        """
        import torch._dynamo
        from torch._dynamo.backends.registry import lookup_backend

        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, _DYNAMO_RECOMPILE_LIMIT)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * _DYNAMO_RECOMPILE_LIMIT)
        result = CapturedModule()
        openxla = lookup_backend("openxla")

        def counting_backend(graph_module, example_inputs):
            run_graph = openxla(graph_module, example_inputs)

            def run(*args):
                result.graph_calls += 1
                self._graph_calls += 1
                return run_graph(*args)

            return run

        captured = torch.compile(module, backend=counting_backend, dynamic=False)
        met, increment = self._met, self._torch_xla._XLAC._xla_increment_counter

        def call(*args: Any, **kwargs: Any) -> Any:
            # The openxla bridge clears every torch_xla counter while it captures a graph (it looks
            # for CPU-fallback ops node by node); put back what was counted before, so the pack's
            # per-run figures (fallbacks, executions under SPMD, cache hits) stay monotonic.
            frames = counters_total_frames()
            before = {name: int(met.counter_value(name) or 0) for name in met.counter_names()}
            output = captured(*args, **kwargs)
            if counters_total_frames() != frames:
                for name, value in before.items():
                    if value:
                        increment(name, value)
            return output

        result.call = call
        return result

    # -- replaying a traced program ----------------------------------------------------------------
    def capture_program(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                        input_ids: Optional[list[Optional[int]]] = None) -> "XlaProgram":
        """Compile the graph that computes ``outputs`` (traced lazily from ``inputs``, which were
        device data when the trace began) as a program whose parameters are ``inputs``, in order.

        The pending trace is left to be dropped by the caller (nothing of it executes); the program
        runs with :meth:`run_program`, which costs one list of device handles and one launch: no
        Python of the model, no re-trace. Graph inputs that are not among ``inputs`` are values the
        trace made (constants) and are kept; the RNG seed is taken fresh at each run, as torch_xla's
        dynamo bridge does. Raises :class:`ReplayUnsupported` when ``inputs`` were written in place, unless
        the caller gives ``input_ids`` (:meth:`tensor_ids` of the inputs before the trace: a write renews a
        tensor's id), has made the written inputs outputs too, and runs the program first on
        :meth:`traced_inputs` (the inputs' data as the trace read it)."""
        xlac = self._torch_xla._XLAC
        written = [index for index, pending in enumerate(self.written_inputs(inputs)) if pending]
        if written and input_ids is None:
            raise ReplayUnsupported(f"the model writes {len(written)} of its inputs in place")
        self._xm.wait_device_ops()  # the inputs' data must exist (not placeholders) to be named
        input_ids = {tensor_id: index for index, tensor_id in enumerate(input_ids or self.tensor_ids(inputs))
                     if tensor_id is not None}
        graph_ids, graph_values = xlac._get_tensors_xla_device_data_node(outputs)
        graph_hash = xlac._get_graph_hash(outputs)
        xlac._xla_warm_up_cache(outputs, [])  # compiles, unless XLA's cache has this graph already
        seed_id = xlac._get_seed_info_id()
        slots = [input_ids.get(tensor_id) for tensor_id in graph_ids]
        if self.spmd.on and None in slots:
            self._match_by_buffer(slots, graph_ids, graph_values, inputs, seed_id)
        constants = [None if slot is not None else value for slot, value in zip(slots, graph_values)]
        seed_slots = [index for index, tensor_id in enumerate(graph_ids) if tensor_id == seed_id]
        program = XlaProgram(graph_hash, slots, constants, seed_slots, len(outputs))
        if written:
            program.traced = dict(zip(slots, graph_values))
        return program

    def _match_by_buffer(self, slots: list[Optional[int]], graph_ids: list[int], graph_values: list[torch.Tensor],
                         inputs: list[torch.Tensor], seed_id: int) -> None:
        """Fill ``slots`` of graph parameters that no input's id named, by the device buffer they read.

        A graph names its device data by the id of the tensor the data was made for. Under SPMD the outputs of a
        program run by ``_run_cached_graph`` (a chain's glue and block programs) reach a later trace as data
        named by another id, so matching by id alone left them constants of the program: right on the run
        that recorded it, stale on every replay (the chain of block programs was 3.2 off eager). The buffer
        is what the parameter reads, so an input holding the same buffer is the parameter."""
        xlac = self._torch_xla._XLAC
        unmatched = [index for index, slot in enumerate(slots) if slot is None and graph_ids[index] != seed_id]
        if not unmatched:
            return
        materialised = [index for index, pending in enumerate(self.written_inputs(inputs)) if not pending]
        try:
            input_handles = xlac._get_tensors_handle([inputs[i] for i in materialised])
            graph_handles = xlac._get_tensors_handle([graph_values[i] for i in unmatched])
        except RuntimeError as exc:  # left as constants, the program would replay stale values: not replayed
            raise ReplayUnsupported(f"its graph's inputs could not be matched by device buffer ({exc})") from exc
        by_buffer: dict[int, int] = {}
        for index, handle in zip(materialised, input_handles):
            by_buffer.setdefault(handle, index)
        for index, handle in zip(unmatched, graph_handles):
            slots[index] = by_buffer.get(handle)

    def tensor_ids(self, tensors: list[torch.Tensor]) -> list[int]:
        """torch_xla's ids of ``tensors`` (what a graph's parameters are matched by)."""
        return [self._torch_xla._XLAC._xla_get_tensor_id(tensor) for tensor in tensors]

    def traced_inputs(self, program: "XlaProgram", inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """``inputs`` with the data the trace read in place of what the trace wrote (a program's first run
        after a trace that wrote its inputs); forgotten after this call."""
        traced, program.traced = program.traced, None
        if not traced:
            return inputs
        return [traced.get(index, tensor) for index, tensor in enumerate(inputs)]

    def written_inputs(self, tensors: list[torch.Tensor]) -> list[bool]:
        """Per tensor: whether it has pending work (device data written in place since it was materialised)."""
        return list(self._torch_xla._XLAC._check_tensor_need_materialization(tensors)) if tensors else []

    def alias(self, tensor: torch.Tensor) -> torch.Tensor:
        """Another tensor object holding ``tensor``'s device data (and id): a write to one leaves the other."""
        alias = torch.empty_like(tensor)
        self._torch_xla._XLAC._replace_xla_tensor(alias, tensor)
        return alias

    def replace_data(self, tensor: torch.Tensor, source: torch.Tensor) -> None:
        """``tensor`` holds ``source``'s device data from now on (an in-place write done by a program)."""
        self._torch_xla._XLAC._replace_xla_tensor(tensor, source)

    def capture_function(self, function: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                         inputs: list[torch.Tensor], weight_count: int,
                         split: Optional[Callable[[Callable], Callable]] = None) -> Any:
        """torch_xla makes programs from the lazy trace of a call (:meth:`capture_program`) instead."""
        raise ReplayUnsupported("torch_xla captures programs from lazy traces (capture_program)")

    def run_program(self, program: "XlaProgram", inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run a captured program on ``inputs`` (device data: the step boundary materialised them)."""
        xlac = self._torch_xla._XLAC
        graph_input = [inputs[slot] if slot is not None else constant
                       for slot, constant in zip(program.slots, program.constants)]
        if program.seed_slots:
            device = str(self.device())
            for index in program.seed_slots:
                graph_input[index] = xlac._get_base_seed_as_tensor(device)
            self._xm.set_rng_state((1012031 + xlac._xla_get_rng_seed() * 7012063) % 18446744073709551615, device)
        return xlac._run_cached_graph(program.graph_hash, graph_input)

    def reset_compiler(self) -> None:
        """Forget every capture. Dynamo never retries code whose capture raised (it runs it
        uncaptured from then on, for every model of that class): a reset lets it capture again."""
        import torch._dynamo

        torch._dynamo.reset()

    def compiler_counters(self) -> dict[str, int]:
        """Dynamo's own counts: frames it compiled (first captures and recompiles), graphs, breaks."""
        from torch._dynamo.utils import counters

        return {
            "dynamo_frames": int(counters["frames"]["total"]),
            "dynamo_graphs": int(counters["stats"]["unique_graphs"]),
            "dynamo_graph_breaks": int(sum(counters["graph_break"].values())),
            "captured_graph_calls": self._graph_calls,
        }

    # -- metrics -------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Exact counts from torch_xla.debug.metrics: compiles, executions, transfers."""
        met = self._met

        def samples(metric: str) -> int:
            data = met.metric_data(metric)
            return int(data[0]) if data else 0

        def counter(name: str) -> int:
            value = met.counter_value(name)
            return int(value) if value is not None else 0

        return {
            **self.compiler_counters(),
            "compiles": samples("CompileTime"),
            # Under SPMD one execution over every device is an ExecuteReplicatedTime sample instead.
            "executions": samples("ExecuteTime") + samples("ExecuteReplicatedTime"),
            "transfers_to_host": samples("TransferFromDeviceTime"),
            "transfers_to_device": samples("TransferToDeviceTime"),
            # XLA tensors alive now (made minus destroyed): a leak, or an unloaded model's weights still
            # held, shows here (torch_xla's data-handle counters miss most frees; these do not).
            "xla_tensors_live": counter("CreateXlaTensor") - counter("DestroyXlaTensor"),
            "uncached_compiles": counter("UncachedCompile"),
            "cached_compiles": counter("CachedCompile"),
            "persistent_cache_hits": counter("PersistentCacheHit"),
            "persistent_cache_misses": counter("PersistentCacheMiss"),
            "persistent_cache_deserialize_failures": counter("PersistentCacheDeserializeFailure"),
        }

    def compile_seconds(self) -> float:
        data = self._met.metric_data("CompileTime")
        return float(data[1]) / 1e9 if data else 0.0

    def fallback_ops(self) -> dict[str, int]:
        """``aten::*`` counters: ops XLA ran on the CPU instead of the device."""
        return {name: int(self._met.counter_value(name) or 0)
                for name in self._met.counter_names() if name.startswith("aten::")}

    def memory_info(self, device: Any) -> Optional[tuple[int, int]]:
        """(free, total) bytes of one chip's memory, or None where the runtime does not report it.

        Under SPMD torch_xla 2.9 answers no memory query for the virtual device (pytorch/xla#9022),
        and asking a chip before ``use_spmd`` would pin the process to non-SPMD mode: None (unknown)."""
        if self.spmd.on:
            return None
        try:
            info = self._xm.get_memory_info(device)
        except (RuntimeError, ValueError) as exc:  # the caller then uses host RAM figures, and says so
            log.debug("comfy-tpu: the runtime answered no memory query for %s: %s", device, exc)
            return None
        total = int(info.get("bytes_limit", 0) or info.get("kb_total", 0) * 1024)
        used = int(info.get("bytes_used", 0) or (info.get("kb_total", 0) - info.get("kb_free", 0)) * 1024)
        if total <= 0:
            return None
        return total - used, total


    # -- SPMD --------------------------------------------------------------------------------------
    def mesh_description(self) -> str:
        """What the execution signature records: ``"single"`` or the mesh, e.g. ``"data=4"``."""
        return self.spmd.mesh

    def spmd_mesh(self) -> Any:
        """torch_xla's mesh under SPMD (attention splits its calls over it), else None."""
        return self._mesh if self.spmd.on else None

    def shard_count(self) -> int:
        """How many ways the batch is split (the 'data' axis size; 1 without SPMD)."""
        return self.spmd.axes.get("data", 1) if self.spmd.on else 1

    def shard_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mark dim 0 of ``tensor`` as split over the 'data' axis (every other dim replicated)."""
        if not self.spmd.on or tensor.dim() == 0:
            return tensor
        self._xs.mark_sharding(tensor, self._mesh, ("data",) + (None,) * (tensor.dim() - 1))
        return tensor

    def model_axis(self) -> int:
        """How many ways weights are split (the 'model' axis size; 1 without one)."""
        return self.spmd.axes.get("model", 1) if self.spmd.on else 1

    def set_model_axis(self, size: int) -> None:
        """Re-plan the mesh as ``data=devices/size,model=size`` (auto mode, for a model too big for one chip).
        Tensors already placed keep their shardings (XLA accepts them); new ones use this mesh."""
        from tpu_runtime.backends.device import plan_spmd
        from tpu_runtime.settings.tpu_settings import format_mesh

        devices = self.spmd.devices
        if not self.spmd.on or size < 1 or devices % size:
            raise ValueError(f"a model axis of {size} does not divide the {devices} devices of the mesh")
        plan = plan_spmd("on", format_mesh({"data": devices // size, "model": size}), devices)
        self._mesh = self._make_mesh(plan)
        self.spmd = plan.model_copy(update={"reason": "auto mode: a model bigger than one chip"})

    def _make_mesh(self, plan: "SpmdPlan") -> Any:
        """The torch_xla mesh of a plan: its axes, in order, over every device."""
        import numpy as np

        return self._xs.Mesh(np.arange(plan.devices), tuple(plan.axes.values()), tuple(plan.axes))

    def device_total(self) -> int:
        """Devices the mesh spans (1 without SPMD)."""
        return self.spmd.devices if self.spmd.on else 1

    def shard_tensor(self, tensor: torch.Tensor, spec: tuple[Optional[str], ...]) -> None:
        """Split ``tensor`` over the mesh: per dim an axis name or None. A tensor moved here from the host
        and not used yet still holds its host data: marking it uploads each device's part only."""
        self._xs.mark_sharding(tensor, self._mesh, spec)

    def tensor_sharding(self, tensor: torch.Tensor) -> str:
        """XLA's sharding of a device tensor ("" when it has none: whole on every device)."""
        if not self.spmd.on:
            return ""
        return self._torch_xla._XLAC._get_xla_sharding_spec(tensor)

    def gather_on_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host copy of a split device tensor, assembled from each device's part.

        ``tensor.to("cpu")`` of a split tensor makes torch_xla compile and run a program that gathers it
        whole on the device (measured: one compile per weight shape, 200 for an SD1.5 UNet offloaded);
        reading the parts compiles nothing and never puts the whole tensor on a chip."""
        if not self.tensor_sharding(tensor):
            return tensor.to("cpu")
        xlac = self._torch_xla._XLAC
        parts = xlac._get_local_shards([tensor])[0]
        placements = xlac._get_local_shard_replica_and_indices([tensor])[0]
        host = torch.empty(tensor.shape, dtype=tensor.dtype)
        for (part, _), (_, slices) in zip(parts, placements):
            if slices is Ellipsis:  # replicated: any part is the whole
                return part.clone()
            region = host[tuple(slices)]
            region.copy_(part[tuple(slice(0, size) for size in region.shape)])  # an uneven last part is padded
        return host

    def release_weights(self, module: torch.nn.Module) -> int:
        """Nothing to drop: a model's weights are XLA tensors themselves, and ComfyUI's unload moves them to
        the host (the device buffers go with the old tensors)."""
        return 0

    def device_bytes(self, tensor: torch.Tensor) -> list[int]:
        """Bytes of ``tensor`` each device holds, from its sharding (no data is read)."""
        size = tensor.numel() * tensor.element_size()
        if not self.tensor_sharding(tensor):
            return [size] * self.device_total()
        held = []
        for _, slices in self._torch_xla._XLAC._get_local_shard_replica_and_indices([tensor])[0]:
            if slices is Ellipsis:  # a replicated sharding: the whole tensor
                held.append(size)
                continue
            count = 1
            for part, length in zip(slices, tensor.shape):
                start, stop, _ = part.indices(length)
                count *= max(stop - start, 0)
            held.append(count * tensor.element_size())
        return held


class XlaProgram:
    """A compiled graph and how to feed it: per graph parameter, the index of the run's input that
    fills it (None: a constant the trace made, kept in ``constants``)."""

    __slots__ = ("graph_hash", "slots", "constants", "seed_slots", "output_count", "traced")

    def __init__(self, graph_hash: bytes, slots: list[Optional[int]], constants: list[Any], seed_slots: list[int],
                 output_count: int) -> None:
        self.graph_hash = graph_hash
        self.slots = slots
        self.constants = constants
        self.seed_slots = seed_slots
        self.output_count = output_count
        self.traced: Optional[dict[Optional[int], Any]] = None  # input index -> its data as traced (see traced_inputs)


def counters_total_frames() -> int:
    """Frames dynamo has compiled so far (a capture or a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


class BackendUnavailable(RuntimeError):
    """The backend's library cannot be imported or its runtime does not start; the message says which."""


def create_backend(persistent_cache_dir: Optional[str] = None,
                   spmd_request: tuple[str, Optional[str]] = ("off", None), name: str = "torch_xla") -> Backend:
    """Start the runtime of backend ``name`` (``COMFY_TPU_BACKEND``): torch_xla's PJRT client, SPMD
    (or not) and the persistent cache, or torchax's JAX runtime and JAX's persistent cache.

    Each of those is process-wide and must be settled before the first device tensor, so this is
    called once per process, by ``runtime.start`` (and the doctor), never as a side effect of asking
    what hardware is here. Raises :class:`BackendUnavailable` naming what failed."""
    if name == "torchax":
        try:
            from tpu_runtime.backends.torchax import TorchaxBackend

            return TorchaxBackend(persistent_cache_dir, spmd_request)
        except ImportError as exc:
            raise BackendUnavailable(f"COMFY_TPU_BACKEND=torchax but torchax/JAX is not usable: {type(exc).__name__}: "
                                     f"{exc} (install the extra: python install.py --backend torchax)") from exc
        except Exception as exc:
            raise BackendUnavailable(f"the JAX runtime did not start: {type(exc).__name__}: {exc}") from exc
    try:
        return XlaBackend(persistent_cache_dir, spmd_request)
    except ImportError as exc:
        raise BackendUnavailable(f"torch_xla is not usable: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # a runtime that fails to start: its own message, whatever the type
        raise BackendUnavailable(f"the XLA runtime did not start: {type(exc).__name__}: {exc}") from exc
