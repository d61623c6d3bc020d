"""The per-step modules of the pack read no tensor values into Python (each read is a device-to-host
sync on XLA): a static check of their source with ``ast``, and tests of the check itself.

Flagged: ``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()``; ``float()``, ``int()``, ``bool()`` of
anything but a literal or a shape (``x.shape[i]``, ``x.dim()``, ``len(x)``: metadata, known on the
host); and truth tests (``if``, ``while``, ``assert``, ternaries, ``and``/``or``/``not``) of a name
known to be a device tensor (a parameter annotated ``torch.Tensor``, or a name assigned from a
``torch.*`` call), bare or compared. What is known to be host-side is in :data:`ALLOWED`, with why.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "tpu_runtime"
#: The modules whose code runs at every sampling step (or every op on a step's tensors).
PER_STEP_MODULES = ("sampling/run", "sampling/outer", "sampling/steps", "sampling/model_call", "sampling/attach",
                    "execution/pacing", "sampling/noise", "execution/compiled", "backends/batch_shard",
                    "sampling/schedule", "execution/host_values", "sampling/unipc")
#: (module, call as ``ast.unparse`` writes it) -> why it reads no device value.
ALLOWED: dict[tuple[str, str], str] = {
    ("sampling/run", "float(cfg)"): "the guider's cfg scale: a Python number from the node's input",
    ("sampling/unipc", "float((ours - theirs).abs().max())"): "the probe of another ComfyUI's UniPC compares two "
                                                                "runs on a CPU latent, once a process, no step",
    ("execution/host_values", "bool(written)"): "a list of the tensors an op writes: its length, not their values",
    ("execution/host_values", "bool(written - {'self'})"): "a set of argument names from the op's schemas",
}
READ_METHODS = {"item", "cpu", "tolist", "numpy"}
CONVERSIONS = {"float", "int", "bool"}
#: ``torch.*`` calls that make no tensor.
NOT_TENSORS = {"device", "dtype", "Generator", "Size", "is_tensor", "is_grad_enabled", "get_default_dtype"}


class Finding(NamedTuple):
    line: int
    code: str


def _is_metadata(node: ast.expr) -> bool:
    """A shape, a dim count or a length: known on the host without a transfer."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "shape":
        return True
    if isinstance(node, ast.Call):
        func = node.func
        return (isinstance(func, ast.Attribute) and func.attr in {"dim", "numel", "size"}) or (
            isinstance(func, ast.Name) and func.id == "len")
    return False


def _tensor_names(function: ast.AST) -> set[str]:
    """Names a function knows to be device tensors: parameters annotated ``torch.Tensor`` (a
    ``HostTensor`` is host-side) and names assigned the result of a ``torch.*`` call."""
    names = set()
    arguments = getattr(function, "args", None)
    if arguments is not None:
        for arg in arguments.posonlyargs + arguments.args + arguments.kwonlyargs:
            annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            if annotation in ("torch.Tensor", "Tensor", "Optional[torch.Tensor]"):
                names.add(arg.arg)
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func  # torch.<factory or op>(...), not torch._C.* helpers or torch.device(...)
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "torch"
                    and func.attr not in NOT_TENSORS and not func.attr.startswith("_")):
                names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def _truth_tests(tree: ast.AST) -> Iterator[ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            yield node.test
        elif isinstance(node, ast.BoolOp):
            yield from node.values
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node.operand


def _reads_tensor(test: ast.expr, tensors: set[str]) -> bool:
    """A truth test that calls ``bool()`` on a tensor: the name itself, or a value comparison of it
    (``is``/``is not``/``in`` compare identities, not values)."""
    def is_tensor(node: ast.expr) -> bool:
        while isinstance(node, ast.Subscript):
            node = node.value
        return isinstance(node, ast.Name) and node.id in tensors

    if is_tensor(test):
        return True
    if isinstance(test, ast.Compare) and not all(isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn))
                                                 for op in test.ops):
        return any(is_tensor(side) for side in [test.left, *test.comparators])
    return False


def host_reads(source: str) -> list[Finding]:
    """Every place in ``source`` that may read a tensor's values into Python."""
    tree = ast.parse(source)
    found: list[Finding] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in READ_METHODS:
            found.append(Finding(node.lineno, ast.unparse(node)))
        elif isinstance(func, ast.Name) and func.id in CONVERSIONS and node.args and not _is_metadata(node.args[0]):
            found.append(Finding(node.lineno, ast.unparse(node)))
    for function in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
        tensors = _tensor_names(function)
        if not tensors:
            continue
        body = function.body if isinstance(function, ast.Module) else [function]
        for statement in body:
            for test in _truth_tests(statement):
                if _reads_tensor(test, tensors):
                    found.append(Finding(test.lineno, ast.unparse(test)))
    return sorted(set(found))


# -- the pack ------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", PER_STEP_MODULES)
def test_per_step_modules_read_no_device_values(module):
    findings = host_reads((RUNTIME / f"{module}.py").read_text())
    unexplained = [f for f in findings if (module, f.code) not in ALLOWED]
    assert not unexplained, f"tpu_runtime/{module}.py reads tensor values on the host: {unexplained}"


def test_every_allowed_read_still_exists():
    """An allow-list entry whose code is gone would silently allow it again later."""
    for module, code in ALLOWED:
        assert code in [f.code for f in host_reads((RUNTIME / f"{module}.py").read_text())], (module, code)


# -- the check itself ----------------------------------------------------------------------------
SEEDED = '''
import torch

def step(x: torch.Tensor, sigmas, host: HostTensor, cfg):
    a = x.item()
    b = sigmas.cpu()
    c = float(sigmas[0])
    d = int(x.sum())
    e = bool(x)
    noise = torch.randn(3)
    if x:
        pass
    while noise > 0:
        pass
    f = 1 if x[0] == 0 else 2
    g = noise and cfg
    assert not x
    return a, b, c, d, e, f, g
'''

HOST_ONLY = '''
import torch

def step(x: torch.Tensor, sigmas, host: HostTensor, cfg: float, items: list):
    rows = int(x.shape[0])
    n = int(len(items))
    dims = int(x.dim())
    k = float(1.5)
    if x is None or x is not None:
        pass
    if host[0] == 0:   # a host value: no device read
        pass
    if cfg > 1 and items:
        pass
    return rows, n, dims, k
'''


def test_the_check_finds_every_kind_of_read():
    codes = [f.code for f in host_reads(SEEDED)]
    assert codes == ["x.item()", "sigmas.cpu()", "float(sigmas[0])", "int(x.sum())", "bool(x)", "x", "noise > 0",
                     "x[0] == 0", "noise", "x"], codes


def test_the_check_passes_host_side_code():
    assert host_reads(HOST_ONLY) == []
