"""`strictcall compile`: warmed tool grammars land in the disk cache, a server-side compiler loads them, only the
tokenizer is loaded, and a bad tools file or model is one clear line."""

from __future__ import annotations

import json

import pytest

from strictcall.grammars.compiler import GrammarCompiler
from strictcall.grammars.disk_cache import DiskCache
from strictcall.grammars.formats import GENERIC
from strictcall.grammars.tools import ToolGrammarCompiler, ToolSpec
from strictcall.grammars.vocabulary import Vocabulary
from strictcall.server import model_loader
from strictcall.server.cli import main

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The grammar cache in a temporary folder; loading the weights fails the test (compile needs the tokenizer only)."""
    monkeypatch.setattr(model_loader, "grammar_cache_dir", lambda: tmp_path / "grammars")

    def no_weights(*args, **kwargs):
        raise AssertionError("strictcall compile loaded the model's weights")

    monkeypatch.setattr(model_loader, "load_model", no_weights)
    return tmp_path / "grammars"


def test_compile_fills_the_cache_the_server_reads(tmp_path, cache, smollm2_model, capsys) -> None:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps({"tools": TOOLS}))
    assert main(["compile", str(tools_file), "--max-states", "30"]) == 0
    assert "get_weather: 30 states warmed" in capsys.readouterr().out
    model, tokenizer = smollm2_model
    vocabulary = Vocabulary.from_tokenizer(tokenizer, vocab_size=model.config.vocab_size)
    compiler = GrammarCompiler(vocabulary, disk_cache=DiskCache(cache))
    turn = ToolGrammarCompiler(compiler, GENERIC).compile_turn([ToolSpec("get_weather", TOOLS[0]["function"]["parameters"])], "auto")
    assert compiler.num_disk_hits == 1 and len(turn.calls["get_weather"]._masks) == 30


@pytest.mark.parametrize("content,args,words", [
    (json.dumps([{"type": "function", "function": {"name": "bad name"}}]), [], "tools[0].function.name"),
    (None, [], "cannot read"),
    ("{not json", [], "is not valid JSON"),
    ('{"functions": []}', [], "must hold an OpenAI `tools` list"),
    (json.dumps(TOOLS), ["--model", "/nowhere/model.gguf"], "model file /nowhere/model.gguf does not exist"),
], ids=["bad tool", "missing file", "malformed", "no tools", "missing model"])
def test_compile_errors_are_one_line(tmp_path, cache, capsys, content, args, words) -> None:
    tools_file = tmp_path / "tools.json"
    if content is not None:
        tools_file.write_text(content)
    assert main(["compile", str(tools_file), *args]) == 1
    err = capsys.readouterr().err
    assert words in err and err.startswith("strictcall: error: ") and err.count("\n") == 1, err
