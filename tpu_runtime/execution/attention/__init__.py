"""Attention inside the pack's device models: ComfyUI's call form in, an implementation chosen by
sequence length, backend and device (SDPA, a memory-bounded blockwise loop, or a Pallas flash kernel)."""
