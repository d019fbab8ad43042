"""The `auto_tool_bias` logits processors on vLLM's own interfaces, step by step, without an engine: V1 (the CPU path
and Model Runner V1, also run end to end in test_vllm_offline.py) and V2 (Model Runner V2, which needs a GPU to run
in an engine: here its `apply` runs on CPU tensors laid out as V2 lays out a step).

Needs vLLM (.venv-vllm); skipped elsewhere.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="needs vLLM: scripts/install.sh vllm test, then .venv-vllm/bin/pytest tests/test_vllm_*.py")

pytestmark = pytest.mark.vllm

V = 32
OPENING = [5, 6, 7]


def _params(opening: list[int] | None, bias: float = 2.0):
    from vllm import SamplingParams

    return SamplingParams(extra_args=None if opening is None else {"strictcall_opening": opening, "strictcall_bias": bias})


def test_v1_biases_the_next_opening_token_and_follows_moves() -> None:
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from strictcall.vllm.logits_processors import CallOpeningBias

    processor = CallOpeningBias(None, torch.device("cpu"), False)
    assert not processor.is_argmax_invariant()
    out0: list[int] = []
    out2: list[int] = []
    processor.update_state(BatchUpdate(3, removed=[], moved=[], added=[(0, _params(OPENING), [1], out0), (1, _params(None), [1], []),
                                                                       (2, _params(OPENING), [1], out2)]))
    logits = processor.apply(torch.zeros(3, V))
    assert logits[0, 5] == 2 and logits[2, 5] == 2 and logits.sum() == 4
    out0.append(5)
    out2.append(9)  # off the opening: never again
    logits = processor.apply(torch.zeros(3, V))
    assert logits[0, 6] == 2 and logits.sum() == 2
    processor.update_state(BatchUpdate(3, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))  # row 0 is now row 1
    out0.append(6)
    logits = processor.apply(torch.zeros(3, V))
    assert logits[1, 7] == 2 and logits.sum() == 2
    out0.append(7)  # the opening is complete
    assert processor.apply(torch.zeros(3, V)).sum() == 0
    masked = torch.full((1, V), float("-inf"))
    processor.update_state(BatchUpdate(1, removed=[0, 1, 2], moved=[], added=[(0, _params(OPENING), [1], [])]))
    assert torch.isinf(processor.apply(masked)[0, 5])  # a masked token stays masked


def test_bad_bias_arguments_are_refused() -> None:
    from strictcall.vllm.logits_processors import CallOpeningBias

    for args in ({"strictcall_opening": [], "strictcall_bias": 1}, {"strictcall_opening": [1], "strictcall_bias": 1000},
                 {"strictcall_opening": "x", "strictcall_bias": 1}):
        with pytest.raises(ValueError):
            CallOpeningBias.validate_params(SimpleNamespace(extra_args=args))


def test_v2_biases_on_the_device_from_the_step_layout() -> None:
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

    from strictcall.vllm.logits_processors_v2 import CallOpeningBiasV2

    prompt_len = torch.tensor([10, 4, 8, 0], dtype=torch.int32)
    states = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=4, vocab_size=V, all_token_ids=None,
                                    prompt_len=SimpleNamespace(gpu=prompt_len), prefill_len=None, total_len=None)
    processor = CallOpeningBiasV2(SimpleNamespace(speculative_config=None), states)
    assert processor.add_request(0, _params(OPENING)) and not processor.add_request(1, _params(None))
    assert processor.add_request(2, _params(OPENING))

    def step(slots: list[int], outputs: list[int], inputs: list[int]) -> torch.Tensor:
        """One decode step: row i samples output token number outputs[i] of slot slots[i], fed token inputs[i]."""
        pos = torch.tensor([int(prompt_len[s]) - 1 + o for s, o in zip(slots, outputs)])
        idx = torch.tensor(slots)
        ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.array(slots), expanded_local_pos=torch.zeros(len(slots)),
                            input_ids=torch.tensor(inputs), pos=pos, seq_lens_upper_bound_np=np.zeros(len(slots)))
        return processor.apply(torch.zeros(len(slots), V), ctx)

    logits = step([2, 1, 0], [0, 0, 0], [99, 99, 99])  # rows in any order: the first output token of each
    assert logits[0, 5] == 2 and logits[2, 5] == 2 and logits.sum() == 4
    logits = step([0, 2, 1], [1, 1, 1], [5, 9, 3])  # slot 0 wrote 5 (on the opening), slot 2 wrote 9 (off it)
    assert logits[0, 6] == 2 and logits.sum() == 2
    logits = step([0, 2], [2, 2], [6, 5])  # slot 2 writing the opening's first token later does not count
    assert logits[0, 7] == 2 and logits.sum() == 2
    assert step([0], [3], [7]).sum() == 0  # complete
    disabled = CallOpeningBiasV2(SimpleNamespace(speculative_config=object()), states)
    assert not disabled.add_request(0, _params(OPENING))
