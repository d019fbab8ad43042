"""`strictcall serve` flags, `STRICTCALL_*` variables and their precedence, and a failed model load."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from strictcall.server.cli import build_parser, config_from_args, main
from strictcall.server.config import DEFAULT_MODEL_AUTO_TOOL_BIAS, ServerConfig, default_model_name


def config(argv: list[str], env: dict[str, str] | None = None, monkeypatch=None) -> ServerConfig:
    for key in [k for k in os.environ if k.startswith("STRICTCALL_") and k != "STRICTCALL_CACHE_DIR"]:
        monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_are_safe(monkeypatch) -> None:
    c = config([], monkeypatch=monkeypatch)
    assert (c.host, c.port, c.api_key, c.cors_origins) == ("127.0.0.1", 8000, None, ())
    assert c.model_names == ("SmolLM2-135M-Instruct",) and c.jump_forward
    assert c.effective_auto_tool_bias == DEFAULT_MODEL_AUTO_TOOL_BIAS > 0 and config(["--model", "/m/x.gguf"], monkeypatch=monkeypatch).effective_auto_tool_bias == 0.0


def test_flags(monkeypatch) -> None:
    c = config(["--model", "/m/Qwen2.5-0.5B-Instruct-Q8_0.gguf", "--host", "0.0.0.0", "--port", "9001", "--device", "cpu", "--dtype", "bfloat16",
                "--max-batch-size", "4", "--max-model-len", "1024", "--api-key", "k", "--cors-origin", "http://a", "--cors-origin", "http://b",
                "--served-model-name", "qwen", "gpt-4o-mini", "--tool-format", "hermes", "--no-jump-forward", "--max-tools", "8",
                "--max-schema-bytes", "2048", "--compile-timeout-s", "2.5", "--max-n", "2", "--max-body-bytes", "4096", "--log-level", "debug", "--auto-tool-bias", "4"],
               monkeypatch=monkeypatch)
    assert c == ServerConfig(model="/m/Qwen2.5-0.5B-Instruct-Q8_0.gguf", host="0.0.0.0", port=9001, device="cpu", dtype="bfloat16", max_batch_size=4,
                             max_model_len=1024, api_key="k", cors_origins=("http://a", "http://b"), served_model_names=("qwen", "gpt-4o-mini"),
                             tool_format="hermes", jump_forward=False, max_tools=8, max_schema_bytes=2048, compile_timeout_s=2.5, max_n=2,
                             max_body_bytes=4096, log_level="debug", auto_tool_bias=4.0)
    assert c.model_names == ("qwen", "gpt-4o-mini")


def test_environment_variables_and_flags_win(monkeypatch) -> None:
    env = {"STRICTCALL_PORT": "9100", "STRICTCALL_API_KEY": "from-env", "STRICTCALL_JUMP_FORWARD": "false",
           "STRICTCALL_SERVED_MODEL_NAMES": "a, b", "STRICTCALL_COMPILE_TIMEOUT_S": "3"}
    c = config([], env, monkeypatch)
    assert (c.port, c.api_key, c.jump_forward, c.served_model_names, c.compile_timeout_s) == (9100, "from-env", False, ("a", "b"), 3.0)
    assert config(["--port", "9200"], env, monkeypatch).port == 9200


@pytest.mark.parametrize("argv,env,words", [
    (["--port", "0"], {}, "port must be in 1..65535"),
    (["--max-batch-size", "0"], {}, "max_batch_size must be an integer >= 1"),
    ([], {"STRICTCALL_PORT": "eighty"}, "STRICTCALL_PORT='eighty': expected an integer"),
    ([], {"STRICTCALL_JUMP_FORWARD": "maybe"}, "expected true/false"),
    (["--compile-timeout-s", "0"], {}, "compile_timeout_s must be > 0"),
    ([], {"STRICTCALL_AUTO_TOOL_BIAS": "500"}, "auto_tool_bias must be in"),
], ids=["port", "batch", "env int", "env bool", "timeout", "bias"])
def test_bad_values_are_named(monkeypatch, argv, env, words) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(".", r"\.")):
        config(argv, env, monkeypatch)


def test_bad_tool_format_lists_the_known_ones(monkeypatch) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--tool-format", "xml"])
    with pytest.raises(ValueError, match="known: generic, hermes, llama3_json, mistral"):
        ServerConfig(tool_format="xml")


@pytest.mark.parametrize("model,name", [(None, "SmolLM2-135M-Instruct"), ("/x/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
                                        ("/x/model.gguf", "model"), ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct")])
def test_default_model_name(model, name) -> None:
    assert default_model_name(model) == name


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out


def test_a_model_that_fails_to_load_stops_the_server(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).parent / "strictcall"
    result = subprocess.run([str(script), "serve", "--model", str(tmp_path / "missing.gguf"), "--port", str(port)], capture_output=True, text=True,
                            timeout=180, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "missing.gguf does not exist" in result.stderr
