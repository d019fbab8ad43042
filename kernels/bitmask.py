"""Token bitmasks: allocate them and apply them to logits in place.

The format is the field's (xgrammar, llguidance): int32 words of shape ``(batch, ceil(V / 32))``, bit
``t % 32`` of word ``t // 32`` set means token ``t`` is allowed. Invariant kept by every backend: after
``apply_token_bitmask_inplace`` a disallowed logit is exactly ``-inf`` (even if it was NaN or ``+inf``), an
allowed logit is bit-for-bit what it was, and rows outside ``indices`` are untouched. The torch reference
(``backend="torch"``) is the oracle the native CPU kernel (``bitmask_cpu.py``), its eager torch fallback and
the Triton kernel (``bitmask_triton.py``) are tested against.

Widths that differ (padded vocabularies):
    * logits wider than ``32 * bitmask.shape[1]``: the ids past the mask are disallowed (set to ``-inf``);
      a model's padding ids are never sampled, because the mask does not mention them.
    * logits narrower than ``32 * bitmask.shape[1]``: the extra bits are ignored.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Literal

import torch

from .bitmask_cpu import apply_token_bitmask_native, native_kernel

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "cpu", "triton"]

BITS_PER_WORD = 32

# Bit patterns of -inf per float dtype, as the signed integer of the same width (two's complement).
_NEG_INF_BITS: dict[torch.dtype, tuple[torch.dtype, int]] = {
    torch.float32: (torch.int32, -0x00800000),  # 0xFF800000
    torch.float16: (torch.int16, -0x0400),  # 0xFC00
    torch.bfloat16: (torch.int16, -0x0080),  # 0xFF80
    torch.float64: (torch.int64, -0x0010000000000000),  # 0xFFF0000000000000
}


def bitmask_words(vocab_size: int) -> int:
    """Number of int32 words that hold one row of a token bitmask for ``vocab_size`` tokens."""
    return (vocab_size + BITS_PER_WORD - 1) // BITS_PER_WORD


def allocate_token_bitmask(batch: int, vocab_size: int) -> torch.Tensor:
    """Allocate a token bitmask with every token allowed.

    Args:
        batch: Number of rows (sequences in the batch).
        vocab_size: Number of tokens a row covers (the model's vocabulary, padding included).

    Returns:
        An int32 CPU tensor of shape ``(batch, ceil(vocab_size / 32))`` filled with ``-1`` (all bits set). It
        lives in pinned host memory when CUDA is available, so ``.to("cuda", non_blocking=True)`` is a true
        asynchronous copy.

    Raises:
        ValueError: If ``batch`` or ``vocab_size`` is not positive.
    """
    if batch <= 0:
        raise ValueError(f"allocate_token_bitmask: batch must be positive, got {batch}")
    if vocab_size <= 0:
        raise ValueError(f"allocate_token_bitmask: vocab_size must be positive, got {vocab_size}")
    shape = (batch, bitmask_words(vocab_size))
    if torch.cuda.is_available():
        try:
            return torch.full(shape, -1, dtype=torch.int32, pin_memory=True)
        except RuntimeError as err:  # pinning can fail under memory limits; pageable memory still works
            logger.warning("allocate_token_bitmask: cannot pin host memory (%s); using pageable memory", err)
    return torch.full(shape, -1, dtype=torch.int32)


def unpack_token_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Expand a token bitmask into a bool mask (True = allowed).

    Args:
        bitmask: int32 tensor of shape ``(batch, words)`` or ``(words,)``.
        vocab_size: Width of the result; ids at or past ``32 * words`` come out disallowed.

    Returns:
        A bool tensor of shape ``(batch, vocab_size)`` (or ``(vocab_size,)`` for a 1-D bitmask).

    Raises:
        ValueError: If ``bitmask`` is not int32.
    """
    if bitmask.dtype != torch.int32:
        raise ValueError(f"unpack_token_bitmask: bitmask must be int32, got {bitmask.dtype}")
    shifts = torch.arange(BITS_PER_WORD, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().flatten(-2)
    covered = allowed.shape[-1]
    if vocab_size <= covered:
        return allowed[..., :vocab_size]
    padding = allowed.new_zeros((*allowed.shape[:-1], vocab_size - covered))
    return torch.cat([allowed, padding], dim=-1)


def _check_and_normalize(
    logits: torch.Tensor, bitmask: torch.Tensor, indices: Sequence[int] | torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if logits.dim() not in (1, 2):
        raise ValueError(f"apply_token_bitmask_inplace: logits must be 1-D or 2-D, got shape {tuple(logits.shape)}")
    if bitmask.dim() not in (1, 2):
        raise ValueError(
            f"apply_token_bitmask_inplace: bitmask must be 1-D or 2-D, got shape {tuple(bitmask.shape)}"
        )
    if bitmask.dtype != torch.int32:
        raise ValueError(
            f"apply_token_bitmask_inplace: bitmask must be int32 (see allocate_token_bitmask), got {bitmask.dtype}"
        )
    if logits.dtype not in _NEG_INF_BITS:
        raise ValueError(
            f"apply_token_bitmask_inplace: logits dtype {logits.dtype} unsupported; "
            f"use one of {sorted(str(d) for d in _NEG_INF_BITS)}"
        )
    if bitmask.device != logits.device:
        raise ValueError(
            f"apply_token_bitmask_inplace: bitmask is on {bitmask.device} but logits on {logits.device}; "
            "copy it first with bitmask.to(logits.device, non_blocking=True)"
        )
    logits2 = logits.unsqueeze(0) if logits.dim() == 1 else logits
    bitmask2 = bitmask.unsqueeze(0) if bitmask.dim() == 1 else bitmask
    if logits2.stride(-1) != 1:
        raise ValueError(
            "apply_token_bitmask_inplace: logits rows must be contiguous (stride 1 along the vocabulary); "
            "rows may be strided, columns may not"
        )
    if indices is None:
        if bitmask2.shape[0] != logits2.shape[0]:
            raise ValueError(
                f"apply_token_bitmask_inplace: bitmask has {bitmask2.shape[0]} rows but logits "
                f"{logits2.shape[0]}; pass indices= to mask a subset of rows"
            )
        return logits2, bitmask2, None
    index = torch.as_tensor(indices, dtype=torch.long).to(logits.device).flatten()
    num_rows = min(logits2.shape[0], bitmask2.shape[0])
    # Bounds are checked on the host only when indices came from the host, so device indices never sync.
    if not isinstance(indices, torch.Tensor) or indices.device.type == "cpu":
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_rows):
            raise ValueError(
                f"apply_token_bitmask_inplace: indices must lie in [0, {num_rows}) "
                f"(rows of both logits and bitmask), got {index.tolist()}"
            )
    return logits2, bitmask2, index


def _apply_torch(logits: torch.Tensor, bitmask: torch.Tensor, index: torch.Tensor | None) -> None:
    """Reference: unpack to bool, then torch.where. Simple and obviously right; the oracle for the rest."""
    vocab_size = logits.shape[1]
    rows = logits if index is None else logits.index_select(0, index)
    words = bitmask if index is None else bitmask.index_select(0, index)
    allowed = unpack_token_bitmask(words, vocab_size)
    masked = torch.where(allowed, rows, torch.tensor(float("-inf"), dtype=rows.dtype, device=rows.device))
    if index is None:
        logits.copy_(masked)
    else:
        logits.index_copy_(0, index, masked)


# Byte -> 8 "keep" lanes (all ones = allowed, zero = disallowed), one table per integer width. Indexed by the
# bytes of the little-endian int32 words, so byte j of word w holds tokens 32 w + 8 j .. 32 w + 8 j + 7.
_KEEP_TABLES: dict[torch.dtype, torch.Tensor] = {}


def _keep_table(int_dtype: torch.dtype) -> torch.Tensor:
    table = _KEEP_TABLES.get(int_dtype)
    if table is None:
        bits = (torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1
        table = (-bits).to(int_dtype).contiguous()
        _KEEP_TABLES[int_dtype] = table
    return table


def _apply_eager_bits(rows: torch.Tensor, words: torch.Tensor) -> None:
    """Without the native kernel: x = ((x ^ NEG_INF) & keep) ^ NEG_INF on the integer view, keep from a byte table.

    Exact for every input (NaN and +inf included) and made of vectorized integer ops only; torch.where on a
    random bool mask is ~15x slower on CPU (47 us vs 3 us per 49,152 logits, measured in this repo's venv).
    ``rows`` is (batch, 32 * words.shape[1]) with contiguous rows; ``words`` is (batch, words).
    """
    int_dtype, neg_inf = _NEG_INF_BITS[rows.dtype]
    keep = _keep_table(int_dtype).index_select(0, words.contiguous().view(torch.uint8).flatten().int())
    bits = rows.view(int_dtype)
    bits.bitwise_xor_(neg_inf).bitwise_and_(keep.view(bits.shape)).bitwise_xor_(neg_inf)


def _apply_cpu(logits: torch.Tensor, bitmask: torch.Tensor, index: torch.Tensor | None) -> None:
    """Fast CPU path: the native kernel, or vectorized torch bit tricks where no C compiler is available."""
    library = native_kernel()
    if library is not None:
        apply_token_bitmask_native(library, logits, bitmask, index)
        return
    if index is not None:
        rows = logits.index_select(0, index)
        _apply_cpu_eager(rows, bitmask.index_select(0, index))
        logits.index_copy_(0, index, rows)
    else:
        _apply_cpu_eager(logits, bitmask)


def _apply_cpu_eager(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    vocab_size = logits.shape[1]
    covered = min(vocab_size, BITS_PER_WORD * bitmask.shape[1])
    num_full_words = covered // BITS_PER_WORD
    full = num_full_words * BITS_PER_WORD
    if num_full_words:
        body = logits[:, :full]
        words = bitmask[:, :num_full_words]
        if body.is_contiguous():
            _apply_eager_bits(body, words)
        else:
            contiguous = body.contiguous()
            _apply_eager_bits(contiguous, words)
            body.copy_(contiguous)
    if covered > full:  # a partial last word: at most 31 tokens, the reference is cheap enough
        _apply_torch(logits[:, full:covered], bitmask[:, num_full_words : num_full_words + 1], None)
    if vocab_size > covered:  # padded vocabulary: ids the mask does not mention are disallowed
        logits[:, covered:] = float("-inf")


def apply_token_bitmask_inplace(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    indices: Sequence[int] | torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> None:
    """Set the logits of disallowed tokens to ``-inf``, in place.

    Args:
        logits: Float tensor ``(batch, vocab)`` or ``(vocab,)`` (float32, bfloat16, float16 or float64). Rows
            may be strided (a slice of a larger buffer); each row must be contiguous.
        bitmask: int32 tensor ``(batch, words)`` or ``(words,)`` on the same device; bit ``t % 32`` of word
            ``t // 32`` set = token ``t`` allowed. If ``32 * words < vocab`` the ids past the mask are
            disallowed; if larger, the extra bits are ignored.
        indices: Rows to mask (an index into both ``logits`` and ``bitmask``, like xgrammar's); the other rows
            are left untouched. ``None`` masks every row, and then both must have the same number of rows.
        backend: ``"auto"`` picks ``"triton"`` for CUDA tensors and ``"cpu"`` for CPU tensors. ``"torch"`` is
            the vectorized reference (any device); ``"cpu"`` the native C kernel of ``bitmask_cpu.py`` (or,
            where no C compiler is available, vectorized torch bit tricks, after one logged warning);
            ``"triton"`` the Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    Raises:
        ValueError: On a dtype, shape, device or index the function cannot honour, or an unknown backend.
    """
    logits2, bitmask2, index = _check_and_normalize(logits, bitmask, indices)
    if backend == "auto":
        backend = "triton" if logits.device.type == "cuda" else "cpu"
    if backend == "torch":
        _apply_torch(logits2, bitmask2, index)
    elif backend == "cpu":
        if logits.device.type != "cpu":
            raise ValueError(f"apply_token_bitmask_inplace: backend 'cpu' needs CPU tensors, got {logits.device}")
        _apply_cpu(logits2, bitmask2, index)
    elif backend == "triton":
        from .bitmask_triton import apply_token_bitmask_triton  # triton is optional; import only when used

        apply_token_bitmask_triton(logits2, bitmask2, index)
    else:
        raise ValueError(
            f"apply_token_bitmask_inplace: unknown backend {backend!r}; use 'auto', 'torch', 'cpu' or 'triton'"
        )


if sys.byteorder != "little":  # the byte table above reads int32 words byte by byte
    raise ImportError("strictcall.kernels.bitmask assumes a little-endian host")
