"""strictcall as vLLM's structured-output backend: the turn's mask filled in the engine core, while the forward runs.

vLLM (0.32) has one structured-output backend per engine, picked from a closed list (xgrammar, guidance,
outlines, lm-format-enforcer); a new one cannot be registered (vLLM RFC #50966 is open). So the plugin
(plugin.py) wraps vLLM's choice: the engine's backend becomes `StrictcallBackend`, which compiles strictcall
turn specs itself and hands every other request to the backend vLLM would have built (xgrammar by default),
created for the first such request exactly as vLLM creates it.

What vLLM then does with our grammars is its own, unchanged machinery: the scheduler fills one bitmask row per
constrained request (and per speculative position, through `validate_tokens` / `rollback`) after it has sent
the step to the workers, so masks are computed while the forward runs; the workers apply them to the logits
on their device (CUDA kernels on a GPU); the sampled tokens come back and `accept_tokens` advances the matcher.
Tensor, pipeline and multi-node parallel change nothing here: the engine core is one process per engine.

Invariant: a request whose `structural_tag` is a strictcall turn spec is masked by strictcall's matcher of
that turn, one compile cache per engine; any other structured-output request gets what vLLM alone gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from vllm.v1.structured_output.backend_types import StructuredOutputBackend, StructuredOutputGrammar, StructuredOutputOptions

from strictcall.vllm.grammar import TurnCompiler
from strictcall.vllm.turn_spec import is_turn_spec


@dataclass
class StrictcallBackend(StructuredOutputBackend):
    """The engine's structured-output backend: strictcall turns here, the rest to `delegate` (vLLM's own)."""

    delegate: StructuredOutputBackend | None = None
    turns: TurnCompiler = field(init=False)

    def __post_init__(self) -> None:
        self.turns = TurnCompiler(self.tokenizer, self.vocab_size)

    def compile_grammar(self, request_type: StructuredOutputOptions, grammar_spec: str, stop_token_ids: set[int] | None = None) -> StructuredOutputGrammar:
        if request_type == StructuredOutputOptions.STRUCTURAL_TAG and is_turn_spec(grammar_spec):
            # Duck-typed: vLLM calls the methods of its abstract grammar, and checks no type at run time.
            return cast(StructuredOutputGrammar, self.turns.compile(grammar_spec, stop_token_ids))
        if self.delegate is None:
            raise ValueError(f"no structured-output backend for a {request_type.name} request (vLLM's own was not created)")
        return self.delegate.compile_grammar(request_type, grammar_spec, stop_token_ids=stop_token_ids)

    def allocate_token_bitmask(self, max_num_seqs: int) -> Any:
        # The layout of xgrammar's: int32 words, bit t % 32 of word t // 32, all allowed to start with.
        return torch.full((max_num_seqs, self.turns.num_words), -1, dtype=torch.int32)

    def destroy(self) -> None:
        if self.delegate is not None:
            self.delegate.destroy()
            self.delegate = None
