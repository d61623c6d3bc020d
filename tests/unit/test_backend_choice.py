"""``COMFY_TPU_BACKEND=auto``: the choice from the facts (pure), the facts read from what is installed, and
the started runtime taking the chosen backend with its reason."""
from __future__ import annotations

import pytest

from tpu_runtime.backends import backend_choice
from tpu_runtime.backends.backend_choice import BackendFacts, choose_backend

NO_TORCHAX = "torchax and JAX are not installed (python install.py --backend torchax)"


def _facts(on_tpu: bool, torchax=None, torch_xla=None, torch="2.9.0") -> BackendFacts:
    return BackendFacts(on_tpu=on_tpu, torch_version=torch, torchax_problem=torchax, torch_xla_problem=torch_xla)


@pytest.mark.parametrize("setting", ["torch_xla", "torchax"])
def test_a_named_backend_is_taken_as_set_whatever_the_facts(setting):
    for facts in (_facts(True), _facts(False, torchax=NO_TORCHAX), _facts(False, torch_xla="missing")):
        choice = choose_backend(setting, facts)
        assert choice.name == setting and choice.reason == f"COMFY_TPU_BACKEND={setting}"


def test_auto_on_a_tpu_takes_torchax_whose_cache_loads():
    choice = choose_backend("auto", _facts(True))
    assert choice.name == "torchax" and "auto on a TPU" in choice.reason and "pytorch/xla#9094" in choice.reason


def test_auto_on_a_tpu_without_a_working_torchax_takes_torch_xla_and_says_why():
    choice = choose_backend("auto", _facts(True, torchax=NO_TORCHAX))
    assert choice.name == "torch_xla" and NO_TORCHAX in choice.reason


def test_auto_off_a_tpu_takes_torch_xla():
    choice = choose_backend("auto", _facts(False))
    assert choice.name == "torch_xla" and choice.reason.startswith("auto off a TPU")


def test_auto_off_a_tpu_takes_torchax_where_torch_xla_has_no_release_for_this_torch():
    problem = "torch_xla is not installed"
    choice = choose_backend("auto", _facts(False, torch_xla=problem, torch="2.14.1"))
    assert choice.name == "torchax" and "2.14.1" in choice.reason and problem in choice.reason
    # neither runs: torch_xla, whose own error the start line then shows
    assert choose_backend("auto", _facts(False, torchax=NO_TORCHAX, torch_xla=problem)).name == "torch_xla"


def test_the_facts_come_from_what_is_installed(mocker):
    from tpu_runtime.backends import device
    from tpu_runtime.install import versions

    installed = {"torchax": "0.0.13"}
    mocker.patch.object(versions, "installed_version", side_effect=lambda name: installed.get(name))
    mocker.patch.object(versions, "torch_xla_version", return_value=None)
    mocker.patch.object(device, "_tpu_runtime_present", return_value=True)
    mocker.patch("torch.__version__", "2.16.0")
    facts = backend_choice.facts_here()
    assert facts.on_tpu and facts.torch_xla_problem == "torch_xla is not installed"
    assert "unchecked on torch 2.16.0" in facts.torchax_problem  # newer than the placeholders were checked on
    mocker.patch("torch.__version__", "2.14.1")
    assert backend_choice.facts_here().torchax_problem is None
    assert backend_choice.resolve("auto").name == "torchax"
    installed.clear()
    assert backend_choice.facts_here().torchax_problem == NO_TORCHAX


def test_resolve_reads_no_facts_for_a_named_backend(mocker):
    facts = mocker.patch.object(backend_choice, "facts_here")
    assert backend_choice.resolve("torchax").name == "torchax" and not facts.called


def test_a_missing_torch_xla_names_what_gives_a_backend_on_this_torch():
    """The start line and the doctor: on a torch with a torch_xla release, the install; on current torch
    (no release), the torchax backend that runs there; beyond what was checked, no torchax advice."""
    from tpu_runtime.install.plan import torch_xla_missing

    assert "installs torch_xla==2.9.0" in torch_xla_missing("2.9.1")
    newest = torch_xla_missing("2.14.1+cu130")
    assert "no torch_xla release matches torch 2.14.1+cu130" in newest
    assert "python install.py --backend torchax" in newest and "COMFY_TPU_BACKEND=torchax (or auto)" in newest
    assert "torchax" not in torch_xla_missing("2.16.0")
