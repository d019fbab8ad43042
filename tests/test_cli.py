"""`strictcall serve` flags, `STRICTCALL_*` variables and their precedence, and a failed model load."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from strictcall.server.cli import build_parser, config_from_args, main
from strictcall.server.config import ServerConfig, default_model_name
from strictcall.server.model_loader import ModelNotFoundError, resolve_model
from strictcall.server.model_profiles import EMBEDDED, GENERIC, profile_for


def config(argv: list[str], env: dict[str, str] | None = None, monkeypatch=None) -> ServerConfig:
    for key in [k for k in os.environ if k.startswith("STRICTCALL_") and k != "STRICTCALL_CACHE_DIR"]:
        monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_are_safe(monkeypatch) -> None:
    c = config([], monkeypatch=monkeypatch)
    assert (c.host, c.port, c.api_key, c.cors_origins) == ("127.0.0.1", 8000, None, ())
    assert c.model_names == ("SmolLM2-135M-Instruct",) and c.jump_forward and c.log_requests
    assert (c.auto_tool_bias, c.default_max_tokens, c.generation_config) == (None, None, "auto")  # the model's profile decides


def test_the_embedded_model_has_its_own_profile() -> None:
    assert resolve_model(None).is_default and profile_for(True) is EMBEDDED and profile_for(False) is GENERIC
    assert EMBEDDED.auto_tool_bias > 0 == GENERIC.auto_tool_bias
    assert EMBEDDED.sampling["temperature"] < 1 and not GENERIC.sampling


def test_flags(monkeypatch) -> None:
    c = config(["--model", "/m/Qwen2.5-0.5B-Instruct-Q8_0.gguf", "--host", "0.0.0.0", "--port", "9001", "--device", "cpu", "--dtype", "bfloat16",
                "--max-batch-size", "4", "--max-model-len", "1024", "--api-key", "k", "--cors-origin", "http://a", "--cors-origin", "http://b",
                "--served-model-name", "qwen", "gpt-4o-mini", "--tool-format", "hermes", "--no-jump-forward", "--max-tools", "8",
                "--max-schema-bytes", "2048", "--compile-timeout-s", "2.5", "--max-n", "2", "--max-body-bytes", "4096", "--log-level", "debug",
                "--auto-tool-bias", "4",
                "--default-max-tokens", "64", "--generation-config", "none", "--no-log-requests"],
               monkeypatch=monkeypatch)
    assert c == ServerConfig(model="/m/Qwen2.5-0.5B-Instruct-Q8_0.gguf", host="0.0.0.0", port=9001, device="cpu", dtype="bfloat16", max_batch_size=4,
                             max_model_len=1024, api_key="k", cors_origins=("http://a", "http://b"), served_model_names=("qwen", "gpt-4o-mini"),
                             tool_format="hermes", jump_forward=False, max_tools=8, max_schema_bytes=2048, compile_timeout_s=2.5, max_n=2,
                             max_body_bytes=4096, log_level="debug", auto_tool_bias=4.0,
                             default_max_tokens=64, generation_config="none", log_requests=False)
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


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("strictcall 0.")


@pytest.mark.parametrize("given,words", [
    ("/nowhere/m.gguf", "model file /nowhere/m.gguf does not exist"),
    ("./missing-folder", "./missing-folder is not a model directory or a .gguf file"),
    ("no-such-org/no-such-model-xyz", "not a Hugging Face model in the local cache"),
], ids=["gguf", "path", "hub id"])
def test_a_model_that_is_not_found_is_one_line(given, words, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=words.replace(".", r"\.")) as error:
        resolve_model(given)
    assert "\n" not in str(error.value)


def test_a_directory_that_is_not_a_model(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_a_model_that_fails_to_load_stops_the_server(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).parent / "strictcall"
    result = subprocess.run([str(script), "serve", "--model", str(tmp_path / "missing.gguf"), "--port", str(port)], capture_output=True, text=True,
                            timeout=180, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    # Checked before the server starts: one line, no traceback.
    assert result.stderr.startswith("strictcall: error: model file") and "missing.gguf does not exist" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("path,level,kept", [("/health", "INFO", False), ("/metrics", "INFO", False), ("/health", "DEBUG", True),
                                             ("/v1/chat/completions", "INFO", True)])
def test_health_probes_and_scrapes_are_logged_only_at_debug(path, level, kept) -> None:
    import logging

    from strictcall.server.cli import QuietProbes

    logger = logging.getLogger("strictcall.server")
    old = logger.level
    logger.setLevel(level)
    try:
        record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:1", "GET", path, "1.1", 200), None)
        assert QuietProbes().filter(record) is kept
    finally:
        logger.setLevel(old)
