"""Body of the cache tests' second session (``tests/child.py``): a new process sharing the first
one's cache dir sees the recorded signatures and, sampling, finds them re-warmed."""
from __future__ import annotations

from tests.cache_models import CACHE_TEST_MODEL  # (imported before ComfyUI's own ``tests``)


def second_session(nodes, sample: bool = True) -> dict:
    import torch

    import tpu_runtime
    import tpu_runtime.runtime as runtime
    from bench import tiny_model

    result = {"recorded": [s["summary"] for s in tpu_runtime.get_tpu_stats()["signatures"]]}
    if sample:
        patcher = tiny_model.build_patcher("tiny", seed=0, overrides=CACHE_TEST_MODEL)
        with torch.inference_mode():
            nodes.common_ksampler(patcher, 5, 12, 7.0, "euler", "normal", tiny_model.sd15_conditioning(1),
                                  tiny_model.sd15_conditioning(2), {"samples": torch.zeros(1, 4, 16, 16)})
        outcome = runtime.current().manager.last_outcome
        result.update(hit=outcome.hit, reason=outcome.reason)
    return result
