"""Scripts written against the seed document's API run unchanged: ``comfy.tpu_xla`` and
``args.tpu_*``, through real ComfyUI processes (one per case, ``tests/cases_seed_api.py``), plus the
pieces that need no ComfyUI."""
from __future__ import annotations

import argparse

import pytest

from tests.child import run_child

#: Two bad values, given once as environment variables and once through ``args``.
BAD = {"shape_padding_multiple": "100", "sync_steps": "-1"}


@pytest.fixture(scope="module")
def snippets() -> dict:
    return run_child("cases_seed_api:snippets", env={"COMFY_TPU_AUTOCAST_BF16": "1"})


def test_the_seed_snippets_run_as_written(snippets):
    assert snippets["alias_is_the_running_api"]
    assert snippets["cached_at_start"] == 0
    assert snippets["cached_after_run"] and snippets["stats_after_run"] == 1
    assert snippets["key_equals_pack_spelling"]
    key = snippets["key"]
    assert (key["model_id"], key["input_shape"], key["latent_shape"], key["batch_size"]) == \
        ("BaseModel", [1, 4, 16, 16], [4, 16, 16], 1)
    assert (key["compute_dtype"], key["sampler"], key["cfg_scale"], key["steps"]) == \
        ("bfloat16", "sample_euler", 7.0, 20)
    assert snippets["model_id_resolves_to"] == ["ModelPatcher", "ExecutionSignature"]
    assert snippets["cached_by_recorded_id"]  # after ComfyUI unloaded the model
    assert not snippets["cached_after_clear"]


def test_args_show_the_settings_in_force(snippets):
    assert snippets["vars_have_no_tpu"]  # properties on the one object, not entries in ComfyUI's namespace
    assert snippets["args"] == snippets["settings"]
    assert snippets["args"]["tpu_enable"] is True and snippets["args"]["tpu_autocast_bf16"] is True
    assert set(snippets["args"]) == {
        "tpu_enable", "tpu_disable", "tpu_manual_warmup", "tpu_autocast_bf16", "tpu_compilation_cache",
        "tpu_shape_padding", "tpu_shape_padding_multiple", "tpu_debug_metrics", "tpu_sync_steps", "tpu_warmup",
        "tpu_warmup_steps"}


def test_args_change_applies_from_the_next_run_with_one_line(snippets):
    assert snippets["padding_now"] == {"args": 128, "run_options": 128, "manager": 128}
    assert len(snippets["padding_lines"]) == 1, snippets["padding_lines"]
    assert "= 128 (was 64)" in snippets["padding_lines"][0]
    assert snippets["next_run_latent"] == [4, 32, 32]  # 136 px padded to 256, not 192
    assert snippets["same_value_lines"] == []
    assert snippets["changed"] == {"sync_steps": 2, "warmup_steps": 3, "auto_warmup": False, "args_sync_steps": 2,
                                   "args_manual_warmup": True}


def test_enable_and_disable_cannot_change_after_start(snippets):
    refused = snippets["disable_refused"]
    assert refused["raised"] == "SettingRefused" and refused["value_error"]
    assert "args.tpu_disable cannot change after ComfyUI started" in refused["message"]
    assert "COMFY_TPU_DISABLE" in refused["message"] and "restart" in refused["message"]
    assert snippets["enable_same_value"] == {"raised": None}  # already in force: nothing to refuse


def test_registering_is_idempotent_and_reversible(snippets):
    assert snippets["after_unregister"] == {"args_class": True, "has_tpu_enable": False, "alias": False}
    assert snippets["after_register"] == {"args_shape_padding_multiple": 128, "alias": True}


def test_a_bad_args_value_gets_the_environment_variables_error(snippets):
    env = run_child("cases_seed_api:problems", env={f"COMFY_TPU_{k.upper()}": v for k, v in BAD.items()})
    assert not env["on"]
    from_env = {problem["variable"]: problem for problem in env["problems"]}
    for field, name in (("shape_padding_multiple", "bad_multiple"), ("sync_steps", "bad_sync_steps")):
        refused = snippets[name]
        assert refused["raised"] == "SettingRefused" and refused["value_error"]
        assert refused["problem"] == from_env[f"COMFY_TPU_{field.upper()}"]
        env_message = next(m for m in env["messages"] if m.startswith(f"COMFY_TPU_{field.upper()}="))
        assert refused["message"].startswith(f"comfy-tpu: args.tpu_{field} refused: ")
        assert env_message.removesuffix("The TPU path stays off.") in refused["message"]
        assert refused["message"].endswith("The setting keeps its value " +
                                           ("128." if field == "shape_padding_multiple" else "0."))
    assert snippets["after_bad"] == {"multiple": 128, "sync_steps": 0}
    assert env["import"]["error"] == "ModuleNotFoundError"  # path off: nothing registered


def test_with_the_pack_disabled_comfy_tpu_xla_does_not_import():
    result = run_child("cases_seed_api:problems", env={"COMFY_TPU_DISABLE": "1", "COMFY_TPU_ENABLE": ""})
    assert not result["on"] and not result["problems"], result
    assert "disable" in result["reason"].lower(), result["reason"]
    assert result["import"]["error"] == "ModuleNotFoundError", result["import"]
    assert "comfy.tpu_xla" in result["import"]["message"]
    assert not result["args_has_tpu_enable"]


# -- no ComfyUI needed ------------------------------------------------------------------------------
def test_args_class_swap_is_idempotent_reversible_and_leaves_comfyui_attributes():
    from tpu_runtime.comfyui import seed_args

    args = argparse.Namespace(cpu=True, listen="127.0.0.1")
    assert seed_args.install(args) and seed_args.install(args)
    assert type(args) is seed_args.TPUArgs and vars(args) == {"cpu": True, "listen": "127.0.0.1"}
    assert isinstance(args, argparse.Namespace)
    seed_args.uninstall(args)
    seed_args.uninstall(args)
    assert type(args) is argparse.Namespace and not hasattr(args, "tpu_enable")
    other = argparse.Namespace()
    assert not hasattr(other, "tpu_sync_steps")  # only the one object changes


def test_args_that_already_carry_the_flags_are_left_alone():
    from tpu_runtime.comfyui import seed_args

    args = argparse.Namespace(tpu_enable=True)
    assert not seed_args.install(args)
    assert type(args) is argparse.Namespace and args.tpu_enable is True


@pytest.mark.parametrize("field,value", [("shape_padding_multiple", "100"), ("shape_padding_multiple", "0"),
                                         ("sync_steps", "-1"), ("warmup_steps", "0"), ("shape_padding", "maybe")])
def test_a_change_is_validated_as_the_environment_variable_is(monkeypatch, field, value):
    from tpu_runtime.settings.live import SettingRefused, validated
    from tpu_runtime.settings.tpu_settings import TPUSettings, load_settings

    monkeypatch.setenv(f"COMFY_TPU_{field.upper()}", value)
    [from_env] = load_settings().problems
    monkeypatch.delenv(f"COMFY_TPU_{field.upper()}")
    with pytest.raises(SettingRefused) as refused:
        validated(TPUSettings(), field, value)
    assert refused.value.problem == from_env


def test_a_change_is_checked_against_the_settings_in_force_not_the_environment(monkeypatch):
    from tpu_runtime.settings.live import validated
    from tpu_runtime.settings.tpu_settings import TPUSettings

    monkeypatch.setenv("COMFY_TPU_SETTINGS_FILE", "/nonexistent/settings.toml")  # broken since start
    monkeypatch.setenv("COMFY_TPU_SYNC_STEPS", "7")
    changed = validated(TPUSettings.model_construct(), "shape_padding_multiple", "128")
    assert type(changed) is TPUSettings
    assert changed.shape_padding_multiple == 128 and changed.sync_steps == 0


def test_seed_signature_arguments_are_checked_at_the_boundary():
    from pydantic import ValidationError

    from tpu_runtime.cache.seed_signature import SignatureRequest

    request = SignatureRequest(model_id="SDXL", input_shape=(2, 4, 128, 96), dtype="bf16")
    assert request.pixel_size() == (768, 1024, 2) and request.dtype == "bfloat16"
    import torch

    assert SignatureRequest(model_id="x", width=64, height=64, dtype=torch.float32).dtype == "float32"
    for bad in (dict(model_id="x"),  # no size
                dict(width=64, height=64),  # no model
                dict(model_id="x", input_shape=(1, 4, 16, 16), batch_size=2),
                dict(model_id="x", input_shape=(1, 4, 16, 16), width=64),
                dict(model_id="x", width=64, height=64, dtype="bfloat17")):
        with pytest.raises(ValidationError):
            SignatureRequest(**bad)
