"""strictcall.kernels: apply token bitmasks to logits and sample the next token.

Everything here works on torch tensors and keeps one contract: a token the grammar's bitmask disallows ends
with logit ``-inf`` and is never sampled. CPU tensors go to a small native C kernel (built on first use; a
vectorized torch fallback without a compiler), CUDA tensors to Triton kernels, and the torch reference is the
oracle all are tested against (Triton on CPU under ``TRITON_INTERPRET=1``). The fused Triton
mask + temperature + sample kernel lives in ``strictcall.kernels.sampling_triton`` (imported on demand, so
this package does not need Triton).
"""

from __future__ import annotations

from .bitmask import (
    BITS_PER_WORD,
    allocate_token_bitmask,
    apply_token_bitmask_inplace,
    bitmask_words,
    unpack_token_bitmask,
)
from .sampling import SampleOutput, SamplingParams, make_generator, sample, sampling_distribution

__all__ = [
    "BITS_PER_WORD",
    "SampleOutput",
    "SamplingParams",
    "allocate_token_bitmask",
    "apply_token_bitmask_inplace",
    "bitmask_words",
    "make_generator",
    "sample",
    "sampling_distribution",
    "unpack_token_bitmask",
]
