"""What derives from the TPUSettings fields: run options, accepted values, seed and manager fields."""
from __future__ import annotations


from tpu_runtime.settings import live as live_settings
from tpu_runtime.comfyui import seed_args
from tpu_runtime.settings.run_options import RunOptions
from tpu_runtime.settings.tpu_settings import ACCEPTED_BOOL, TPUSettings, accepted, fields_where, setting_meta, value_type

RUN_FIELDS = {"autocast_bf16": (bool, True), "sync_steps": (int, 0), "debug_metrics": (bool, False),
              "shape_padding": (bool, True), "shape_padding_multiple": (int, 64), "compilation_cache": (bool, True),
              "compiled_graph_break_limit": (int, 0)}


def test_run_options_are_the_run_scoped_settings_with_their_types_and_defaults():
    assert set(RunOptions.model_fields) == set(fields_where(scope="run")) == set(RUN_FIELDS) | {
        "execution", "conv_kernel_layout", "attention", "block_programs"}
    for name, (kind, default) in RUN_FIELDS.items():
        assert (RunOptions.model_fields[name].annotation, RunOptions.model_fields[name].default) == (kind, default)
    assert RunOptions().execution == "replay" and RunOptions().conv_kernel_layout == "auto"
    assert RunOptions().attention == "auto" and RunOptions().block_programs == "auto"
    assert RunOptions.__name__ == "RunOptions" and RunOptions.__module__ == "tpu_runtime.settings.run_options"


def test_run_options_from_settings_and_per_model_overrides():
    settings = TPUSettings(sync_steps=3, execution="compiled", shape_padding_multiple=128)
    options = RunOptions.from_settings(settings)
    assert options.model_dump() == {name: getattr(settings, name) for name in RunOptions.model_fields}
    overridden = options.model_copy(update={"autocast_bf16": False, "shape_padding_multiple": 256})
    assert (overridden.autocast_bf16, overridden.shape_padding_multiple, overridden.sync_steps) == (False, 256, 3)
    assert options.shape_padding_multiple == 128


def test_run_options_are_defined_once():
    """Only run_options.py makes a RunOptions class: the wrappers, manager and runtime import it."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "tpu_runtime"
    makers = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [node.name] if isinstance(node, ast.ClassDef) else [
                t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            if "RunOptions" in targets:
                makers.append(path.name)
    assert makers == ["run_options.py"]


def test_every_field_is_described_and_says_what_it_accepts():
    for name in TPUSettings.model_fields:
        assert TPUSettings.model_fields[name].description, name
        assert accepted(name), name
        if value_type(name) is bool:
            assert accepted(name).startswith(ACCEPTED_BOOL)
    assert accepted("warmup_steps") == "an integer from 1 to 1000"
    assert accepted("compiled_graph_break_limit") == "an integer >= 0"


def test_seed_and_manager_fields():
    assert set(live_settings.SEED_FIELDS) == {
        "enable", "disable", "manual_warmup", "autocast_bf16", "compilation_cache", "shape_padding",
        "shape_padding_multiple", "debug_metrics", "sync_steps", "warmup", "warmup_steps"}
    assert live_settings.MANAGER_FIELDS == {"warmup", "manual_warmup", "warmup_steps"}
    assert set(seed_args.SEED_ARGS) == {f"tpu_{name}" for name in live_settings.SEED_FIELDS}
    assert live_settings.FIXED_AT_START <= set(live_settings.SEED_FIELDS)
    assert setting_meta("warmup").change_note and not setting_meta("sync_steps").change_note
