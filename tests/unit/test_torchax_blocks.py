"""The torchax block chain's cut (``backends/torchax_blocks.py``) on a plain JAX function: a jaxpr cut at
its block functions' ``jit`` calls computes what the whole function computes, equal glue between blocks
is one program, each value is dropped after its last reader, and a function without block calls is
left whole (``execution/block_functions.py``)."""
from __future__ import annotations

import contextlib

import pytest
import torch

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from tpu_runtime.backends.torchax_blocks import BLOCK_NAME, ChainPrograms, JaxChain, make_chain  # noqa: E402
from tpu_runtime.execution.block_functions import FunctionBlockPrograms  # noqa: E402


def _block():
    def block(xs):
        return [jnp.tanh(xs[0] @ xs[1]) + xs[0]]

    block.__name__ = f"{BLOCK_NAME}_1"
    return jax.jit(block)


def _model(block):
    def model(arrays):
        x, weights = arrays[0] + 1.0, arrays[1:]
        unused = x * 3.0  # computed, read by nothing
        for weight in weights:
            x = block([x, weight])[0]
            x = x * 0.5  # the same glue between every two blocks
        return [x.sum(), unused.shape[0] * x]

    return model


def _arrays(depth: int):
    key = jax.random.PRNGKey(0)
    return [jnp.ones((2, 4))] + [jax.random.normal(jax.random.fold_in(key, i), (4, 4)) for i in range(depth)]


def test_the_chain_computes_what_the_whole_function_computes_with_equal_glue_shared():
    programs = ChainPrograms()
    model, arrays = _model(_block()), _arrays(5)
    chain = make_chain(model, arrays, contextlib.nullcontext(), programs)
    assert isinstance(chain, JaxChain) and chain.block_steps == 5
    for got, want in zip(chain(arrays), jax.jit(model)(arrays)):
        assert jnp.allclose(got, want, atol=1e-6)
    # The first glue (``+ 1``), the four equal ``* 0.5`` glues between blocks as one, the tail (the last
    # ``* 0.5`` and the outputs).
    assert len(programs.glue) == 3, programs.glue.keys()
    assert len(programs.blocks) == 1  # one block program for five calls of one block function
    # Every step reads something for the last time (the value before it): it is dropped after the step.
    assert all(last_reads for _, _, _, last_reads in chain._steps), chain._steps


def test_a_function_without_block_calls_is_left_whole():
    programs = FunctionBlockPrograms(torch.nn.Module(), backend=None, model_name="m", own_wrappers="w")
    assert programs._make_chain(lambda arrays: [arrays[0] * 2.0], [jnp.ones(3)]) is None
    run = programs.chain(lambda arrays: [arrays[0] * 2.0])
    assert jnp.allclose(run([jnp.ones(3)])[0], 2.0)  # compiled whole
    assert programs.figures()["block_chains_whole"] == 2 and programs.figures()["block_chains"] == 0
