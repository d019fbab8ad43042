"""Triton kernel that applies a token bitmask to logits in place, for CUDA tensors.

Same contract as the torch reference in ``bitmask.py`` (a disallowed logit becomes exactly ``-inf``, an
allowed one is not written at all, ids past ``32 * words`` are disallowed, rows outside ``indices`` are never
touched), and tested bit for bit against it on CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# 4,096 tokens = 128 words per program: one coalesced 512-byte read of words, and enough independent stores
# per program to hide latency; the same block xgrammar's kernel uses.
BLOCK_TOKENS = 4096


@triton.jit
def _apply_token_bitmask_kernel(
    logits_ptr,
    bitmask_ptr,
    indices_ptr,
    logits_row_stride,
    bitmask_row_stride,
    vocab_size,
    covered,
    HAS_INDICES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per (row, block of BLOCK tokens). Only disallowed positions are stored, so an allowed
    # logit is never read or rewritten: bit-for-bit untouched by construction.
    program_row = tl.program_id(0)
    row = program_row
    if HAS_INDICES:
        row = tl.load(indices_ptr + program_row)
    row = row.to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_vocab = offsets < vocab_size
    # Ids at or past `covered` (= 32 * words) read as a zero word: disallowed, as the contract says.
    words = tl.load(bitmask_ptr + row * bitmask_row_stride + offsets // 32, mask=in_vocab & (offsets < covered), other=0)
    disallowed = ((words >> (offsets % 32)) & 1) == 0
    tl.store(logits_ptr + row * logits_row_stride + offsets, float("-inf"), mask=in_vocab & disallowed)


def apply_token_bitmask_triton(logits: torch.Tensor, bitmask: torch.Tensor, index: torch.Tensor | None) -> None:
    """Launch the kernel on validated 2-D tensors (see ``apply_token_bitmask_inplace`` for the contract).

    Args:
        logits: ``(batch, vocab)`` float tensor with contiguous rows.
        bitmask: ``(batch, words)`` int32 tensor on the same device.
        index: Rows to mask (int64, same device), or ``None`` for all rows.
    """
    bitmask = bitmask if bitmask.stride(-1) == 1 else bitmask.contiguous()
    batch, vocab_size = logits.shape
    num_rows = batch if index is None else index.numel()
    if num_rows == 0 or vocab_size == 0:
        return
    grid = (num_rows, triton.cdiv(vocab_size, BLOCK_TOKENS))
    _apply_token_bitmask_kernel[grid](
        logits,
        bitmask,
        index if index is not None else bitmask,  # a dummy pointer; never read when HAS_INDICES is False
        logits.stride(0),
        bitmask.stride(0),
        vocab_size,
        32 * bitmask.shape[1],
        HAS_INDICES=index is not None,
        BLOCK=BLOCK_TOKENS,
    )
