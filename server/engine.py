"""The generation engine: continuous batching with grammar masks and jump-forward, on its own thread.

Each `step()`: schedule (admit waiting requests into KV slots, reusing cached prefixes; a fair share of the
prefill budget per prompt; a row per decoding request) -> forward (model_runner) -> fill each constrained
row's bitmask and apply it (`kernels.apply_token_bitmask_inplace`) -> sample (`kernels.sample`) -> advance each
row's matcher, with jump-forward -> emit events, finishing rows that stop.

Invariants: a constrained row only ever emits tokens its matcher accepted; whatever a grammar (or a request's
own data) raises while one row is filled, sampled or advanced finishes that row alone with
`finish_reason="error"`, never the batch, and the loop goes on; a request whose client is gone is removed at
the next step and frees its slot.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import torch

from strictcall.grammars import Vocabulary
from strictcall.kernels import allocate_token_bitmask, apply_token_bitmask_inplace, make_generator, sample
from strictcall.server.jump_forward import JumpForward
from strictcall.server.model_runner import ModelRunner
from strictcall.server.scheduler import Scheduler
from strictcall.server.sequence import EngineEvent, EngineRequest, Sequence, TokenLogprob
from strictcall.server.text_stream import TextStream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Scheduling knobs.

    Attributes:
        prefill_chunk_tokens: prompt tokens prefilled per step, shared fairly among the prompts being
            prefilled, so one long prompt neither stalls decoding rows nor delays a short prompt's first token.
        max_waiting: requests queued beyond the running batch; more are refused (HTTP 429).
        jump_forward: append the text a grammar forces without model steps.
        close_within_budget: constrained rows only take tokens after which the grammar can still end within the
            tokens left (`max_tokens`, the context): a call that could be completed in time always is, its values
            cut short instead of the call.
    """

    prefill_chunk_tokens: int = 256
    max_waiting: int = 256
    jump_forward: bool = True
    close_within_budget: bool = True

    def __post_init__(self) -> None:
        if self.prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be >= 1, got {self.prefill_chunk_tokens}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")


class RequestStream:
    """The events of requests submitted together, as (index, event), until every one has finished."""

    def __init__(self, engine: Engine, requests: Seq[EngineRequest]):
        self.engine = engine
        self.requests = requests
        self.queue: asyncio.Queue[tuple[int, EngineEvent]] = asyncio.Queue()
        self.pending: set[int] = set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> tuple[int, EngineEvent]:
        if not self.pending:
            raise StopAsyncIteration
        i, event = await self.queue.get()
        if event.finish_reason is not None:
            self.pending.discard(i)
        return i, event

    def close(self) -> None:
        """Abort the requests still running (the client went away); safe to call more than once."""
        for i in self.pending:
            self.engine.abort(self.requests[i].request_id)
        self.pending.clear()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full; the client should retry later."""


class EngineRequestError(ValueError):
    """A request the engine cannot run (empty prompt, no room for output, bad limits)."""


@dataclass
class EngineStats:
    """Counters for /metrics and the log (read from other threads; each a plain number written by the engine thread)."""

    num_steps: int = 0
    num_forward_tokens: int = 0
    num_prefill_tokens: int = 0  # prompt tokens run through the model (prefix-cached ones excluded)
    num_generated_tokens: int = 0
    num_jump_forward_tokens: int = 0
    num_prefix_cached_tokens: int = 0
    num_row_errors: int = 0  # rows failed alone by an exception in their grammar or data
    forward_seconds: float = 0.0  # in model forwards (prefill and decode)
    grammar_seconds: float = 0.0  # in grammar work: bitmasks, accepting tokens, forced text
    num_running: int = 0
    num_waiting: int = 0
    last_batch_size: int = 0


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
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self.scheduler = Scheduler(runner.max_batch_size, self.config.prefill_chunk_tokens)
        self.jump_forward = JumpForward(vocabulary, tokenizer)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._aborted: set[str] = set()
        self._eos = frozenset(vocabulary.eos_token_ids)
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
            EngineRequestError: the prompt does not fit the context, or the limits are out of range.
            EngineOverloadedError: too many requests are waiting.
        """
        if not request.prompt_ids:
            raise EngineRequestError("the prompt is empty")
        if len(request.prompt_ids) >= self.runner.max_model_len:
            raise EngineRequestError(
                f"the prompt has {len(request.prompt_ids)} tokens; this server's context is {self.runner.max_model_len} "
                "(--max-model-len), and at least one token must be left for the output"
            )
        if request.max_tokens < 1:
            raise EngineRequestError(f"max_tokens must be at least 1, got {request.max_tokens}")
        if not 0 <= request.min_tokens <= request.max_tokens:
            raise EngineRequestError(f"min_tokens must be between 0 and max_tokens ({request.max_tokens}), got {request.min_tokens}")
        with self._waiting_lock:
            if self.stats.num_waiting >= self.config.max_waiting + self.runner.max_batch_size:
                raise EngineOverloadedError(f"{self.stats.num_waiting} requests are waiting; retry later")
            self.stats.num_waiting += 1
        self._inbox.put(("submit", (request, sink)))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def generate(self, requests: Seq[EngineRequest]) -> RequestStream:
        """Submit the requests now (for asyncio callers) and return their merged events; `close()` (or leaving an
        `async with`) aborts those still running.

        Raises:
            EngineRequestError, EngineOverloadedError: from `submit` (nothing is left running then).
        """
        loop = asyncio.get_running_loop()
        stream = RequestStream(self, requests)

        def sink_of(i: int) -> Callable[[EngineEvent], None]:
            def sink(event: EngineEvent) -> None:  # on the engine thread: hand the event to the loop's thread
                loop.call_soon_threadsafe(stream.queue.put_nowait, (i, event))
            return sink

        try:
            for i, request in enumerate(requests):
                self.submit(request, sink_of(i))
                stream.pending.add(i)
        except Exception:
            stream.close()
            raise
        return stream

    # ----- the loop -----

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stopping.is_set():
            idle = not self.scheduler.running and not self.scheduler.waiting
            self._drain_inbox(block=idle)
            try:
                self.step()
            except Exception:  # a bug outside any one row (the forward, the scheduler): fail what was running
                logger.exception("engine step failed")
                for seq in list(self.scheduler.running):
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
            matcher = None if request.grammar is None else request.grammar.new_matcher()
            seed = request.sampling.seed
            generator = make_generator(seed, self.runner.device) if seed is not None else None
        except Exception as error:  # a grammar that cannot start, a bad seed: this request only
            logger.warning("request %s could not start: %s", request.request_id, error)
            self._count_waiting(-1)
            sink(EngineEvent(request.request_id, finish_reason="error", error=str(error)))
            return
        self.scheduler.add(Sequence(request, sink, matcher, generator, TextStream(request.stop), tokens=list(request.prompt_ids)))

    def step(self) -> None:
        """One step (public for tests that drive the engine without its thread): schedule, forward, mask, sample,
        advance, emit."""
        self._drop_aborted()
        self._admit()
        plan = self.scheduler.schedule()
        prefilling, chunks = [seq for seq, _ in plan.prefill], [chunk for _, chunk in plan.prefill]
        decode_inputs = [seq.tokens[seq.num_computed :] for seq in plan.decode]
        if plan.decode:
            self.stats.last_batch_size = len(plan.decode)
        if self.runner.native is not None:
            # One forward for prompt chunks and decode rows: the native forward takes any number of tokens per row
            # (no padding), so the weights are read once per step, not once for each kind of row.
            forwards = [(prefilling + plan.decode, chunks + decode_inputs, len(prefilling))]
        else:  # torch pads every row to the longest: a prompt chunk beside decode rows would pad them all
            forwards = [(prefilling, chunks, len(prefilling)), (plan.decode, decode_inputs, 0)]
        for seqs, inputs, num_prefill in forwards:
            if seqs:  # an idle step runs no forward
                self._run(seqs, inputs, num_prefill)
        self.stats.num_steps += 1

    # ----- schedule -----

    def _drop_aborted(self) -> None:
        if not self._aborted:
            return
        running, waiting = self.scheduler.take_aborted(self._aborted)
        for seq in running:
            self._finish(seq, "abort")
        for seq in waiting:
            self._count_waiting(-1)
            seq.sink(EngineEvent(seq.request_id, finish_reason="abort"))
        self._aborted.clear()

    def _admit(self) -> None:
        for admission in self.scheduler.admit():
            self._count_waiting(-1)
            for move in admission.moves:
                if move.kind == "swap":
                    self.runner.swap_slots(move.a, move.b, move.length)
                else:
                    self.runner.copy_slot(move.a, move.b, move.length)
            self.stats.num_prefix_cached_tokens += admission.num_reused
        self.stats.num_running = len(self.scheduler.running)

    def _count_waiting(self, delta: int) -> None:
        with self._waiting_lock:
            self.stats.num_waiting += delta

    # ----- forward -----

    def _run(self, seqs: list[Sequence], inputs: list[list[int]], num_prefill: int) -> None:
        """Forward the rows (the first `num_prefill` are prompt chunks), then sample the rows that decode and those
        whose prompt is now complete."""
        logits = self._forward(seqs, inputs)
        if logits is None:
            return
        self.stats.num_prefill_tokens += sum(len(chunk) for chunk in inputs[:num_prefill])
        sampled = [i for i, seq in enumerate(seqs) if i >= num_prefill or not seq.is_prefilling]
        if sampled:
            rows = [seqs[i] for i in sampled]
            self._sample_rows(rows, logits if len(sampled) == len(seqs) else logits[torch.tensor(sampled, device=logits.device)])

    def _forward(self, seqs: list[Sequence], inputs: list[list[int]]) -> torch.Tensor | None:
        """Append each row's new tokens to its KV slot and return the logits after each row's last token.

        On CUDA this only queues the kernels: the bitmasks are filled on the CPU (in `_sample_rows`) while the
        GPU computes, and the first read of the logits (applying the masks) waits for it.
        """
        slots = [self.scheduler.slot_of(seq) for seq in seqs]
        started = time.perf_counter()
        try:
            logits = self.runner.forward(slots, inputs, [seq.num_computed for seq in seqs])
        except Exception as error:  # the model failed on these rows (out of memory, ...): they end, others go on
            logger.exception("forward failed")
            for seq in seqs:
                self._finish(seq, "error", f"the model's forward failed: {error}")
            return None
        finally:
            self.stats.forward_seconds += time.perf_counter() - started
        for seq, slot, fed in zip(seqs, slots, inputs):
            self.scheduler.slots.extend(slot, fed)
            seq.num_computed += len(fed)
            self.stats.num_forward_tokens += len(fed)
        return logits

    # ----- mask, sample, advance, emit -----

    @torch.inference_mode()  # the logits are inference tensors (from the runner), changed in place here
    def _sample_rows(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        failed = self._fill_bitmasks(rows)
        self._adjust_logits(rows, logits)
        constrained = [i for i, seq in enumerate(rows) if seq.matcher is not None and i not in failed]
        if constrained:
            index = None if len(constrained) == len(rows) else torch.tensor(constrained, device=logits.device)
            apply_token_bitmask_inplace(logits, self._bitmask[: len(rows)].to(logits.device, non_blocking=True), indices=index)
        params = [seq.request.sampling for seq in rows]
        penalties = any(p.has_penalties for p in params)
        out = sample(logits, params, [seq.generator for seq in rows], output_token_ids=[s.output_ids for s in rows] if penalties else None)
        token_ids = out.token_ids.tolist()
        want_logprobs = any(p.logprobs for p in params)
        chosen = out.logprobs.tolist() if want_logprobs else []
        top_ids = out.top_logprob_ids.tolist() if want_logprobs and out.top_logprob_ids is not None else []
        top_values = out.top_logprobs.tolist() if top_ids and out.top_logprobs is not None else []
        for i, (seq, token) in enumerate(zip(rows, token_ids)):
            if i in failed:
                continue
            logprob = None
            if seq.request.sampling.logprobs:
                count = seq.request.sampling.top_logprobs
                top = tuple(zip(top_ids[i][:count], top_values[i][:count])) if top_ids and count else ()
                logprob = TokenLogprob(token, chosen[i], top)
            try:
                self._advance(seq, token, logprob)
            except Exception as error:  # whatever the grammar raised: this row only
                self._fail_row(seq, "advancing the grammar", error)

    def _fill_bitmasks(self, rows: list[Sequence]) -> set[int]:
        """Each constrained row's mask into its bitmask row; the rows whose grammar raised (they are finished)."""
        failed: set[int] = set()
        constrained = [(i, seq, seq.matcher) for i, seq in enumerate(rows) if seq.matcher is not None]
        if not constrained:
            return failed
        started = time.perf_counter()
        for i, seq, matcher in constrained:
            close = self.config.close_within_budget if seq.request.close_within_budget is None else seq.request.close_within_budget
            try:
                matcher.fill_next_token_bitmask(self._bitmask, i, self._tokens_left(seq) if close else None)
            except Exception as error:
                failed.add(i)
                self._fail_row(seq, "computing the grammar's mask", error)
        self.stats.grammar_seconds += time.perf_counter() - started
        return failed

    def _fail_row(self, seq: Sequence, doing: str, error: Exception) -> None:
        logger.exception("request %s failed while %s", seq.request_id, doing, exc_info=error)
        self.stats.num_row_errors += 1
        self._finish(seq, "error", f"{doing} failed: {type(error).__name__}: {error}")

    def _adjust_logits(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        """The request's own changes, before the grammar's mask (which always has the last word): logit_bias, the
        call-opening bias, and min_tokens holding back the end of a free-text turn."""
        for i, seq in enumerate(rows):
            bias = seq.request.logit_bias + _call_opening_bias(seq) + self._end_bias(seq)
            if bias:
                ids, values = zip(*bias)
                # index_add_, not `+=`: a token listed in both biases gets both.
                logits[i].index_add_(0, torch.tensor(ids, device=logits.device), torch.tensor(values, dtype=logits.dtype, device=logits.device))
        early = [i for i, seq in enumerate(rows) if seq.matcher is None and len(seq.output_ids) < seq.request.min_tokens]
        if early:
            logits[torch.tensor(early, device=logits.device)[:, None], self._eos_ids.to(logits.device)] = float("-inf")

    def _end_bias(self, seq: Sequence) -> tuple[tuple[int, float], ...]:
        if not seq.request.end_bias or seq.matcher is None or not seq.output_ids or not seq.matcher.is_complete():
            return ()
        return tuple((eos, seq.request.end_bias) for eos in sorted(self._eos))

    def _advance(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        """Take one sampled token, then any forced tokens; emit them; finish if a stop condition holds."""
        if token < 0:
            self._finish(seq, "error", "the grammar allowed no token here (a bug in strictcall: please report it)")
            return
        started = time.perf_counter()
        if seq.matcher is not None and not seq.matcher.accept_token(token):
            self._finish(seq, "error", f"token {token} was sampled outside the grammar (a bug in strictcall: please report it)")
            return
        new_tokens, logprobs = [token], [logprob] if logprob else []
        use_jump = self.config.jump_forward if seq.request.jump_forward is None else seq.request.jump_forward
        if seq.matcher is not None and use_jump and token not in self._eos and not self._at_limit(seq, 1):
            budget = min(seq.request.max_tokens - len(seq.output_ids), self.runner.max_model_len - len(seq.tokens) - 1)
            new_tokens = self.jump_forward.extend(seq.matcher, token, budget)
            if logprob and new_tokens[0] != token:  # the sampled token merged with forced text: the model's choice
                logprobs = [TokenLogprob(new_tokens[0], logprob.logprob, logprob.top)]
            if seq.request.sampling.logprobs:
                logprobs += [TokenLogprob(t, 0.0) for t in new_tokens[1:]]
            self.stats.num_jump_forward_tokens += len(new_tokens) - 1
        if seq.matcher is not None:
            self.stats.grammar_seconds += time.perf_counter() - started
        self._emit(seq, new_tokens, logprobs)

    def _tokens_left(self, seq: Sequence) -> int:
        """Tokens the row may still emit: within max_tokens and the context."""
        return min(seq.request.max_tokens - len(seq.output_ids), self.runner.max_model_len - len(seq.tokens))

    def _at_limit(self, seq: Sequence, num_new: int) -> bool:
        return len(seq.output_ids) + num_new >= seq.request.max_tokens or len(seq.tokens) + num_new >= self.runner.max_model_len

    def _emit(self, seq: Sequence, new_tokens: list[int], logprobs: list[TokenLogprob]) -> None:
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
            # Out of tokens: a grammar that is complete here ended in time (the budget-aware mask sees to it).
            finish = "stop" if seq.matcher is not None and seq.matcher.is_complete() else "length"
        if finish is None and seq.matcher is not None and self._only_end_allowed(seq):
            finish = "stop"  # the grammar is complete: end without another model step
        if finish is not None and not stopped:
            text_parts.append(seq.stream.flush())
        event = EngineEvent(
            seq.request_id, tuple(kept), "".join(text_parts), tuple(logprobs[: len(kept)]),
            finish_reason=finish, num_prompt_tokens=len(seq.request.prompt_ids), num_output_tokens=len(seq.output_ids),
            num_cached_tokens=seq.num_cached,
        )
        if finish is not None:
            self._release(seq)  # before the last event, so whoever receives it sees the slot free
        seq.sink(event)

    def _only_end_allowed(self, seq: Sequence) -> bool:
        started = time.perf_counter()
        only_end = seq.matcher is not None and seq.matcher.is_only_end_allowed()
        self.stats.grammar_seconds += time.perf_counter() - started
        return only_end

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.finished:
            return
        self._release(seq)
        seq.sink(EngineEvent(seq.request_id, finish_reason=reason, error=error, num_prompt_tokens=len(seq.request.prompt_ids),
                             num_output_tokens=len(seq.output_ids), num_cached_tokens=seq.num_cached))

    def _release(self, seq: Sequence) -> None:
        seq.finished = True
        for move in self.scheduler.release(seq):
            self.runner.swap_slots(move.a, move.b, move.length)
        self.stats.num_running = len(self.scheduler.running)


def _call_opening_bias(seq: Sequence) -> tuple[tuple[int, float], ...]:
    opening, done = seq.request.call_opening, len(seq.output_ids)
    if not seq.request.call_opening_bias or done >= len(opening) or tuple(seq.output_ids) != opening[:done]:
        return ()
    return ((opening[done], seq.request.call_opening_bias),)
