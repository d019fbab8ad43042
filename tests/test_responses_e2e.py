"""`/v1/responses` end to end: the session's real `strictcall serve` (SmolLM2 on CPU, the `server` and `client`
fixtures of conftest.py) driven with the official `openai` client and with LangChain's `use_responses_api`.

Here are what real clients parse and what SmolLM2 does with it: every `tool_choice`, function-call round trips
through `previous_response_id` and through explicit `function_call_output` items, the SDK's `stream` and `parse`
helpers, the wire format of the event stream. `max_output_tokens` stays small; `parallel_tool_calls=False` where
one call is expected (SmolLM2 may repeat a call when several are allowed).
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

openai = pytest.importorskip("openai")
from pydantic import BaseModel  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"]}
TIME = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Get the current weather in a city", "parameters": WEATHER},
         {"type": "function", "name": "get_time", "description": "Get the local time in a city", "parameters": TIME}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = "What is the weather in Paris?"
RESULT = "22 degrees celsius and sunny"


def _calls(response, names: set[str]) -> list:
    calls = [item for item in response.output if item.type == "function_call"]
    for item in calls:
        assert item.status == "completed" and item.call_id.startswith("call_") and item.name in names
        jsonschema.validate(json.loads(item.arguments), SCHEMAS[item.name])
    return calls


def test_text_response(client) -> None:
    response = client.responses.create(model=MODEL, input="Say hello.", instructions="You are friendly.", max_output_tokens=12, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_") and response.model == MODEL
    assert response.status in ("completed", "incomplete") and response.output_text
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    usage = response.usage
    assert 0 < usage.output_tokens <= 12 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    if response.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("tool_choice,names", [
    ("required", set(SCHEMAS)), ({"type": "function", "name": "get_time"}, {"get_time"}), ("auto", set(SCHEMAS)), ("none", set()),
], ids=["required", "named", "auto", "none"])
def test_every_tool_choice(client, tool_choice, names) -> None:
    response = client.responses.create(model=MODEL, input=ASK, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False,
                                       max_output_tokens=40, temperature=0)
    calls = _calls(response, names)
    if tool_choice in ("required", "none") or isinstance(tool_choice, dict):
        assert len(calls) == (0 if tool_choice == "none" else 1) and response.status == "completed", response
    assert calls or response.output_text  # auto may answer or call; whatever it does is valid


def test_round_trip_through_previous_response_id(client) -> None:
    first = client.responses.create(model=MODEL, input=ASK, tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"},
                                    max_output_tokens=40, temperature=0)
    [call] = _calls(first, {"get_weather"})
    final = client.responses.create(model=MODEL, previous_response_id=first.id, tools=TOOLS, max_output_tokens=30, temperature=0,
                                    input=[{"type": "function_call_output", "call_id": call.call_id, "output": RESULT}])
    assert final.previous_response_id == first.id and not _calls(final, set(SCHEMAS))
    assert "22" in final.output_text  # SmolLM2 answers from the tool result, which only the stored turn links to the question
    assert client.responses.retrieve(first.id).output[0].arguments == call.arguments
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_round_trip_through_explicit_items(client) -> None:
    first = client.responses.create(model=MODEL, input=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_output_tokens=40,
                                    temperature=0, store=False)
    [call] = _calls(first, set(SCHEMAS))
    items = [{"role": "user", "content": ASK}, *[item.model_dump(exclude_none=True) for item in first.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": RESULT}]
    final = client.responses.create(model=MODEL, input=items, tools=TOOLS, max_output_tokens=30, temperature=0, store=False)
    assert "22" in final.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)  # store: false keeps nothing


def test_stream_helper_adds_up_to_the_non_streamed_call(client) -> None:
    kwargs = dict(model=MODEL, input=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_output_tokens=60, temperature=0.9,
                  extra_body={"seed": 7})
    whole = client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done] = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    [call] = _calls(final, set(SCHEMAS))
    assert deltas == done == call.arguments == _calls(whole, set(SCHEMAS))[0].arguments


def test_parse_helper_and_json_schema(client) -> None:
    class City(BaseModel):
        name: str
        country: str

    parsed = client.responses.parse(model=MODEL, input="Describe Paris.", text_format=City, max_output_tokens=60, temperature=0)
    assert isinstance(parsed.output_parsed, City)
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}, "confidence": {"type": "integer", "minimum": 0,
                                                                                                           "maximum": 10}},
              "required": ["answer", "confidence"], "additionalProperties": False}
    response = client.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=60, temperature=0,
                                       text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)


def test_sse_wire_format_and_a_refused_field(server) -> None:
    body = {"model": MODEL, "input": ASK, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, "max_output_tokens": 40,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", server["base"] + "/v1/responses", json=body, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert [line.split(": ", 1)[0] for line in lines] == ["event", "data"] * (len(lines) // 2)  # no `[DONE]`
    events = [json.loads(line[6:]) for line in lines[1::2]]
    assert [line[7:] for line in lines[::2]] == [e["type"] for e in events] and events[-1]["type"] == "response.completed"
    response = httpx.post(server["base"] + "/v1/responses", json={"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools[0].type"


def test_langchain_use_responses_api(server) -> None:
    pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI
    from pydantic import Field

    class GetWeather(BaseModel):
        """Get the current weather in a city."""

        city: str = Field(description="The city, e.g. Paris")

    llm = ChatOpenAI(base_url=server["base"] + "/v1", api_key="unused", model=MODEL, temperature=0, max_tokens=60, use_responses_api=True)
    bound = llm.bind_tools([GetWeather], tool_choice="GetWeather")
    message = bound.invoke(ASK)
    [call] = message.tool_calls
    assert call["name"] == "GetWeather" and isinstance(call["args"]["city"], str)
    chunks = list(bound.stream(ASK))  # LangChain reads the event stream itself
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(call["name"], call["args"])]
    answer = llm.bind_tools([GetWeather]).invoke([HumanMessage(ASK), message, ToolMessage(RESULT, tool_call_id=call["id"])])
    assert "22" in answer.text and not answer.tool_calls
