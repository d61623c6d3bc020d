"""Unit tests: no ComfyUI, no torch_xla, no device; ``pytest tests/unit`` runs in seconds.

The fixtures and env defaults of ``tests/conftest.py`` still apply; nothing here adds to them."""
