"""What the frontend is told while graphs compile (pure logic; the browser test shows it for real)."""
from __future__ import annotations

from tpu_runtime.cache import compile_status
from tpu_runtime.cache.compile_status import CompileStatus


def test_text_goes_to_the_executing_node(mocker):
    mocker.patch.object(compile_status, "_executing_node", return_value="7")
    sent = []
    status = CompileStatus(send=lambda text, node: sent.append((text, node)))
    assert status.compiling("BaseModel 4x8x8 b1", 12.4)
    assert status.compiled("BaseModel 4x8x8 b1", 5, 11.0)
    (first, node), (second, _) = sent
    assert node == "7" and "compiling" in first and "BaseModel 4x8x8 b1" in first and "~12 s (recorded)" in first
    assert "5 graph(s) in 11.0 s" in second


def test_no_estimate_says_so(mocker):
    mocker.patch.object(compile_status, "_executing_node", return_value="3")
    sent = []
    CompileStatus(send=lambda text, node: sent.append(text)).compiling("sig", None)
    assert "no earlier compile to estimate from" in sent[0]


def test_nothing_is_sent_outside_a_prompt(mocker):
    mocker.patch.object(compile_status, "_executing_node", return_value=None)
    send = mocker.Mock()
    assert not CompileStatus(send=send).compiling("sig", 1.0)
    send.assert_not_called()


def test_a_failing_socket_never_fails_the_run(mocker):
    mocker.patch.object(compile_status, "_executing_node", return_value="1")
    assert not CompileStatus(send=mocker.Mock(side_effect=ConnectionResetError("gone"))).compiled("sig", 1, 1.0)
