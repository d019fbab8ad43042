"""Prometheus metrics, written in the text exposition format (0.0.4) without a client library.

Invariant: every metric is registered once, with its help text and type, and `render()` writes each family
as one `# HELP` / `# TYPE` block followed by its samples; counters only grow, histogram buckets are
cumulative and end with `+Inf` equal to `_count`. Gauges and counters owned by other objects (the engine's
queue, the grammar cache) are read at scrape time through callbacks, so they are never stale.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

LabelValues = tuple[str, ...]
M = TypeVar("M", bound="_Metric")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = list(zip(names, values)) + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count, optionally labelled."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()):
        super().__init__(name, help, labelnames)
        self._values: dict[LabelValues, float] = {} if self.labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class CallbackMetric(_Metric):
    """A gauge or counter whose value is read from elsewhere when scraped."""

    def __init__(self, name: str, help: str, kind: str, read: Callable[[], float]):
        super().__init__(name, help)
        self.kind = kind
        self.read = read

    def samples(self) -> list[str]:
        try:
            value = float(self.read())
        except Exception:  # the source is not ready (the model is loading): report nothing
            return []
        return [f"{self.name} {_number(value)}"]


class Histogram(_Metric):
    """Observations counted into cumulative buckets (upper bounds in the metric's unit)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labelnames: Iterable[str] = ()):
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * len(self.buckets))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        counts = self._counts.get(self._key(labels))
        return counts[-1] if counts else 0

    def samples(self) -> list[str]:
        lines = []
        with self._lock:
            items = sorted((k, list(c), self._sums[k]) for k, c in self._counts.items())
        for key, counts, total in items:
            for bound, count in zip(self.buckets, counts):
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, (('le', _number(bound)),))} {count}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {counts[-1]}")
        return lines


class Registry:
    """The metrics of one server; `render()` is the body of `GET /metrics`."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.header() + metric.samples()
        return "\n".join(lines) + "\n"


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_COMPILE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The metrics strictcall exports (names follow vLLM's where one exists, under `strictcall_`)."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry.register
        self.requests = r(Counter("strictcall_requests_total", "HTTP requests by route and status code.", ("route", "status")))
        self.time_to_first_token = r(Histogram(
            "strictcall_time_to_first_token_seconds", "Time from a generation request's arrival to its first output token.", _LATENCY_BUCKETS))
        self.time_per_output_token = r(Histogram(
            "strictcall_time_per_output_token_seconds", "Mean time between output tokens after the first, per choice.", _TOKEN_BUCKETS))
        self.e2e_latency = r(Histogram(
            "strictcall_e2e_request_latency_seconds", "Time from a generation request's arrival to its last token.", _LATENCY_BUCKETS))
        self.prompt_tokens = r(Counter("strictcall_prompt_tokens_total", "Prompt tokens of finished choices."))
        self.generation_tokens = r(Counter("strictcall_generation_tokens_total", "Output tokens of finished choices."))
        self.finished = r(Counter("strictcall_request_finish_total", "Finished choices by finish_reason.", ("finish_reason",)))
        self.grammar_compile_time = r(Histogram(
            "strictcall_grammar_compile_seconds", "Time to build a request's grammars (tools, response_format, guided_*); cache hits included.",
            _COMPILE_BUCKETS))
        self.tool_calls = r(Counter("strictcall_tool_calls_total", "Tool calls returned, by whether the grammar was on.", ("constrained",)))
        self.unenforced_keywords = r(Counter(
            "strictcall_unenforced_keywords_total", "Keywords of non-strict schemas in requests that the grammar did not enforce.", ("keyword",)))

    def add_engine_gauges(self, serving: Callable[[], Any]) -> None:
        """Scrape-time views of the engine and grammar cache of `serving()` (None while the model loads)."""
        r = self.registry.register
        views: tuple[tuple[str, str, str, Callable[[Any], float]], ...] = (
            ("num_requests_waiting", "gauge", "Requests queued for a KV-cache slot.", lambda s: s.engine.stats.num_waiting),
            ("num_requests_running", "gauge", "Sequences holding a KV-cache slot (prefill or decode).", lambda s: s.engine.stats.num_running),
            ("batch_size", "gauge", "Rows in the last decode step.", lambda s: s.engine.stats.last_batch_size),
            ("jump_forward_tokens_total", "counter", "Tokens appended without a model step because the grammar forced them.",
             lambda s: s.engine.stats.num_jump_forward_tokens),
            ("generated_tokens_total", "counter", "Tokens sampled or forced by the engine (all requests, aborted ones included).",
             lambda s: s.engine.stats.num_generated_tokens),
            ("prefix_cached_tokens_total", "counter", "Prompt tokens whose KV cache was reused from an earlier sequence.",
             lambda s: s.engine.stats.num_prefix_cached_tokens),
            ("engine_steps_total", "counter", "Engine scheduling steps.", lambda s: s.engine.stats.num_steps),
            ("engine_row_errors_total", "counter", "Requests failed alone by an error in their grammar or data during generation.",
             lambda s: s.engine.stats.num_row_errors),
            ("grammar_cache_hits_total", "counter", "Grammar compiles answered from the compiled-grammar cache.",
             lambda s: s.grammars.compiler.num_cache_hits),
            ("grammar_cache_misses_total", "counter", "Grammar compiles that built a new grammar.", lambda s: s.grammars.compiler.num_cache_misses),
            ("grammar_cache_bytes", "gauge", "Memory held by compiled grammars and turns (masks included), under --grammar-cache-mb.",
             lambda s: s.grammars.compiler.budget.num_bytes),
        )
        for name, kind, help, read in views:
            r(CallbackMetric(f"strictcall_{name}", help, kind, functools.partial(lambda view, source: view(source()), read, serving)))

    def render(self) -> str:
        return self.registry.render()
