"""`auto_tool_bias` for vLLM's Model Runner V2 (the default runner on NVIDIA GPUs; the CPU path runs V1, see
logits_processors.py): the same rule, written for V2's interface, on the device and without a host sync.

V2 gives a logits processor no per-request list of output ids, only the batch layout of the step (each row's
request slot, position and input token). So each slot keeps, on the device, how many leading output tokens have
matched the opening so far; a row's input token is the newest output token, which extends the match or ends it.
While the match covers the whole output so far and the opening is not complete, the opening's next token gets
`+bias`. Loaded with `--logits-processors strictcall.vllm.logits_processors_v2:CallOpeningBiasV2`
(strictcall-vllm picks it where V2 runs).

Limits, each safe (the grammar still decides everything): with speculative decoding the bias is off (a request's
rows would have to be matched in sequence); a request resumed after preemption with output already written gets
no bias (its earlier tokens were not seen).

Invariant: as in V1, only the one token of the opening is changed, by a finite number, and only while the output
is a proper prefix of the opening.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcessor, LogitsProcRequestState

from strictcall.vllm.logits_processors import _request_bias

MAX_OPENING = 16  # tokens of the opening kept (`<tool_call>` is a handful)


class CallOpeningBiasV2(LogitsProcessor):
    """Adds `auto_tool_bias` to the next token of the call's opening, per request (vLLM Model Runner V2)."""

    def __init__(self, vllm_config: Any, req_states: LogitsProcRequestState):
        n, device = req_states.max_num_reqs, req_states.device
        self.enabled = getattr(vllm_config, "speculative_config", None) is None
        self.req_states = req_states
        self.opening = torch.full((n, MAX_OPENING), -1, dtype=torch.int64, device=device)
        self.length = torch.zeros(n, dtype=torch.int64, device=device)
        self.bias = torch.zeros(n, dtype=torch.float32, device=device)
        self.matched = torch.zeros(n, dtype=torch.int64, device=device)  # leading output tokens equal to the opening
        self.active = np.zeros(n, dtype=bool)  # host mirror: skip the step when no request of the batch has a bias

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        _request_bias(sampling_params.extra_args)

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        found = _request_bias(sampling_params.extra_args) if self.enabled else None
        self.active[req_idx] = found is not None
        self.length[req_idx] = 0
        if found is None:
            return False
        opening, bias = found
        opening = opening[:MAX_OPENING]
        row = torch.full((MAX_OPENING,), -1, dtype=torch.int64)
        row[: len(opening)] = torch.tensor(opening, dtype=torch.int64)
        self.opening[req_idx].copy_(row)
        self.length[req_idx] = len(opening)
        self.bias[req_idx] = bias
        self.matched[req_idx] = 0
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if not self.active[ctx.idx_mapping_np].any():
            return logits
        slots = ctx.expanded_idx_mapping.long()
        length = self.length[slots]
        # Output tokens before the one sampled at this row; the row's input token is the newest of them.
        out_pos = ctx.pos.long() + 1 - self.req_states.prompt_len.gpu[slots].long()
        matched = self.matched[slots]
        newest_expected = self.opening[slots, (out_pos - 1).clamp(0, MAX_OPENING - 1)]
        extends = (out_pos > 0) & (matched == out_pos - 1) & (out_pos - 1 < length) & (ctx.input_ids.long() == newest_expected)
        matched = torch.where(extends, out_pos, matched)
        self.matched[slots] = matched
        on_opening = (length > 0) & (matched == out_pos) & (out_pos < length)
        target = self.opening[slots, out_pos.clamp(0, MAX_OPENING - 1)].clamp(min=0)
        rows = torch.arange(slots.shape[0], device=logits.device)
        logits[rows, target] += torch.where(on_opening, self.bias[slots], torch.zeros_like(self.bias[slots]))
        return logits
