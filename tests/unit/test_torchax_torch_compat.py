"""The placeholders that let torchax 0.0.13 load on torch >= 2.13: set only for names this torch lacks, only
inside the window, and all gone after it (checked here on the installed torch with names it lacks)."""
from __future__ import annotations

import pytest
import torch

from tpu_runtime.backends import torchax_torch_compat as compat

LACKED = {"comfy_tpu_no_such_op": None, "prod": ("comfy_tpu_no_such_overload", "dim_int")}


def test_names_this_torch_lacks_stand_in_only_inside_the_window(caplog):
    real_dim_int = torch.ops.aten.prod.dim_int
    with caplog.at_level("INFO", logger="comfy_tpu"), compat.removed_aten_placeholders(LACKED) as placed:
        assert placed == ["aten.comfy_tpu_no_such_op", "aten.prod.comfy_tpu_no_such_overload"]
        assert isinstance(torch.ops.aten.comfy_tpu_no_such_op.default, compat.RemovedOp)
        key = torch.ops.aten.prod.comfy_tpu_no_such_overload
        assert {key: 1}[key] == 1  # usable as a table key, as torchax uses it
        assert torch.ops.aten.prod.dim_int is real_dim_int  # a name torch has is never touched
        with pytest.raises(RuntimeError, match="does not exist"):
            key(torch.ones(2))
    assert any("placeholders while torchax loads" in r.getMessage() for r in caplog.records)
    with pytest.raises(AttributeError):
        torch.ops.aten.comfy_tpu_no_such_op
    with pytest.raises(AttributeError):
        torch.ops.aten.prod.comfy_tpu_no_such_overload
    assert torch.ops.aten.prod.dim_int is real_dim_int


def test_the_window_closes_on_an_error_too():
    with pytest.raises(ValueError), compat.removed_aten_placeholders(LACKED):
        raise ValueError("torchax failed to load")
    with pytest.raises(AttributeError):
        torch.ops.aten.comfy_tpu_no_such_op


def test_nothing_is_set_where_torch_has_every_name(caplog):
    with caplog.at_level("INFO", logger="comfy_tpu"), compat.removed_aten_placeholders({"prod": ("dim_int",)}) as placed:
        assert placed == []
    assert not caplog.records


def test_the_removed_names_are_the_ones_torch_2_13_dropped():
    """On torch <= 2.12 (CI's 2.9) every listed name exists: the list names only what 2.13 removed (checked on
    2.14.1 by make check-newest-torch, where all 23 are missing)."""
    from tpu_runtime.install.plan import minor_of

    if tuple(int(p) for p in minor_of(torch.__version__).split(".")) >= (2, 13):
        assert len(compat.missing_names()) == 23
    else:
        assert compat.missing_names() == []


def test_the_window_opens_only_for_a_release_known_to_need_it(mocker):
    """torchax 0.0.13 on torch >= 2.13 loads inside the window; on torch 2.9, or a torchax not known to need it
    (the 0.0.14 nightlies load on torch 2.14.1 by themselves), no placeholder is set."""
    import contextlib
    import sys
    import types

    from tpu_runtime.install import versions

    fake = types.SimpleNamespace(default_env=lambda: "env")
    mocker.patch.dict(sys.modules, {"torchax": fake})
    window = mocker.patch.object(compat, "removed_aten_placeholders", side_effect=lambda: contextlib.nullcontext())
    installed = mocker.patch.object(versions, "installed_version", return_value="0.0.13")
    for torch_version, torchax_version, opened in (("2.14.1+cu130", "0.0.13", True), ("2.9.0", "0.0.13", False),
                                                   ("2.14.1", "0.0.14.dev20261026", False)):
        window.reset_mock()
        installed.return_value = torchax_version
        mocker.patch.object(compat.torch, "__version__", torch_version)
        assert compat.import_torchax() == (fake, "env")
        assert window.called is opened, (torch_version, torchax_version)
