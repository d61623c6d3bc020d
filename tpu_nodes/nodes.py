"""The four nodes under ``advanced/tpu``: thin wrappers over the running pack's manager and stats.

ComfyUI builds and calls node classes itself, so the pack's state reaches them as a class attribute
of their common base, set once when the extension registers them (:func:`bind`).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

from comfy_api.latest import io, ui

from tpu_runtime.api import TPUPathOff, stats_of
from tpu_runtime.settings.run_options import OPTIONS_KEY
from tpu_runtime.cache.warmup import ALL_SAMPLERS, WarmupArgumentError

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

CATEGORY = "advanced/tpu"


class TPUNode(io.ComfyNode):
    """What the pack's nodes share: the pack they act on."""

    pack: Optional["PackState"] = None

    @classmethod
    def manager(cls):
        """The running pack's manager; raises TPUPathOff (the node shows why) when the path is off."""
        state = cls.pack
        if state is None or state.manager is None:
            reason = state.decision.reason if state is not None else "the pack has not started"
            raise TPUPathOff(f"comfy-tpu: the TPU path is off: {reason}")
        return state.manager

    @classmethod
    def stats(cls) -> dict:
        return stats_of(cls.pack)


def _samplers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def _schedulers() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


class TPUManualWarmup(TPUNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TPUManualWarmup", display_name="TPU Manual Warmup", category=CATEGORY,
            description="Compile every XLA graph of a sampling signature now, so later runs at it compile nothing.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to warm up on the XLA device."),
                io.Int.Input("width", default=512, min=64, max=16384, step=8, tooltip="Image width in pixels."),
                io.Int.Input("height", default=512, min=64, max=16384, step=8, tooltip="Image height in pixels."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per batch."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Only whether it is 1.0 (no uncond pass) matters to the graphs."),
                io.Combo.Input("sampler_name", options=_samplers() + [ALL_SAMPLERS], default="euler",
                               tooltip="The sampler the workflow uses: its step update is a small graph of its own "
                                       f"({ALL_SAMPLERS}: every sampler the pack tests, one after another)."),
                io.Combo.Input("scheduler", options=_schedulers(), default="normal",
                               tooltip="Schedulers are data, not graphs: any choice serves every scheduler."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Optional: the workflow's conditioning (its shapes are warmed); else "
                                              "zeros of the shapes the model's config gives."),
                io.Conditioning.Input("negative", optional=True, tooltip="Optional negative conditioning."),
                io.Boolean.Input("force_recompile", default=False,
                                 tooltip="Run the warm-up even if the signature is already cached."),
                io.ControlNet.Input("control_net", optional=True,
                                    tooltip="Optional: a ControlNet (or T2I-Adapter) the workflow applies; controls "
                                            "already in the conditioning are warmed too. Strength is data."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="The control's start; a range short of 0-1 also warms the steps it is off."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="The control's end."),
                io.Int.Input("frames", default=1, min=1, max=1024, optional=True,
                             tooltip="Latent frames of a video model (Wan: (length - 1) / 4 + 1); image models "
                                     "ignore it."),
                io.Int.Input("context_tokens", default=0, min=0, max=16384, optional=True,
                             tooltip="Without positive: the prompts' text tokens (0: from the model's config)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The same model, warmed."),
                     io.String.Output(display_name="status", tooltip="Signature, graphs compiled, seconds.")],
        )

    @classmethod
    def execute(cls, model, width, height, batch_size, cfg, sampler_name, scheduler, positive=None, negative=None,
                force_recompile=False, control_net=None, start_percent=0.0, end_percent=1.0, frames=1,
                context_tokens=0, **kwargs) -> io.NodeOutput:
        try:
            result = cls.manager().warmup(model, width, height, batch_size, cfg, sampler_name, scheduler,
                                          positive, negative, force_recompile, control_net=control_net,
                                          control_percent=(start_percent, end_percent), frames=frames,
                                          context_tokens=context_tokens or None)
            status = result.status()
        except (TPUPathOff, WarmupArgumentError) as exc:
            status = str(exc)
        return io.NodeOutput(model, status, ui=ui.PreviewText(status))


class TPUCompilationCache(TPUNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TPUCompilationCache", display_name="TPU Compilation Cache", category=CATEGORY,
            description="Show or clear the pack's compilation cache.",
            inputs=[io.Combo.Input("action", options=["stats", "clear", "info"], default="stats",
                                   tooltip="stats: hit rate and signatures; clear: forget every signature and "
                                           "delete the pack's cache files; info: where the cache lives.")],
            outputs=[io.String.Output(display_name="report", tooltip="What the action found or did.")],
            is_output_node=True, not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, action):
        return float("nan")  # never reuse a cached result: the stats change with every run

    @classmethod
    def execute(cls, action) -> io.NodeOutput:
        if action == "clear":
            try:
                cls.manager().clear_cache()
                report = "cache cleared"
            except TPUPathOff as exc:
                report = str(exc)
        else:
            stats = cls.stats()
            if action == "info":
                report = json.dumps({k: stats.get(k) for k in ("enabled", "reason", "cache_dir", "persistent_cache",
                                                              "recorded_signatures")}, indent=1, default=str)
            else:
                report = (f"{stats['cached_signatures']} cached signature(s), {stats['hits']} hit(s), "
                          f"{stats['misses']} miss(es), hit rate {stats['hit_rate']:.0%}, {stats['compiles']} "
                          f"graph(s) compiled in {stats['compile_seconds']:.1f} s\n" +
                          "\n".join(s["summary"] for s in stats["signatures"]))
        return io.NodeOutput(report, ui=ui.PreviewText(report))


class TPUDeviceInfo(TPUNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TPUDeviceInfo", display_name="TPU Device Info", category=CATEGORY,
            description="The XLA device the pack samples on, and why the TPU path is off when it is.",
            inputs=[],
            outputs=[io.String.Output(display_name="device_info", tooltip="Device, count, versions, memory."),
                     io.Boolean.Output(display_name="available", tooltip="Whether the TPU path is on."),
                     io.String.Output(display_name="xla_version", tooltip="The installed torch_xla version.")],
            is_output_node=True, not_idempotent=True,
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        from tpu_runtime.backends.device import detect
        from tpu_runtime.install.versions import torch_xla_version

        stats = cls.stats()
        report = stats["device"]
        summary = (detect() if report is None else None)
        text = (f"{'on' if stats['enabled'] else 'off'}: {stats['reason']}\n" +
                (json.dumps(report, indent=1) if report else summary.summary()))
        version = torch_xla_version() or "not installed"
        return io.NodeOutput(text, bool(stats["enabled"]), version, ui=ui.PreviewText(text))


class TPUModelOptimization(TPUNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TPUModelOptimization", display_name="TPU Model Optimization", category=CATEGORY,
            description="Per-model overrides of the pack's settings (a clone: the input model is untouched).",
            inputs=[
                io.Model.Input("model", tooltip="The model to tune."),
                io.Combo.Input("autocast_dtype", options=["bf16", "fp32"], default="bf16",
                               tooltip="bf16 autocast around the diffusion model, or plain fp32."),
                io.Boolean.Input("compilation_cache", default=True,
                                 tooltip="Record this model's signatures in the compilation cache."),
                io.Boolean.Input("shape_padding", default=True,
                                 tooltip="Pad latents up to shape buckets so nearby sizes share graphs."),
                io.Int.Input("shape_padding_multiple", default=64, min=8, max=1024, step=8,
                             tooltip="Bucket size in pixels (a multiple of 8)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A clone with the overrides.")],
        )

    @classmethod
    def execute(cls, model, autocast_dtype, compilation_cache, shape_padding, shape_padding_multiple) -> io.NodeOutput:
        tuned = model.clone()
        transformer_options = dict(tuned.model_options.get("transformer_options", {}))
        transformer_options[OPTIONS_KEY] = {"autocast_bf16": autocast_dtype == "bf16",
                                            "compilation_cache": bool(compilation_cache),
                                            "shape_padding": bool(shape_padding),
                                            "shape_padding_multiple": int(shape_padding_multiple)}
        tuned.model_options["transformer_options"] = transformer_options
        return io.NodeOutput(tuned)


NODES = [TPUManualWarmup, TPUCompilationCache, TPUDeviceInfo, TPUModelOptimization]


def bind(state: "PackState") -> list[type[io.ComfyNode]]:
    """The node classes, acting on ``state``."""
    TPUNode.pack = state
    return list(NODES)
