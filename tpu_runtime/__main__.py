"""``python -m tpu_runtime``: the ``comfy-tpu`` command (see :mod:`tpu_runtime.launcher`)."""
import sys

from .launcher import main

if __name__ == "__main__":
    sys.exit(main())
