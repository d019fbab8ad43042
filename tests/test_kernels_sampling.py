"""Sampling: masked tokens are never drawn, greedy is the masked argmax, seeds reproduce alone or in a batch,
top-k / top-p / min-p keep exactly the documented sets, and logprobs describe the distribution drawn from."""

from __future__ import annotations

import math

import pytest
import torch

from strictcall.kernels import (
    SamplingParams,
    apply_token_bitmask_inplace,
    make_generator,
    sample,
    sampling_distribution,
)

NEG_INF = float("-inf")


def masked_logits(batch: int, vocab: int, seed: int, density: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=generator) * 3
    allowed = torch.rand(batch, vocab, generator=generator) < density
    allowed[:, 0] = True  # at least one allowed token per row
    bitmask = torch.zeros(batch, (vocab + 31) // 32, dtype=torch.int32)
    for t in range(vocab):
        bitmask[:, t // 32] |= (allowed[:, t].int() << (t % 32)).to(torch.int32)
    apply_token_bitmask_inplace(logits, bitmask)
    return logits


def kept_set(log_probs: torch.Tensor) -> set[int]:
    return set(torch.isfinite(log_probs).nonzero().flatten().tolist())


def reference_kept_set(logits: list[float], p: SamplingParams) -> set[int]:
    """The module docstring's steps 2-5 in plain float64 Python."""
    t = p.temperature or 1.0
    scores = {i: x / t for i, x in enumerate(logits) if x != NEG_INF}
    order = sorted(scores, key=lambda i: (-scores[i], i))
    if p.top_k:
        order = order[: p.top_k]
    top = max(scores[i] for i in order)
    weights = {i: math.exp(scores[i] - top) for i in order}
    total = sum(weights.values())
    kept, mass = [], 0.0
    for i in order:
        if kept and mass >= p.top_p:
            break
        kept.append(i)
        mass += weights[i] / total
    p_max = max(weights[i] for i in kept)
    return {i for i in kept if weights[i] >= p.min_p * p_max}


def test_greedy_is_argmax_of_masked_logits() -> None:
    logits = masked_logits(64, 1000, seed=1)
    out = sample(logits, SamplingParams(temperature=0.0))
    assert torch.equal(out.token_ids, logits.argmax(dim=-1))


def test_masked_token_is_never_drawn_in_100k_draws() -> None:
    logits = masked_logits(1, 64, seed=2, density=0.25)
    allowed = torch.isfinite(logits[0])
    draws = sample(logits.expand(100_000, -1), SamplingParams(temperature=2.0)).token_ids
    assert bool(allowed[draws].all())
    # And every allowed token shows up, with a frequency near its probability (6 sigma bound).
    probs = torch.softmax(logits[0] / 2.0, dim=-1)
    counts = torch.bincount(draws, minlength=64).float()
    sigma = (100_000 * probs * (1 - probs)).sqrt()
    assert bool(((counts - 100_000 * probs).abs() <= 6 * sigma + 1).all())


def test_all_masked_row_gives_minus_one() -> None:
    logits = torch.full((2, 10), NEG_INF)
    logits[1, 3] = 0.0
    out = sample(logits, [SamplingParams(), SamplingParams(temperature=0.0)])
    assert out.token_ids.tolist() == [-1, 3]


def test_seed_reproduces_alone_and_in_a_batch() -> None:
    logits = masked_logits(5, 500, seed=3, density=0.8)
    params = [SamplingParams(temperature=1.3, seed=7), SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, seed=7)]
    alone_gen = make_generator(7)
    alone = [int(sample(logits[2:3], params[0], [alone_gen]).token_ids[0]) for _ in range(20)]
    gens = [make_generator(7), None, make_generator(7)]
    batched = [sample(logits[2:5], params, gens).token_ids.tolist() for _ in range(20)]
    assert [row[0] for row in batched] == alone
    assert len(set(alone)) > 1, "a seeded generator should still vary across steps"


def test_same_seed_same_tokens_regardless_of_batch_position() -> None:
    logits = masked_logits(1, 300, seed=4, density=0.9)
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=11)
    alone = sample(logits, p, [make_generator(11)]).token_ids.tolist()
    noise = masked_logits(6, 300, seed=5)
    batch = torch.cat([noise[:3], logits, noise[3:]])
    gens = [None, None, None, make_generator(11), None, None, None]
    in_batch = sample(batch, [SamplingParams()] * 3 + [p] + [SamplingParams()] * 3, gens).token_ids.tolist()
    assert in_batch[3] == alone[0]


FILTER_CASES = [
    ("top_k_5", SamplingParams(top_k=5)),
    ("top_k_1", SamplingParams(top_k=1)),
    ("top_p_0.5", SamplingParams(top_p=0.5)),
    ("top_p_0.9_temp_0.5", SamplingParams(top_p=0.9, temperature=0.5)),
    ("min_p_0.1", SamplingParams(min_p=0.1)),
    ("all_three", SamplingParams(top_k=20, top_p=0.8, min_p=0.05, temperature=1.5)),
    ("none", SamplingParams()),
]


@pytest.mark.parametrize("name,params", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filters_keep_exactly_the_documented_set(name: str, params: SamplingParams) -> None:
    logits = masked_logits(8, 200, seed=6, density=0.5)
    log_probs = sampling_distribution(logits, params)
    for row in range(8):
        assert kept_set(log_probs[row]) == reference_kept_set(logits[row].tolist(), params)
        assert math.isclose(float(log_probs[row].exp().sum()), 1.0, rel_tol=1e-5)
    draws = sample(logits.repeat(500, 1), params).token_ids.view(500, 8)
    for row in range(8):
        assert set(draws[:, row].tolist()) <= kept_set(log_probs[row])


def test_top_k_ties_break_towards_lower_token_id() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 3.0]])
    assert kept_set(sampling_distribution(logits, SamplingParams(top_k=2))[0]) == {1, 3}


def test_per_row_params_match_rows_sampled_alone() -> None:
    logits = masked_logits(len(FILTER_CASES), 200, seed=7)
    rows = [p for _, p in FILTER_CASES]
    batched = sampling_distribution(logits, rows)
    for i, p in enumerate(rows):
        assert torch.equal(batched[i], sampling_distribution(logits[i : i + 1], p)[0])


def test_logprobs_are_of_the_distribution_sampled_from() -> None:
    logits = masked_logits(4, 100, seed=8)
    p = SamplingParams(temperature=0.5, top_k=10, logprobs=True, top_logprobs=5)
    out = sample(logits, p)
    expected = torch.log_softmax(sampling_distribution(logits, p), dim=-1)
    assert torch.allclose(out.logprobs, expected.gather(1, out.token_ids[:, None]).squeeze(1))
    assert out.top_logprobs is not None and out.top_logprob_ids is not None
    assert out.top_logprobs.shape == (4, 5)
    assert torch.allclose(out.top_logprobs, expected.gather(1, out.top_logprob_ids))
    assert bool((out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all())
    # Temperature is applied: the chosen logprob differs from the temperature-1 one.
    plain = torch.log_softmax(logits, dim=-1).gather(1, out.token_ids[:, None]).squeeze(1)
    assert not torch.allclose(out.logprobs, plain)


def test_presence_and_frequency_penalties_follow_openai() -> None:
    logits = torch.zeros(2, 6)
    p = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25)
    history = [[1, 1, 1, 4], []]
    log_probs = sampling_distribution(logits, p, output_token_ids=history)
    # mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence, then log_softmax
    expected = torch.tensor([[0, -0.75 - 0.5, 0, 0, -0.25 - 0.5, 0], [0.0] * 6])
    assert torch.allclose(log_probs, torch.log_softmax(expected, dim=-1))
    with pytest.raises(ValueError, match="output_token_ids"):
        sampling_distribution(logits, p)
    with pytest.raises(ValueError, match="outside"):
        sampling_distribution(logits, p, output_token_ids=[[6], []])


def test_half_precision_logits_are_accepted_and_not_modified() -> None:
    logits = masked_logits(3, 100, seed=9).to(torch.bfloat16)
    before = logits.clone()
    out = sample(logits, SamplingParams(temperature=0.0))
    assert torch.equal(logits, before)
    assert torch.equal(out.token_ids, logits.float().argmax(dim=-1))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": -2.1}, "presence_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 3}, "logprobs=True"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_params_out_of_range_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_mismatched_lengths_are_rejected() -> None:
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="SamplingParams"):
        sample(logits, [SamplingParams()])
    with pytest.raises(ValueError, match="generators"):
        sample(logits, SamplingParams(), [None])


def test_a_greedy_row_picks_the_argmax_whatever_its_filters() -> None:
    """Greedy rows skip top-k / top-p / min-p (they cannot move the argmax) unless their logprobs are asked for."""
    torch.manual_seed(3)
    logits = torch.randn(3, 500)
    logits[1, 7] = logits[1].max() + 1  # a clear maximum
    filtered = SamplingParams(temperature=0.0, top_p=0.3, top_k=5, min_p=0.2)
    out = sample(logits, [filtered, filtered, SamplingParams(temperature=0.0)])
    assert out.token_ids.tolist() == logits.argmax(-1).tolist()
    with_logprobs = sample(logits, SamplingParams(temperature=0.0, top_k=5, logprobs=True))
    expected = torch.log_softmax(logits.topk(5, dim=-1).values, dim=-1)[:, 0]  # the distribution the filters keep
    torch.testing.assert_close(with_logprobs.logprobs, expected)
