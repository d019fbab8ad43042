"""Sampling the next token from (already masked) logits, with OpenAI's knobs.

Invariant kept: a token is drawn only from the distribution this module reports, so a token whose logit is
``-inf`` (masked by the grammar) is never drawn, and the reported logprobs are those of that distribution.
The pipeline per row, in this order:

1. penalties (OpenAI): ``logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty``,
   where ``count[j]`` is how many times token ``j`` was generated so far in this request;
2. temperature: divide by it (temperature 0 = greedy: the argmax; its logprobs are reported at temperature 1);
3. top-k: keep the ``k`` highest logits (exactly ``k``; ties broken towards the lower token id);
4. top-p: of what is left, keep the shortest prefix of the descending order whose probability reaches
   ``top_p`` (the token that crosses the threshold is kept; same tie order);
5. min-p: keep tokens with ``p >= min_p * p_max`` (a ratio, so unchanged by the renormalisations above);
6. draw by inverse CDF with one uniform per row from that row's generator, so a seeded request draws the
   same tokens alone or in any batch.

No step reads a device value on the host: the only synchronisation is the caller reading the token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings, in OpenAI's ranges.

    Attributes:
        temperature: 0..2; 0 means greedy.
        top_p: (0, 1]; 1 disables nucleus sampling.
        top_k: >= 0; 0 disables top-k (not an OpenAI field, but every open engine has it).
        min_p: [0, 1]; 0 disables min-p.
        presence_penalty: -2..2, subtracted once from every token already generated.
        frequency_penalty: -2..2, subtracted once per previous occurrence of a token.
        seed: Seed for this request's generator (see ``make_generator``), or None for the global RNG.
        logprobs: Whether to return the logprob of each chosen token.
        top_logprobs: 0..20 most likely alternatives to return per position; needs ``logprobs=True``.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r} is out of range; use {allowed}")

        if not 0.0 <= self.temperature <= 2.0:
            fail("temperature", "a value in [0, 2] (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            fail("top_p", "a value in (0, 1] (1 = off)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            fail("top_k", "an integer >= 0 (0 = off)")
        if not 0.0 <= self.min_p <= 1.0:
            fail("min_p", "a value in [0, 1] (0 = off)")
        if not -2.0 <= self.presence_penalty <= 2.0:
            fail("presence_penalty", "a value in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            fail("frequency_penalty", "a value in [-2, 2]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            fail("seed", "an integer or None")
        if isinstance(self.top_logprobs, bool) or not isinstance(self.top_logprobs, int):
            fail("top_logprobs", "an integer in [0, 20]")
        if not 0 <= self.top_logprobs <= 20:
            fail("top_logprobs", "an integer in [0, 20]")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("SamplingParams.top_logprobs needs logprobs=True, as in OpenAI's API")

    @property
    def is_greedy(self) -> bool:
        """True when the token is the argmax (temperature 0)."""
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        """True when presence or frequency penalties change the logits."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class SampleOutput:
    """What ``sample`` returns; every tensor is on the logits' device.

    Attributes:
        token_ids: ``(batch,)`` int64; ``-1`` for a row where every token was masked (a grammar bug: fail
            that request, never sample unconstrained).
        logprobs: ``(batch,)`` float32 logprob of each chosen token under the distribution it was drawn from.
        top_logprob_ids: ``(batch, n)`` int64 ids of the ``n = max(top_logprobs)`` most likely tokens, or None.
        top_logprobs: ``(batch, n)`` float32 logprobs matching ``top_logprob_ids``, or None. A row that asked
            for fewer keeps its first ``params.top_logprobs`` columns.
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    top_logprob_ids: torch.Tensor | None
    top_logprobs: torch.Tensor | None


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Create the per-request generator for a seeded request.

    Keep it for the request's lifetime and pass it at every step: its state advances one draw per token.

    Args:
        seed: The request's seed (OpenAI's ``seed``).
        device: The device the logits live on.

    Returns:
        A ``torch.Generator`` on ``device`` seeded with ``seed``.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _per_row(params: SamplingParams | Sequence[SamplingParams], batch: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * batch
    rows = list(params)
    if len(rows) != batch:
        raise ValueError(f"sample: got {len(rows)} SamplingParams for {batch} logits rows; pass one per row")
    return rows


def _token_counts(output_token_ids: Sequence[Sequence[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    longest = max((len(ids) for ids in output_token_ids), default=0)
    padded = torch.full((len(output_token_ids), max(longest, 1)), vocab_size, dtype=torch.long)
    for row, ids in enumerate(output_token_ids):
        if ids:
            row_ids = torch.as_tensor(list(ids), dtype=torch.long)
            if int(row_ids.min()) < 0 or int(row_ids.max()) >= vocab_size:
                raise ValueError(
                    f"sample: output_token_ids[{row}] holds ids outside [0, {vocab_size}) (the logits' width)"
                )
            padded[row, : len(ids)] = row_ids
    padded = padded.to(device, non_blocking=True)
    counts = torch.zeros((len(output_token_ids), vocab_size + 1), dtype=torch.float32, device=device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab_size]  # the last column only collected the padding


def sampling_distribution(
    logits: torch.Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    output_token_ids: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Log-probabilities of the distribution ``sample`` draws from (steps 1-5 of the module docstring).

    Args:
        logits: ``(batch, vocab)`` float logits, already masked (``-inf`` = disallowed). Not modified.
        params: One ``SamplingParams`` for every row, or one per row.
        output_token_ids: Per row, the ids generated so far in the request (prompt excluded, as OpenAI
            counts them); needed only when a row has a presence or frequency penalty. Lists rather than a
            dense count tensor because the engine already holds them and the counts are built here in one
            ``scatter_add``.

    Returns:
        ``(batch, vocab)`` float32 log-probabilities: ``-inf`` outside the kept set, and ``exp`` sums to 1 over
        it. A row with every token masked comes out all NaN.

    Raises:
        ValueError: On a shape mismatch, or penalties without ``output_token_ids``.
    """
    if logits.dim() != 2:
        raise ValueError(f"sample: logits must be (batch, vocab), got shape {tuple(logits.shape)}")
    batch, vocab_size = logits.shape
    rows = _per_row(params, batch)
    device = logits.device
    scores = logits.float()  # a copy for half precision; cloned below before any in-place op otherwise
    if scores.data_ptr() == logits.data_ptr():
        scores = scores.clone()

    if any(p.has_penalties for p in rows):
        if output_token_ids is None or len(output_token_ids) != batch:
            raise ValueError("sample: presence/frequency penalties need output_token_ids, one list per row")
        counts = _token_counts(output_token_ids, vocab_size, device)
        frequency = torch.tensor([p.frequency_penalty for p in rows], dtype=torch.float32).to(device)
        presence = torch.tensor([p.presence_penalty for p in rows], dtype=torch.float32).to(device)
        scores -= counts * frequency[:, None] + (counts > 0).float() * presence[:, None]

    if any(p.temperature not in (0.0, 1.0) for p in rows):
        temperature = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in rows], dtype=torch.float32)
        scores /= temperature.to(device)[:, None]

    if any(p.top_k or p.top_p < 1.0 for p in rows):
        # Stable sort: among equal logits the lower token id comes first, which fixes the tie rule.
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
        positions = torch.arange(vocab_size, device=device)
        top_k = torch.tensor([p.top_k or vocab_size for p in rows], dtype=torch.long).to(device)
        keep_sorted = positions[None, :] < top_k[:, None]
        sorted_scores = sorted_scores.masked_fill(~keep_sorted, float("-inf"))
        top_p = torch.tensor([p.top_p for p in rows], dtype=torch.float32).to(device)
        probs = torch.softmax(sorted_scores, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        keep_sorted &= (mass_before < top_p[:, None]) | (positions[None, :] == 0)
        keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
        scores.masked_fill_(~keep, float("-inf"))

    if any(p.min_p > 0.0 for p in rows):
        probs = torch.softmax(scores, dim=-1)
        min_p = torch.tensor([p.min_p for p in rows], dtype=torch.float32).to(device)
        threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
        scores.masked_fill_(probs < threshold, float("-inf"))

    return torch.log_softmax(scores, dim=-1)


def _uniforms(rows: list[SamplingParams], generators: Sequence[torch.Generator | None] | None, device: torch.device) -> torch.Tensor:
    batch = len(rows)
    if generators is None:
        return torch.rand(batch, device=device)
    if len(generators) != batch:
        raise ValueError(f"sample: got {len(generators)} generators for {batch} rows; pass one (or None) per row")
    shared = torch.rand(batch, device=device)  # for rows without a generator of their own
    draws = [shared[i : i + 1] if g is None else torch.rand(1, generator=g, device=device) for i, g in enumerate(generators)]
    return torch.cat(draws)


def sample(
    logits: torch.Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None] | None = None,
    *,
    output_token_ids: Sequence[Sequence[int]] | None = None,
) -> SampleOutput:
    """Pick one token per row of masked logits.

    Args:
        logits: ``(batch, vocab)`` float logits after ``apply_token_bitmask_inplace``. Not modified.
        params: One ``SamplingParams`` for every row, or one per row (rows may differ).
        generators: One per row: that request's generator (``make_generator(params.seed)``, kept across
            steps) or None to use the global RNG. None for all rows uses the global RNG throughout.
        output_token_ids: Ids generated so far per row; required when any row has a penalty.

    Returns:
        A ``SampleOutput``; nothing in it has been read on the host.

    Raises:
        ValueError: On mismatched lengths or shapes.
    """
    rows = _per_row(params, logits.shape[0])
    # A greedy row's token is the argmax whatever top-k, top-p and min-p keep (each keeps the maximum), so unless
    # its logprobs are asked for, its filters are skipped (they sort the whole vocabulary).
    rows = [replace(p, top_k=0, top_p=1.0, min_p=0.0) if p.is_greedy and not p.logprobs else p for p in rows]
    log_probs = sampling_distribution(logits, rows, output_token_ids)
    device = logits.device
    greedy_rows = [p.is_greedy for p in rows]

    token_ids = torch.argmax(log_probs, dim=-1)  # the argmax of the masked (penalised) logits
    if not all(greedy_rows):
        probs = log_probs.exp()
        cdf = torch.cumsum(probs, dim=-1)  # non-decreasing: a masked token adds exactly 0
        total = cdf[:, -1:]
        # Strictly below the total, so the search lands on a token of positive probability, never past it.
        target = torch.minimum(_uniforms(rows, generators, device)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
        drawn = torch.searchsorted(cdf, target, right=True).squeeze(-1)
        is_greedy = torch.tensor(greedy_rows).to(device)
        token_ids = torch.where(is_greedy, token_ids, drawn.clamp_(max=logits.shape[1] - 1))
    has_allowed = logits.amax(dim=-1) > float("-inf")
    token_ids = torch.where(has_allowed, token_ids, -1)

    chosen = log_probs.gather(1, token_ids.clamp(min=0)[:, None]).squeeze(-1)
    num_top = max(p.top_logprobs for p in rows)
    top_ids = top_values = None
    if num_top:
        top_values, top_ids = torch.topk(log_probs, k=min(num_top, logits.shape[1]), dim=-1)
    return SampleOutput(token_ids=token_ids, logprobs=chosen, top_logprob_ids=top_ids, top_logprobs=top_values)


__all__ = [
    "SampleOutput",
    "SamplingParams",
    "make_generator",
    "sample",
    "sampling_distribution",
]
