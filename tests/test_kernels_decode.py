"""The native CPU decode step (kernels/decode_cpu.c) against the torch path of the same runner.

Small random models whose shapes reach every branch of the C code: head_dim 64 (the 64-lane attention path)
and 24 (the scalar tails), hidden sizes that are and are not multiples of 16 (the dot products' tails), row
counts that are and are not multiples of 4 (the 4 x 4 tiles and the single rows), biases (Qwen2's q/k/v bias,
an lm_head bias), grouped-query attention. Each model is built once per module.
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
}


@pytest.fixture(scope="module", params=list(MODELS))
def runner(request: pytest.FixtureRequest) -> ModelRunner:
    runner = ModelRunner(MODELS[request.param](), 8, 256)
    assert runner.native is not None, unsupported_reason(runner.model)
    return runner


def _prefill(runner: ModelRunner, slots: list[int], lengths: list[int]) -> None:
    generator = torch.Generator().manual_seed(sum(lengths))
    prompts = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    runner.forward(slots, prompts, [0] * len(slots))


def test_native_step_matches_the_torch_path(runner: ModelRunner) -> None:
    _prefill(runner, [0, 1, 2], [40, 7, 19])
    rows = ([[5], [9], [11]], [40, 7, 19])
    reference = runner.forward([0, 1, 2], *rows)  # writes the same cache positions the native step then rewrites
    native = runner.forward([0, 1, 2], *rows, decode=True)
    assert native.shape == reference.shape
    torch.testing.assert_close(native, reference, rtol=1e-4, atol=1e-4)
    assert torch.equal(native.argmax(-1), reference.argmax(-1))


@pytest.mark.parametrize("batch", [1, 3, 4, 6])
def test_a_row_is_bitwise_the_same_alone_and_in_any_batch(runner: ModelRunner, batch: int) -> None:
    _prefill(runner, list(range(batch + 1)), [30] + [10 + 3 * i for i in range(batch)])
    alone = runner.forward([0], [[17]], [30], decode=True)
    others = list(range(1, batch))
    together = runner.forward([*others[: batch // 2], 0, *others[batch // 2 :]],
                              [[3 + i] for i in others[: batch // 2]] + [[17]] + [[3 + i] for i in others[batch // 2 :]],
                              [10 + 3 * i for i in others[: batch // 2]] + [30] + [10 + 3 * i for i in others[batch // 2 :]], decode=True)
    assert torch.equal(together[batch // 2], alone[0])


def test_several_new_tokens_of_a_row_equal_one_step_each(runner: ModelRunner) -> None:
    """A row fed a sampled token and the forced text after it (jump-forward) gets the logits it would have got
    from one step per token."""
    runner.forward([4, 5], [list(range(1, 13))] * 2, [0, 0])  # the same prompt in both slots
    tokens = [8, 21, 34, 55]
    at_once = runner.forward([4], [tokens], [12], decode=True)
    for i, token in enumerate(tokens):
        one = runner.forward([5], [[token]], [12 + i], decode=True)
    assert torch.equal(at_once, one)


def test_the_native_step_says_which_models_it_does_not_run() -> None:
    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=16)).eval()
    assert "Qwen3" in (unsupported_reason(qwen3) or "")
    assert ModelRunner(qwen3, 2, 64).native is None  # and the runner decodes it on torch
    assert "dtype" in (unsupported_reason(_llama(64, 4, 2, 16).to(torch.bfloat16)) or "")
