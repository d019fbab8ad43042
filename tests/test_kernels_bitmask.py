"""Token bitmask application: every backend agrees bit for bit with the torch reference, which agrees with a
plain Python loop over the documented format (bit t % 32 of word t // 32, 1 = allowed)."""

from __future__ import annotations

import os

import torch

# The Triton kernel runs on CPU through Triton's interpreter. Triton reads TRITON_INTERPRET both when a kernel
# is decorated (module import) and at every launch, so it is set here, before strictcall.kernels.bitmask_triton
# is imported, and left set for the process; a subprocess per comparison would cost ~2 s of start-up each. No
# other test uses Triton, and torch.compile's CPU backend (C++) ignores the variable.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from strictcall.kernels import allocate_token_bitmask, apply_token_bitmask_inplace, unpack_token_bitmask  # noqa: E402

NEG_INF = float("-inf")
BIT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}

# (name, batch, vocab, words): vocab vs 32 * words covers exact, ragged, padded logits and wider masks.
SHAPES = [
    ("one_row_exact", 1, 128, 4),
    ("ragged_vocab", 3, 1000, 32),  # 1000 = 31 words + 8 bits
    ("padded_logits", 5, 1100, 32),  # logits 76 ids past the mask: disallowed
    ("wider_mask", 4, 900, 40),  # 380 extra bits ignored
    ("tiny", 2, 7, 1),
    ("batch_64", 64, 4133, 130),
    ("batch_40_wide", 40, 30_000, 938),
    ("wide_vocab", 2, 49_157, 1537),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# "cpu_eager" is the cpu backend with the native kernel made unavailable (no C compiler): its torch fallback.
BACKENDS = ["cpu", "cpu_eager", "triton"]


@pytest.fixture(autouse=True)
def _backend_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let tests name "cpu_eager": the cpu backend as it runs on a machine without a C compiler."""
    import strictcall.kernels.bitmask as bitmask_module

    real_apply = bitmask_module.apply_token_bitmask_inplace

    def apply(logits, bitmask, indices=None, *, backend="auto"):  # type: ignore[no-untyped-def]
        if backend != "cpu_eager":
            return real_apply(logits, bitmask, indices, backend=backend)
        with monkeypatch.context() as patch:
            patch.setattr(bitmask_module, "native_kernel", lambda: None)
            return real_apply(logits, bitmask, indices, backend="cpu")

    monkeypatch.setitem(globals(), "apply_token_bitmask_inplace", apply)


def random_case(batch: int, vocab: int, words: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=generator).to(dtype)
    # Special values at fixed spots: the contract covers them (masked NaN/+inf become -inf).
    logits.view(-1)[:: max(1, logits.numel() // 7)] = float("nan")
    logits.view(-1)[1 :: max(1, logits.numel() // 5)] = float("inf")
    logits.view(-1)[2 :: max(1, logits.numel() // 3)] = -0.0
    bitmask = torch.randint(-(2**31), 2**31, (batch, words), dtype=torch.int32, generator=generator)
    return logits, bitmask


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(BIT_VIEW[t.dtype])


def python_oracle(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    out = logits.clone()
    words = bitmask.tolist()
    for r in rows:
        for t in range(logits.shape[1]):
            w = t // 32
            allowed = w < len(words[r]) and (words[r][w] >> (t % 32)) & 1
            if not allowed:
                out[r, t] = NEG_INF
    return out


@pytest.mark.parametrize("name,batch,vocab,words", [s for s in SHAPES if s[2] <= 1100], ids=lambda v: str(v))
def test_reference_matches_python_loop(name: str, batch: int, vocab: int, words: int) -> None:
    logits, bitmask = random_case(batch, vocab, words, torch.float32, seed=1)
    expected = python_oracle(logits, bitmask, list(range(batch)))
    apply_token_bitmask_inplace(logits, bitmask, backend="torch")
    assert torch.equal(bits(logits), bits(expected))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,batch,vocab,words", SHAPES, ids=[s[0] for s in SHAPES])
def test_backend_matches_reference_bit_for_bit(
    name: str, batch: int, vocab: int, words: int, dtype: torch.dtype, backend: str
) -> None:
    logits, bitmask = random_case(batch, vocab, words, dtype, seed=batch * 7919 + vocab)
    expected = logits.clone()
    apply_token_bitmask_inplace(expected, bitmask, backend="torch")
    apply_token_bitmask_inplace(logits, bitmask, backend=backend)
    assert torch.equal(bits(logits), bits(expected))


@pytest.mark.parametrize("backend", ["torch", *BACKENDS])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_rows_and_row_subset(dtype: torch.dtype, backend: str) -> None:
    # Logits as a slice of a wider buffer (row stride 1,200 > vocab 1,037), masking rows 0, 3 and 6 of 8.
    batch, vocab, words = 8, 1037, 33
    buffer, bitmask = random_case(batch, 1200, words, dtype, seed=3)
    original = buffer.clone()
    logits = buffer[:, :vocab]
    rows = [6, 0, 3]
    expected = python_oracle(original[:, :vocab], bitmask, rows)
    apply_token_bitmask_inplace(logits, bitmask, indices=rows, backend=backend)
    assert torch.equal(bits(logits), bits(expected))
    assert torch.equal(bits(buffer[:, vocab:]), bits(original[:, vocab:])), "wrote past the logits view"


@pytest.mark.parametrize("backend", ["torch", *BACKENDS])
def test_indices_as_tensor_and_one_dimensional_inputs(backend: str) -> None:
    logits, bitmask = random_case(4, 300, 10, torch.float32, seed=4)
    expected = python_oracle(logits, bitmask, [2])
    apply_token_bitmask_inplace(logits, bitmask, indices=torch.tensor([2]), backend=backend)
    assert torch.equal(bits(logits), bits(expected))

    row, words = random_case(1, 300, 10, torch.float32, seed=5)
    expected_row = python_oracle(row, words, [0])[0]
    flat = row[0].clone()
    apply_token_bitmask_inplace(flat, words[0], backend=backend)
    assert torch.equal(bits(flat), bits(expected_row))


@pytest.mark.parametrize("batch", [1, 2, 9, 33, 64])
def test_random_batches_all_backends_agree(batch: int) -> None:
    generator = torch.Generator().manual_seed(batch)
    vocab = int(torch.randint(40, 3000, (1,), generator=generator))
    words = (vocab + 31) // 32 + int(torch.randint(-2, 3, (1,), generator=generator))
    logits, bitmask = random_case(batch, vocab, max(words, 1), torch.bfloat16, seed=batch)
    results = {}
    for backend in ["torch", *BACKENDS]:
        out = logits.clone()
        apply_token_bitmask_inplace(out, bitmask, backend=backend)
        results[backend] = bits(out)
    assert torch.equal(results["cpu"], results["torch"])
    assert torch.equal(results["triton"], results["torch"])


def test_allocate_token_bitmask_allows_everything() -> None:
    bitmask = allocate_token_bitmask(3, 1000)
    assert bitmask.shape == (3, 32) and bitmask.dtype == torch.int32
    assert bool(unpack_token_bitmask(bitmask, 1000).all())
    logits = torch.randn(3, 1000)
    before = logits.clone()
    apply_token_bitmask_inplace(logits, bitmask)
    assert torch.equal(logits, before)


def test_unpack_token_bitmask_bit_order() -> None:
    bitmask = torch.tensor([[0b101, -(2**31)]], dtype=torch.int32)  # word 1 = only bit 31 set
    allowed = unpack_token_bitmask(bitmask, 70)
    assert allowed[0].nonzero().flatten().tolist() == [0, 2, 63]  # bit 31 of word 1 = token 63; 64.. padding


@pytest.mark.parametrize(
    "logits,bitmask,kwargs,message",
    [
        (torch.zeros(2, 64), torch.zeros(2, 2, dtype=torch.int64), {}, "int32"),
        (torch.zeros(2, 64, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int32), {}, "dtype"),
        (torch.zeros(2, 64), torch.zeros(3, 2, dtype=torch.int32), {}, "indices="),
        (torch.zeros(2, 64), torch.zeros(2, 2, dtype=torch.int32), {"indices": [2]}, "indices must lie"),
        (torch.zeros(2, 64), torch.zeros(2, 2, dtype=torch.int32), {"backend": "gpu"}, "unknown backend"),
        (torch.zeros(64, 2).t(), torch.zeros(2, 2, dtype=torch.int32), {}, "contiguous"),
        (torch.zeros(2, 2, 64), torch.zeros(2, 2, dtype=torch.int32), {}, "1-D or 2-D"),
    ],
    ids=["bitmask_dtype", "logits_dtype", "row_mismatch", "index_range", "backend", "column_stride", "rank"],
)
def test_invalid_input_is_rejected(logits: torch.Tensor, bitmask: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_token_bitmask_inplace(logits, bitmask, **kwargs)


def test_allocate_rejects_nonpositive_sizes() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        allocate_token_bitmask(1, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_on_cuda_matches_reference(dtype: torch.dtype) -> None:
    logits, bitmask = random_case(32, 49_157, 1537, dtype, seed=9)
    expected = logits.clone()
    apply_token_bitmask_inplace(expected, bitmask, backend="torch")
    on_gpu = logits.cuda()
    apply_token_bitmask_inplace(on_gpu, bitmask.cuda(), indices=None)  # auto -> triton
    assert torch.equal(bits(on_gpu.cpu()), bits(expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_without_indices(backend: str) -> None:
    # 40 rows x 30,000 ids of a buffer with row stride 30,100.
    buffer, bitmask = random_case(40, 30_100, 938, torch.bfloat16, seed=8)
    original = buffer.clone()
    expected = original[:, :30_000].clone()
    apply_token_bitmask_inplace(expected, bitmask, backend="torch")
    apply_token_bitmask_inplace(buffer[:, :30_000], bitmask, backend=backend)
    assert torch.equal(bits(buffer[:, :30_000]), bits(expected))
    assert torch.equal(bits(buffer[:, 30_000:]), bits(original[:, 30_000:])), "wrote past the logits view"


def test_native_kernel_builds_here() -> None:
    # This machine has a C compiler; if the build broke, the cpu tests above would silently test the fallback.
    from strictcall.kernels.bitmask_cpu import native_kernel

    assert native_kernel() is not None
