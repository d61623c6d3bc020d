"""The public face of the compilation cache: ``tpu_manager`` and ``get_tpu_stats()``.

The manager observes every sampling run on the device (one of ``PackState.observers``): it records the
run's signature and XLA's compile count in the registry, explains misses, logs first-time compiles,
and re-warms signatures recorded in an earlier session before a model's first step.

A re-warm is bounded: each recorded signature is tried at most once per process, one this process
cannot reproduce (another mesh, compute dtype, execution mode or runtime version) is skipped with the
reason, and one line says how many were re-warmed and how long it took. ``COMFY_TPU_REWARM=0``
turns it off. A re-warm replays the recorded conditioning's layout (zeros of its shapes, through
ComfyUI's own ``extra_conds``), so it compiles what the real prompt runs, for every model family; one
that fails is logged once with the reason and set aside in the warm set (never retried), and the
user's prompt runs.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel

from tpu_runtime.backends import kernel_layout
from tpu_runtime.cache import warmup as warmup_mod
from tpu_runtime.cache.layout import comfy_form, layout_of, rebuild
from tpu_runtime.cache.registry import SignatureRegistry
from tpu_runtime.cache.compile_status import CompileStatus
from tpu_runtime.comfyui import conditioning as model_conditioning
from tpu_runtime.comfyui import sampler_calls, server
from tpu_runtime.settings.run_options import RunOptions, for_model
from tpu_runtime.sampling import RunObserver, SamplingRun, padded_shape
from tpu_runtime.sampling.control import control_layout
from tpu_runtime.cache.signature import ExecutionSignature, build_signature

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")


class WarmupResult(BaseModel):
    signature: ExecutionSignature
    graphs_compiled: int
    seconds: float
    steps_run: int
    already_cached: bool = False
    samplers: int = 1

    def status(self) -> str:
        what = self.signature.short() if self.samplers == 1 else f"{self.signature.short()} and " \
            f"{self.samplers - 1} other sampler(s)"
        if self.already_cached:
            return f"already cached: {what}"
        return (f"warmed {what}: {self.graphs_compiled} graph(s) compiled in "
                f"{self.seconds:.1f} s ({self.steps_run} step(s) run)")


class TPUManager(RunObserver):
    """The compilation cache's side of the pack: records, explains, warms up and re-warms."""

    def __init__(self, state: "PackState", registry: SignatureRegistry, *, warmup: bool = True,
                 manual_warmup: bool = False, warmup_steps: int = 1, xla_cache_dir: Optional[Path] = None,
                 persistent_cache_note: str = "", rewarm: bool = True,
                 status: Optional[CompileStatus] = None) -> None:
        self.state = state
        self.backend = state.backend
        self.registry = registry
        self.auto_warmup = warmup and not manual_warmup
        self.rewarm = rewarm
        self.status = status or CompileStatus()
        self._rewarm_tried: set[ExecutionSignature] = set()  # at most one attempt each, per process
        self.warmup_steps = warmup_steps
        self.xla_cache_dir = xla_cache_dir
        self.persistent_cache_note = persistent_cache_note
        self._warming = False
        self._warming_controls: Optional[tuple[str, ...]] = None  # the controls of the conditioning being warmed
        self.last_outcome = None

    @property
    def mesh(self) -> str:
        """The mesh signatures are recorded on: the backend's now (auto mode may add a 'model' axis)."""
        return self.backend.mesh_description()

    @property
    def options(self) -> RunOptions:
        """The run options in force: the pack's one set, which the sampling wrappers read too."""
        return self.state.options

    # -- observing runs --------------------------------------------------------------------------
    def before_run(self, run: SamplingRun, patcher: Any) -> None:
        if self._warming and self._warming_controls is not None and run.signature is not None:
            # A ranged control's warm-up samples stand-ins (always on, always off): their runs are
            # the conditioning's signature.
            run.signature = run.signature.model_copy(update={"controls": self._warming_controls})
        signature = run.signature
        if not self._warming:
            self._prompt_warmup(patcher, signature)
        if self.auto_warmup and self.rewarm and not self._warming:
            self._rewarm(patcher, run.options)
        if signature is not None and not self.registry.is_cached(signature):
            estimate = self.registry.estimate_compile_seconds(signature)
            what = signature.short()
            if self.registry.model_program_warm(signature):
                what += "\n(this sampler's own small graphs: the model's program is compiled)"
            log.info("comfy-tpu: compiling %s (first time, ~%s)", what.replace("\n", " "),
                     f"{estimate:.0f} s" if estimate is not None else "unknown s")
            self.status.compiling(what, estimate)

    def after_run(self, run: SamplingRun) -> None:
        if run.signature is None or run.figures is None or not run.options.compilation_cache:
            return
        outcome = self.registry.record(run.signature, run.figures.compiles, run.figures.compile_s,
                                       run.figures.model_program_compile_s)
        self.last_outcome = outcome
        if run.figures.compiles:
            self.status.compiled(run.signature.short(), run.figures.compiles, run.figures.compile_s)
        if not outcome.hit:
            log.info("comfy-tpu: cache miss for %s (%d graph(s), %.1f s): %s", run.signature.short(),
                     run.figures.compiles, run.figures.compile_s, outcome.reason)

    def _prompt_warmup(self, patcher: Any, signature: Optional[ExecutionSignature]) -> None:
        """A ``tpu_warmup`` block sent with this prompt: warm its signature before the first step (with
        this prompt's conditioning layout); a failure is logged and the prompt runs."""
        request = self.state.pending_warmups.take(server.executing_prompt_id())
        if request is None or not request.enabled:
            return
        width, height = request.target_resolution
        sampler_name = (sampler_calls.sampler_name_for(signature.sampler) if signature else None) or "euler"
        cfg = signature.cfg_scale if signature and signature.uncond_pass else (1.0 if signature else 7.0)
        frames = signature.input_shape[2] if signature and len(signature.input_shape) == 5 else 1
        try:
            positive, negative = self._conditioning_of(patcher, signature)
            result = self.warmup(patcher, width, height, request.batch_size, cfg=cfg, sampler_name=sampler_name,
                                 positive=positive, negative=negative, frames=frames)
        except Exception as exc:  # the pack's extra work never fails the user's prompt
            log.warning("comfy-tpu: prompt warm-up not done: %s", exc)
            return
        log.info("comfy-tpu: prompt warm-up: %s", result.status())

    def _conditioning_of(self, patcher: Any, signature: Optional[ExecutionSignature]) -> tuple[list, list]:
        """Zero (positive, negative) of ``signature``'s recorded layout, else of the model's config."""
        if signature is not None and signature.conditioning is not None:
            return rebuild(signature.conditioning)
        tokens = max(signature.context_tokens) if signature and signature.context_tokens else None
        positive = model_conditioning.config_conditioning(patcher, tokens or None)
        return positive, positive

    def _rewarm(self, patcher: Any, options: RunOptions) -> None:
        pending = [s for s in self.registry.pending_rewarm(self._fingerprint(patcher)) if s not in self._rewarm_tried]
        if not pending:
            return
        self._rewarm_tried.update(pending)
        reproducible = []
        for signature in pending:
            reason = self._cannot_reproduce(signature, patcher, options)
            if reason:
                log.info("comfy-tpu: not re-warming %s: %s", signature.short(), reason)
            else:
                reproducible.append(signature)
        start = time.perf_counter()
        if reproducible:
            self.status.rewarming(len(reproducible),
                                  sum(self.registry.estimate_compile_seconds(s) or 0.0 for s in reproducible))
        failed = 0
        for signature in reproducible:
            log.info("comfy-tpu: re-warming %s (recorded in an earlier session) before the first step",
                     signature.short())
            try:
                result = self._warm_signature(patcher, signature)
            except Exception as exc:  # the pack's extra work never fails the user's prompt
                failed += 1
                self._set_aside(signature, exc)
                continue
            log.info("comfy-tpu: %s", result.status())
            if signature.conditioning is None and result.signature != signature:
                # recorded before layouts were: the run just recorded it again, with its layout
                self.registry.forget(signature)
        log.info("comfy-tpu: re-warmed %d recorded signature(s) in %.1f s (%d skipped, %d failed)",
                 len(reproducible) - failed, time.perf_counter() - start, len(pending) - len(reproducible), failed)

    def _set_aside(self, signature: ExecutionSignature, exc: BaseException) -> None:
        """A re-warm that failed: logged once, kept out of every later re-warm, shown on the node."""
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        log.warning("comfy-tpu: re-warm of %s failed and is set aside (not retried; the prompt runs and "
                    "compiles what it needs): %s\n  signature: %s", signature.short(), reason,
                    signature.model_dump_json(exclude={"model_fingerprint"}))
        log.debug("comfy-tpu: re-warm failure", exc_info=exc)
        self.registry.set_aside(signature, reason)
        self.status.rewarm_failed(signature.short(), reason)

    def _cannot_reproduce(self, signature: ExecutionSignature, patcher: Any,
                          options: RunOptions) -> Optional[str]:
        """Why this process cannot compile ``signature``'s graphs (None when it can)."""
        dtype = "bfloat16" if options.autocast_bf16 else str(patcher.model_dtype()).removeprefix("torch.")
        entry = self.registry.get(signature)
        recorded_runtime = entry.runtime if entry else {}
        if signature.mesh != self.mesh:
            return f"recorded on mesh {signature.mesh}, this process runs on {self.mesh}"
        if signature.compute_dtype != dtype:
            return f"recorded computing in {signature.compute_dtype}, this process computes in {dtype}"
        if signature.execution != options.execution:
            return f"recorded in {signature.execution} execution, this process runs {options.execution}"
        if recorded_runtime and recorded_runtime != self.registry.runtime_versions:
            return f"recorded with {_versions(recorded_runtime)}, this process has " \
                   f"{_versions(self.registry.runtime_versions)}"
        if signature.controls:
            return f"its conditioning held {len(signature.controls)} control(s) (ControlNet, T2I-Adapter) that a " \
                   "re-warm does not have; a warm-up with the ControlNet compiles them"
        if signature.conditioning is not None:
            reason = signature.conditioning.unreproducible()
            if reason:
                return reason
        else:
            try:
                self._conditioning_of(patcher, signature)
            except warmup_mod.WarmupArgumentError as exc:
                return f"recorded without its conditioning's layout (an older warm set), and {exc}"
        if sampler_calls.sampler_name_for(signature.sampler) is None:
            return f"no sampler of this ComfyUI runs {signature.sampler}"
        return None

    def _warm_signature(self, patcher: Any, signature: ExecutionSignature) -> WarmupResult:
        """Sample ``signature``'s recorded latent and conditioning layout (zeros) with its sampler."""
        shape = signature.input_shape if len(signature.input_shape) == len(signature.latent_shape) + 1 \
            else (signature.batch_size, *signature.latent_shape)
        positive, negative = self._conditioning_of(patcher, signature)
        cfg = (signature.cfg_scale if not math.isclose(signature.cfg_scale, 1.0) and signature.cfg_scale else 7.0) \
            if signature.uncond_pass else 1.0
        return self._warm_one(patcher, tuple(shape), cfg, sampler_calls.sampler_name_for(signature.sampler) or "euler",
                              signature.scheduler or "normal", positive, negative, force_recompile=True)

    @staticmethod
    def _fingerprint(patcher: Any) -> str:
        from tpu_runtime.cache.signature import cached_fingerprint

        return cached_fingerprint(patcher)

    # -- the public API --------------------------------------------------------------------------
    def create_execution_signature(self, model: Any, width: int, height: int, batch_size: int = 1,
                                   cfg_scale: float = 7.0, scheduler: str = "normal", sampler: str = "euler",
                                   steps: int = 20, dtype: Optional[str] = None, context_tokens: int = 77,
                                   controls: tuple[str, ...] = (), frames: int = 1,
                                   conditioning: Optional[Any] = None) -> ExecutionSignature:
        """``controls``: the conditioning's controls as ``control.control_layout`` gives them;
        ``frames``: latent frames of a video model; ``conditioning``: its layout (``layout.layout_of``)."""
        user_shape = model_conditioning.latent_shape(model, width, height, batch_size, frames)
        return self._signature_at(model, user_shape, cfg_scale, scheduler, sampler, steps, dtype, context_tokens,
                                  controls, conditioning)

    def _signature_at(self, model: Any, user_shape: tuple[int, ...], cfg_scale: float, scheduler: str,
                      sampler: str, steps: int, dtype: Optional[str], context_tokens: int,
                      controls: tuple[str, ...], conditioning: Optional[Any]) -> ExecutionSignature:
        options = self.options_for(model)
        padded = padded_shape(user_shape, options)
        if dtype is None:
            dtype = "bfloat16" if options.autocast_bf16 else str(model.model_dtype()).removeprefix("torch.")
        return build_signature(model, user_shape, padded, (context_tokens,), not math.isclose(cfg_scale, 1.0),
                               dtype, sampler_calls.sampler_function_name(sampler), mesh=self.mesh,
                               cfg_scale=cfg_scale, scheduler=scheduler, steps=steps, execution=options.execution,
                               controls=controls, conditioning=conditioning)

    def options_for(self, model: Any) -> RunOptions:
        """The run options a model's runs use: the pack's, with the model's own overrides (the
        optimisation node's), so a signature made here is the one its runs record."""
        return for_model(self.options, getattr(model, "model_options", {}) or {}, self.backend.execution_modes)

    def is_cached(self, signature: ExecutionSignature) -> bool:
        return self.registry.is_cached(signature)

    def warmup(self, model: Any, width: int, height: int, batch_size: int = 1, cfg: float = 7.0,
               sampler_name: str = "euler", scheduler: str = "normal", positive: Optional[list] = None,
               negative: Optional[list] = None, force_recompile: bool = False, control_net: Any = None,
               control_percent: tuple[float, float] = (0.0, 1.0), frames: int = 1,
               context_tokens: Optional[int] = None, vae: Any = None, clip: Any = None) -> WarmupResult:
        """Compile every graph of this signature now; later runs at it compile nothing.
        ``sampler_name=warmup.ALL_SAMPLERS`` warms each of ``warmup.WARMED_BY_ALL`` in turn.
        The conditioning's shapes come from ``positive``/``negative`` (the workflow's own), else from
        the model's config (``context_tokens`` where it does not say its token count), else a
        ``WarmupArgumentError`` says what is needed; ``frames``: latent frames of a video model.
        Controls in ``positive``/``negative`` are warmed with them; ``control_net`` (a ControlNet or
        T2I-Adapter as its loader gives it) is applied to both as ``ControlNetApplyAdvanced`` would, with
        a blank hint and ``control_percent`` as its start/end range. ``vae`` / ``clip`` (ComfyUI's VAE and
        CLIP objects of the workflow): their device programs for this size are compiled too (a decode of a
        blank latent of the sampler's shape, an encode of an empty prompt), when they run on the device."""
        result = self._warmup_sampling(model, width, height, batch_size, cfg, sampler_name, scheduler, positive,
                                       negative, force_recompile, control_net, control_percent, frames,
                                       context_tokens)
        if vae is not None or clip is not None:
            shape = model_conditioning.latent_shape(model, width, height, batch_size, frames)
            self.state.device_parts.warm(vae, clip, shape)
        return result

    def _warmup_sampling(self, model: Any, width: int, height: int, batch_size: int, cfg: float, sampler_name: str,
                         scheduler: str, positive: Optional[list], negative: Optional[list], force_recompile: bool,
                         control_net: Any, control_percent: tuple[float, float], frames: int,
                         context_tokens: Optional[int]) -> WarmupResult:
        if positive is None:
            positive = model_conditioning.config_conditioning(model, context_tokens, 1)
        if negative is None:
            negative = positive
        if control_net is not None:
            positive, negative = warmup_mod.with_control(positive, negative, control_net, width, height,
                                                         control_percent)
        shape = model_conditioning.latent_shape(model, width, height, batch_size, frames)
        if sampler_name == warmup_mod.ALL_SAMPLERS:
            results = [self._warm_one(model, shape, cfg, name, scheduler, positive, negative, force_recompile)
                       for name in warmup_mod.WARMED_BY_ALL]
            return WarmupResult(signature=results[0].signature, graphs_compiled=sum(r.graphs_compiled for r in results),
                                seconds=sum(r.seconds for r in results), steps_run=sum(r.steps_run for r in results),
                                already_cached=all(r.already_cached for r in results), samplers=len(results))
        return self._warm_one(model, shape, cfg, sampler_name, scheduler, positive, negative, force_recompile)

    def _warm_one(self, model: Any, shape: tuple[int, ...], cfg: float, sampler_name: str, scheduler: str,
                  positive: list, negative: list, force_recompile: bool) -> WarmupResult:
        tokens = int(positive[0][0].shape[1]) if positive and positive[0][0] is not None else 77
        controls = control_layout({"positive": positive, "negative": negative})
        uncond = not math.isclose(cfg, 1.0)
        layout = layout_of({"positive": comfy_form(positive), "negative": comfy_form(negative)}, uncond)
        signature = self._signature_at(model, shape, cfg, scheduler, sampler_name, 20, None, tokens, controls, layout)
        steps = warmup_mod.warmup_steps(sampler_name, self.warmup_steps)
        if self.registry.is_cached(signature) and not force_recompile:
            return WarmupResult(signature=signature, graphs_compiled=0, seconds=0.0, steps_run=0,
                                already_cached=True)
        before = self.backend.counters()["compiles"]
        start = time.perf_counter()
        self._warming = True
        self._warming_controls = controls
        self.last_outcome = None
        try:
            for conds in warmup_mod.control_states(positive, negative):
                sampler_calls.sample_zeros(model, shape, cfg, sampler_name, scheduler, *conds, steps)
        finally:
            self._warming = False
            self._warming_controls = None
        compiled = self.backend.counters()["compiles"] - before
        seconds = time.perf_counter() - start
        recorded = self.last_outcome.signature if self.last_outcome else signature
        log.info("comfy-tpu: warm-up of %s: %d step(s), %d graph(s) compiled, %.1f s", recorded.short(), steps,
                 compiled, seconds)
        return WarmupResult(signature=recorded, graphs_compiled=compiled, seconds=seconds, steps_run=steps)

    def clear_cache(self) -> None:
        self.registry.clear(self.xla_cache_dir)
        log.info("comfy-tpu: compilation cache cleared")

    def stats(self) -> dict[str, Any]:
        counters = self.backend.counters()
        stats = self.registry.stats()
        stats["xla"] = {k: counters[k] for k in ("compiles", "uncached_compiles", "cached_compiles", "executions",
                                                 "transfers_to_host", "xla_tensors_live")}
        stats["execution"] = self.options.execution
        stats["backend"] = self.backend.name  # COMFY_TPU_BACKEND: torch_xla or torchax
        stats["dynamo"] = {k.removeprefix("dynamo_"): counters[k] for k in counters if k.startswith("dynamo_")}
        stats["dynamo"]["lazy_fallbacks"] = self.state.compiled_models.fallbacks()
        stats["replay"] = {**self.state.replayed_models.figures(), "lazy_fallbacks": self.state.replayed_models.fallbacks()}
        hwio = kernel_layout.twins_on(self.options.conv_kernel_layout, self.backend)
        stats["conv_kernels"] = {"layout": "hwio" if hwio else "native", "setting": self.options.conv_kernel_layout,
                                 "twins_made": self.state.kernel_twins.made}
        stats["persistent_cache"] = {
            "dir": str(self.xla_cache_dir) if self.xla_cache_dir else None,
            "hits": counters["persistent_cache_hits"], "misses": counters["persistent_cache_misses"],
            "deserialize_failures": counters["persistent_cache_deserialize_failures"],
            "note": self.persistent_cache_note}
        stats["spmd"] = self.spmd_stats()
        parts = self.state.device_parts
        stats["workflow_parts"] = parts.stats() if parts is not None else None
        stats["options"] = self.options.model_dump()
        stats["auto_warmup"] = self.auto_warmup
        stats["comfyui"] = self.state.comfy.model_dump() if self.state.comfy is not None else None
        if self.state.comfy is not None:
            stats["comfyui"]["line"] = self.state.comfy.line()
        return stats


    def spmd_stats(self) -> dict[str, Any]:
        """Mesh, devices and per-chip memory as the runtime reports them ("unknown" where it does not);
        under a 'model' axis, per diffusion model loaded, the bytes of its weights each chip holds."""
        from tpu_runtime.backends.chip_memory import chip_memory

        plan = getattr(self.backend, "spmd", None)
        placement = self.state.placement
        weights = ({"model_axis": self.backend.model_axis(), "weights_per_chip": placement.figures()}
                   if placement is not None and placement.on else {})  # measured now: before the free memory
        memory = chip_memory(self.state)
        return {"on": bool(plan and plan.on), "mesh": self.mesh, "devices": plan.devices if plan else 1,
                "data_axis": self.backend.shard_count(), "reason": plan.reason if plan else "",
                "memory_per_chip": {"free": memory[0], "total": memory[1]} if memory else "unknown", **weights}


def _versions(runtime: dict[str, Optional[str]]) -> str:
    return ", ".join(f"{name} {version}" for name, version in sorted(runtime.items()))
