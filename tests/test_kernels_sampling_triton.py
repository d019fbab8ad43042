"""The fused Triton mask + temperature + sample kernel, run on CPU under TRITON_INTERPRET=1: greedy rows equal
the torch path's masked argmax exactly, drawn tokens are always allowed and follow softmax(logits / T), and a
(seed, step) pair gives the same token alone or in a batch."""

from __future__ import annotations

import os

import torch

# Set before the kernel module is imported and left set: Triton reads it at decoration and at every launch
# (see tests/test_kernels_bitmask.py for the full reasoning).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from strictcall.kernels import apply_token_bitmask_inplace  # noqa: E402
from strictcall.kernels.sampling_triton import fused_mask_sample_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_case(batch: int, vocab: int, words: int, seed: int, density: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=generator)
    allowed = torch.rand(batch, words * 32, generator=generator) < density
    allowed[:, 0] = True
    as_int = (allowed.view(batch, words, 32).long() << torch.arange(32)).sum(-1)
    bitmask = ((as_int + 2**31) % 2**32 - 2**31).to(torch.int32)
    return logits, bitmask


def run(logits: torch.Tensor, bitmask: torch.Tensor, temperature: float, seeds: list[int], step: int = 0) -> torch.Tensor:
    batch = logits.shape[0]
    return fused_mask_sample_triton(
        logits.to(DEVICE),
        bitmask.to(DEVICE),
        torch.full((batch,), temperature, device=DEVICE),
        torch.tensor(seeds, device=DEVICE),
        torch.full((batch,), step, device=DEVICE),
    ).cpu()


SHAPES = [("exact", 3, 2048, 64), ("ragged", 5, 1000, 32), ("padded_logits", 4, 1100, 32), ("wider_mask", 2, 700, 40)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name,batch,vocab,words", SHAPES, ids=[s[0] for s in SHAPES])
def test_greedy_equals_torch_masked_argmax(name: str, batch: int, vocab: int, words: int, dtype: torch.dtype) -> None:
    logits, bitmask = random_case(batch, vocab, words, seed=vocab)
    logits = logits.to(dtype)
    logits[0, 1:5] = logits[0].max() + 1  # ties: the lowest allowed id of the tied ones wins, as in torch.argmax
    masked = logits.clone()
    apply_token_bitmask_inplace(masked, bitmask, backend="torch")
    assert torch.equal(run(logits, bitmask, 0.0, [0] * batch), masked.float().argmax(dim=-1))


def test_draws_are_allowed_and_follow_the_tempered_softmax() -> None:
    draws = 800  # one interpreted program per draw: ~5 ms each on CPU
    logits, bitmask = random_case(1, 40, 2, seed=1, density=0.4)
    tokens = run(logits.expand(draws, -1).contiguous(), bitmask.expand(draws, -1).contiguous(), 1.5, list(range(draws)))
    masked = logits.clone()
    apply_token_bitmask_inplace(masked, bitmask)
    probs = torch.softmax(masked[0] / 1.5, dim=-1)
    assert bool((probs[tokens] > 0).all()), "drew a masked token"
    counts = torch.bincount(tokens, minlength=40).float()
    sigma = (draws * probs * (1 - probs)).sqrt()
    assert bool(((counts - draws * probs).abs() <= 6 * sigma + 1).all())


def test_seed_and_step_reproduce_alone_and_in_a_batch() -> None:
    logits, bitmask = random_case(4, 500, 16, seed=2, density=0.9)
    alone = [int(run(logits[2:3], bitmask[2:3], 1.0, [42], step=s)[0]) for s in range(6)]
    batched = [int(run(logits, bitmask, 1.0, [1, 2, 42, 3], step=s)[2]) for s in range(6)]
    assert alone == batched
    assert len(set(alone)) > 1, "fresh noise per step"


def test_all_masked_row_gives_minus_one() -> None:
    logits, bitmask = random_case(2, 64, 2, seed=3)
    bitmask[1] = 0
    tokens = run(logits, bitmask, 1.0, [0, 0])
    assert tokens[1] == -1 and tokens[0] >= 0


def test_rejects_mismatched_shapes() -> None:
    logits, bitmask = random_case(2, 64, 2, seed=4)
    with pytest.raises(ValueError, match="temperature"):
        fused_mask_sample_triton(logits, bitmask, torch.ones(3), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
