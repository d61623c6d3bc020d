"""The user's surface through the real server: the four nodes, /tpu/* routes, prompt warm-up."""
from __future__ import annotations

import re

import pytest

from tests.server import ComfyServer, txt2img_prompt

ENV = {"COMFY_TPU_ENABLE": "1", "PJRT_DEVICE": "CPU", "COMFY_TPU_AUTOCAST_BF16": "0", "COMFY_TPU_MANUAL_WARMUP": "1"}
NODE_INPUTS = {
    "TPUManualWarmup": {"model", "width", "height", "batch_size", "cfg", "sampler_name", "scheduler", "positive",
                        "negative", "force_recompile", "control_net", "start_percent", "end_percent", "frames",
                        "context_tokens"},
    "TPUCompilationCache": {"action"},
    "TPUDeviceInfo": set(),
    "TPUModelOptimization": {"model", "autocast_dtype", "compilation_cache", "shape_padding",
                             "shape_padding_multiple"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodes-server")
    srv = ComfyServer(tmp, env={**ENV, "COMFY_TPU_CACHE_DIR": str(tmp / "cache")})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_object_info_lists_the_four_nodes(server):
    info = server.get("/object_info")
    for node_id, inputs in NODE_INPUTS.items():
        node = info[node_id]
        assert node["category"] == "advanced/tpu"
        declared = set(node["input"].get("required", {})) | set(node["input"].get("optional", {}))
        assert declared == inputs, (node_id, declared)
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip: {spec}"
    assert info["TPUCompilationCache"]["output_node"] is True


def _warm_workflow(steps: int, seed: int) -> dict:
    prompt = txt2img_prompt(steps=steps, seed=seed, size=128)
    prompt["7"] = {"class_type": "TPUManualWarmup",
                   "inputs": {"model": ["1", 0], "width": 128, "height": 128, "batch_size": 1, "cfg": 7.0,
                              "sampler_name": "euler", "scheduler": "normal", "force_recompile": False}}
    prompt["5"]["inputs"]["model"] = ["7", 0]
    return prompt


def test_workflow_with_manual_warmup_then_rerun_compiles_nothing(server):
    first = server.run_prompt(_warm_workflow(steps=3, seed=1))
    assert first["status"]["status_str"] == "success", first["status"]
    # The warm-up node ran in this first prompt (the server is new), so its status is in the history.
    # (In the second prompt its inputs are unchanged: ComfyUI reuses its cached output and, for a
    # client without a client_id, records no ui output for it.)
    status_text = first["outputs"]["7"]["text"][0]
    assert re.fullmatch(r"warmed .* sample_euler .*: \d+ graph\(s\) compiled in [\d.]+ s \(\d+ step\(s\) run\)",
                        status_text), status_text
    before = server.get("/tpu/stats")
    assert before["cached_signatures"] >= 1
    second = server.run_prompt(_warm_workflow(steps=7, seed=2))
    assert second["status"]["status_str"] == "success"
    after = server.get("/tpu/stats")
    assert after["xla"]["compiles"] == before["xla"]["compiles"], (before["xla"], after["xla"])
    assert after["hits"] > before["hits"]
    cleared = server.post("/tpu/cache/clear", {})
    assert cleared[0] == 200 and cleared[1]["cleared"]
    stats = server.get("/api/tpu/stats")
    assert stats["cached_signatures"] == 0 and stats["signatures"] == []


def test_device_route(server):
    device = server.get("/tpu/device")
    assert device["enabled"] and device["device"]["device"] == "xla:0"


def test_prompt_warmup_block_warms_before_sampling(server):
    before = server.get("/tpu/stats")
    prompt = txt2img_prompt(steps=2, seed=3, size=64)
    status, body = server.post("/prompt", {"prompt": prompt, "tpu_warmup": {"enabled": True,
                                                                           "target_resolution": [192, 192],
                                                                           "batch_size": 1}})
    assert status == 200, body
    server.wait_for(body["prompt_id"])
    after = server.get("/tpu/stats")
    shapes = [tuple(s["signature"]["latent_shape"]) for s in after["signatures"]]
    assert (4, 24, 24) in shapes, shapes  # 192x192 -> latent 24x24, warmed though the prompt ran 64x64
    assert after["recorded_signatures"] > before["recorded_signatures"]


@pytest.mark.parametrize("block,field", [
    ({"enabled": True, "target_resolution": [100, 64], "batch_size": 1}, "tpu_warmup.target_resolution"),
    ({"enabled": True, "target_resolution": [64, 64], "batch_size": 0}, "tpu_warmup.batch_size"),
    ({"enabled": "yes", "target_resolution": [64, 64]}, "tpu_warmup.enabled"),
    ({"enabled": True}, "tpu_warmup.target_resolution"),
])
def test_malformed_warmup_block_is_rejected_and_not_queued(server, block, field):
    queue_before = server.get("/queue")
    status, body = server.post("/prompt", {"prompt": txt2img_prompt(steps=1), "extra_data": {"tpu_warmup": block}})
    assert status == 400 and field in body["error"]["message"], body
    queue_after = server.get("/queue")
    assert len(queue_after["queue_pending"]) + len(queue_after["queue_running"]) <= \
        len(queue_before["queue_pending"]) + len(queue_before["queue_running"])
    history = server.get("/history")
    assert not any(entry.get("prompt", [None, None, None])[2] == txt2img_prompt(steps=1) for entry in history.values())
