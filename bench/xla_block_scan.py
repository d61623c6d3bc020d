"""The torch_xla side of ``bench_block_scan.py``: each run of repeated blocks as one
``torch_xla.experimental.scan`` over the blocks' weights stacked per call (the experiment's, not the pack's).

With block programs off (the whole model one lazy graph, replayed), every kind of block that
``repeated_blocks.find_repeated_blocks`` finds (consecutive members of one ``ModuleList``) gets instance
forwards: the first member's call runs ``scan`` over all members and keeps the result, the others return
it. The scanned function is one block under ``torch.func.functional_call`` with one member's weights
(sliced by the scan from ``torch.stack`` of every member's, a copy per call, inside the graph):

* the carry is the call's tensor arguments (Flux's double block: ``img, txt, vec, pe``; single block and
  Wan's block: ``x`` and the rest), output ``k`` replacing tensor argument ``k`` (true of Flux and Wan:
  their blocks return their first one or two arguments); the rest pass through unchanged;
* non-tensor arguments (``transformer_options``, ``attn_mask=None``, Wan's ``context_img_len``) are bound
  in the function (ComfyUI reads ``block_index`` only to find per-block patches; none here).

With ``PROBE``, ``scan_layers`` itself and ``scan`` on the function above are tried on each kind's first
call and their errors recorded (:func:`probe_scan_layers`): ``scan_layers`` hands ``layer(*carry)`` the
carry and wants the same structure back, which these blocks' calls are not.

The timed rows run scan's forward loop without its autograd layer (``scan._scan_impl_pytree``, private;
``IMPLEMENTATION`` "core"): ``scan`` itself traces its function with AOTAutograd and runs
``torch.autograd.backward`` on the trace to get the backward graph (``scan.py``
``value_and_grad_partitioned``), which fails on Flux's blocks (they write their stream in place after a
layer norm saved it). Under ComfyUI's ``torch.inference_mode()`` that trace fails too ("element 0 of
tensors does not require grad"), and with inference mode off ``Scan.apply`` refuses inference tensors
("Inference tensors cannot be saved for backward"): ``scan`` runs under ``torch.inference_mode(False)`` and
``torch.no_grad()`` here (the trace turns grad on for itself). Findings: bench/RESULTS.md, "Chain against a
scan, torch_xla".
"""
from __future__ import annotations

import copy
import os
import traceback
from typing import Any

import torch


def _tensor_positions(args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """Where the call's tensors are: ``("arg", i)`` or ``("kw", name)``, in call order."""
    where = [("arg", i) for i, value in enumerate(args) if isinstance(value, torch.Tensor)]
    return where + [("kw", k) for k, value in kwargs.items() if isinstance(value, torch.Tensor)]


def _rebuild(args: tuple, kwargs: dict, where: list, tensors) -> tuple[tuple, dict]:
    args, kwargs = list(args), dict(kwargs)
    for (kind, key), tensor in zip(where, tensors):
        if kind == "arg":
            args[key] = tensor
        else:
            kwargs[key] = tensor
    return tuple(args), kwargs


def _stacked(members) -> dict[str, torch.Tensor]:
    """Every member's parameters and buffers stacked on a new leading axis (a copy, in the lazy graph)."""
    tables = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in members]
    return {name: torch.stack([table[name] for table in tables]) for name in tables[0]}


def probe_scan_layers(members, args: tuple, kwargs: dict) -> str:
    """Run ``scan_layers`` as shipped on ``members`` with the call's tensors as its one input; returns
    ``"ran"`` or the error (type, message, the innermost torch_xla frame)."""
    from torch_xla.experimental.scan_layers import scan_layers

    tensors = tuple(v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor))
    patched = [member.__dict__.pop("forward", None) for member in members]  # scan_layers deep-copies member 0
    try:
        with torch.inference_mode(False), torch.no_grad():
            scan_layers(list(members), tensors)
        return "ran"
    except Exception as exc:  # the finding: recorded, not raised
        return _describe(exc)
    finally:
        for member, forward in zip(members, patched):
            if forward is not None:
                member.forward = forward


# "core": scan's forward loop without its autograd layer (``scan._scan_impl_pytree``: the block traced
# lazily into a While body); "public": ``torch_xla.experimental.scan`` (AOTAutograd traces the block and
# its backward first); "public-detached": that, the block run on detached carries under ``no_grad`` and
# each result ``+ carry * 0`` (so AOTAutograd's backward trace sees no saved tensor that the block writes
# in place). COMFY_TPU_BENCH_SCAN picks (bench_block_scan.py's ``--scan``).
IMPLEMENTATION = os.environ.get("COMFY_TPU_BENCH_SCAN", "core")
# Try ``scan_layers`` and ``scan`` on each kind's first call (their AOTAutograd traces add seconds to the
# first run: the timed rows run without them). COMFY_TPU_BENCH_SCAN_PROBE=1 (``--probe``).
PROBE = os.environ.get("COMFY_TPU_BENCH_SCAN_PROBE") == "1"


def _public_scan(block, carry, members):
    from torch_xla.experimental.scan import scan

    with torch.inference_mode(False), torch.no_grad():
        return scan(block, carry, _stacked(members))[0]


def _core_scan(block, carry, members):
    from torch_xla.experimental.scan import _scan_impl_pytree

    return _scan_impl_pytree(block, carry, _stacked(members))[0]  # runs in ComfyUI's inference mode


def _probe(run) -> str:
    """``"ran"`` or the error of ``run()`` (type, first line, the innermost torch_xla frame and the innermost
    frame outside torch: the model's line)."""
    try:
        run()
        return "ran"
    except Exception as exc:  # the finding: recorded, not raised
        return _describe(exc)


def _describe(exc: Exception) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    xla = [f for f in frames if "torch_xla" in f.filename]
    where = f" at {xla[-1].filename.split('site-packages/')[-1]}:{xla[-1].lineno}" if xla else ""
    first = (str(exc).splitlines() or [""])[0][:300]
    source = f" ({xla[-1].line})" if xla and not first else ""
    return f"{type(exc).__name__}: {first}{where}{source}"


class ScannedRun:
    """One kind's members as one ``scan`` per model call (see the module docstring)."""

    def __init__(self, members, figures: dict) -> None:
        self.members = list(members)
        self.template = copy.deepcopy(self.members[0])  # the class's forward (no instance patch); weights replaced
        self.figures = figures
        self.result: Any = None
        self.probed = False
        for index, member in enumerate(self.members):
            member.forward = self._first if index == 0 else self._later(index)

    def _first(self, *args, **kwargs):
        try:
            return self._scan(args, kwargs)
        except Exception:  # the replay retries the call lazily: keep what failed in the row's figures
            self.figures.setdefault("errors", []).append(traceback.format_exc()[-1500:])
            raise

    def _scan(self, args: tuple, kwargs: dict):
        where = _tensor_positions(args, kwargs)
        carry = tuple((args[key] if kind == "arg" else kwargs[key]) for kind, key in where)
        shape: dict[str, Any] = {}

        def block(carry, weights):
            if IMPLEMENTATION == "public-detached":
                with torch.no_grad():
                    new, _ = block_on([c.detach() for c in carry], weights)
                return tuple(v + c * 0 for v, c in zip(new, carry)), None
            return block_on(carry, weights)

        def block_on(carry, weights):
            call_args, call_kwargs = _rebuild(args, kwargs, where, carry)
            out = torch.func.functional_call(self.template, weights, call_args, call_kwargs, strict=True)
            outs = out if isinstance(out, tuple) else (out,)
            shape["tuple"], shape["count"] = isinstance(out, tuple), len(outs)
            new = list(carry)
            for k, value in enumerate(outs):
                if value.shape != carry[k].shape:
                    raise ValueError(f"output {k} {tuple(value.shape)} is not tensor argument {k}'s shape")
                new[k] = value
            return tuple(new), None

        if PROBE and not self.probed:
            self.probed = True
            name = type(self.template).__name__
            self.figures.setdefault("scan_layers", {})[name] = probe_scan_layers(self.members, args, kwargs)
            self.figures.setdefault("scan", {})[name] = _probe(lambda: _public_scan(block, carry, self.members))
        if IMPLEMENTATION.startswith("public"):  # its results are no inference tensors: a view of one in ComfyUI's
            # inference mode fails ("Cannot set version_counter for inference tensor"); a copy in it is one
            final = tuple(v.clone() for v in _public_scan(block, carry, self.members))
        else:
            final = _core_scan(block, carry, self.members)
        outs = final[:shape["count"]]
        self.result = outs if shape["tuple"] else outs[0]
        self.figures["scan_calls"] = self.figures.get("scan_calls", 0) + 1
        return self.result

    def _later(self, index: int):
        def forward(*args, **kwargs):
            result = self.result
            if index == len(self.members) - 1:
                self.result = None
            return result
        return forward


def install(diffusion_model: torch.nn.Module, figures: dict) -> list[ScannedRun]:
    """A :class:`ScannedRun` for every run of consecutive alike members of one ``ModuleList``."""
    from tpu_runtime.execution.repeated_blocks import find_repeated_blocks

    runs = []
    for group in find_repeated_blocks(diffusion_model):
        if list(group.indices) != list(range(group.indices[0], group.indices[-1] + 1)):
            continue
        runs.append(ScannedRun(group.members, figures))
        figures.setdefault("kinds", []).append(f"{group.kind} x{len(group.members)}")
    return runs


def inplace_check() -> None:
    """Flux's single block under the public ``scan`` as ComfyUI writes it, then with its one in-place add
    (``x += apply_mod(...)``) written out of place in this process: the error is that write.

        PJRT_DEVICE=CPU .venv/bin/python bench/xla_block_scan.py
    """
    import inspect
    import sys
    import textwrap

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.comfy_host import import_comfy_core

    import_comfy_core()
    import comfy.ldm.flux.layers as layers
    import torch_xla
    from torch_xla.experimental.scan import scan

    from bench import tiny_zoo

    model = tiny_zoo.build_model("flux", overrides={"depth": 2, "depth_single_blocks": 2}).diffusion_model
    device = torch_xla.device()
    blocks = [block.to(device) for block in model.single_blocks]
    x, vec = torch.randn(1, 32, 64, device=device), torch.randn(1, 64, device=device)
    pe = model.pe_embedder(torch.zeros(1, 32, 3)).to(device)
    names = [name for name, _ in blocks[0].named_parameters()]
    weights = {n: torch.stack([dict(b.named_parameters())[n] for b in blocks]) for n in names}

    def run() -> torch.Tensor:
        def step(carry, w):
            out = torch.func.functional_call(blocks[0], w, (carry[0],), {"vec": carry[1], "pe": carry[2]})
            return (out, carry[1], carry[2]), None

        with torch.no_grad():
            final = scan(step, (x, vec, pe), weights)[0][0]
        torch_xla.sync()
        return final

    print("as ComfyUI writes it:", _probe(run))
    source = textwrap.dedent(inspect.getsource(layers.SingleStreamBlock.forward))
    assert source.count("x += apply_mod(") == 1, "ComfyUI's SingleStreamBlock changed"
    scope: dict = {}
    exec(source.replace("x += apply_mod(", "x = x + apply_mod("), layers.__dict__, scope)
    layers.SingleStreamBlock.forward = scope["forward"]
    loop = x
    with torch.no_grad():
        for block in blocks:
            loop = block(loop, vec=vec, pe=pe)
    print("x += written x = x + ...: ran, max |scan - loop|", (run() - loop).abs().max().item())


if __name__ == "__main__":
    inplace_check()
