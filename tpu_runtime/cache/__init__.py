"""The compilation cache and warm-up: execution signatures, the registry of what compiled, warm-up and re-warm."""
