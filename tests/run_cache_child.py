"""Child process for the cache tests: a second ComfyUI session sharing the first one's cache_dir."""
import json
import logging
import os
import sys

logging.basicConfig(level=logging.INFO)  # as ComfyUI's main.py sets up logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.cache_models import CACHE_TEST_MODEL  # noqa: E402  (before ComfyUI's own ``tests`` is on the path)
from tpu_runtime.comfy_host import import_comfy  # noqa: E402

nodes = import_comfy(load_pack=True)
import torch  # noqa: E402

import tpu_runtime  # noqa: E402
import tpu_runtime.runtime as runtime  # noqa: E402
from tpu_runtime import tiny_model  # noqa: E402

result = {"recorded": [s["summary"] for s in tpu_runtime.get_tpu_stats()["signatures"]]}
if "--sample" in sys.argv:
    patcher = tiny_model.build_patcher("tiny", seed=0, overrides=CACHE_TEST_MODEL)
    with torch.inference_mode():
        nodes.common_ksampler(patcher, 5, 12, 7.0, "euler", "normal", tiny_model.sd15_conditioning(1),
                              tiny_model.sd15_conditioning(2), {"samples": torch.zeros(1, 4, 16, 16)})
    outcome = runtime.MANAGER.last_outcome
    result.update(hit=outcome.hit, reason=outcome.reason)
print("RESULT " + json.dumps(result))
