"""The generation engine: continuous batching with grammar masks and jump-forward, on its own thread.

Each step: admit waiting requests into free KV-cache slots (reusing cached prefixes), prefill one chunk of
one new prompt, then one batched forward for every decoding row -> fill each constrained row's bitmask ->
`apply_token_bitmask_inplace` -> `sample` -> advance each row's matcher -> stop checks -> jump-forward.

Invariants: a constrained row only ever emits tokens its matcher accepted; an error in one request (a
rejected token, a bad grammar) finishes that request with `finish_reason="error"` and never stops the loop;
a request whose client is gone is removed at the next step and frees its slot.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Union

import numpy as np
import torch

from strictcall.grammars.compiler import CompiledGrammar
from strictcall.grammars.masks import pack_token_bitmask
from strictcall.grammars.matcher import GrammarMatcher
from strictcall.grammars.tools import TurnGrammar, TurnMatcher
from strictcall.grammars.vocabulary import Vocabulary
from strictcall.kernels import SamplingParams, allocate_token_bitmask, apply_token_bitmask_inplace, make_generator, sample
from strictcall.server.model_runner import ModelRunner
from strictcall.server.scheduler import SlotTable
from strictcall.server.text_stream import TextStream

logger = logging.getLogger(__name__)

Grammar = Union[TurnGrammar, CompiledGrammar]


@dataclass(frozen=True)
class EngineConfig:
    """Scheduling knobs.

    Attributes:
        prefill_chunk_tokens: prompt tokens prefilled per step, so one long prompt does not stall decoding rows.
        max_waiting: requests queued beyond the running batch; more are refused (HTTP 429).
        jump_forward: append the text a grammar forces without model steps.
    """

    prefill_chunk_tokens: int = 256
    max_waiting: int = 256
    jump_forward: bool = True

    def __post_init__(self) -> None:
        if self.prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be >= 1, got {self.prefill_chunk_tokens}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")


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
    stop: tuple[str, ...] = ()
    grammar: Grammar | None = None
    jump_forward: bool | None = None  # None: the engine's setting


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


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full; the client should retry later."""


@dataclass
class EngineStats:
    """Counters for /metrics (read from other threads; each is a plain int, written by the engine thread)."""

    num_steps: int = 0
    num_forward_tokens: int = 0
    num_prefill_tokens: int = 0  # prompt tokens run through the model (prefix-cached ones excluded)
    num_generated_tokens: int = 0
    num_jump_forward_tokens: int = 0
    num_prefix_cached_tokens: int = 0
    forward_seconds: float = 0.0  # in model forwards (prefill and decode)
    grammar_seconds: float = 0.0  # in grammar work: bitmasks, accepting tokens, forced text
    num_running: int = 0
    num_waiting: int = 0
    last_batch_size: int = 0


@dataclass
class _Sequence:
    request: EngineRequest
    sink: Callable[[EngineEvent], None]
    matcher: GrammarMatcher | TurnMatcher | None
    generator: torch.Generator | None
    stream: TextStream
    tokens: list[int] = field(default_factory=list)  # prompt + output, as fed or to be fed to the model
    num_computed: int = 0  # tokens whose keys and values are in the slot
    output_ids: list[int] = field(default_factory=list)
    num_cached: int = 0
    finished: bool = False

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < len(self.request.prompt_ids)


class Engine:
    """Runs requests on a `ModelRunner`; thread-safe `submit`/`abort`, and `generate` for asyncio callers.

    Args:
        runner: the model and its KV cache.
        vocabulary: the tokenizer's tokens as bytes (for text, masks and end-of-sequence ids).
        tokenizer: used to tokenize forced text for jump-forward.
        config: scheduling knobs.
    """

    def __init__(self, runner: ModelRunner, vocabulary: Vocabulary, tokenizer: Any, config: EngineConfig | None = None):
        self.runner = runner
        self.vocabulary = vocabulary
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self._slots = SlotTable(runner.max_batch_size)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._aborted: set[str] = set()
        self._eos = frozenset(vocabulary.eos_token_ids)
        self._eos_mask = pack_token_bitmask(np.array(vocabulary.eos_token_ids, dtype=np.int64), vocabulary.num_words)
        self._eos_ids = torch.tensor(sorted(self._eos), dtype=torch.long)
        self._waiting_lock = threading.Lock()
        self._bitmask = allocate_token_bitmask(runner.max_batch_size, runner.vocab_size)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ----- public, thread-safe -----

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="strictcall-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        self._stopping.set()
        self._inbox.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, request: EngineRequest, sink: Callable[[EngineEvent], None]) -> None:
        """Queue a request; `sink` receives its events on the engine thread (it must not block).

        Raises:
            ValueError: the prompt does not fit the context, or max_tokens < 1.
            EngineOverloadedError: too many requests are waiting.
        """
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        if len(request.prompt_ids) >= self.runner.max_model_len:
            raise ValueError(
                f"the prompt has {len(request.prompt_ids)} tokens; this server's context is {self.runner.max_model_len} "
                "(--max-model-len), and at least one token must be left for the output"
            )
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {request.max_tokens}")
        if not 0 <= request.min_tokens <= request.max_tokens:
            raise ValueError(f"min_tokens must be between 0 and max_tokens ({request.max_tokens}), got {request.min_tokens}")
        with self._waiting_lock:
            if self.stats.num_waiting >= self.config.max_waiting + self.runner.max_batch_size:
                raise EngineOverloadedError(f"{self.stats.num_waiting} requests are waiting; retry later")
            self.stats.num_waiting += 1
        self._inbox.put(("submit", (request, sink)))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        """Submit and yield events until the request finishes; cancelling the iteration aborts it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.submit(request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        finished = False
        try:
            while not finished:
                event = await events.get()
                finished = event.finish_reason is not None
                yield event
        finally:
            if not finished:
                self.abort(request.request_id)

    # ----- the loop -----

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stopping.is_set():
            idle = not self._running and not self._waiting
            self._drain_inbox(block=idle)
            try:
                self.step()
            except Exception:  # a bug in a step: fail what was running, keep serving
                logger.exception("engine step failed")
                for seq in list(self._running):
                    self._finish(seq, "error", "internal error in the engine step; see the server log")

    def _drain_inbox(self, block: bool) -> None:
        try:
            message = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, payload = message
            if kind == "submit":
                self._enqueue(*payload)
            elif kind == "abort":
                self._aborted.add(payload)
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _enqueue(self, request: EngineRequest, sink: Callable[[EngineEvent], None]) -> None:
        try:
            grammar = request.grammar
            matcher: GrammarMatcher | TurnMatcher | None = None
            if isinstance(grammar, TurnGrammar) and not grammar.is_unconstrained:
                matcher = TurnMatcher(grammar)
            elif isinstance(grammar, CompiledGrammar):
                matcher = GrammarMatcher(grammar)
            seed = request.sampling.seed
            generator = make_generator(seed, self.runner.device) if seed is not None else None
        except Exception as error:  # a grammar that cannot start: this request only
            self._count_waiting(-1)
            sink(EngineEvent(request.request_id, finish_reason="error", error=str(error)))
            return
        seq = _Sequence(request, sink, matcher, generator, TextStream(request.stop), tokens=list(request.prompt_ids))
        self._waiting.append(seq)

    def step(self) -> None:
        """One scheduling step (public for tests that drive the engine without its thread)."""
        self._drop_aborted()
        self._admit()
        prefilling = [s for s in self._running if s.is_prefilling]
        if prefilling:
            self._prefill_chunk(prefilling[0])
        decoding = [s for s in self._running if not s.is_prefilling and not s.finished]
        if decoding:
            self._decode(decoding)
        self.stats.num_steps += 1

    def _drop_aborted(self) -> None:
        if not self._aborted:
            return
        for seq in list(self._running):
            if seq.request.request_id in self._aborted:
                self._finish(seq, "abort")
        for seq in list(self._waiting):
            if seq.request.request_id in self._aborted:
                self._waiting.remove(seq)
                self._count_waiting(-1)
                seq.sink(EngineEvent(seq.request.request_id, finish_reason="abort"))
        self._aborted.clear()

    def _admit(self) -> None:
        while self._waiting and self._slots.has_free_slot():
            seq = self._waiting.popleft()
            self._count_waiting(-1)
            slot, reused, moves = self._slots.admit(seq, seq.request.prompt_ids)
            for move in moves:
                if move.kind == "swap":
                    self.runner.swap_slots(move.a, move.b, move.length)
                else:
                    self.runner.copy_slot(move.a, move.b, move.length)
            seq.num_computed = seq.num_cached = reused
            self.stats.num_prefix_cached_tokens += reused
            self._running.append(seq)
            self.stats.num_running = len(self._running)

    def _count_waiting(self, delta: int) -> None:
        with self._waiting_lock:
            self.stats.num_waiting += delta

    def _slot(self, seq: _Sequence) -> int:
        return self._slots.slot_of(seq)

    def _prefill_chunk(self, seq: _Sequence) -> None:
        prompt = seq.request.prompt_ids
        chunk = prompt[seq.num_computed : seq.num_computed + self.config.prefill_chunk_tokens]
        started = time.perf_counter()
        try:
            logits = self.runner.forward([self._slot(seq)], [chunk], [seq.num_computed])
        except Exception as error:
            logger.exception("prefill failed")
            self._finish(seq, "error", f"prefill failed: {error}")
            return
        finally:
            self.stats.forward_seconds += time.perf_counter() - started
        self._slots.extend(self._slot(seq), chunk)
        seq.num_computed += len(chunk)
        self.stats.num_forward_tokens += len(chunk)
        self.stats.num_prefill_tokens += len(chunk)
        if not seq.is_prefilling:
            self._sample([seq], logits)

    def _decode(self, rows: list[_Sequence]) -> None:
        rows.sort(key=self._slot)
        inputs = [seq.tokens[seq.num_computed :] for seq in rows]
        started = time.perf_counter()
        # On CUDA this only queues the kernels: the bitmasks are filled on the CPU (in `_sample`) while the GPU
        # computes, and the first read of the logits (applying the masks) waits for it.
        logits = self.runner.forward([self._slot(s) for s in rows], inputs, [s.num_computed for s in rows])
        self.stats.forward_seconds += time.perf_counter() - started
        for seq, fed in zip(rows, inputs):
            self._slots.extend(self._slot(seq), fed)
            seq.num_computed += len(fed)
            self.stats.num_forward_tokens += len(fed)
        self.stats.last_batch_size = len(rows)
        self._sample(rows, logits)

    @torch.inference_mode()  # the logits are inference tensors (from the runner), changed in place here
    def _sample(self, rows: list[_Sequence], logits: torch.Tensor) -> None:
        started = time.perf_counter()
        constrained = [i for i, seq in enumerate(rows) if seq.matcher is not None]
        for i in constrained:
            rows[i].matcher.fill_next_token_bitmask(self._bitmask, i)  # type: ignore[union-attr]
        if constrained:
            self.stats.grammar_seconds += time.perf_counter() - started
        self._adjust_logits(rows, logits)
        if constrained:
            index = None if len(constrained) == len(rows) else torch.tensor(constrained, device=logits.device)
            apply_token_bitmask_inplace(logits, self._bitmask[: len(rows)].to(logits.device, non_blocking=True), indices=index)
        params = [seq.request.sampling for seq in rows]
        penalties = any(p.has_penalties for p in params)
        out = sample(logits, params, [seq.generator for seq in rows], output_token_ids=[s.output_ids for s in rows] if penalties else None)
        token_ids = out.token_ids.tolist()
        want_logprobs = any(p.logprobs for p in params)
        chosen = out.logprobs.tolist() if want_logprobs else None
        top_ids = out.top_logprob_ids.tolist() if want_logprobs and out.top_logprob_ids is not None else None
        top_values = out.top_logprobs.tolist() if top_ids is not None else None
        for i, (seq, token) in enumerate(zip(rows, token_ids)):
            logprob = None
            if seq.request.sampling.logprobs:
                count = seq.request.sampling.top_logprobs
                top = tuple(zip(top_ids[i][:count], top_values[i][:count])) if top_ids and count else ()
                logprob = TokenLogprob(token, chosen[i], top)  # type: ignore[index]
            self._advance(seq, token, logprob)

    def _adjust_logits(self, rows: list[_Sequence], logits: torch.Tensor) -> None:
        """The request's own changes, before the grammar's mask (which always has the last word): logit_bias, the
        call-opening bias, and min_tokens holding back the end of a free-text turn."""
        for i, seq in enumerate(rows):
            bias = seq.request.logit_bias + self._call_opening_bias(seq)
            if bias:
                ids, values = zip(*bias)
                # index_add_, not `+=`: a token listed in both biases gets both.
                logits[i].index_add_(0, torch.tensor(ids, device=logits.device), torch.tensor(values, dtype=logits.dtype, device=logits.device))
        early = [i for i, seq in enumerate(rows) if seq.matcher is None and len(seq.output_ids) < seq.request.min_tokens]
        if early:
            logits[torch.tensor(early, device=logits.device)[:, None], self._eos_ids.to(logits.device)] = float("-inf")

    @staticmethod
    def _call_opening_bias(seq: _Sequence) -> tuple[tuple[int, float], ...]:
        opening, done = seq.request.call_opening, len(seq.output_ids)
        if not seq.request.call_opening_bias or done >= len(opening) or tuple(seq.output_ids) != opening[:done]:
            return ()
        return ((opening[done], seq.request.call_opening_bias),)

    def _advance(self, seq: _Sequence, token: int, logprob: TokenLogprob | None) -> None:
        """Take one sampled token, then any forced tokens; emit them; finish if a stop condition holds."""
        if token < 0:
            self._finish(seq, "error", "the grammar allowed no token here (a bug in strictcall: please report it)")
            return
        started = time.perf_counter()
        if seq.matcher is not None and not seq.matcher.accept_token(token):
            self._finish(seq, "error", f"token {token} was sampled outside the grammar (a bug in strictcall: please report it)")
            return
        new_tokens, logprobs = [token], [logprob] if logprob else []
        if token not in self._eos and not self._at_limit(seq, 1):
            budget = min(seq.request.max_tokens - len(seq.output_ids), self.runner.max_model_len - len(seq.tokens) - 1)
            new_tokens = self._with_forced_tokens(seq, token, budget)
            if logprob and new_tokens[0] != token:  # the sampled token merged with forced text: the model's choice
                logprobs = [TokenLogprob(new_tokens[0], logprob.logprob, logprob.top)]
            if seq.request.sampling.logprobs:
                logprobs += [TokenLogprob(t, 0.0) for t in new_tokens[1:]]
            self.stats.num_jump_forward_tokens += len(new_tokens) - 1
        if seq.matcher is not None:
            self.stats.grammar_seconds += time.perf_counter() - started
        self._emit(seq, new_tokens, logprobs)

    def _with_forced_tokens(self, seq: _Sequence, sampled: int, budget: int) -> list[int]:
        """The sampled token, then the grammar's forced text, as the tokenizer splits them (at most `budget`).

        The two are tokenized together, so `ec` + forced `ological_impact` becomes `ecological`, `_impact`
        and `]` + forced `, "` becomes `],`, ` "`: the model goes on from the split it was trained on.
        Neither token has reached the model yet, so the merge costs nothing. If the joint split would not
        cover the sampled token's bytes (a partial character, a split the grammar refuses), the forced text
        is tokenized on its own after the sampled token. The last token is always left to the model (it may
        merge with what follows: llguidance's fast-forward trap). Everything returned is accepted.
        """
        use = self.config.jump_forward if seq.request.jump_forward is None else seq.request.jump_forward
        matcher = seq.matcher
        if matcher is None or not use or budget < 2:
            return [sampled]
        forced = matcher.forced_bytes()
        if not forced:
            return [sampled]
        head = self.vocabulary.token_bytes[sampled] or b""
        matcher.rollback(1)
        joint = self._accept_tokenized(matcher, head + forced, budget)
        if len(self.vocabulary.bytes_of(joint)) >= len(head) > 0:
            return joint
        matcher.rollback(len(joint))
        matcher.accept_token(sampled)
        return [sampled] + self._accept_tokenized(matcher, forced, budget - 1)

    def _accept_tokenized(self, matcher: GrammarMatcher | TurnMatcher, data: bytes, budget: int) -> list[int]:
        """`data` tokenized (minus its last token), accepted into the matcher as far as the grammar takes it;
        nothing if the tokens do not spell a prefix of `data` (an undecodable byte)."""
        text = data.decode("utf-8", errors="ignore")  # a partial last character stays for the model
        ids = self.tokenizer.encode(text, add_special_tokens=False)[:-1][:budget]
        if not data.startswith(self.vocabulary.bytes_of(ids)):
            return []
        accepted = []
        for token in ids:
            if not matcher.accept_token(token):
                break  # a split the grammar does not take: let the model go on from here
            accepted.append(token)
        return accepted

    def _at_limit(self, seq: _Sequence, num_new: int) -> bool:
        return (
            len(seq.output_ids) + num_new >= seq.request.max_tokens
            or len(seq.tokens) + num_new >= self.runner.max_model_len
        )

    def _emit(self, seq: _Sequence, new_tokens: list[int], logprobs: list[TokenLogprob]) -> None:
        text_parts = []
        finish: str | None = None
        kept = []
        stopped = False
        for token in new_tokens:
            kept.append(token)
            if token in self._eos:
                finish = "stop"
                break
            delta, stopped = seq.stream.push(self.vocabulary.token_bytes[token] or b"")
            text_parts.append(delta)
            if stopped:
                finish = "stop"
                break
        seq.output_ids += kept
        seq.tokens += [t for t in kept if t not in self._eos]
        self.stats.num_generated_tokens += len(kept)
        if finish is None and self._at_limit(seq, 0):
            finish = "length"
        if finish is None and seq.matcher is not None and self._only_end_allowed(seq):
            finish = "stop"  # the grammar is complete: end without another model step
        if finish is not None and not stopped:
            text_parts.append(seq.stream.flush())
        event = EngineEvent(
            seq.request.request_id, tuple(kept), "".join(text_parts), tuple(logprobs[: len(kept)]),
            finish_reason=finish, num_prompt_tokens=len(seq.request.prompt_ids), num_output_tokens=len(seq.output_ids),
            num_cached_tokens=seq.num_cached,
        )
        if finish is not None:
            self._release(seq)  # before the last event, so whoever receives it sees the slot free
        seq.sink(event)

    def _only_end_allowed(self, seq: _Sequence) -> bool:
        matcher = seq.matcher
        started = time.perf_counter()
        only_end = matcher is not None and matcher.is_accepting() and np.array_equal(matcher.next_token_bitmask(), self._eos_mask)
        self.stats.grammar_seconds += time.perf_counter() - started
        return only_end

    def _finish(self, seq: _Sequence, reason: str, error: str | None = None) -> None:
        if seq.finished:
            return
        self._release(seq)
        seq.sink(EngineEvent(seq.request.request_id, finish_reason=reason, error=error, num_prompt_tokens=len(seq.request.prompt_ids),
                             num_output_tokens=len(seq.output_ids), num_cached_tokens=seq.num_cached))

    def _release(self, seq: _Sequence) -> None:
        seq.finished = True
        if seq in self._running:
            self._running.remove(seq)
            self.stats.num_running = len(self._running)
            for move in self._slots.release(seq):
                self.runner.swap_slots(move.a, move.b, move.length)

