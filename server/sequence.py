"""What the engine takes and gives: a request (`EngineRequest`), its output events (`EngineEvent`), and the
engine's record of one request in flight (`Sequence`).

Invariant: a `Sequence`'s `tokens` are its prompt followed by its output as fed (or to be fed) to the model,
`num_computed` of them have keys and values in its KV slot, and a constrained sequence's matcher has accepted
exactly its output tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from strictcall.grammars import Grammar, Matcher
from strictcall.kernels import SamplingParams
from strictcall.server.text_stream import TextStream


@dataclass(frozen=True)
class EngineRequest:
    """One generation: a tokenized prompt, sampling settings, limits and an optional grammar."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams = SamplingParams()
    _: KW_ONLY  # the rest by name: several are ints or tuples that a shifted position would silently swap
    max_tokens: int = 256
    min_tokens: int = 0  # end-of-sequence tokens are masked before this many (vLLM's); a grammar's end still ends
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit); the grammar's mask still applies after
    # `auto` turns: the tokens that open a tool call (the format's trigger), and a bias on the next of them while the
    # output so far is a prefix of them: > 0 moves the model's choice between answering and calling toward calling.
    call_opening: tuple[int, ...] = ()
    call_opening_bias: float = 0.0
    # Tool turns: a bias on end-of-sequence wherever the turn may end after a complete call: > 0 makes a model that
    # goes on calling (SmolLM2 writes another call after the one the request asked for) stop there.
    end_bias: float = 0.0
    stop: tuple[str, ...] = ()
    grammar: Grammar | None = None
    jump_forward: bool | None = None  # None: the engine's setting
    close_within_budget: bool | None = None  # None: the engine's setting


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's logprob and the most likely alternatives (forced tokens: logprob 0)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class EngineEvent:
    """New output of one request. The last event has `finish_reason` set.

    Attributes:
        finish_reason: "stop" (end of turn or a stop string), "length" (max_tokens or the context), "abort",
            "error" (then `error` says why).
    """

    request_id: str
    token_ids: tuple[int, ...] = ()
    text: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0


@dataclass(eq=False)  # compared by identity: the slot table keys its slots by sequence
class Sequence:
    """One request in the engine."""

    request: EngineRequest
    sink: Callable[[EngineEvent], None]
    matcher: Matcher | None
    generator: Any  # a torch.Generator for seeded sampling, or None
    stream: TextStream
    tokens: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose keys and values are in the slot
    output_ids: list[int] = field(default_factory=list)
    num_cached: int = 0  # prompt tokens reused from the prefix cache
    finished: bool = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < len(self.request.prompt_ids)

    @property
    def num_prompt_left(self) -> int:
        return len(self.request.prompt_ids) - self.num_computed
