"""Fused mask + temperature + sample in one pass over the logits (Triton, for CUDA tensors).

For the common case (temperature only: no top-k/top-p/min-p, no penalties, no logprobs) the separate
mask -> softmax -> cumsum -> search steps read the logits four times; this kernel reads them once. It draws
by the Gumbel-max trick: ``argmax(logit / T + Gumbel noise)`` is an exact sample from ``softmax(logit / T)``,
and the noise for token ``t`` comes from Philox keyed by the row's seed and step, so a seeded request draws
the same tokens alone or in any batch. Invariant kept: a token whose bit is 0 (or past the mask) has score
``-inf`` and is never returned; temperature 0 returns the argmax of the masked logits (lowest id on ties);
a row with every token masked returns ``-1``. Tested on CPU under ``TRITON_INTERPRET=1``.

The noise differs from the torch path's inverse-CDF draw, so the two agree in distribution, not token by
token; greedy rows agree exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_TOKENS = 1024

# Odd 64-bit constant (2^64 / golden ratio) that spreads consecutive steps of one seed far apart in Philox's key.
_STEP_MIX = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64


@triton.jit
def _fused_mask_sample_kernel(
    logits_ptr,
    bitmask_ptr,
    inv_temperature_ptr,
    noise_seed_ptr,
    out_ptr,
    logits_row_stride,
    bitmask_row_stride,
    vocab_size,
    covered,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    inv_temperature = tl.load(inv_temperature_ptr + row)  # 0 marks a greedy row
    is_greedy = inv_temperature == 0.0
    scale = tl.where(is_greedy, 1.0, inv_temperature)
    seed = tl.load(noise_seed_ptr + row)
    best_score = tl.full([BLOCK], float("-inf"), tl.float32)
    best_index = tl.full([BLOCK], -1, tl.int32)
    for start in range(0, vocab_size, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        in_vocab = offsets < vocab_size
        words = tl.load(bitmask_ptr + row * bitmask_row_stride + offsets // 32, mask=in_vocab & (offsets < covered), other=0)
        allowed = ((words >> (offsets % 32)) & 1) == 1
        logits = tl.load(logits_ptr + row * logits_row_stride + offsets, mask=in_vocab, other=0.0).to(tl.float32)
        uniform = tl.rand(seed, offsets)
        gumbel = -tl.log(-tl.log(uniform))
        score = logits * scale + tl.where(is_greedy, 0.0, gumbel)
        score = tl.where(allowed & in_vocab & (score == score), score, float("-inf"))  # NaN never wins
        # Strictly greater: the earliest block keeps ties, so greedy picks the lowest id like torch.argmax.
        better = score > best_score
        best_score = tl.where(better, score, best_score)
        best_index = tl.where(better, offsets, best_index)
    top = tl.max(best_score, axis=0)
    candidates = tl.where((best_score == top) & (best_index >= 0), best_index, 2147483647)
    token = tl.min(candidates, axis=0)
    token = tl.where(top == float("-inf"), -1, token)
    tl.store(out_ptr + row, token.to(tl.int64))


def fused_mask_sample_triton(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
) -> torch.Tensor:
    """Mask, scale by temperature and draw one token per row, in one pass.

    Args:
        logits: ``(batch, vocab)`` float logits with contiguous rows (not modified).
        bitmask: ``(batch, words)`` int32 token bitmask on the same device (ids past ``32 * words`` disallowed).
        temperature: ``(batch,)`` float, 0 for greedy rows.
        seed: ``(batch,)`` int64 per-request seeds.
        step: ``(batch,)`` int64 index of the token being drawn in each request (0, 1, 2, ...), so every step
            gets fresh noise while a request stays reproducible.

    Returns:
        ``(batch,)`` int64 token ids (``-1`` where every token is masked).

    Raises:
        ValueError: On shapes or dtypes the kernel cannot take.
    """
    if logits.dim() != 2 or bitmask.dim() != 2 or bitmask.shape[0] != logits.shape[0]:
        raise ValueError(
            f"fused_mask_sample_triton: need logits (batch, vocab) and bitmask (batch, words), "
            f"got {tuple(logits.shape)} and {tuple(bitmask.shape)}"
        )
    if bitmask.dtype != torch.int32:
        raise ValueError(f"fused_mask_sample_triton: bitmask must be int32, got {bitmask.dtype}")
    if logits.stride(-1) != 1 or bitmask.stride(-1) != 1:
        raise ValueError("fused_mask_sample_triton: logits and bitmask rows must be contiguous")
    batch = logits.shape[0]
    for name, tensor in (("temperature", temperature), ("seed", seed), ("step", step)):
        if tensor.shape != (batch,):
            raise ValueError(f"fused_mask_sample_triton: {name} must have shape ({batch},), got {tuple(tensor.shape)}")
    inv_temperature = torch.where(temperature > 0, 1.0 / temperature.float(), 0.0).contiguous()
    # Wrapping int64 arithmetic; keeps the key positive, as Philox's seed argument expects.
    noise_seed = ((seed.long() * _STEP_MIX + step.long()) & 0x7FFF_FFFF_FFFF_FFFF).contiguous()
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return out
    _fused_mask_sample_kernel[(batch,)](
        logits,
        bitmask,
        inv_temperature,
        noise_seed,
        out,
        logits.stride(0),
        bitmask.stride(0),
        logits.shape[1],
        32 * bitmask.shape[1],
        BLOCK=BLOCK_TOKENS,
    )
    return out
