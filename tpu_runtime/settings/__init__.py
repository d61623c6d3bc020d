"""The pack's settings: COMFY_TPU_* (pydantic-settings), their README table, live changes, one run's options."""
