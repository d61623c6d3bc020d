"""The boundary with ComfyUI: every import of ComfyUI's modules, every function installed in its place, what the running ComfyUI can do."""
