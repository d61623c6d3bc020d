"""The fake backend implements every method the Backend protocol declares."""
from __future__ import annotations

from tpu_runtime.backends.xla import Backend
from tests.unit.fake_backend import FakeBackend


def test_every_protocol_method_is_implemented():
    declared = {name for name in vars(Backend) if not name.startswith("_")} | set(Backend.__annotations__)
    missing = sorted(name for name in declared if not hasattr(FakeBackend(), name))
    assert not missing, missing
