"""strictcall's tool calls on vLLM's offline `LLM` (no server): the same turn spec, backend and reading.

    llm = LLM(model, tokenizer_mode="strictcall", logits_processors=[CallOpeningBias])
    turn = ToolTurn(llm, tools, tool_choice="required")
    content, calls = turn.chat([{"role": "user", "content": "Weather in Paris?"}], max_tokens=100)[0]

`tokenizer_mode="strictcall"` renders the tool prompt for templates without tools (renderer.py); the logits
processor is needed only for `auto_tool_bias`. The plugin (registered by vLLM at start-up) routes the spec to
strictcall's backend in the engine core, as for the server.

Invariant: a `ToolTurn`'s requests are constrained exactly as the server's tool parser constrains the same
request fields, and `read` returns only complete calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm import SamplingParams
from vllm.sampling_params import StructuredOutputsParams

from strictcall.grammars import ToolCallFormat
from strictcall.vllm.grammar import process_compiler
from strictcall.vllm.output import CHOICE_KWARG, ReadCall, auto_tool_bias, model_format, read_turn
from strictcall.vllm.tool_parser import BIAS_ARG, OPENING_ARG
from strictcall.vllm.turn_spec import TurnSpec, compile_turn_spec, turn_spec_from_request


class ToolTurn:
    """A chat turn with tools on an offline `LLM`: its sampling parameters, and its output read back.

    Args:
        llm: a `vllm.LLM` (with `tokenizer_mode="strictcall"` for templates that know nothing of tools).
        tools: OpenAI tools (`{"type": "function", "function": {...}}`).
        tool_choice, parallel_tool_calls, response_format: as in OpenAI's chat API.
        auto_tool_bias: as strictcall's per-request option (None: the server-wide default / the model's profile).

    Raises:
        APIError: a request field the grammar cannot take (`param` names it), as the server answers 400.
    """

    def __init__(self, llm: Any, tools: list[dict[str, Any]], tool_choice: Any = None, parallel_tool_calls: bool | None = None,
                 response_format: dict[str, Any] | None = None, auto_tool_bias: float | None = None):
        self.llm = llm
        self.tools = tools
        self.tokenizer = llm.get_tokenizer()
        self.format: ToolCallFormat = model_format(getattr(self.tokenizer, "chat_template", None))
        body = {"tools": tools, "tool_choice": tool_choice, "parallel_tool_calls": parallel_tool_calls, "response_format": response_format}
        spec = turn_spec_from_request(body, self.format.name)
        if spec is None:
            raise ValueError("ToolTurn needs tools and a tool_choice other than 'none' (use LLM.chat as it is otherwise)")
        compile_turn_spec(process_compiler(self.tokenizer, self.format.name), spec)
        self.spec: TurnSpec = spec
        self.auto_tool_bias = auto_tool_bias

    def sampling_params(self, answers_user: bool = True, **kwargs: Any) -> SamplingParams:
        """vLLM sampling parameters (any of `SamplingParams`' own in `kwargs`) constrained to this turn."""
        extra = dict(kwargs.pop("extra_args", None) or {})
        if self.spec.choice.mode == "auto" and answers_user:
            bias = auto_tool_bias(str(getattr(self.tokenizer, "name_or_path", "")), self.auto_tool_bias)
            if bias:
                extra[OPENING_ARG] = list(self.tokenizer.encode(self.format.trigger, add_special_tokens=False))
                extra[BIAS_ARG] = float(bias)
        return SamplingParams(structured_outputs=StructuredOutputsParams(structural_tag=self.spec.to_json()), extra_args=extra or None, **kwargs)

    def chat(self, messages: list[dict[str, Any]] | Sequence[list[dict[str, Any]]], **kwargs: Any) -> list[tuple[str, list[ReadCall]]]:
        """`LLM.chat` with this turn's constraint; per conversation (and choice), (content, complete calls)."""
        conversations: list[Any] = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        params = [self.sampling_params(answers_user=c[-1].get("role") == "user", **kwargs) for c in conversations]
        outputs = self.llm.chat(conversations, params, tools=self.tools, use_tqdm=False,
                                chat_template_kwargs={CHOICE_KWARG: self.spec.choice.mode})
        return [self.read(o.text) for out in outputs for o in out.outputs]

    def read(self, text: str) -> tuple[str, list[ReadCall]]:
        return read_turn(self.format, text, self.spec.tool_names)
