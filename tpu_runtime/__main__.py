"""``python -m tpu_runtime``: the ``comfy-tpu`` command (see :mod:`tpu_runtime.install.launcher`)."""
import sys

from tpu_runtime.install.launcher import main

if __name__ == "__main__":
    sys.exit(main())
