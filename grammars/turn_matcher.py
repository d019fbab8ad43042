"""One request's position in a `TurnGrammar`: the live configurations, the turn's text, and its calls so far.

Two things make a turn's mask depend on the request and not only on the grammar, so they are applied here, on
top of the turn's shared (cached) masks:
- the token budget (`max_tokens`): only tokens after which the turn can still end within the tokens left;
- no identical call twice (`TurnGrammar.distinct_calls`): a token after which every continuation would complete a
  call equal to an earlier one of the same turn (same name, same arguments: the grammar writes both in one
  canonical form, so equal calls are equal text) is not allowed, so the turn moves on to another call or ends.
  Measured on SmolLM2-135M, which repeats its call until `max_tokens` runs out otherwise (README, BFCL).

Invariant: the mask and `accept_token` agree, both for the budget-free mask and with the duplicate rule: a token
the mask allows is accepted, one it refuses is refused and leaves the matcher unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from strictcall.grammars.masks import write_bitmask_row

if TYPE_CHECKING:
    from strictcall.grammars.turn import Config, TurnGrammar


@dataclass(frozen=True)
class _Step:
    """The matcher after one accepted step: its configurations, the text length, the calls completed (their
    (start, end) byte offsets) and where the current call begins."""

    configs: frozenset[Config]
    text_length: int
    calls: tuple[tuple[int, int], ...] = ()
    call_start: int | None = None


class TurnMatcher:
    """One request's position in a `TurnGrammar` (a `Matcher`)."""

    def __init__(self, turn: TurnGrammar):
        self.turn = turn
        configs = turn.start_configs()
        structured = not any(c[0] in ("text", "answer") for c in configs)
        self._steps = [_Step(configs, 0, (), len(turn.format.prefix.encode()) if structured else None)]
        self._text = bytearray()
        self._terminated = False
        self._max_tokens: int | None = None  # the budget of the last mask: accept_token decides as that mask did

    @property
    def configs(self) -> frozenset[Config]:
        return self._steps[-1].configs

    def is_terminated(self) -> bool:
        return self._terminated

    def is_accepting(self) -> bool:
        return self._terminated or self.turn.may_end(self.configs)

    def is_complete(self) -> bool:
        return self.is_accepting() and not any(c[0] == "text" for c in self.configs)

    def is_only_end_allowed(self) -> bool:
        return self._terminated or (self.turn.may_end(self.configs) and
                                    np.array_equal(self.next_token_bitmask(), self.turn.vocabulary.eos_bitmask))

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) if the turn does not allow it here."""
        if self._terminated:
            return False
        vocabulary = self.turn.vocabulary
        if token_id in vocabulary.eos_token_ids:
            if not self.turn.may_end(self.configs):
                return False
            self._steps.append(self._steps[-1])
            self._terminated = True
            return True
        data = vocabulary.token_bytes[token_id] if 0 <= token_id < vocabulary.vocab_size else None
        return bool(data) and self.accept_bytes(data)  # type: ignore[arg-type]

    def accept_bytes(self, data: bytes) -> bool:
        """Advance by raw bytes (forced text); one step for `rollback`."""
        if self._terminated or not self._advance(data):
            return False
        if self._repeats_a_call():
            self.rollback(1)
            if self._repeat_is_refused():
                return False
            self._advance(data)
        return True

    def _repeat_is_refused(self) -> bool:
        """A repeat is refused only where something else is allowed (the mask is never empty, and agrees)."""
        return bool(self._without_repeats(self._budget_mask(self._max_tokens)).any())

    def _advance(self, data: bytes) -> bool:
        previous = self._steps[-1]
        configs = self.turn.advance(previous.configs, data)
        if not configs:
            return False
        step = _Step(configs, previous.text_length + len(data), previous.calls, previous.call_start)
        if _num_calls(configs) > _num_calls(previous.configs) or (previous.call_start is None and _is_structured(configs)):
            step = self._boundaries(previous, data)  # a call began or ended inside these bytes: find where, byte by byte
        self._text += data
        self._steps.append(step)
        return True

    def _boundaries(self, previous: _Step, data: bytes) -> _Step:
        configs, calls, call_start = previous.configs, list(previous.calls), previous.call_start
        trigger, prefix, separator = (self.turn.format.trigger.encode(), self.turn.format.prefix.encode(), self.turn.format.separator.encode())
        for i in range(len(data)):
            before = configs
            configs = self.turn.advance(configs, data[i : i + 1])
            position = previous.text_length + i + 1
            if call_start is None and _is_structured(configs):  # free text became calls at the trigger's last byte
                call_start = position - len(trigger) + len(prefix)
            if _num_calls(configs) > _num_calls(before) and call_start is not None:
                calls.append((call_start, position))  # a call ended here; the next one starts after the separator
                call_start = position + len(separator)
        return _Step(configs, previous.text_length + len(data), tuple(calls), call_start)

    def rollback(self, num_steps: int) -> None:
        if not 0 <= num_steps < len(self._steps):
            raise ValueError(f"cannot roll back {num_steps} steps: only {len(self._steps) - 1} were accepted")
        if num_steps:
            self._terminated = False
            del self._steps[len(self._steps) - num_steps :]
            del self._text[self._steps[-1].text_length :]

    def reset(self) -> None:
        self.rollback(len(self._steps) - 1)

    def next_token_bitmask(self, max_tokens: int | None = None) -> np.ndarray:
        if self._terminated:
            return self.turn.vocabulary.eos_bitmask
        mask = self._budget_mask(max_tokens)
        distinct = self._without_repeats(mask)
        return distinct if distinct is mask or distinct.any() else mask  # only a repeat fits: better than nothing

    def _budget_mask(self, max_tokens: int | None) -> np.ndarray:
        if max_tokens is None:
            return self.turn.token_bitmask(self.configs)
        return self.turn.token_bitmask_within(self.configs, max(max_tokens - 1, 0))

    def fill_next_token_bitmask(self, bitmask: Any, index: int = 0, max_tokens: int | None = None) -> None:
        """Write the allowed tokens into row `index` of a `(batch, ceil(V/32))` int32 bitmask."""
        self._max_tokens = max_tokens
        write_bitmask_row(bitmask, index, self.next_token_bitmask(max_tokens))

    def forced_bytes(self) -> bytes:
        return b"" if self._terminated else self.turn.forced_bytes(self.configs)

    def min_bytes_to_end(self) -> int:
        return 0 if self._terminated else self.turn.min_bytes_to_end(self.configs)

    def in_tool_call(self) -> bool:
        """Whether the text so far has committed to tool calls (the trigger is complete)."""
        return _is_structured(self.configs)

    # ----- no identical call twice -----

    def _repeats(self) -> tuple[int, list[bytes]]:
        """(bytes since the last call ended, the earlier calls, each as separator + call, that they could still become)."""
        step = self._steps[-1]
        if not self.turn.distinct_calls or not step.calls:
            return 0, []
        after = bytes(self._text[step.calls[-1][1] :])
        separator = self.turn.format.separator.encode()
        earlier = [separator + bytes(self._text[start:end]) for start, end in step.calls]
        return len(after), [call for call in earlier if call.startswith(after)]

    def _repeats_a_call(self) -> bool:
        """The last step completed, or forced the completion of, a call equal to an earlier one."""
        step = self._steps[-1]
        if not self.turn.distinct_calls or not step.calls:
            return False
        texts = [bytes(self._text[start:end]) for start, end in step.calls]
        if texts[-1] in texts[:-1]:
            return True
        after = bytes(self._text[step.calls[-1][1] :]) + self.forced_bytes()
        separator = self.turn.format.separator.encode()
        return any(after.startswith(separator + text) for text in texts)

    def _without_repeats(self, mask: np.ndarray) -> np.ndarray:
        """The mask without the tokens after which only a repeat of an earlier call can follow (only tokens that
        spell a prefix of such a repeat, or run past its end, can be: a few per step, checked by advancing)."""
        done, repeats = self._repeats()
        vocabulary = self.turn.vocabulary
        candidates: set[int] = set()
        for repeat in repeats:
            rest = repeat[done:]
            for length in range(1, min(len(rest), vocabulary.max_token_bytes) + 1):
                candidates.update(vocabulary.token_ids_spelling(rest[:length]))
            if len(rest) <= vocabulary.max_token_bytes:
                candidates.update(vocabulary.token_ids_starting_with(rest))
        words = mask.view(np.uint32)
        banned = [t for t in sorted(candidates) if (words[t // 32] >> np.uint32(t % 32)) & 1 and self._would_repeat(t)]
        if not banned:
            return mask
        out = mask.copy()
        for token_id in banned:
            out.view(np.uint32)[token_id // 32] &= ~np.uint32(1 << (token_id % 32))
        return out

    def _would_repeat(self, token_id: int) -> bool:
        data = self.turn.vocabulary.token_bytes[token_id]
        if not data or not self._advance(data):
            return False
        try:
            return self._repeats_a_call()
        finally:
            self.rollback(1)


def _num_calls(configs: frozenset[Config]) -> int:
    return max((c[3] for c in configs), default=0)


def _is_structured(configs: frozenset[Config]) -> bool:
    return bool(configs) and not any(c[0] in ("text", "answer") for c in configs)
