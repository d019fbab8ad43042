"""`auto_tool_bias` on vLLM: a logits processor, because a structured-output backend can only mask.

In `tool_choice: auto` a small model may never open a call by itself (SmolLM2-135M: 0 of 200 BFCL cases); as on
strictcall's server, the next token of the call's opening (`<tool_call>`) gets `+bias` while the output so far
is a proper prefix of the opening. The backend route cannot do this (vLLM's grammar interface is a bitmask:
allow or forbid), so it is this logits processor, loaded with `--logits-processors
strictcall.vllm.logits_processors:CallOpeningBias` (strictcall-vllm adds it). The tool parser asks for it per
request through `vllm_xargs` (`strictcall_opening`: the opening's token ids, `strictcall_bias`).

This is vLLM's V1 logits-processor interface, the one its CPU path and Model Runner V1 run. vLLM refuses custom
logits processors together with speculative decoding (V1); there the bias is off and the grammar alone decides.

Invariant: only the one token at one step per request is changed, by adding a finite number: a token the grammar
masked (-inf) stays masked, and once the output leaves the opening the request is never touched again.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from strictcall.vllm.output import call_opening_bias
from strictcall.vllm.tool_parser import BIAS_ARG, OPENING_ARG


def _request_bias(extra_args: dict[str, Any] | None) -> tuple[list[int], float] | None:
    args = extra_args or {}
    opening, bias = args.get(OPENING_ARG), args.get(BIAS_ARG)
    if opening is None and bias is None:
        return None
    if not isinstance(opening, list) or not opening or not all(isinstance(t, int) for t in opening):
        raise ValueError(f"vllm_xargs.{OPENING_ARG} must be a non-empty list of token ids")
    if not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
        raise ValueError(f"vllm_xargs.{BIAS_ARG} must be a number between -100 and 100")
    return (opening, float(bias)) if bias else None


class CallOpeningBias(LogitsProcessor):
    """Adds `auto_tool_bias` to the next token of the call's opening, per request (vLLM V1 logits processor)."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        # batch row -> (opening ids, bias, the request's live output ids)
        self._rows: dict[int, tuple[list[int], float, list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        _request_bias(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _, output_ids in batch_update.added:
            found = _request_bias(params.extra_args) if params is not None else None
            if found is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = (found[0], found[1], output_ids)
        for source, target, direction in batch_update.moved:
            moving, replaced = self._rows.pop(source, None), self._rows.pop(target, None)
            if moving is not None:
                self._rows[target] = moving
            if direction == MoveDirectionality.SWAP and replaced is not None:
                self._rows[source] = replaced

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index in list(self._rows):
            opening, bias, output_ids = self._rows[index]
            token = call_opening_bias(output_ids, opening, bias)
            if token is None:
                del self._rows[index]  # past the opening, or off it: never again for this request
            else:
                logits[index, token] += bias
        return logits
