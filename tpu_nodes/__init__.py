"""The pack's UI nodes (thin: each calls the tpu_runtime public API)."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
