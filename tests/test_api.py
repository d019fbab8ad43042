"""The HTTP app in-process (httpx against the ASGI app), on a tiny random-weight Llama over SmolLM2's vocabulary.

Cheap cases live here: every error with its status, field and code; the API key; CORS; body limits; health
while loading; metrics. With random weights the grammar does all the work, so tool calls returned over HTTP
must still parse, name an offered tool and validate, streamed or not, and the streamed arguments must add up
to the non-streamed ones for the same seed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strictcall.grammars import ToolSpec
from strictcall.server.api import create_app
from strictcall.server.config import ServerConfig
from strictcall.server.serving import ServingState

MODEL = "tiny"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                  "required": ["city", "days"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER_SCHEMA, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                                                        "required": ["zone"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def serving(build_serving, tiny_llama):
    state = build_serving(tiny_llama)
    yield state
    state.engine.shutdown()


def make_app(serving: ServingState | None, **config):
    app = create_app(ServerConfig(served_model_names=(MODEL,), max_model_len=1024, **config), loader=lambda c: serving)
    app.state.app_state.serving = serving  # httpx's ASGI transport does not run the lifespan (which loads)
    return app


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def chat(app, **body) -> httpx.Response:
    return call(app, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 8, **body})


@pytest.fixture(scope="module")
def app(serving):
    return make_app(serving)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ----- errors: (name, request body or raw content, status, param, code, words in the message) -----

ERROR_CASES = [
    ("missing messages", {"model": MODEL}, 400, "messages", "missing_required_parameter", "messages"),
    ("empty messages", {"model": MODEL, "messages": []}, 400, "messages", "invalid_value", "at least 1"),
    ("bad role", {"model": MODEL, "messages": [{"role": "bot", "content": "x"}]}, 400, "messages[0].role", "invalid_value", "role"),
    ("temperature out of range", {"model": MODEL, "messages": USER, "temperature": 3}, 400, "temperature", "invalid_value", "2"),
    ("top_p zero", {"model": MODEL, "messages": USER, "top_p": 0}, 400, "top_p", "invalid_value", "top_p"),
    ("unknown field", {"model": MODEL, "messages": USER, "foo": 1}, 400, "foo", "unknown_parameter", "Unrecognized request argument supplied: foo"),
    ("wrong type", {"model": MODEL, "messages": USER, "max_tokens": "ten"}, 400, "max_tokens", "invalid_value", "integer"),
    ("unknown model", {"model": "gpt-4o", "messages": USER}, 404, "model", "model_not_found", "gpt-4o"),
    ("tool_choice without tools", {"model": MODEL, "messages": USER, "tool_choice": "required"}, 400, "tool_choice", "invalid_value", "tools"),
    ("tool_choice names a missing tool", {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     400, "tool_choice", "invalid_value", "'nope'"),
    ("bad tool name", {"model": MODEL, "messages": USER, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, 400,
     "tools[0].function.name", "invalid_value", "bad name!"),
    ("unenforceable strict schema", {"model": MODEL, "messages": USER, "tools": [TOOLS[0], {"type": "function", "function": {
        "name": "f", "strict": True, "parameters": {"type": "object", "properties": {"x": {"not": {"type": "string"}}}}}}]},
     400, "tools[1].function.parameters", "unsupported_schema", "tool 'f'"),
    ("bad response_format type", {"model": MODEL, "messages": USER, "response_format": {"type": "xml"}}, 400, "response_format.type", "invalid_value", "xml"),
    ("tool message without tool_call_id", {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].tool_call_id",
     "missing_required_parameter", "tool_call_id"),
    ("image content", {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
     400, "messages[0].content[0].type", "invalid_value", "text only"),
    ("arguments not JSON", {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}]}]}, 400, "messages[0].tool_calls[0].function.arguments",
     "invalid_value", "JSON"),
    ("max_tokens beyond the context", {"model": MODEL, "messages": USER, "max_tokens": 5000}, 400, "max_tokens", "context_length_exceeded", "1024"),
    ("prompt beyond the context", {"model": MODEL, "messages": [{"role": "user", "content": "word " * 1200}]}, 400, "messages",
     "context_length_exceeded", "1024"),
    ("n too large", {"model": MODEL, "messages": USER, "n": 100}, 400, "n", "invalid_value", "--max-n"),
    ("top_logprobs without logprobs", {"model": MODEL, "messages": USER, "top_logprobs": 2}, 400, "top_logprobs", "invalid_value", "logprobs"),
    ("stream_options without stream", {"model": MODEL, "messages": USER, "stream_options": {"include_usage": True}}, 400, "stream_options",
     "invalid_value", "stream"),
    ("functions", {"model": MODEL, "messages": USER, "functions": [{"name": "f"}]}, 400, "functions", "unsupported_parameter", "tools"),
    ("logit_bias key not a token id", {"model": MODEL, "messages": USER, "logit_bias": {"hello": 5}}, 400, "logit_bias", "invalid_value", "token ids"),
    ("logit_bias key beyond the vocabulary", {"model": MODEL, "messages": USER, "logit_bias": {"99999999": 5}}, 400, "logit_bias", "invalid_value",
     "token ids"),
    ("logit_bias value out of range", {"model": MODEL, "messages": USER, "logit_bias": {"1": 101}}, 400, "logit_bias", "invalid_value", "-100 and 100"),
    ("guided_grammar", {"model": MODEL, "messages": USER, "guided_grammar": "root ::= x"}, 400, "guided_grammar", "unsupported_parameter", "guided_json"),
    ("two constraints", {"model": MODEL, "messages": USER, "guided_regex": "a+", "guided_choice": ["a"]}, 400, "guided_choice",
     "conflicting_parameters", "one"),
    ("guided_json with tool calls", {"model": MODEL, "messages": USER, "tools": TOOLS, "guided_json": {"type": "object"}}, 400, "guided_json",
     "conflicting_parameters", "tool_choice"),
    ("bad regex", {"model": MODEL, "messages": USER, "guided_regex": "(a"}, 400, "guided_regex", "unsupported_schema", "guided_regex"),
    ("too many stops", {"model": MODEL, "messages": USER, "stop": ["a"] * 17}, 400, "stop", "invalid_value", "16"),
    ("min_tokens above max_tokens", {"model": MODEL, "messages": USER, "max_tokens": 4, "min_tokens": 5}, 400, "min_tokens", "invalid_value",
     "max_tokens"),
    ("missing model", {"messages": USER}, 400, "model", "missing_required_parameter", "'model'"),
    ("model not a string", {"model": 123, "messages": USER}, 400, "model", "invalid_value", "'model'"),
    ("extension field typo", {"model": MODEL, "messages": USER, "strictcall": {"constraind": False}}, 400, "strictcall.constraind",
     "unknown_parameter", "constraind"),
]


@pytest.mark.parametrize("name,body,status,param,code,words", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_have_openai_shape_status_and_field(app, name, body, status, param, code, words) -> None:
    response = call(app, "POST", "/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code), error
    assert words in error["message"], error["message"]


@pytest.mark.parametrize("content,words", [(b"{not json", "could not parse the JSON body"), (b"[1, 2]", "must be a JSON object"),
                                           (b"\xff\xfe", "could not parse the JSON body")], ids=["syntax", "array", "not utf-8"])
def test_invalid_json_is_400(app, content, words) -> None:
    response = call(app, "POST", "/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert words in error["message"] and error["code"] == "invalid_json"


def test_body_too_large_is_413(serving) -> None:
    small = make_app(serving, max_body_bytes=1000)
    response = call(small, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 2000}]})
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


def test_limits_on_tools_and_schema_size(serving) -> None:
    small = make_app(serving, max_tools=1, max_schema_bytes=100)
    response = call(small, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": USER, "tools": TOOLS})
    assert response.status_code == 400 and error_of(response)["code"] == "too_many_tools"
    response = call(small, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": USER, "tools": TOOLS[:1]})
    assert response.status_code == 400 and error_of(response)["param"] == "tools[0].function.parameters"
    assert "--max-schema-bytes" in error_of(response)["message"]


def test_ignored_fields_are_accepted(app) -> None:
    response = chat(app, store=True, metadata={"a": "b"}, user="u", service_tier="auto", prompt_cache_key="k", safety_identifier="s",
                    reasoning_effort="low", parallel_tool_calls=True, stream=False)
    assert response.status_code == 200, response.text


def test_unknown_route_and_method_are_openai_shaped(app) -> None:
    response = call(app, "GET", "/v1/nothing")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = call(app, "GET", "/v1/chat/completions")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_queue_full_is_429(build_serving, tiny_llama) -> None:
    stalled = build_serving(tiny_llama, slots=1, max_waiting=1, start=False)  # nothing is ever served
    response = chat(make_app(stalled), n=3)
    assert response.status_code == 429, response.text
    assert error_of(response)["code"] == "rate_limit_exceeded"


def test_health_and_generation_wait_for_the_model(serving) -> None:
    loading = make_app(None)
    assert call(loading, "GET", "/health").status_code == 503
    response = chat(loading)
    assert response.status_code == 503 and error_of(response)["code"] == "model_loading"
    assert call(loading, "GET", "/v1/models").json()["data"][0]["id"] == MODEL
    assert call(make_app(serving), "GET", "/health").json() == {"status": "ok"}


def test_api_key(serving) -> None:
    secured = make_app(serving, api_key="s3cret")
    assert call(secured, "GET", "/v1/models").status_code == 401
    response = call(secured, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    assert call(secured, "GET", "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    response = call(secured, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 2},
                    headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    assert call(secured, "GET", "/health").status_code == 200  # health and metrics stay open, as in vLLM
    assert call(secured, "GET", "/metrics").status_code == 200
    guarded = make_app(serving, api_key="s3cret", metrics_need_key=True)
    assert call(guarded, "GET", "/metrics").status_code == 401 and call(guarded, "GET", "/health").status_code == 200
    assert call(guarded, "GET", "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_strict_tools_makes_every_tool_strict(serving) -> None:
    tags = _tool({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}})
    assert chat(make_app(serving), tools=tags).status_code == 200  # non-strict: reported, not refused
    response = chat(make_app(serving, strict_tools=True), tools=tags)
    assert response.status_code == 400 and error_of(response)["param"] == "tools[0].function.parameters"
    assert "--strict-tools" in error_of(response)["message"]


def test_no_cors_unless_asked(serving, app) -> None:
    preflight = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in call(app, "OPTIONS", "/v1/chat/completions", headers=preflight).headers
    cors = make_app(serving, cors_origins=("http://example.com",))
    response = call(cors, "OPTIONS", "/v1/chat/completions", headers=preflight)
    assert response.headers.get("access-control-allow-origin") == "http://example.com"


def test_metrics_exposition(app) -> None:
    chat(app)
    text = call(app, "GET", "/metrics").text
    for name in ("strictcall_requests_total{route=\"/v1/chat/completions\",status=\"200\"}", "strictcall_time_to_first_token_seconds_count",
                 "strictcall_time_per_output_token_seconds_bucket", "strictcall_num_requests_waiting", "strictcall_batch_size",
                 "strictcall_grammar_compile_seconds_count", "strictcall_grammar_cache_hits_total", "strictcall_jump_forward_tokens_total"):
        assert name in text, name
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2, line


# ----- generation with random weights: the grammar does all the work -----


def _check_calls(message: dict, names: set[str]) -> None:
    assert message["tool_calls"], message
    for call_ in message["tool_calls"]:
        assert call_["type"] == "function" and call_["id"].startswith("call_")
        name = call_["function"]["name"]
        assert name in names
        jsonschema.validate(json.loads(call_["function"]["arguments"]), SCHEMAS[name])


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"])
def test_random_weights_still_make_valid_calls(app, tool_choice) -> None:
    response = chat(app, tools=TOOLS, tool_choice=tool_choice, max_tokens=200, temperature=1.0, seed=1, n=2, parallel_tool_calls=False)
    body = response.json()
    assert response.status_code == 200, body
    for choice in body["choices"]:
        # Both schemas are bounded (city <= 20 characters, days 1-7, zone an enum): one call always fits in 200 tokens.
        assert choice["finish_reason"] == "tool_calls", choice
        _check_calls(choice["message"], {"get_weather"} if isinstance(tool_choice, dict) else set(SCHEMAS))
        assert len(choice["message"]["tool_calls"]) == 1


def _stream(app, body: dict) -> list[dict]:
    response = call(app, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True, **body})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    # each chunk is written from a template (streaming.py): it must be the compact JSON of its own body, key for key
    assert [json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in chunks] == events[:-1]
    return chunks


def test_streamed_arguments_equal_non_streamed_for_the_same_seed(app) -> None:
    body = {"tools": TOOLS, "tool_choice": "required", "max_tokens": 120, "temperature": 1.0, "seed": 11, "stream_options": {"include_usage": True}}
    chunks = _stream(app, body)
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None and first["tool_calls"][0]["id"].startswith("call_")  # as OpenAI
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    calls: dict[int, dict] = {}
    for chunk in chunks[:-1]:
        assert chunk["object"] == "chat.completion.chunk" and "usage" in chunk and chunk["usage"] is None
        for piece in chunk["choices"][0]["delta"].get("tool_calls", []):
            if "id" in piece:
                assert piece["index"] not in calls
                calls[piece["index"]] = {"name": piece["function"]["name"], "arguments": piece["function"]["arguments"]}
            else:
                assert set(piece) == {"index", "function"}
                calls[piece["index"]]["arguments"] += piece["function"]["arguments"]
    finish = chunks[-2]["choices"][0]["finish_reason"]
    whole = chat(app, **{k: v for k, v in body.items() if k != "stream_options"}).json()["choices"][0]
    assert finish == whole["finish_reason"]
    assert [calls[i] for i in sorted(calls)] == [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                                                 for c in whole["message"]["tool_calls"]]


def test_response_format_and_guided_outputs_with_random_weights(app) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 10}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    body = chat(app, max_tokens=60, temperature=1.0, seed=3,
                response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}).json()
    assert body["choices"][0]["finish_reason"] == "stop"  # the schema is bounded: its longest answer fits in 60 tokens
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)
    body = chat(app, max_tokens=10, guided_choice=["yes", "no"]).json()
    assert body["choices"][0]["message"]["content"] in ("yes", "no")
    response = call(app, "POST", "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 10, "structured_outputs": {"regex": "[0-9]{3}"}})
    assert len(response.json()["choices"][0]["text"]) == 3 and response.json()["choices"][0]["text"].isdigit()


def test_unconstrained_switch_turns_the_grammar_off(app) -> None:
    body = chat(app, tools=TOOLS, tool_choice="required", max_tokens=12, temperature=1.0, seed=5, strictcall={"constrained": False}).json()
    choice = body["choices"][0]
    # Random weights without a grammar write noise: no call parses, and nothing fails.
    assert choice["message"].get("tool_calls") is None and choice["finish_reason"] == "length"


def test_min_tokens_and_ignore_eos_reach_the_engine(app, serving, monkeypatch) -> None:
    # The engine's masking of EOS is tested in test_engine.py; here: each route passes the fields on.
    submitted = []
    submit = serving.engine.submit
    monkeypatch.setattr(serving.engine, "submit", lambda request, sink: (submitted.append(request), submit(request, sink)))
    for path, body in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "Hello"})):
        for extra, expected in (({"ignore_eos": True}, 9), ({"min_tokens": 3}, 3), ({}, 0)):
            submitted.clear()
            response = call(app, "POST", path, json={"model": MODEL, "max_tokens": 9, "temperature": 1.0, "seed": 3, **body, **extra})
            assert response.status_code == 200, response.text
            assert [r.min_tokens for r in submitted] == [expected], (path, extra)


def test_logit_bias_moves_free_text_but_never_the_grammar(app, serving) -> None:
    # +100 on one token makes greedy free text repeat it; with a required tool call the mask still rules.
    def complete(**extra) -> str:
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0, **extra}
        return call(app, "POST", "/v1/completions", json=body).json()["choices"][0]["text"]

    assert complete(logit_bias={"4093": 100}) == serving.tokenizer.decode([4093] * 4) != complete()
    body = chat(app, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0, logit_bias={"4093": 100}).json()
    calls = body["choices"][0]["message"]["tool_calls"]
    assert calls and all(c["function"]["name"] in SCHEMAS for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[c["function"]["name"]])


def test_auto_tool_bias_moves_the_choice_between_answering_and_calling(app, serving, monkeypatch) -> None:
    submitted = []
    submit = serving.engine.submit
    monkeypatch.setattr(serving.engine, "submit", lambda request, sink: (submitted.append(request), submit(request, sink)))
    for bias, calls in ((100, True), (-100, False)):
        body = chat(app, tools=TOOLS, tool_choice="auto", max_tokens=120, temperature=0, parallel_tool_calls=False,
                    strictcall={"auto_tool_bias": bias}).json()
        assert bool(body["choices"][0]["message"].get("tool_calls")) == calls, body
        assert serving.tokenizer.decode(submitted[-1].call_opening) == "<tool_call>"
    # Only auto turns with tools that answer a user get it: not required, none, no tools, or after a tool result.
    after_result = USER + [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                           {"role": "tool", "tool_call_id": "c1", "content": "12:00"}]
    for extra in ({"tools": TOOLS, "tool_choice": "required"}, {"tools": TOOLS, "tool_choice": "none"}, {},
                  {"tools": TOOLS, "tool_choice": "auto", "messages": after_result}):
        chat(app, max_tokens=2, strictcall={"auto_tool_bias": 100}, **extra)
        assert submitted[-1].call_opening == ()


# ----- what a request leaves unset, and what is reported back -----


def _serving_with_defaults(serving: ServingState, defaults: dict[str, float]) -> ServingState:
    return dataclasses.replace(serving, sampling_defaults=defaults)


def test_a_request_without_max_tokens_gets_the_default_budget(serving) -> None:
    body = {"model": MODEL, "messages": USER, "strictcall": {"constrained": False}, "ignore_eos": True}
    assert call(make_app(serving, default_max_tokens=5), "POST", "/v1/chat/completions", json=body).json()["usage"]["completion_tokens"] == 5
    # The model's generation_config max_new_tokens comes next; the flag wins over it.
    limited = make_app(_serving_with_defaults(serving, {"max_tokens": 3}))
    assert call(limited, "POST", "/v1/chat/completions", json=body).json()["usage"]["completion_tokens"] == 3
    assert call(make_app(_serving_with_defaults(serving, {"max_tokens": 3}), default_max_tokens=4), "POST", "/v1/chat/completions",
                json=body).json()["usage"]["completion_tokens"] == 4


def test_unset_sampling_comes_from_the_model_and_explicit_values_win(serving) -> None:
    greedy = make_app(_serving_with_defaults(serving, {"temperature": 0.0}))
    body = {"model": MODEL, "messages": USER, "max_tokens": 12, "strictcall": {"constrained": False}}
    texts = {call(greedy, "POST", "/v1/chat/completions", json={**body, "seed": seed}).json()["choices"][0]["message"]["content"] for seed in range(4)}
    assert len(texts) == 1  # temperature 0 from the defaults: the seed changes nothing
    hot = {call(greedy, "POST", "/v1/chat/completions", json={**body, "seed": seed, "temperature": 1.5}).json()["choices"][0]["message"]["content"]
           for seed in range(4)}
    assert len(hot) > 1  # the request's own temperature wins


def test_unenforced_keywords_of_non_strict_tools_are_reported(serving, caplog) -> None:
    tags = {"type": "function", "function": {"name": "tag", "parameters": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}, "required": ["tags"]}}}
    app = make_app(serving)
    with caplog.at_level("INFO", logger="strictcall.server"):
        for stream in (False, True):
            response = chat(app, tools=[TOOLS[0], tags], tool_choice="required", stream=stream)
            assert response.status_code == 200
            assert json.loads(response.headers["x-strictcall-unenforced"]) == [
                {"param": "tools[1].function.parameters", "pointer": "/properties/tags", "keyword": "uniqueItems"}]
    assert "tools[1].function.parameters at /properties/tags: uniqueItems" in caplog.text
    assert 'strictcall_unenforced_keywords_total{keyword="uniqueItems"} 2' in call(app, "GET", "/metrics").text
    assert "x-strictcall-unenforced" not in chat(app, tools=TOOLS, tool_choice="required").headers


def test_each_finished_request_is_one_log_line(serving, caplog) -> None:
    with caplog.at_level("INFO", logger="strictcall.server"):
        body = chat(make_app(serving), tools=TOOLS, tool_choice="required", max_tokens=60).json()
        chat(make_app(serving, log_requests=False), max_tokens=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("chatcmpl-")]
    assert len(lines) == 1, lines
    usage, finish = body["usage"], body["choices"][0]["finish_reason"]
    assert lines[0].startswith(f"{body['id']}: prompt {usage['prompt_tokens']} tokens")
    assert f"completion {usage['completion_tokens']} tokens" in lines[0] and "time to first token" in lines[0]
    assert f"tool calls {len(body['choices'][0]['message'].get('tool_calls') or [])}, finish {finish}" in lines[0]


# ----- bad input is a 4xx naming the field, never a 500 (the reliability issue's probe, as rows) -----

DEEP_SCHEMA: dict = {"type": "object"}
for _ in range(130):
    DEEP_SCHEMA = {"type": "object", "properties": {"a": DEEP_SCHEMA}}


def _tool(parameters: Any, name: str = "f") -> list[dict]:
    return [{"type": "function", "function": {"name": name, "parameters": parameters}}]


# name, raw body (bytes) or JSON body, param expected in the error (None: the body itself)
BAD_INPUTS = [
    ("properties as a list", {"tools": _tool({"type": "object", "properties": ["a"]})}, "tools[0].function.parameters"),
    ("required as a number", {"tools": _tool({"type": "object", "required": 5})}, "tools[0].function.parameters"),
    ("type as a number", {"tools": _tool({"type": 5})}, "tools[0].function.parameters"),
    ("pattern as a number", {"tools": _tool({"type": "string", "pattern": 5})}, "tools[0].function.parameters"),
    ("minimum as a string", {"tools": _tool({"type": "number", "minimum": "a"})}, "tools[0].function.parameters"),
    ("a schema 130 levels deep", {"tools": _tool(DEEP_SCHEMA)}, None),
    ("minLength above maxLength", {"tools": _tool({"type": "object", "properties": {"s": {"type": "string", "minLength": 5, "maxLength": 2}},
                                                   "required": ["s"]}), "tool_choice": "required"}, "tools[0].function.parameters"),
    ("a tool name with a newline", {"tools": _tool({"type": "object"}, name="get_weather\n")}, "tools[0].function.name"),
    ("temperature true", {"temperature": True}, "temperature"),
    ("n as a string", {"n": "2"}, "n"),
    ("stream as a string", {"stream": "yes"}, "stream"),
    ("strict as a string", {"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}, "tools[0].function.strict"),
    ("seed beyond 64 bits", {"seed": 2**64}, "seed"),
    ("model as a number", {"model": 123}, "model"),
    ("a tool result that answers no call", {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope",
                                                                                               "content": "x"}]}, "messages[1].tool_call_id"),
    ("a lone surrogate in content", b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    ("a lone surrogate in a tool name", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", '
                                        b'"function": {"name": "f\\udc00"}}]}', "tools[0].function.name"),
    ("a lone surrogate in a property name", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", '
                                            b'"function": {"name": "f", "parameters": {"type": "object", "properties": {"\\ud800": {}}}}}]}',
     "tools[0].function.parameters.properties.\\ud800"),
    ("a lone surrogate in model", b'{"model": "\\ud800", "messages": [{"role": "user", "content": "a"}]}', "model"),
    ("JSON 1000 levels deep", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}], "metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}",
     None),
    ("an integer of 5000 digits", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}], "seed": ' + b"9" * 5000 + b"}", None),
    ("maximum 1e999", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function", "function": '
                      b'{"name": "f", "parameters": {"type": "number", "maximum": 1e999}}}]}', None),
    ("a const NaN", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}], "guided_json": {"const": NaN}}', None),
]


@pytest.mark.parametrize("name,body,param", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_400_naming_the_field(app, name, body, param) -> None:
    if isinstance(body, bytes):
        response = call(app, "POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        response = call(app, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    error = error_of(response)
    if param is not None:
        assert error["param"] == param, error
    assert "internal" not in error["message"]
    assert chat(app).status_code == 200  # and the server goes on


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
_SCHEMA_KEYS = ["type", "properties", "required", "items", "enum", "const", "minimum", "maximum", "minLength", "maxLength", "pattern",
                "format", "anyOf", "oneOf", "allOf", "$ref", "additionalProperties", "minItems", "maxItems", "not", "$defs"]
_FIELDS = ["model", "messages", "temperature", "top_p", "n", "stop", "seed", "max_tokens", "logit_bias", "stream", "response_format",
           "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "guided_json", "guided_regex", "guided_choice", "min_tokens",
           "strictcall", "stream_options", "presence_penalty"]


@st.composite
def _malformed_request(draw) -> dict:
    body: dict = {"model": MODEL, "messages": USER, "max_tokens": 2}
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3, unique=True)):
        body[name] = draw(_JSON)
    if draw(st.booleans()):
        schema = draw(st.dictionaries(st.sampled_from(_SCHEMA_KEYS), _JSON, max_size=4))
        body["tools"] = [{"type": "function", "function": {"name": draw(st.text(max_size=8)) or "f", "parameters": schema,
                                                           "strict": draw(st.booleans())}}]
    return body


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_malformed_request())
def test_malformed_requests_get_a_4xx_in_openai_shape(app, body) -> None:
    response = call(app, "POST", "/v1/chat/completions", json=body)
    assert response.status_code in (200, 400, 404, 413, 429), (response.status_code, response.text, body)
    if response.status_code != 200:
        error_of(response)


def test_the_server_is_healthy_after_the_malformed_requests(app) -> None:
    assert call(app, "GET", "/health").json() == {"status": "ok"} and chat(app).status_code == 200


def _compile_bomb(levels: int = 12) -> dict:
    """2.4 KB of schema, a 737k-character regex: each level merges the one below (an allOf) twice. (A plain $ref is
    compiled once now; an allOf member that is a $ref is still merged in place, so this still expands.)"""
    defs: dict = {"d0": {"type": "string", "maxLength": 3}}
    for i in range(1, levels + 1):
        ref = {"allOf": [{"$ref": f"#/$defs/d{i - 1}"}, {"minProperties": 0}]}
        defs[f"d{i}"] = {"type": "object", "properties": {"a": ref, "b": ref}, "required": ["a", "b"]}
    return {"$defs": defs, "$ref": f"#/$defs/d{levels}"}


def test_a_compile_bomb_times_out_alone_and_leaves_nothing_behind(serving, monkeypatch) -> None:
    app = make_app(serving, compile_timeout_s=0.5)
    bomb = {"model": MODEL, "messages": USER, "max_tokens": 4, "tools": _tool(_compile_bomb(), name="bomb")}
    cached = {"model": MODEL, "messages": USER, "max_tokens": 4, "tools": TOOLS, "tool_choice": "required"}
    assert call(app, "POST", "/v1/chat/completions", json=cached).status_code == 200  # now compiled
    pool, queued = serving.compile_pool, []
    run = pool.run

    async def recording_run(key, build, timeout_s):
        queued.append(key[0])
        return await run(key, build, timeout_s)

    monkeypatch.setattr(pool, "run", recording_run)

    async def go() -> list[tuple[str, int]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as client:
            async def send(name: str, body: dict) -> tuple[str, int]:
                return name, (await client.post("/v1/chat/completions", json=body)).status_code
            plain = {**cached, "tools": None, "tool_choice": None}
            results = await asyncio.gather(*[send("bomb", bomb) for _ in range(4)], send("cached", cached), send("plain", plain))
            # A stopped job leaves the pool through the event loop (as in the server, whose loop runs on): wait on it.
            deadline = time.monotonic() + 20
            while pool._jobs and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return results

    results = asyncio.run(go())
    assert [status for name, status in results if name == "bomb"] == [400] * 4
    assert all(status == 200 for name, status in results if name != "bomb")
    assert queued == ["turn"] * 4  # only the bombs went to the compile pool: the cached turn and the plain chat never queue
    assert not pool._jobs  # the four shared one job, and it was stopped, not left running
    assert serving.grammars.tool_compiler.cached_turn([ToolSpec("bomb", _compile_bomb())], "auto") is None


def test_a_grammar_whose_dfa_outgrows_its_limit_still_generates(serving) -> None:
    """The reliability issue's repro, which used to fail mid-generation: a regex whose lazy DFA outgrows its limit
    while generating, beside innocent requests."""
    app = make_app(serving)
    bomb = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a cat."}], "guided_regex": "[a-z ]*a[a-z ]{40}",
            "max_tokens": 120, "temperature": 1.0, "seed": 1}
    innocent = {"model": MODEL, "messages": USER, "max_tokens": 40, "temperature": 1.0, "tools": TOOLS, "tool_choice": "required",
                "parallel_tool_calls": False}

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=300) as client:
            return await asyncio.gather(client.post("/v1/chat/completions", json=bomb),
                                        *(client.post("/v1/chat/completions", json={**innocent, "seed": i}) for i in range(4)))

    bombed, *others = asyncio.run(go())
    # Its DFA (2**40 states) passes the limit many times while generating: flushed and rebuilt, never an error.
    assert bombed.status_code == 200, bombed.text
    choice = bombed.json()["choices"][0]
    assert choice["finish_reason"] == "length" or re.fullmatch("[a-z ]*a[a-z ]{40}", choice["message"]["content"])
    assert serving.grammars.tool_compiler.compiler.cached_regex("[a-z ]*a[a-z ]{40}").dfa.num_flushes >= 1
    for response in others:
        assert response.status_code == 200, response.text
        _check_calls(response.json()["choices"][0]["message"], set(SCHEMAS))
