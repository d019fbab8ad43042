"""A Hugging Face `LogitsProcessor` that constrains `model.generate(...)` with our matchers.

Invariant: each row's scores are masked with its matcher's bitmask, and each token `generate` picks is fed back
to that matcher on the next call, so greedy or sampled output always stays inside the grammar. (This module
needs torch; the rest of `strictcall.grammars` does not.)
"""

from __future__ import annotations

from typing import Protocol

import torch

from strictcall.kernels import allocate_token_bitmask, apply_token_bitmask_inplace


class Matcher(Protocol):
    def accept_token(self, token_id: int) -> bool: ...
    def is_terminated(self) -> bool: ...
    def fill_next_token_bitmask(self, bitmask: torch.Tensor, index: int = 0) -> None: ...


class ConstrainedLogitsProcessor:
    """Pass in `logits_processor=[ConstrainedLogitsProcessor(matchers)]`, one matcher per batch row.

    Args:
        matchers: `GrammarMatcher`s or `TurnMatcher`s, fresh (nothing accepted yet).
        vocab_size: the model's logits width (that of the matchers' vocabulary).
    """

    def __init__(self, matchers: list[Matcher], vocab_size: int):
        self.matchers = matchers
        self.bitmask = allocate_token_bitmask(len(matchers), vocab_size)
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.matchers):
            raise ValueError(f"batch has {input_ids.shape[0]} rows but {len(self.matchers)} matchers were given")
        if self._started:
            for row, matcher in enumerate(self.matchers):
                # A finished row keeps receiving padding from `generate`; its matcher stays terminated.
                if not matcher.is_terminated() and not matcher.accept_token(int(input_ids[row, -1])):
                    raise ValueError(f"row {row}: token {int(input_ids[row, -1])} was generated outside the grammar")
        self._started = True
        for row, matcher in enumerate(self.matchers):
            matcher.fill_next_token_bitmask(self.bitmask, row)
        apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device, non_blocking=True))
        return scores
