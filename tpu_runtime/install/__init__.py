"""Installing and launching: what install.py does about torch_xla/torchax, installed versions, the comfy-tpu command."""
