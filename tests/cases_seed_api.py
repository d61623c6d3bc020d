"""Bodies run in fresh ComfyUI processes (``tests/child.py``) by ``test_seed_api``: the seed document's
snippets, as written, against the running pack (``comfy.tpu_xla``, ``args.tpu_*``)."""
from __future__ import annotations

import logging

from tests.sampling_harness import ksample  # noqa: F401  (imported before ComfyUI's own ``tests``)


class _Lines(logging.Handler):
    """The pack's log lines, kept for the test to read."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _refusal(action) -> dict:
    from tpu_runtime.settings.live import SettingRefused

    try:
        action()
    except SettingRefused as exc:
        return {"raised": type(exc).__name__, "value_error": isinstance(exc, ValueError), "message": str(exc),
                "problem": exc.problem.model_dump() if exc.problem else None}
    return {"raised": None}


def snippets(nodes) -> dict:
    """Path on, autocast on (the seed's example key says dtype="bfloat16")."""
    import argparse
    import sys

    import comfy.model_management

    import tpu_runtime
    import tpu_runtime.runtime as runtime
    from bench import tiny_model
    from tpu_runtime.comfyui import seed_api
    from tpu_runtime.comfyui.seed_args import SEED_ARGS

    lines = _Lines()
    logging.getLogger("comfy_tpu").addHandler(lines)
    result: dict = {}

    # -- "Cache Statistics", as written --------------------------------------------------------
    from comfy.tpu_xla import get_tpu_stats
    stats = get_tpu_stats()
    print(f"Cached signatures: {stats['cached_signatures']}")
    result["cached_at_start"] = stats["cached_signatures"]
    import comfy.tpu_xla
    result["alias_is_the_running_api"] = comfy.tpu_xla is sys.modules["tpu_runtime.api"] is tpu_runtime.api

    backend = runtime.current().backend
    patcher = tiny_model.build_patcher("tiny", seed=0)
    pos, neg = tiny_model.sd15_conditioning(1), tiny_model.sd15_conditioning(2)
    ksample(nodes, patcher, pos, neg, steps=2, size=128, backend=backend)  # latent (1, 4, 16, 16)

    # -- "Manual Cache Management", as written (the seed's key, at this model and size) ---------
    from comfy.tpu_xla import create_execution_signature, tpu_manager

    cache_key = create_execution_signature(model_id="BaseModel", input_shape=(1, 4, 16, 16), batch_size=1,
                                           cfg_scale=7.0, scheduler="euler", steps=20, dtype="bfloat16")
    is_cached = tpu_manager.is_cached(cache_key)
    result["key"] = cache_key.model_dump(mode="json")
    result["cached_after_run"] = is_cached
    result["key_equals_pack_spelling"] = cache_key == tpu_runtime.create_execution_signature(patcher, 128, 128)
    result["stats_after_run"] = get_tpu_stats()["cached_signatures"]
    from tpu_runtime.cache.seed_signature import resolve_model_id

    result["model_id_resolves_to"] = [type(resolve_model_id("BaseModel", runtime.current().manager)).__name__]
    comfy.model_management.unload_all_models()  # ComfyUI let the model go: found through its recorded signature
    result["model_id_resolves_to"].append(type(resolve_model_id("BaseModel", runtime.current().manager)).__name__)
    result["cached_by_recorded_id"] = tpu_manager.is_cached(create_execution_signature(
        model_id="BaseModel", input_shape=(1, 4, 16, 16), scheduler="euler", dtype="bfloat16"))
    tpu_manager.clear_cache()
    result["cached_after_clear"] = tpu_manager.is_cached(cache_key)

    # -- args.tpu_* ----------------------------------------------------------------------------
    from comfy.cli_args import args

    result["args"] = {name: getattr(args, name) for name in SEED_ARGS}
    result["settings"] = {name: getattr(runtime.current().loaded.settings, field) for name, field in SEED_ARGS.items()}
    result["vars_have_no_tpu"] = not any(name.startswith("tpu_") for name in vars(args))

    # "Custom Shape Normalization", as written
    before = len(lines.lines)
    args.tpu_shape_padding_multiple = 128
    result["padding_lines"] = [line for line in lines.lines[before:] if "tpu_shape_padding_multiple" in line]
    result["padding_now"] = {"args": args.tpu_shape_padding_multiple,
                             "run_options": runtime.current().options.shape_padding_multiple,
                             "manager": runtime.current().manager.options.shape_padding_multiple}
    ksample(nodes, patcher, pos, neg, steps=2, size=136, backend=backend)  # 136 px: 192 at 64, 256 at 128
    result["next_run_latent"] = list(runtime.current().manager.last_outcome.signature.latent_shape)

    before = len(lines.lines)
    args.tpu_shape_padding_multiple = 128  # the value in force: nothing to say
    result["same_value_lines"] = lines.lines[before:]

    result["bad_multiple"] = _refusal(lambda: setattr(args, "tpu_shape_padding_multiple", 100))
    result["bad_sync_steps"] = _refusal(lambda: setattr(args, "tpu_sync_steps", -1))
    result["after_bad"] = {"multiple": args.tpu_shape_padding_multiple, "sync_steps": args.tpu_sync_steps}
    result["disable_refused"] = _refusal(lambda: setattr(args, "tpu_disable", True))
    result["enable_same_value"] = _refusal(lambda: setattr(args, "tpu_enable", True))  # COMFY_TPU_ENABLE=1

    args.tpu_sync_steps = "2"  # as the environment variable would give it
    args.tpu_warmup_steps = 3
    args.tpu_manual_warmup = True
    result["changed"] = {"sync_steps": runtime.current().options.sync_steps, "warmup_steps": runtime.current().manager.warmup_steps,
                         "auto_warmup": runtime.current().manager.auto_warmup, "args_sync_steps": args.tpu_sync_steps,
                         "args_manual_warmup": args.tpu_manual_warmup}

    # Reversible: unregistering leaves ComfyUI's args and comfy package as they were.
    seed_api.unregister()
    result["after_unregister"] = {"args_class": type(args) is argparse.Namespace,
                                  "has_tpu_enable": hasattr(args, "tpu_enable"),
                                  "alias": "comfy.tpu_xla" in sys.modules or hasattr(comfy, "tpu_xla")}
    seed_api.register()
    seed_api.register()  # idempotent
    result["after_register"] = {"args_shape_padding_multiple": args.tpu_shape_padding_multiple,
                                "alias": sys.modules["comfy.tpu_xla"] is tpu_runtime.api}
    return result


def problems(nodes) -> dict:
    """Path off (a bad variable, or disabled): what start said, and what a seed script meets."""
    import comfy.cli_args

    import tpu_runtime.runtime as runtime

    try:
        import comfy.tpu_xla  # noqa: F401
        imported = {"error": None}
    except ImportError as exc:
        imported = {"error": type(exc).__name__, "message": str(exc)}
    return {"on": runtime.current().decision.on, "reason": runtime.current().decision.reason,
            "problems": [problem.model_dump() for problem in runtime.current().loaded.problems],
            "messages": [problem.message() for problem in runtime.current().loaded.problems],
            "import": imported, "args_has_tpu_enable": hasattr(comfy.cli_args.args, "tpu_enable")}
