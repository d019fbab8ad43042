"""`/v1/responses` in-process, on the tiny random-weight Llama over SmolLM2's vocabulary, driven with httpx and with
the official `openai` SDK (`AsyncOpenAI` over an ASGI transport, so `responses.create`, `.stream` and `.parse` parse
what the server sends exactly as against a remote server).

Cheap cases live here: every refused field with its status, `param` and code; the errors of the chat path named
by their Responses field; the event sequence; the store behind `previous_response_id`, `GET` and `DELETE`. With
random weights the grammar does all the work, so every finished `function_call` must validate against its tool's
schema in every `tool_choice` mode, streamed or not, and a stream must add up to the non-streamed response for
the same seed.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import pytest

from strictcall.server.api import create_app
from strictcall.server.config import ServerConfig

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")
from pydantic import BaseModel, Field  # noqa: E402

MODEL = "tiny"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather forecast", "parameters": WEATHER},
         {"type": "function", "name": "get_time", "parameters": TIME, "strict": False}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.fixture(scope="module")
def serving(build_serving, tiny_llama):
    state = build_serving(tiny_llama)
    yield state
    state.engine.shutdown()


def make_app(serving, **config):
    app = create_app(ServerConfig(served_model_names=(MODEL,), max_model_len=1024, **config), loader=lambda c: serving)
    app.state.app_state.serving = serving  # httpx's ASGI transport does not run the lifespan (which loads)
    return app


@pytest.fixture(scope="module")
def app(serving):
    return make_app(serving)


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def create(app, **body) -> httpx.Response:
    return call(app, "POST", "/v1/responses", json={"model": MODEL, "input": "What is the weather in Paris?", "max_output_tokens": 8, **body})


def sdk(app, work):
    """Run `work(client)` with an `openai.AsyncOpenAI` that talks to `app` in-process."""
    async def go():
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test", timeout=120)
        async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0) as client:
            return await work(client)

    return asyncio.run(go())


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def events_of(response: httpx.Response) -> list[dict]:
    """The SSE events of a Responses stream: `event:` names the `data:`'s type; no `[DONE]`."""
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream"), response.text
    events = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        event = json.loads(data[len("data: "):])
        assert event["type"] == name[len("event: "):]
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


# ----- refused and invalid fields: (name, body, status, param, code, words in the message) -----

USER = [{"role": "user", "content": "Hi"}]
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_time", "arguments": '{"zone": "UTC"}'}
ERROR_CASES = [
    ("missing model", {"input": "x"}, 400, "model", "missing_required_parameter", "'model'"),
    ("missing input", {"model": MODEL}, 400, "input", "missing_required_parameter", "'input'"),
    ("unknown field", {"model": MODEL, "input": "x", "foo": 1}, 400, "foo", "unknown_parameter", "foo"),
    ("built-in tool", {"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type", "unsupported_value", "web_search"),
    ("file search", {"model": MODEL, "input": "x", "tools": [TOOLS[0], {"type": "file_search", "vector_store_ids": ["v"]}]}, 400, "tools[1].type",
     "unsupported_value", "file_search"),
    ("chat-shaped tool", {"model": MODEL, "input": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools[0].function",
     "unknown_parameter", "flat"),
    ("tool field typo", {"model": MODEL, "input": "x", "tools": [{"type": "function", "name": "f", "parameter": {}}]}, 400, "tools[0].parameter",
     "unknown_parameter", "tools[0].parameter"),
    ("bad tool name", {"model": MODEL, "input": "x", "tools": [{"type": "function", "name": "bad name!"}]}, 400, "tools[0].name", "invalid_value",
     "bad name!"),
    ("unenforceable schema, strict by default", {"model": MODEL, "input": "x", "tools": [TOOLS[0], {"type": "function", "name": "f", "parameters": {
        "type": "object", "properties": {"x": {"not": {"type": "string"}}}}}]}, 400, "tools[1].parameters", "unsupported_schema",
     'strict unless they set "strict": false'),
    ("tool_choice names a missing tool", {"model": MODEL, "input": "x", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, 400,
     "tool_choice", "invalid_value", "'nope'"),
    ("tool_choice without tools", {"model": MODEL, "input": "x", "tool_choice": "required"}, 400, "tool_choice", "invalid_value", "tools"),
    ("tool_choice unknown string", {"model": MODEL, "input": "x", "tools": TOOLS, "tool_choice": "any"}, 400, "tool_choice", "invalid_value",
     '"name": ...'),
    ("tool_choice allowed_tools", {"model": MODEL, "input": "x", "tools": TOOLS, "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
     400, "tool_choice.type", "unsupported_value", "allowed_tools"),
    ("tool_choice built-in", {"model": MODEL, "input": "x", "tools": TOOLS, "tool_choice": {"type": "web_search_preview"}}, 400, "tool_choice.type",
     "unsupported_value", "web_search_preview"),
    ("text.format type", {"model": MODEL, "input": "x", "text": {"format": {"type": "xml"}}}, 400, "text.format.type", "invalid_value", "xml"),
    ("json_schema without schema", {"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, 400, "text.format.schema",
     "missing_required_parameter", "text.format.schema"),
    ("schema on a text format", {"model": MODEL, "input": "x", "text": {"format": {"type": "text", "schema": {}}}}, 400, "text.format.schema",
     "unknown_parameter", "json_schema"),
    ("unenforceable strict text schema", {"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "a", "strict": True,
                                                                                       "schema": {"type": "array", "uniqueItems": True}}}},
     400, "text.format.schema", "unsupported_schema", "uniqueItems"),
    ("max_output_tokens beyond the context", {"model": MODEL, "input": "x", "max_output_tokens": 5000}, 400, "max_output_tokens",
     "context_length_exceeded", "max_output_tokens"),
    ("input beyond the context", {"model": MODEL, "input": "word " * 1200}, 400, "input", "context_length_exceeded", "1024"),
    ("temperature out of range", {"model": MODEL, "input": "x", "temperature": 3}, 400, "temperature", "invalid_value", "2"),
    ("bad role", {"model": MODEL, "input": [{"role": "bot", "content": "x"}]}, 400, "input[0].role", "invalid_value", "input[0].role"),
    ("image content", {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, 400,
     "input[0].content[0].type", "invalid_value", "text only"),
    ("file in a tool output", {"model": MODEL, "input": USER + [CALL, {"type": "function_call_output", "call_id": "call_1",
                                                                         "output": [{"type": "input_file", "file_id": "f"}]}]},
     400, "input[2].output[0].type", "invalid_value", "text only"),
    ("tool output without call_id", {"model": MODEL, "input": USER + [CALL, {"type": "function_call_output", "output": "x"}]}, 400, "input[2].call_id",
     "missing_required_parameter", "input[2].call_id"),
    ("call arguments not JSON", {"model": MODEL, "input": USER + [{**CALL, "arguments": "{nope"}]}, 400, "input[1].arguments", "invalid_value", "JSON"),
    ("item_reference", {"model": MODEL, "input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0].type", "unsupported_value",
     "previous_response_id"),
    ("reasoning item", {"model": MODEL, "input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, 400, "input[0].type", "unsupported_value",
     "reasoning"),
    ("item without type", {"model": MODEL, "input": [{"content": "x"}]}, 400, "input[0].type", "missing_required_parameter", "input[0].type"),
    ("background", {"model": MODEL, "input": "x", "background": True}, 400, "background", "unsupported_parameter", "background"),
    ("conversation", {"model": MODEL, "input": "x", "conversation": "conv_1"}, 400, "conversation", "unsupported_parameter", "previous_response_id"),
    ("prompt template", {"model": MODEL, "input": "x", "prompt": {"id": "pmpt_1"}}, 400, "prompt", "unsupported_parameter", "template"),
    ("include", {"model": MODEL, "input": "x", "include": ["message.output_text.logprobs"]}, 400, "include", "unsupported_parameter", "logprobs"),
    ("top_logprobs", {"model": MODEL, "input": "x", "top_logprobs": 2}, 400, "top_logprobs", "unsupported_parameter", "chat"),
    ("reasoning effort", {"model": MODEL, "input": "x", "reasoning": {"effort": "high"}}, 400, "reasoning.effort", "unsupported_parameter", "reason"),
    ("truncation auto", {"model": MODEL, "input": "x", "truncation": "auto"}, 400, "truncation", "unsupported_parameter", "disabled"),
    ("stream_options without stream", {"model": MODEL, "input": "x", "stream_options": {"include_obfuscation": False}}, 400, "stream_options",
     "invalid_value", "stream"),
    ("too much metadata", {"model": MODEL, "input": "x", "metadata": {str(i): "v" for i in range(17)}}, 400, "metadata", "invalid_value", "16"),
    ("metadata value not a string", {"model": MODEL, "input": "x", "metadata": {"a": 1}}, 400, "metadata.a", "invalid_value", "string"),
    ("unknown previous response", {"model": MODEL, "input": "x", "previous_response_id": "resp_nope"}, 400, "previous_response_id",
     "previous_response_not_found", "resp_nope"),
    ("extension field typo", {"model": MODEL, "input": "x", "strictcall": {"constraind": False}}, 400, "strictcall.constraind", "unknown_parameter",
     "constraind"),
    ("unknown model", {"model": "gpt-4o", "input": "x"}, 404, "model", "model_not_found", "gpt-4o"),
    ("a number as a string", {"model": MODEL, "input": "x", "max_output_tokens": "8"}, 400, "max_output_tokens", "invalid_value", "integer"),
    ("tool output answering no call", {"model": MODEL, "input": USER + [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]}, 400,
     "input[1].call_id", "invalid_value", "call_9"),
]


@pytest.mark.parametrize("name,body,status,param,code,words", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_name_the_responses_field(app, name, body, status, param, code, words) -> None:
    response = call(app, "POST", "/v1/responses", json=body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code), error
    assert words in error["message"], error["message"]
    assert "function." not in error["message"] and "response_format" not in error["message"], error["message"]


def test_fields_accepted_and_ignored(app) -> None:
    response = create(app, user="u", safety_identifier="s", prompt_cache_key="k", prompt_cache_retention="24h", service_tier="auto", max_tool_calls=3,
                      text={"format": {"type": "text"}, "verbosity": "low"}, reasoning={"effort": "none"}, truncation="disabled", background=False,
                      include=[], stream=False, metadata={"run": "7"}, instructions="Be brief.", tool_choice="auto")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"] == {"run": "7"} and body["instructions"] == "Be brief." and body["text"]["verbosity"] == "low"


# ----- generation with random weights: the grammar does all the work -----


def _valid_calls(output, names: set[str]) -> list:
    calls = [item for item in output if item.type == "function_call"]
    for item in calls:
        assert item.status == "completed" and item.call_id.startswith("call_") and item.id.startswith("fc_")
        assert item.name in names
        jsonschema.validate(json.loads(item.arguments), SCHEMAS[item.name])
    return calls


CHOICES = [("required", set(SCHEMAS), None), ({"type": "function", "name": "get_time"}, {"get_time"}, None),
           ("auto", set(SCHEMAS), {"auto_tool_bias": 100}), ("none", set(), None)]


@pytest.mark.parametrize("parallel", [False, True], ids=["one call", "parallel"])
@pytest.mark.parametrize("tool_choice,names,extension", CHOICES, ids=["required", "named", "auto", "none"])
def test_random_weights_make_valid_function_calls_in_every_mode(app, tool_choice, names, extension, parallel) -> None:
    async def work(client):
        return [await client.responses.create(model=MODEL, input="Weather in Paris?", tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=parallel,
                                              max_output_tokens=160, temperature=1.0, extra_body={"seed": seed, "strictcall": extension})
                for seed in range(3)]

    for response in sdk(app, work):
        calls = _valid_calls(response.output, names)
        if tool_choice == "none":
            assert not calls and response.output_text
        else:
            # Both schemas are bounded: one call always fits in 160 tokens; parallel turns may be cut after complete calls.
            assert calls and (response.status == "completed" or parallel), response
            assert len(calls) == 1 or parallel
        assert response.usage.output_tokens > 0 and response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def _normalized(body: dict) -> dict:
    """A Response without what differs between two runs of the same request (ids, times, prompt tokens found cached)."""
    out = {k: v for k, v in body.items() if k not in ("id", "created_at", "completed_at")}
    out["usage"] = {**body["usage"], "input_tokens_details": None}
    out["output"] = [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in body["output"]]
    return out


@pytest.mark.parametrize("body", [
    {"tools": TOOLS, "tool_choice": "required", "max_output_tokens": 150},
    {"tools": TOOLS, "tool_choice": "auto", "strictcall": {"auto_tool_bias": 100}, "max_output_tokens": 60},
    {"max_output_tokens": 12},
    {"text": {"format": {"type": "json_schema", "name": "a", "strict": True, "schema": WEATHER}}, "max_output_tokens": 60},
], ids=["calls", "auto", "text", "json_schema"])
def test_stream_adds_up_to_the_non_streamed_response_for_the_same_seed(app, body) -> None:
    request = {"input": "Weather in Paris?", "temperature": 1.0, "seed": 11, **body}
    events = events_of(create(app, stream=True, **request))
    whole = create(app, **request).json()
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] in ("response.completed", "response.incomplete")
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    final = events[-1]["response"]
    assert _normalized(final) == _normalized(whole) and final["status"] == whole["status"]
    # Every item added is done; deltas add up to the item; a done item equals the final output's.
    added = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.added"}
    done = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
    assert added.keys() == done.keys() and added
    for index, item in done.items():
        assert added[index]["id"] == item["id"] and added[index]["status"] == "in_progress"
        if item["type"] == "function_call":
            deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta" and e["output_index"] == index)
            assert deltas == item["arguments"]
            assert [e["arguments"] for e in events if e["type"] == "response.function_call_arguments.done" and e["output_index"] == index] == (
                [item["arguments"]] if item["status"] == "completed" else [])
        else:
            deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta" and e["output_index"] == index)
            assert deltas == item["content"][0]["text"]
            assert [e["text"] for e in events if e["type"] == "response.output_text.done" and e["output_index"] == index] == [deltas]
        if item["type"] == "message" or item["status"] == "completed":
            assert item in final["output"]
    if "text" in body:
        jsonschema.validate(json.loads(final["output"][0]["content"][0]["text"]), WEATHER)


def test_the_strictcall_extension_reaches_the_engine(app, serving, monkeypatch) -> None:
    submitted = []
    submit = serving.engine.submit
    monkeypatch.setattr(serving.engine, "submit", lambda request, sink: (submitted.append(request), submit(request, sink))[1])
    body = create(app, tools=TOOLS, tool_choice="required", max_output_tokens=12, temperature=1.0, seed=5,
                  strictcall={"constrained": False, "jump_forward": False}).json()
    assert submitted[-1].grammar is None and submitted[-1].jump_forward is False
    # Random weights without a grammar write noise: no call parses, and nothing fails.
    assert [item["type"] for item in body["output"]] == ["message"] and body["status"] == "incomplete"
    create(app, tools=TOOLS, tool_choice="required", strictcall={"jump_forward": True})
    assert submitted[-1].grammar is not None and submitted[-1].jump_forward is True


def test_a_call_cut_by_the_budget_is_announced_but_not_returned(app) -> None:
    cut = 0
    for budget in range(10, 24):  # from too short for the call's head to long enough for some calls
        request = {"tools": TOOLS, "tool_choice": {"type": "function", "name": "get_weather"}, "max_output_tokens": budget, "temperature": 0}
        whole = create(app, **request).json()
        events = events_of(create(app, stream=True, **request))
        assert _normalized(events[-1]["response"]) == _normalized(whole)
        if whole["status"] == "completed":
            continue
        assert whole["incomplete_details"] == {"reason": "max_output_tokens"} and "completed_at" not in whole
        assert whole["output"] == [] and events[-1]["type"] == "response.incomplete"
        done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
        if done:  # the call's head was streamed: it is closed as incomplete, without arguments.done
            assert [(d["type"], d["status"]) for d in done] == [("function_call", "incomplete")]
            assert not [e for e in events if e["type"] == "response.function_call_arguments.done"]
            cut += 1
    assert cut, "no budget cut a call after its head was streamed"


def test_sdk_stream_and_parse_helpers(app) -> None:
    class Forecast(BaseModel):
        city: str = Field(max_length=12)
        days: int = Field(ge=1, le=7)

    async def work(client):
        async with client.responses.stream(model=MODEL, input="Weather in Paris?", tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                           max_output_tokens=150, temperature=1.0, extra_body={"seed": 2}) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        parsed = await client.responses.parse(model=MODEL, input="Weather in Paris?", text_format=Forecast, max_output_tokens=80,
                                              temperature=1.0, extra_body={"seed": 4})
        async with client.responses.stream(model=MODEL, input="Hi", text_format=Forecast, max_output_tokens=80, temperature=1.0,
                                           extra_body={"seed": 5}) as stream:
            text_kinds = {event.type async for event in stream}
            streamed_parse = await stream.get_final_response()
        tool = openai.pydantic_responses_function_tool(Forecast, name="get_weather", description="Weather forecast")
        called = await client.responses.parse(model=MODEL, input="Weather in Paris?", tools=[tool], tool_choice="required", parallel_tool_calls=False,
                                              max_output_tokens=80, temperature=1.0, extra_body={"seed": 6})
        return kinds, final, parsed, text_kinds, streamed_parse, called

    kinds, final, parsed, text_kinds, streamed_parse, called = sdk(app, work)
    [function_call] = called.output
    assert isinstance(function_call.parsed_arguments, Forecast)  # the SDK's strict pydantic tool, parsed from the grammar's arguments
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed" and "response.function_call_arguments.done" in kinds
    assert len(_valid_calls(final.output, set(SCHEMAS))) == 1
    assert isinstance(parsed.output_parsed, Forecast) and parsed.status == "completed"
    assert {"response.output_text.delta", "response.output_text.done", "response.content_part.done"} <= text_kinds
    assert isinstance(streamed_parse.output_parsed, Forecast)


# ----- conversations: previous_response_id, explicit items, the store -----


def _capture_prompts(serving, monkeypatch) -> list[str]:
    prompts: list[str] = []
    submit = serving.engine.submit
    monkeypatch.setattr(serving.engine, "submit", lambda request, sink: (prompts.append(serving.tokenizer.decode(request.prompt_ids)),
                                                                        submit(request, sink))[1])
    return prompts


def test_a_function_call_round_trip_through_previous_response_id(serving, monkeypatch) -> None:
    app = make_app(serving)
    prompts = _capture_prompts(serving, monkeypatch)
    first = create(app, input="Weather in Paris?", instructions="You are a weather bot.", tools=TOOLS,
                   tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=150, temperature=0).json()
    [call_] = [item for item in first["output"] if item["type"] == "function_call"]
    second = create(app, previous_response_id=first["id"], tools=TOOLS, max_output_tokens=4,
                    input=[{"type": "function_call_output", "call_id": call_["call_id"], "output": "22 degrees and sunny"}])
    assert second.status_code == 200, second.text
    assert second.json()["previous_response_id"] == first["id"] and second.json()["instructions"] is None
    # The second prompt holds the first turn (its input, its call) and the tool's output; instructions do not carry over.
    assert "You are a weather bot." in prompts[0] and "You are a weather bot." not in prompts[1]
    arguments = json.dumps(json.loads(call_["arguments"]), ensure_ascii=False, separators=(", ", ": "))  # as the prompt writes calls
    for text in ("Weather in Paris?", arguments, "22 degrees and sunny"):
        assert text in prompts[1], text
    assert call(app, "GET", f"/v1/responses/{first['id']}").json() == first
    # Deleting a turn breaks the conversations that continue it, and it is gone.
    assert call(app, "DELETE", f"/v1/responses/{first['id']}").json() == {"id": first["id"], "object": "response", "deleted": True}
    assert call(app, "GET", f"/v1/responses/{first['id']}").status_code == 404
    assert error_of(call(app, "DELETE", f"/v1/responses/{first['id']}"))["code"] == "not_found"
    third = create(app, previous_response_id=second.json()["id"], input="And tomorrow?")
    assert third.status_code == 400 and first["id"] in error_of(third)["message"] and error_of(third)["param"] == "previous_response_id"


def test_explicit_function_call_output_items_and_store_false(serving, monkeypatch) -> None:
    app = make_app(serving)
    prompts = _capture_prompts(serving, monkeypatch)

    async def work(client):
        first = await client.responses.create(model=MODEL, input="Time in Paris?", tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                              max_output_tokens=150, temperature=0, store=False)
        [fc] = _valid_calls(first.output, set(SCHEMAS))
        items = [{"role": "user", "content": [{"type": "input_text", "text": "Time in Paris?"}]},
                 *[item.model_dump(exclude_none=True) for item in first.output],
                 {"type": "function_call_output", "call_id": fc.call_id, "output": [{"type": "input_text", "text": "It is noon."}]}]
        second = await client.responses.create(model=MODEL, input=items, tools=TOOLS, max_output_tokens=4, store=False,
                                               extra_body={"strictcall": {"auto_tool_bias": 100}})
        return first, fc, second

    first, fc, second = sdk(app, work)
    assert not first.store and second.status in ("completed", "incomplete")
    assert json.dumps(json.loads(fc.arguments), ensure_ascii=False, separators=(", ", ": ")) in prompts[1] and "It is noon." in prompts[1]
    assert call(app, "GET", f"/v1/responses/{first.id}").status_code == 404  # store: false keeps nothing
    assert len(app.state.response_store) == 0


def test_auto_tool_bias_is_not_applied_after_a_tool_result(serving, monkeypatch) -> None:
    submitted = []
    submit = serving.engine.submit
    monkeypatch.setattr(serving.engine, "submit", lambda request, sink: (submitted.append(request), submit(request, sink))[1])
    app = make_app(serving)
    create(app, tools=TOOLS, strictcall={"auto_tool_bias": 100})
    assert submitted[-1].call_opening != ()
    create(app, tools=TOOLS, strictcall={"auto_tool_bias": 100}, input=USER + [CALL, {"type": "function_call_output", "call_id": "call_1", "output": "12:00"}])
    assert submitted[-1].call_opening == ()


def test_the_store_is_bounded_in_entries_and_bytes(serving) -> None:
    app = make_app(serving, response_store_entries=3, response_store_bytes=9000)
    ids = [create(app, input=f"turn {i}", max_output_tokens=2).json()["id"] for i in range(4)]
    assert [call(app, "GET", f"/v1/responses/{i}").status_code for i in ids] == [404, 200, 200, 200]  # three at most, the oldest out first
    create(app, previous_response_id=ids[1], input="again", max_output_tokens=2)  # continuing a conversation keeps it: ids[2] goes next
    heavy = {str(k): "m" * 500 for k in range(6)}  # 3 KB of metadata: two such responses (~4.2 KB each) fill the 9,000 bytes
    ids += [create(app, input="x", metadata=heavy, max_output_tokens=2).json()["id"] for _ in range(2)]
    store = app.state.response_store
    assert len(store) <= 3 and store.bytes_used <= 9000
    assert [call(app, "GET", f"/v1/responses/{i}").status_code for i in ids] == [404, 404, 404, 404, 200, 200]
    too_big = create(app, input="x", metadata={str(k): "m" * 500 for k in range(16)}, max_output_tokens=2).json()
    assert call(app, "GET", f"/v1/responses/{too_big['id']}").status_code == 404  # larger than the whole store: not kept
    assert call(app, "GET", f"/v1/responses/{ids[-1]}").status_code == 200  # and it evicted nothing
    nothing = make_app(serving, response_store_entries=0)
    assert call(nothing, "GET", f"/v1/responses/{create(nothing).json()['id']}").status_code == 404


def test_unenforced_keywords_name_the_responses_field(app) -> None:
    tags = {"type": "function", "name": "tag", "strict": False, "parameters": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}, "required": ["tags"]}}
    response = create(app, tools=[TOOLS[0], tags], tool_choice="required")
    assert json.loads(response.headers["x-strictcall-unenforced"]) == [
        {"param": "tools[1].parameters", "pointer": "/properties/tags", "keyword": "uniqueItems"}]
    response = create(app, text={"format": {"type": "json_schema", "name": "tags", "schema": tags["parameters"]}})
    assert json.loads(response.headers["x-strictcall-unenforced"]) == [
        {"param": "text.format.schema", "pointer": "/properties/tags", "keyword": "uniqueItems"}]


def test_log_line_and_metrics(serving, caplog) -> None:
    app = make_app(serving)
    with caplog.at_level("INFO", logger="strictcall.server"):
        body = create(app, tools=TOOLS, tool_choice="required", max_output_tokens=150, parallel_tool_calls=False).json()
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith(body["id"])]
    assert f"prompt {body['usage']['input_tokens']} tokens" in line and "tool calls 1, finish tool_calls" in line
    call(app, "GET", f"/v1/responses/{body['id']}")
    text = call(app, "GET", "/metrics").text
    assert 'strictcall_requests_total{route="/v1/responses",status="200"} 1' in text
    assert 'strictcall_requests_total{route="/v1/responses/{id}",status="200"} 1' in text
