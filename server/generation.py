"""Running one HTTP request's plan on the engine: its choices' events merged in order, metrics observed, the
request's log line, and the collected results for a non-streamed answer.

Invariant: however the run ends (finished, failed, the client gone, the task cancelled, or never iterated), every
engine request still running is aborted (`close`, idempotent, called by the HTTP layer whenever a response
ends); the caller logs the request once, when its answer is complete (`log` is idempotent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from strictcall.server.engine import Engine
from strictcall.server.metrics import ServerMetrics
from strictcall.server.planning import Plan
from strictcall.server.sequence import EngineEvent, TokenLogprob

logger = logging.getLogger("strictcall.server")


@dataclass
class ChoiceResult:
    """One choice's whole output (for a non-streamed answer) and its final counts."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0


class Generation:
    """One request's run, submitted when it is made (so a full queue is a 429 before any response starts):
    `events()` yields (choice index, event) until every choice has finished; `close()` aborts what still runs.

    Raises:
        EngineRequestError, EngineOverloadedError: the engine refused the requests.
    """

    def __init__(self, engine: Engine, plan: Plan, metrics: ServerMetrics, arrival: float, request_id: str, log_requests: bool):
        self.stream = engine.generate(plan.requests)
        self.plan = plan
        self.metrics = metrics
        self.arrival = arrival
        self.request_id = request_id
        self.log_requests = log_requests
        self.results = [ChoiceResult() for _ in plan.requests]
        # For the request's log line: tool calls returned and the finish reasons the client saw.
        self.num_tool_calls = 0
        self.finish_reasons: list[str] = []
        self._first: dict[int, float] = {}
        self._logged = False

    async def events(self) -> AsyncGenerator[tuple[int, EngineEvent], None]:
        """Submit the plan's requests and yield their events (engine errors raise before the first one)."""
        try:
            async for i, event in self.stream:
                self._observe(i, event)
                yield i, event
        finally:
            self.stream.close()

    def close(self) -> None:
        self.stream.close()

    async def collect(self) -> list[ChoiceResult]:
        """Every choice's whole output."""
        async with aclosing(self.events()) as events:
            async for i, event in events:
                result = self.results[i]
                result.text += event.text
                result.logprobs += event.logprobs
        return self.results

    def _observe(self, i: int, event: EngineEvent) -> None:
        now = time.perf_counter()
        m = self.metrics
        if event.token_ids and i not in self._first:
            self._first[i] = now
            m.time_to_first_token.observe(now - self.arrival)
        if event.finish_reason is None:
            return
        result = self.results[i]
        result.finish_reason, result.error = event.finish_reason, event.error
        result.num_output_tokens, result.num_cached_tokens = event.num_output_tokens, event.num_cached_tokens
        m.finished.inc(finish_reason=event.finish_reason)
        m.prompt_tokens.inc(event.num_prompt_tokens)
        m.generation_tokens.inc(event.num_output_tokens)
        m.e2e_latency.observe(now - self.arrival)
        first = self._first.get(i)
        if first is not None and event.num_output_tokens > 1:
            m.time_per_output_token.observe((now - first) / (event.num_output_tokens - 1))

    def log(self) -> None:
        """One line for the server log: tokens, time to first token, duration, tool calls, finish reasons."""
        if self._logged or not self.log_requests:
            return
        self._logged = True
        first = min(self._first.values(), default=None)
        ttft = "-" if first is None else f"{first - self.arrival:.2f} s"
        finish = ",".join(self.finish_reasons) or "abort"
        cached = max((r.num_cached_tokens for r in self.results), default=0)
        logger.info("%s: prompt %d tokens (%d cached), completion %d tokens, time to first token %s, total %.2f s, tool calls %d, finish %s",
                    self.request_id, self.plan.num_prompt_tokens, cached, sum(r.num_output_tokens for r in self.results), ttft,
                    time.perf_counter() - self.arrival, self.num_tool_calls, finish)
