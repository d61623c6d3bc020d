"""The ComfyUI page in headless Chromium with the pack: the nodes are found by the node search, the
example workflows load through the frontend's own loader, and a screenshot is kept as an artifact."""
from __future__ import annotations

import json
import re
import os
import shutil
from pathlib import Path

import pytest

from tests.comfy_env import PACK_DIR
from tests.server import ComfyServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = PACK_DIR / "out" / "artifacts"
DISPLAY_NAMES = ["TPU Manual Warmup", "TPU Compilation Cache", "TPU Device Info", "TPU Model Optimization"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (make setup)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("browser")
    srv = ComfyServer(tmp, env={"COMFY_TPU_ENABLE": "1", "PJRT_DEVICE": "CPU", "COMFY_TPU_CACHE_DIR": str(tmp / "c")})
    srv.wait_ready()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(srv.url, wait_until="domcontentloaded")
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                               "Object.keys(window.LiteGraph.registered_node_types).length > 100", timeout=120_000)
        try:
            yield page
        finally:
            browser.close()
            srv.stop()


def test_node_search_finds_the_four_nodes(page):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => window.app.graph.clear()")
    box = page.locator("canvas#graph-canvas").bounding_box()
    search = page.locator("input[placeholder='Search Nodes...']:focus")
    for _ in range(10):  # the canvas takes a moment after load to answer a double-click
        page.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        try:
            search.wait_for(timeout=2_000)
            break
        except Exception:
            page.keyboard.press("Escape")
    search.type("TPU", delay=50)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "node_search_tpu.png"))
    text = page.locator("body").inner_text()
    missing = [name for name in DISPLAY_NAMES if name not in text]
    assert not missing, f"node search did not list {missing}"
    page.keyboard.press("Escape")


@pytest.mark.parametrize("workflow", sorted((PACK_DIR / "workflows").glob("*.json")), ids=lambda p: p.stem)
def test_example_workflows_load_without_missing_nodes(page, workflow: Path):
    data = json.loads(workflow.read_text())
    result = page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const types = window.app.graph._nodes.map(n => n.type);
        const missing = types.filter(t => !window.LiteGraph.registered_node_types[t]);
        return {count: types.length, missing};
    }""", data)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"workflow_{workflow.stem}.png"))
    assert result["missing"] == [] and result["count"] == len(data["nodes"]), result
    assert "missing" not in page.locator("body").inner_text().lower()


def _queue_through_the_page(page, prompt: dict) -> None:
    """Load an API-format prompt into the page's graph and queue it the way the Queue button does."""
    page.evaluate("""async (prompt) => {
        window.app.loadApiJson(prompt, 'tpu-compile-status.json');
        await window.app.queuePrompt(0, 1);
    }""", prompt)


def test_the_node_shows_what_is_compiling_with_an_estimate(page):
    """While graphs compile, the KSampler node shows that the pack is compiling, which signature, and
    (once a similar signature was compiled before) an estimate from the recorded compile times."""
    from tests.server import txt2img_prompt

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("""() => {
        window.__tpuTexts = [];
        window.app.api.addEventListener('progress_text', (e) => window.__tpuTexts.push(e.detail));
    }""")
    texts = []
    for size in (64, 128):  # the second size is a new signature; the first one's compile time estimates it
        _queue_through_the_page(page, txt2img_prompt(steps=2, size=size, seed=size))
        page.wait_for_function("(n) => window.__tpuTexts.filter(t => t.text.includes('compiled')).length >= n",
                               arg=len(texts) // 2 + 1, timeout=300_000)
        texts = page.evaluate("() => window.__tpuTexts")
        page.keyboard.press("Escape")  # a templates dialog may cover the canvas on a fresh page
        page.evaluate("() => { const node = window.app.graph.getNodeById(5); "
                      "window.app.canvas.centerOnNode?.(node); window.app.canvas.setDirty(true, true); }")
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / f"compile_status_{size}.png"))
    compiling = [t for t in texts if "compiling" in t["text"]]
    assert len(compiling) == 2 and all(t["nodeId"] == "5" for t in texts), texts  # node 5: the KSampler
    first, second = (t["text"] for t in compiling)
    assert "4x8x8 b1" in first and "no earlier compile" in first, first
    assert "4x16x16 b1" in second and re.search(r"~\d+(\.\d)? s \(recorded\)", second), second
    shown = page.evaluate("""() => window.app.graph.getNodeById(5).widgets
        .find(w => w.name === '$$node-text-preview')?.value""")
    assert shown and "compiled" in shown and "graph(s)" in shown, shown
