"""Entry point of a fresh test process (see ``tests/child.py``): ``child_main.py module:function JSON``."""
import importlib
import json
import logging
import os
import sys

logging.basicConfig(level=logging.INFO)  # as ComfyUI's main.py sets up logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

target, arguments = sys.argv[1], json.loads(sys.argv[2])
module_name, function_name = target.split(":")
# Our ``tests`` package is imported before ComfyUI puts its own ``tests`` folder on the path.
module = importlib.import_module(f"tests.{module_name}")
from tests.child import RESULT_PREFIX  # noqa: E402
from bench.comfy_host import import_comfy  # noqa: E402

nodes = import_comfy(load_pack=True)
result = getattr(module, function_name)(nodes, **arguments)
print(RESULT_PREFIX + json.dumps(result), flush=True)
