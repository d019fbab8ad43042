"""`strictcall compile`: warmed tool grammars land in the disk cache, and a server-side compiler loads them."""

from __future__ import annotations

import json

from strictcall.grammars.compiler import GrammarCompiler
from strictcall.grammars.disk_cache import DiskCache
from strictcall.grammars.formats import GENERIC
from strictcall.grammars.tools import ToolGrammarCompiler
from strictcall.grammars.vocabulary import Vocabulary
from strictcall.server import model_runner
from strictcall.server.cli import main

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_compile_fills_the_cache_the_server_reads(tmp_path, monkeypatch, smollm2_model, capsys) -> None:
    monkeypatch.setattr(model_runner, "grammar_cache_dir", lambda: tmp_path / "grammars")
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps({"tools": TOOLS}))
    assert main(["compile", str(tools_file), "--max-states", "30"]) == 0
    assert "get_weather: 30 states warmed" in capsys.readouterr().out
    model, tokenizer = smollm2_model
    vocabulary = Vocabulary.from_tokenizer(tokenizer, vocab_size=model.config.vocab_size)
    compiler = GrammarCompiler(vocabulary, disk_cache=DiskCache(tmp_path / "grammars"))
    turn = ToolGrammarCompiler(compiler, GENERIC).compile_turn(TOOLS, "auto")
    assert compiler.num_disk_hits == 1 and len(turn.calls["get_weather"]._masks) == 30


def test_compile_reports_a_bad_tool(tmp_path, monkeypatch, smollm2_model, capsys) -> None:
    monkeypatch.setattr(model_runner, "grammar_cache_dir", lambda: tmp_path / "grammars")
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([{"type": "function", "function": {"name": "bad name"}}]))
    assert main(["compile", str(tools_file)]) == 1
    assert "tools[0].function.name" in capsys.readouterr().err
