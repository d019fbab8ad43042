"""The real server end to end: `strictcall serve` in a subprocess on 127.0.0.1, SmolLM2 on CPU, driven with the
official `openai` client.

One server per session (the `server` and `client` fixtures are in conftest.py: test_responses_e2e.py shares
them). Requests keep `max_tokens` small (decode is ~40 ms/token here, more when other work
shares the CPU), and timeouts are generous. Error cases and the API key are covered cheaply in
test_api_app.py; here are the shapes real clients parse, every tool_choice mode, the SDK helpers, streaming,
a full tool round trip and a client that leaves mid-stream.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

openai = pytest.importorskip("openai")
from pydantic import BaseModel  # noqa: E402

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


def _valid_calls(message, names: set[str]) -> list:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return message.tool_calls


def test_server_reports_loading_then_ready_and_logs_where_it_listens(server, client) -> None:
    assert server["saw_loading"], "GET /health should answer 503 while the model loads"
    assert "serving SmolLM2-135M-Instruct at http://127.0.0.1:" in Path(server["log"]).read_text()
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_plain_chat(client) -> None:
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-") and response.model == MODEL
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content and not choice.message.tool_calls
    usage = response.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and usage.completion_tokens <= 12
    assert usage.prompt_tokens_details.cached_tokens >= 0


@pytest.mark.parametrize("tool_choice,names", [
    ("required", {"get_weather", "get_time"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
], ids=["required", "named"])
def test_forced_tool_calls(client, tool_choice, names) -> None:
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False,
                                              max_tokens=60, temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(_valid_calls(choice.message, names)) == 1
    assert choice.message.content is None


def test_auto_and_none(client) -> None:
    for tool_choice in ("auto", "none"):
        response = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=30, temperature=0)
        choice = response.choices[0]
        if choice.message.tool_calls:  # auto may call; whatever it does must be valid
            assert tool_choice == "auto" and choice.finish_reason in ("tool_calls", "length")
            _valid_calls(choice.message, set(SCHEMAS))
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.content


def test_parallel_calls(client) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}], tools=TOOLS,
        tool_choice="required", max_tokens=80, temperature=0)
    choice = response.choices[0]
    calls = _valid_calls(choice.message, set(SCHEMAS))
    assert calls and len({c.id for c in calls}) == len(calls)
    # No call twice (SmolLM2 used to repeat its call until max_tokens), and the turn ends with its calls whole.
    assert len({(c.function.name, c.function.arguments) for c in calls}) == len(calls) and choice.finish_reason == "tool_calls"


def test_full_round_trip(client) -> None:
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                           max_tokens=40, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    messages = ASK + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 degrees celsius and sunny"},
    ]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=30, temperature=0)
    choice = final.choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert "22" in choice.message.content  # SmolLM2 answers from the tool result


def test_streamed_tool_call_matches_non_streamed_for_the_same_seed(client) -> None:
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=60, temperature=0.9, seed=7)
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.finish_reason]
    pieces = [p for c in chunks if c.choices for p in (c.choices[0].delta.tool_calls or [])]
    assert pieces[0].id.startswith("call_") and pieces[0].type == "function" and pieces[0].function.name == whole.message.tool_calls[0].function.name
    assert all(p.id is None and p.function.name is None for p in pieces[1:])
    assert "".join(p.function.arguments or "" for p in pieces) == whole.message.tool_calls[0].function.arguments


def test_stream_helper_and_strict_pydantic_tool(client) -> None:
    class Weather(BaseModel):
        city: str
        unit: str

    tool = openai.pydantic_function_tool(Weather, name="get_weather", description="Get the current weather in a city")
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[tool], tool_choice="required", parallel_tool_calls=False,
                                        max_tokens=60, temperature=0) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    parsed = final.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed, Weather)


def test_parse_helper_with_response_format(client) -> None:
    class City(BaseModel):
        name: str
        country: str

    completion = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}], response_format=City,
                                               max_tokens=60, temperature=0)
    assert isinstance(completion.choices[0].message.parsed, City)


def test_response_format_json_schema(client) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}, "confidence": {"type": "integer", "minimum": 0, "maximum": 10}},
              "required": ["answer", "confidence"], "additionalProperties": False}
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=60,
                                              temperature=0,
                                              response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    assert response.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_unconstrained_ab_switch(client) -> None:
    response = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=40, temperature=0,
                                              extra_body={"strictcall": {"constrained": False}})
    choice = response.choices[0]
    # Without the grammar the same prompt may or may not give a parsable call; either way the shape holds.
    if choice.message.tool_calls:
        assert all(json.loads(c.function.arguments) is not None for c in choice.message.tool_calls)
    else:
        assert isinstance(choice.message.content, str)


def test_n_logprobs_and_stop(client) -> None:
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 9."}], max_tokens=10, n=2,
                                              temperature=0.8, seed=1, logprobs=True, top_logprobs=2, stop=["5"])
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert "5" not in choice.message.content
        entries = choice.logprobs.content
        assert entries and all(len(e.top_logprobs) == 2 and e.logprob <= 0 and e.bytes for e in entries)


def test_completions_with_vllm_extras(client) -> None:
    response = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert response.object == "text_completion" and response.choices[0].text
    response = client.completions.create(model=MODEL, prompt="Is Paris in France? Answer:", max_tokens=5, temperature=0,
                                         extra_body={"guided_choice": [" yes", " no"], "top_k": 20, "min_p": 0.05})
    assert response.choices[0].text in (" yes", " no")
    chunks = list(client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6, temperature=0, stream=True,
                                            extra_body={"structured_outputs": {"regex": " [0-9]+(, [0-9]+)*"}}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith(" ") and text.replace(",", "").replace(" ", "").isdigit()


def test_sse_wire_format(server) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 40,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server["base"] + "/v1/chat/completions", json=body, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    calls = [p for c in chunks if c["choices"] for p in c["choices"][0]["delta"].get("tool_calls", [])]
    assert isinstance(calls[0]["function"]["arguments"], str) and calls[0]["type"] == "function" and calls[0]["index"] == 0
    assert chunks[-1]["usage"]["prompt_tokens"] > 0 and chunks[-1]["choices"] == []


def _metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


def test_client_disconnect_mid_stream_frees_the_engine(server, client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a dragon."}], "max_tokens": 1000,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", server["base"] + "/v1/chat/completions", json=body, timeout=120) as response:
        received = 0
        for line in response.iter_lines():
            received += bool(line)
            if received >= 4:
                break  # leave mid-stream: closing the response closes the connection
    deadline = time.time() + 30
    while _metric(server["base"], "strictcall_num_requests_running") > 0:
        assert time.time() < deadline, "the abandoned request was not aborted"
        time.sleep(0.2)
    # And the server goes on serving.
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)
    assert response.choices[0].message.content
    assert _metric(server["base"], "strictcall_jump_forward_tokens_total") > 0


# ----- the README's examples, read from README.md and run against this server -----

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_block(language: str, marker: str, base: str) -> str:
    blocks = re.findall(f"```{language}\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README.md should have one {language} block with {marker!r}"
    return found[0].replace("http://127.0.0.1:8000", base)


def _run_python(code: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    return out.getvalue().splitlines()


def test_readme_curl_example(server) -> None:
    result = subprocess.run(["bash", "-c", _readme_block("bash", "curl -s", server["base"])], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    choice = json.loads(result.stdout)["choices"][0]
    [call] = choice["message"]["tool_calls"]  # exactly one: the turn may not repeat its call, and it ends
    assert call["function"]["name"] == "get_weather" and choice["finish_reason"] == "tool_calls"
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


def test_readme_responses_example(server) -> None:
    call, *answer = _run_python(_readme_block("python", "client.responses.create", server["base"]))
    name, arguments = call.split(" ", 1)
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), TIME)
    assert "".join(answer).strip()


def test_server_log(server) -> None:
    """Last in this module: a line per finished request, engine lines while busy, no access lines for probes."""
    log = Path(server["log"]).read_text()
    assert re.search(r"chatcmpl-\w+: prompt \d+ tokens \(\d+ cached\), completion \d+ tokens, time to first token [\d.]+ s, total [\d.]+ s, "
                     r"tool calls \d+, finish \w+", log), log[-3000:]
    assert re.search(r"engine: \d+ running, \d+ waiting; prompt [\d.]+ tokens/s, output [\d.]+ tokens/s", log), log[-3000:]
    assert "default sampling for requests that set none" in log
    assert "GET /health" not in log and "GET /metrics" not in log and "POST /v1/chat/completions" in log


def test_sdk_parse_with_a_pydantic_tool_and_a_small_budget(client) -> None:
    """The budget closes the call and the turn may not repeat it: parse() gets one whole call, no LengthFinishReasonError."""
    class GetWeather(BaseModel):
        city: str
        unit: str

    for question in ("What is the weather in Paris?", "Weather in Tokyo in fahrenheit?", "Is it raining in London?"):
        response = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=100, temperature=0,
                                                 tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required")
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        assert isinstance(choice.message.tool_calls[0].function.parsed_arguments, GetWeather)


def test_a_budget_too_small_for_the_value_still_ends_with_a_complete_call(client) -> None:
    """The shortest call here is 57 bytes; with 64 tokens the story is cut short, the call is not."""
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    tools = [{"type": "function", "function": {"name": "tell", "description": "Tell a long story", "parameters": schema}}]
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a very long story about a dragon."}],
                                              tools=tools, tool_choice="required", max_tokens=64, temperature=1.0, seed=4)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and response.usage.completion_tokens <= 64
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), schema)  # the story is cut, the call is not
