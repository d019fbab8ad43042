"""Native CPU kernel that applies a token bitmask to logits in place: 30 lines of C, built on first use.

Same contract as the torch reference in ``bitmask.py``, checked bit for bit against it in the tests: a
disallowed logit becomes exactly ``-inf``, an allowed one keeps its bits, ids past ``32 * words`` are
disallowed, rows outside ``indices`` are never touched. It works on the logits' integer view (16, 32 or
64 bits), so NaN payloads and signed zeros survive and no float rounding can creep in.

Why C and not torch: one branch-free pass per word, auto-vectorized by the compiler (AVX2 variable shifts),
beats any sequence of eager torch ops (each a full pass over memory) and the fixed ~20 us of a
``torch.compile``d call (ours, since removed, or llguidance's). Measured on this repo's 2-core EPYC, fp32,
density 50%, kernel alone (``python benchmarks/mask_apply.py --backends`` for the whole call): (1, 49152)
3 us vs 20 us for a torch.compile'd fused kernel; (32, 49152) 75 us vs 101 us; without ``-march=native``
the variable shifts do not vectorize and (1, 49152) takes 49 us. Words that allow everything are skipped, which real grammar masks (long runs of
allowed ids) hit often.

Building: ``native.build_library`` with ``-O3 -march=native``, once per machine. Without a compiler
``native_kernel()`` returns None and ``bitmask.py`` uses its eager torch path, logging why.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import torch

from .native import build_library

logger = logging.getLogger(__name__)

_SOURCE = r"""
#include <stdint.h>
/* Rows `rows[0..num_rows)` (or 0..num_rows when rows is NULL) of `logits`, as unsigned integers of the float
   width: a disallowed lane becomes neg_inf's bits, an allowed lane is rewritten with its own bits. */
#define DEFINE_MASK(NAME, T)                                                                              \
void NAME(T *logits, int64_t logits_row_stride, const uint32_t *bitmask, int64_t bitmask_row_stride,      \
          const int64_t *rows, int64_t num_rows, int64_t vocab_size, int64_t covered, T neg_inf) {        \
    for (int64_t r = 0; r < num_rows; ++r) {                                                              \
        int64_t row = rows ? rows[r] : r;                                                                 \
        T *x = logits + row * logits_row_stride;                                                          \
        const uint32_t *words = bitmask + row * bitmask_row_stride;                                       \
        int64_t num_full_words = covered / 32;                                                            \
        for (int64_t i = 0; i < num_full_words; ++i) {                                                    \
            uint32_t word = words[i];                                                                     \
            if (word == 0xFFFFFFFFu) continue; /* all 32 allowed: nothing to write */                     \
            T *lanes = x + i * 32;                                                                        \
            for (int j = 0; j < 32; ++j) { /* branch-free, so it vectorizes */                            \
                T keep = (T)0 - (T)((word >> j) & 1u);                                                    \
                lanes[j] = (T)((lanes[j] & keep) | (neg_inf & (T)~keep));                                 \
            }                                                                                             \
        }                                                                                                 \
        for (int64_t t = num_full_words * 32; t < covered; ++t) /* a partial last word */                 \
            if (!((words[t / 32] >> (t % 32)) & 1u)) x[t] = neg_inf;                                      \
        for (int64_t t = covered; t < vocab_size; ++t) x[t] = neg_inf; /* ids past the mask */            \
    }                                                                                                     \
}
DEFINE_MASK(strictcall_mask_u16, uint16_t)
DEFINE_MASK(strictcall_mask_u32, uint32_t)
DEFINE_MASK(strictcall_mask_u64, uint64_t)
"""

_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c99"]

# One thread per call. Splitting rows across a thread pool was measured and lost everywhere on this 2-core
# machine (us, fp32: (32, 49152) 81 single vs 105 split; (128, 152064) 3,024 vs 3,178): the pass is bound by
# memory, not by the core, and the hand-off costs ~20 us. (Measured with a two-way row split on a
# ThreadPoolExecutor, since ctypes releases the GIL; removed as it never paid.)

# -inf's bits per float dtype, as the unsigned integer the kernel takes, and the kernel's lane width.
_LANES: dict[torch.dtype, tuple[str, type[ctypes._SimpleCData], int]] = {
    torch.float16: ("strictcall_mask_u16", ctypes.c_uint16, 0xFC00),
    torch.bfloat16: ("strictcall_mask_u16", ctypes.c_uint16, 0xFF80),
    torch.float32: ("strictcall_mask_u32", ctypes.c_uint32, 0xFF800000),
    torch.float64: ("strictcall_mask_u64", ctypes.c_uint64, 0xFFF0000000000000),
}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_build_failed = False


def _build() -> ctypes.CDLL:
    library = build_library("bitmask", _SOURCE, _FLAGS)
    for name, lane, _ in _LANES.values():
        function = getattr(library, name)
        function.restype = None
        function.argtypes = [
            ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
            ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, lane,
        ]  # fmt: skip
    return library


def native_kernel() -> ctypes.CDLL | None:
    """The loaded native library, built on first call; None (and one warning) if it cannot be built."""
    global _library, _build_failed
    if _library is None and not _build_failed:
        with _lock:
            if _library is None and not _build_failed:
                try:
                    _library = _build()
                except OSError as err:
                    _build_failed = True
                    logger.warning("native bitmask kernel unavailable (%s); using the eager torch CPU path", err)
    return _library


def apply_token_bitmask_native(
    library: ctypes.CDLL, logits: torch.Tensor, bitmask: torch.Tensor, index: torch.Tensor | None
) -> None:
    """Run the native kernel on validated 2-D CPU tensors (see ``apply_token_bitmask_inplace``).

    Args:
        library: What ``native_kernel()`` returned.
        logits: ``(batch, vocab)`` float tensor with contiguous rows.
        bitmask: ``(batch, words)`` int32 tensor.
        index: Rows to mask (int64), or None for all rows.
    """
    name, lane, neg_inf = _LANES[logits.dtype]
    function = getattr(library, name)
    bitmask = bitmask if bitmask.stride(-1) == 1 else bitmask.contiguous()
    index = None if index is None else index.contiguous()
    vocab_size = logits.shape[1]
    covered = min(vocab_size, 32 * bitmask.shape[1])
    num_rows = logits.shape[0] if index is None else index.numel()
    rows_ptr = None if index is None else index.data_ptr()
    function(
        logits.data_ptr(), logits.stride(0), bitmask.data_ptr(), bitmask.stride(0),
        rows_ptr, num_rows, vocab_size, covered, neg_inf,
    )  # fmt: skip
