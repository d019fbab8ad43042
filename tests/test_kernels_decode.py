"""The native CPU forward (kernels/decode_cpu.c) against the torch path on the same model, and its invariances.

Small random models whose shapes reach every branch of the C code: head_dim 64 (the 64-lane attention path)
and 24 (the scalar tails), hidden sizes that are and are not multiples of 16 (the dot products' tails), row
counts that are and are not multiples of 4 (the 4 x 4 tiles and the single rows), biases (Qwen2's q/k/v bias,
an lm_head bias), grouped-query attention, fp32 and bf16 models. Each model is built once per module.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from strictcall.kernels.decode_cpu import unsupported_reason
from strictcall.server.model_runner import ModelRunner

VOCAB = 300


def _llama(hidden: int, heads: int, kv_heads: int, head_dim: int, **extra: object) -> LlamaForCausalLM:
    torch.manual_seed(hidden + heads)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden + 8, num_hidden_layers=2, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=512, **extra)
    return LlamaForCausalLM(config).eval()


def _qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random biases (the init leaves them at zero, which would test nothing)
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.normal_(0, 0.5)
    return model


def _with_lm_head_bias(model: LlamaForCausalLM) -> LlamaForCausalLM:
    head = torch.nn.Linear(model.config.hidden_size, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.normal_(0, 1.0)
    model.lm_head = head
    return model


MODELS = {
    "head_dim 64, hidden 128": lambda: _llama(128, 2, 1, 64),
    "head_dim 24, hidden 72, GQA 3:1": lambda: _llama(72, 3, 1, 24),
    "qwen2 biases": _qwen2,
    "lm_head bias": lambda: _with_lm_head_bias(_llama(64, 4, 2, 16)),
    # bf16 models: bf16 weights and KV cache; hidden 80 and intermediate 168 leave tails past the 32-wide pairs.
    "bf16, head_dim 64, hidden 128": lambda: _llama(128, 2, 1, 64).to(torch.bfloat16),
    "bf16, head_dim 16, hidden 80": lambda: _llama(80, 5, 1, 16).to(torch.bfloat16),
    "bf16, qwen2 biases": lambda: _qwen2().to(torch.bfloat16),
}


@pytest.fixture(scope="module", params=list(MODELS))
def runners(request: pytest.FixtureRequest) -> tuple[ModelRunner, ModelRunner]:
    """(torch, native) runners of one model, each with its own KV cache."""
    model = MODELS[request.param]()
    native = ModelRunner(model, 8, 256)
    assert native.native is not None, unsupported_reason(model)
    return ModelRunner(model, 8, 256, native=False), native


def _prompts(lengths: list[int]) -> list[list[int]]:
    generator = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def test_native_forward_matches_the_torch_path(runners: tuple[ModelRunner, ModelRunner]) -> None:
    prompts, steps = _prompts([40, 7, 19]), ([[5], [9, 10, 11], [12]], [40, 7, 19])
    for runner in runners:
        last = runner.forward([0, 1, 2], prompts, [0, 0, 0])  # prefill, then a step with a row of three tokens
        logits = runner.forward([0, 1, 2], *steps)
        if runner.native is None:
            reference = (last, logits)
    for native, expected in zip((last, logits), reference):
        if runners[1].dtype == torch.float32:
            torch.testing.assert_close(native, expected, rtol=1e-4, atol=1e-4)
            assert torch.equal(native.argmax(-1), expected.argmax(-1))
        else:  # torch rounds every activation to bf16, the native step only the matmuls' inputs: close, not equal
            scale = expected.abs().max()
            assert (native - expected).abs().max() < 0.05 * scale, ((native - expected).abs().max(), scale)


@pytest.mark.parametrize("batch", [1, 3, 4, 6])
def test_a_row_is_bitwise_the_same_alone_and_in_any_batch(runners: tuple[ModelRunner, ModelRunner], batch: int) -> None:
    runner = runners[1]
    prompts = _prompts([30] + [10 + 3 * i for i in range(1, batch)])
    alone = runner.forward([0], [prompts[0]], [0])
    order = [*range(1, batch)][: batch // 2] + [0] + [*range(1, batch)][batch // 2 :]  # row 0 in the middle
    together = runner.forward([slot + 1 for slot in order], [prompts[i] for i in order], [0] * batch)
    assert torch.equal(together[batch // 2], alone[0])
    step_alone = runner.forward([0], [[17]], [30])
    step_together = runner.forward([slot + 1 for slot in order], [[17] if i == 0 else [3 + i] for i in order], [len(prompts[i]) for i in order])
    assert torch.equal(step_together[batch // 2], step_alone[0])


def test_chunking_and_prefix_reuse_change_no_bit(runners: tuple[ModelRunner, ModelRunner]) -> None:
    """A prompt prefilled whole, in chunks, or after a prefix copied from another slot (the prefix cache): the same
    logits, and the same next step; likewise a sampled token with the forced text after it (jump-forward) in one
    forward or one token per step."""
    runner = runners[1]
    prompt, tail = _prompts([37])[0], [8, 21, 34, 55]
    whole = runner.forward([0], [prompt], [0])
    runner.forward([1], [prompt[:5]], [0])
    runner.forward([1], [prompt[5:21]], [5])
    chunked = runner.forward([1], [prompt[21:]], [21])
    runner.copy_slot(0, 2, 30)
    reused = runner.forward([2], [prompt[30:]], [30])
    assert torch.equal(whole, chunked) and torch.equal(whole, reused)
    at_once = runner.forward([0], [tail], [37])
    for i, token in enumerate(tail):
        one = runner.forward([1], [[token]], [37 + i])
    assert torch.equal(at_once, one)


def test_the_native_forward_says_which_models_it_does_not_run() -> None:
    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=16)).eval()
    assert "qwen3" in (unsupported_reason(qwen3) or "").lower()
    assert ModelRunner(qwen3, 2, 64).native is None  # and the runner runs it on torch
    assert "dtype" in (unsupported_reason(_llama(64, 4, 2, 16).to(torch.float16)) or "")


def test_the_cpu_default_dtype_is_bf16_only_where_the_native_forward_runs_it_on_bf16_dot_products(monkeypatch: pytest.MonkeyPatch) -> None:
    from strictcall.kernels import decode_cpu
    from strictcall.server.model_loader import resolve_dtype

    cpu, llama, qwen3 = torch.device("cpu"), LlamaConfig(), Qwen3Config()
    monkeypatch.setattr(decode_cpu, "cpu_has_bf16_dot", lambda: True)
    assert resolve_dtype(None, cpu, llama) == torch.bfloat16
    assert resolve_dtype(None, cpu, qwen3) == torch.float32  # torch would decode it, and torch's bf16 rows drift in batches
    assert resolve_dtype("float32", cpu, llama) == torch.float32
    monkeypatch.setattr(decode_cpu, "cpu_has_bf16_dot", lambda: False)
    assert resolve_dtype(None, cpu, llama) == torch.float32
