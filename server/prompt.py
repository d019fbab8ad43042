"""OpenAI chat messages -> the prompt text, through the model's chat template.

Templates that render tools get them as they are; for templates that do not (the `generic` format), the tools
are described in a system message (`tool_prompt.render_tools_prompt`) and earlier calls are written in the
format's own syntax. Invariant: every message's text reaches the template unchanged, and an error in a
message names its field (`messages[2].content`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from strictcall.grammars import ToolCall, ToolCallFormat
from strictcall.server.tool_prompt import render_tools_prompt


class PromptError(ValueError):
    """The messages cannot be rendered into a prompt; `param` names the field (e.g. `messages[2].content`)."""

    def __init__(self, message: str, param: str | None = "messages"):
        super().__init__(message)
        self.param = param


def content_text(content: Any, param: str) -> str:
    """A message's content as text: a string, or a list of text parts joined by newlines.

    Raises:
        PromptError: a part that is not text (images, audio, files), naming the part.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise PromptError(
                f"{param}[{j}]: content parts of type {kind!r} are not supported; this server reads text only "
                "(use {\"type\": \"text\", \"text\": ...})",
                f"{param}[{j}].type",
            )
    return "\n".join(texts)


def _parse_arguments(arguments: Any, param: str) -> Any:
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as error:
        raise PromptError(f"{param} must be a JSON string (as the API returned it): {error}", param) from None


def render_messages(format: ToolCallFormat, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tool_choice_mode: str,
                    tool_role: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """OpenAI messages -> the messages (and `tools=` argument) for the model's chat template.

    Templates that render tools get them as they are (assistant `tool_calls` with their arguments as objects,
    `tool` messages with `tool_call_id`). For templates that do not (the `generic` format), the tools are
    described in the system message (`tool_prompt.render_tools_prompt`), assistant calls are written in the
    format's own syntax, and tool results are messages of role `tool` (SmolLM2-135M then answers from the
    result; as a user message of `<tool_response>` blocks it echoed the block back), or, with
    `tool_role=False` for templates that refuse that role, one user message of `<tool_response>` blocks.

    Args:
        format: the model's tool-call format.
        messages: validated OpenAI messages (dicts).
        tools: OpenAI tools, or None.
        tool_choice_mode: `none`, `auto`, `required` or `named`; with `none` the tools are still shown, as
            OpenAI and vLLM do, but the generic system message says not to call them (its last line follows
            the mode: plain text allowed, a call asked for, or no call).

    Raises:
        PromptError: an assistant call's arguments are not JSON, a content part is not text.
    """
    names_by_id: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message["role"]
        param = f"messages[{i}]"
        text = content_text(message.get("content"), f"{param}.content")
        if role == "developer":
            role = "system"
        if role in ("system", "user"):
            out.append({"role": role, "content": text})
        elif role == "assistant":
            out.append(_assistant_message(format, message, text, param, names_by_id))
        elif role == "tool":
            call_id = message.get("tool_call_id") or ""
            if format.tools_in_template:
                out.append({"role": "tool", "content": text, "tool_call_id": call_id, "name": names_by_id.get(call_id, "")})
            elif tool_role:
                out.append({"role": "tool", "content": text})
            else:
                block = "<tool_response>\n" + json.dumps({"name": names_by_id.get(call_id, ""), "content": text}, ensure_ascii=False) + "\n</tool_response>"
                if out and out[-1].get("_tool_results"):
                    out[-1]["content"] += "\n" + block
                else:
                    out.append({"role": "user", "content": block, "_tool_results": True})
        else:  # validated before; kept for direct callers
            raise PromptError(f"{param}.role {role!r} is not supported", f"{param}.role")
    for message in out:
        message.pop("_tool_results", None)
    if not tools:
        return out, None
    if format.tools_in_template:
        return out, tools
    system = render_tools_prompt(format, [tool["function"] for tool in tools], tool_choice_mode)
    if out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + system if out[0]["content"] else system}
    else:
        out.insert(0, {"role": "system", "content": system})
    return out, None


def _assistant_message(format: ToolCallFormat, message: dict[str, Any], text: str, param: str, names_by_id: dict[str, str]) -> dict[str, Any]:
    """An assistant message for the template: its calls structured (templates with tools) or in the format's syntax."""
    calls = message.get("tool_calls") or []
    parsed = []
    for k, call in enumerate(calls):
        function = call["function"]
        arguments = _parse_arguments(function.get("arguments", "{}"), f"{param}.tool_calls[{k}].function.arguments")
        parsed.append(ToolCall(function["name"], arguments))
        if call.get("id"):
            names_by_id[call["id"]] = function["name"]
    if not calls:
        return {"role": "assistant", "content": text}
    if format.tools_in_template:
        return {"role": "assistant", "content": text, "tool_calls": [
            {"id": c.get("id"), "type": "function", "function": {"name": p.name, "arguments": p.arguments}} for c, p in zip(calls, parsed)]}
    rendered = format.render_calls(parsed)
    return {"role": "assistant", "content": f"{text}\n{rendered}" if text else rendered}


# A message whose text spells a special token is rendered with this placeholder (private-use characters no
# tokenizer merges with their neighbours) in its place, then its text is encoded as plain text there.
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_RE = re.compile("\ue000([0-9]+)\ue001")


@dataclass(frozen=True)
class Prompt:
    """A rendered chat prompt. `template_text` may hold placeholders for the messages in `plain` (those that spell
    a special token); `text` is the prompt as the model reads it."""

    template_text: str
    plain: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return _PLACEHOLDER_RE.sub(lambda m: self.plain[int(m.group(1))], self.template_text)


def render_prompt(tokenizer: Any, format: ToolCallFormat, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  tool_choice_mode: str) -> Prompt:
    """The prompt for a chat request, ending with the assistant's generation prompt.

    Raises:
        PromptError: the messages cannot be rendered (the template's own error is in the message).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise PromptError("this model has no chat template; use /v1/completions with a prompt instead", "messages")
    specials = [token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values() if token.special]
    has_tool_results = any(m.get("role") == "tool" for m in messages)
    for tool_role in ((True, False) if has_tool_results and not format.tools_in_template else (True,)):
        rendered, template_tools = render_messages(format, messages, tools, tool_choice_mode, tool_role)
        plain: list[str] = []
        for message in rendered:
            content = message.get("content")
            if isinstance(content, str) and any(special in content for special in specials):
                message["content"] = _PLACEHOLDER.format(len(plain))
                plain.append(content)
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if template_tools:
            kwargs["tools"] = template_tools
        try:
            text = tokenizer.apply_chat_template(rendered, **kwargs)
        except Exception as error:  # jinja2 TemplateError and the errors templates raise on purpose
            failure = error
            continue
        return Prompt(text, tuple(plain))
    raise PromptError(f"the model's chat template cannot render these messages: {failure}", "messages") from None


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The prompt's token ids, where special tokens come only from the template: a message that spells one
    (`<|im_end|>` in a user's text or a tool result) gets it as plain text, so it cannot end its turn and forge
    another."""
    if not prompt.plain:
        return tokenizer.encode(prompt.template_text, add_special_tokens=False)  # the usual case
    ids: list[int] = []
    for i, piece in enumerate(_PLACEHOLDER_RE.split(prompt.template_text)):
        if i % 2:  # a placeholder's index
            ids += tokenizer.encode(prompt.plain[int(piece)], add_special_tokens=False, split_special_tokens=True)
        elif piece:
            ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids
