"""The compat layer's own checks: which ComfyUI the suite really runs (`make test-compat` runs the tests
marked ``compat``, these among them, on ComfyUI 0.33.0)."""
