"""Runnable tools outside the pack's runtime: the demo, the benchmarks, and the small random-weight
models (built from ComfyUI's own classes) that they and the tests sample with. Never imported by the
pack itself."""
