"""vLLM's renderer `strictcall` (`--tokenizer-mode strictcall`): the tool prompt for chat templates that know
nothing of tools (SmolLM2's), rendered by strictcall's own `server/prompt.py` before the template runs.

Why a renderer: vLLM renders the chat template before any tool-parser hook (`adjust_request` sees the prompt
already made), and a Jinja template cannot call strictcall's Python signature writer. vLLM picks the renderer by
tokenizer mode from a registry, so this one is registered by the plugin under the mode `strictcall`, with
vLLM's own Hugging Face tokenizer: nothing else about tokenization changes.

Invariant: for a template that renders tools itself (hermes, llama3_json, mistral) and for a request without
tools, the prompt is vLLM's own, unchanged; for a `generic` template with tools, the messages the template
sees are strictcall's (`render_messages`: the tools as Python signatures in the system message, earlier calls
in the call syntax, tool results as `tool` messages), so the prompt equals strictcall's server's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.renderers.hf import HfRenderer

from strictcall.server.errors import APIError
from strictcall.server.prompt import PromptError, render_messages
from strictcall.vllm.output import CHOICE_KWARG, model_format
from strictcall.vllm.turn_spec import check_request_schema


def tool_choice_mode(tool_choice: Any) -> str:
    """OpenAI's `tool_choice` (vLLM's model or JSON) as the prompt's mode: none, auto, required or named."""
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, str):
        return tool_choice
    return "named"


class StrictcallRenderer(HfRenderer):
    """vLLM's Hugging Face renderer, with strictcall's tool prompt for templates without tools."""

    def _rewrite(self, messages: list[Any], params: Any, tool_role: bool) -> tuple[list[Any], Any] | None:
        """The messages and params for the template, or None where vLLM's own rendering stands."""
        tools = params.chat_template_kwargs.get("tools")
        mode = params.chat_template_kwargs.get(CHOICE_KWARG) or tool_choice_mode(params.tool_choice)
        kwargs = {k: v for k, v in params.chat_template_kwargs.items() if k not in ("tools", CHOICE_KWARG)}
        if not tools:
            return None if CHOICE_KWARG not in params.chat_template_kwargs else (messages, replace(params, chat_template_kwargs=kwargs))
        tokenizer = self.get_tokenizer()
        fmt = model_format(params.chat_template or getattr(tokenizer, "chat_template", None))
        if fmt.tools_in_template:
            return messages, replace(params, chat_template_kwargs={**kwargs, "tools": tools})
        tools = _without_nones(tools)
        try:
            for i, tool in enumerate(tools):  # the tool prompt reads the schemas: they must be schemas
                check_request_schema(tool["function"].get("parameters") or {}, f"tools[{i}].function.parameters")
            rendered, _ = render_messages(fmt, [dict(m) for m in messages], tools, mode, tool_role)
        except APIError as error:
            raise VLLMValidationError(error.message, parameter=error.param) from None
        except PromptError as error:
            raise VLLMValidationError(str(error), parameter=error.param) from None
        return rendered, replace(params, chat_template_kwargs=kwargs)

    def render_messages(self, messages: list[Any], params: Any) -> Any:
        rewritten = self._rewrite(messages, params, tool_role=True)
        if rewritten is None:
            return super().render_messages(messages, params)
        try:
            return super().render_messages(*rewritten)
        except Exception:
            # A template that refuses the `tool` role gets the results as a user message of <tool_response> blocks.
            if not any(_role(m) == "tool" for m in messages):
                raise
            return super().render_messages(*self._rewrite(messages, params, tool_role=False))  # type: ignore[misc]

    async def render_messages_async(self, messages: list[Any], params: Any) -> Any:
        rewritten = self._rewrite(messages, params, tool_role=True)
        if rewritten is None:
            return await super().render_messages_async(messages, params)
        try:
            return await super().render_messages_async(*rewritten)
        except Exception:
            if not any(_role(m) == "tool" for m in messages):
                raise
            return await super().render_messages_async(*self._rewrite(messages, params, tool_role=False))  # type: ignore[misc]


def _without_nones(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM's tools as OpenAI JSON: its models dump unset fields as None (`"description": None`), the API omits them."""
    return [{**tool, "function": {k: v for k, v in (tool.get("function") or {}).items() if v is not None}} for tool in tools]


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
