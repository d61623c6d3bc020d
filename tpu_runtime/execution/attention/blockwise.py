"""Memory-bounded attention: query blocks, and for each an online softmax over key/value blocks.

Why: XLA compiles attention as written, so SDPA's ``q @ k^T`` becomes a ``heads x tokens x tokens``
buffer (Wan 2.1 720p: 75,600² x 2 B = 11.4 GB for one head). Here the largest intermediate is one
block's scores, ``batch x heads x block_q x block_k`` in fp32, whatever the length. Both loops are
``scan``s handed in by the caller (torch_xla's While loop, ``jax.lax.scan`` under torchax, a Python
loop eagerly), so the program holds the block body once, not once per block.

A scan here is ``scan(fn, carry, xs) -> (carry, ys)``: ``fn(carry, x) -> (carry, y)`` runs over the
leading dimension of every tensor in the tuple ``xs``; ``ys`` stacks the ``y`` tuples.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from tpu_runtime.execution.attention.layout import HeadsCall

Scan = Callable[..., tuple]
#: ``a @ b`` over the last two dims of 4-d tensors, the first two (batch, heads) batch dims.
MatMul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: What one block's fp32 scores may take (bytes): well under the 256 MiB any intermediate may hold.
SCORE_BLOCK_BYTES = 64 << 20
#: Key block length; query blocks shrink from MAX_BLOCK_Q to fit SCORE_BLOCK_BYTES.
BLOCK_K = 1024
MAX_BLOCK_Q = 1024
MIN_BLOCK = 8
#: Added to the scores of padded keys (finite: a row of only padded keys never occurs).
PAD_SCORE = -1e30


class Blocks(NamedTuple):
    """Block lengths and the padded lengths they divide."""

    block_q: int
    block_k: int
    q_padded: int
    k_padded: int


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pow2_floor(n: int) -> int:
    return 1 << max(n, 1).bit_length() - 1


def block_sizes(batch: int, heads: int, q_tokens: int, k_tokens: int) -> Blocks:
    """Blocks whose fp32 scores fit SCORE_BLOCK_BYTES; short sequences are one block (rounded to 8)."""
    block_k = min(BLOCK_K, _round_up(k_tokens, MIN_BLOCK))
    fit = SCORE_BLOCK_BYTES // max(batch * heads * block_k * 4, 1)
    block_q = min(MAX_BLOCK_Q, max(MIN_BLOCK, _pow2_floor(fit)), _round_up(q_tokens, MIN_BLOCK))
    return Blocks(block_q, block_k, _round_up(q_tokens, block_q), _round_up(k_tokens, block_k))


def python_scan(fn: Callable, carry: tuple, xs: tuple) -> tuple:
    """The scan as a Python loop (eager tensors: the reference the device loops are checked against)."""
    ys = []
    for i in range(xs[0].shape[0]):
        carry, y = fn(carry, tuple(x[i] for x in xs))
        ys.append(y)
    return carry, tuple(torch.stack(parts) for parts in zip(*ys))


def _pad(t: torch.Tensor, dim: int, length: int, value: float = 0.0) -> torch.Tensor:
    extra = length - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, torch.full(shape, value, dtype=t.dtype, device=t.device)], dim=dim)


def _bias(call: HeadsCall, blocks: Blocks) -> torch.Tensor:
    """The mask as fp32 scores to add, padded to the blocks (padded keys get PAD_SCORE); ``(1, 1, 1, 1)``
    zeros when there is neither mask nor padding. Its q and k extents are 1 or the padded lengths."""
    k_tokens = call.k.shape[2]
    mask = call.mask
    if mask is None:
        if blocks.k_padded == k_tokens:
            return torch.zeros((1, 1, 1, 1), dtype=torch.float32, device=call.q.device)
        mask = torch.zeros((1, 1, 1, k_tokens), dtype=torch.float32, device=call.q.device)
    mask = mask.float()
    if mask.shape[3] == 1 and blocks.k_padded != k_tokens:
        mask = mask.expand(*mask.shape[:3], k_tokens)
    if mask.shape[3] > 1:
        mask = _pad(mask, 3, blocks.k_padded, PAD_SCORE)
    if mask.shape[2] > 1:
        mask = _pad(mask, 2, blocks.q_padded)
    return mask


def _to_blocks(t: torch.Tensor, dim: int, block: int) -> torch.Tensor:
    """``t`` split along ``dim`` into blocks of ``block``, the block index moved to the front."""
    shape = list(t.shape)
    t = t.reshape(*shape[:dim], shape[dim] // block, block, *shape[dim + 1:])
    return t.movedim(dim, 0)


def attention(call: HeadsCall, scan: Scan = python_scan, matmul: MatMul = torch.matmul) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` in ``(batch, heads, q_tokens, dim)``, in q's dtype, computed
    block by block in fp32: bf16 blocks are upcast for both products (with bf16 scores the error
    against ComfyUI's attention was 5.3e-3 at 300 tokens, measured; upcast, 1.4e-3, as SDPA's own bf16).
    ``matmul``: the two products (torch_xla under SPMD hands one that keeps batch and heads apart)."""
    q, k, v = call.q, call.k, call.v
    batch, heads, q_tokens, dim = q.shape
    blocks = block_sizes(batch, heads, q_tokens, k.shape[2])
    bias = _bias(call, blocks)
    q_blocks = _to_blocks(_pad(q, 2, blocks.q_padded), 2, blocks.block_q)
    k_blocks = _to_blocks(_pad(k, 2, blocks.k_padded), 2, blocks.block_k)
    v_blocks = _to_blocks(_pad(v, 2, blocks.k_padded), 2, blocks.block_k)
    bias_per_q = bias.shape[2] > 1
    bias_per_k = bias.shape[3] > 1
    block_q, scale = blocks.block_q, call.scale

    def one_query_block(carry: tuple, x: tuple) -> tuple:
        k_all, v_all, *shared_bias = carry
        q_block, *q_bias = x
        bias_q = q_bias[0] if bias_per_q else shared_bias[0]
        stats = (torch.full((batch, heads, block_q, 1), PAD_SCORE, dtype=torch.float32, device=q_block.device),
                 torch.zeros((batch, heads, block_q, 1), dtype=torch.float32, device=q_block.device),
                 torch.zeros((batch, heads, block_q, dim), dtype=torch.float32, device=q_block.device))

        def one_key_block(state: tuple, kv: tuple) -> tuple:
            running_max, total, acc, q_block, *fixed_bias = state
            k_block, v_block, *k_bias = kv
            scores = matmul(q_block.float(), k_block.float().transpose(-1, -2)) * scale
            scores = scores + (k_bias[0] if bias_per_k else fixed_bias[0])
            new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
            weights = torch.exp(scores - new_max)
            correction = torch.exp(running_max - new_max)
            total = total * correction + weights.sum(dim=-1, keepdim=True)
            acc = acc * correction + matmul(weights, v_block.float())
            return (new_max, total, acc, q_block, *fixed_bias), (torch.zeros((), device=q_block.device),)

        kv_xs = (k_all, v_all) + ((_to_blocks(bias_q, 3, blocks.block_k),) if bias_per_k else ())
        (_, total, acc, *_), _ = scan(one_key_block, stats + (q_block,) + (() if bias_per_k else (bias_q,)), kv_xs)
        return carry, ((acc / total).to(q_block.dtype),)

    q_xs = (q_blocks,) + ((_to_blocks(bias, 2, block_q),) if bias_per_q else ())
    # Every tensor a loop body reads comes in through its carry or xs, none from the enclosing scope:
    # torch_xla's replayed programs then got wrong results (SD1.5, 0.088 off eager; through the carry
    # 7.6e-5, as lazy execution). Its scan copies carried tensors (``x * 1``, in f32 for bf16), which
    # the lowered module shows and XLA's simplifier removes.
    carry = (k_blocks, v_blocks) + (() if bias_per_q else (bias,))
    _, (out,) = scan(one_query_block, carry, q_xs)
    out = out.movedim(0, 2).reshape(batch, heads, blocks.q_padded, dim)
    return out[:, :, :q_tokens]
