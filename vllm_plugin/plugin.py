"""The vLLM plugin (`vllm.general_plugins` entry point `strictcall`), run by vLLM in each of its processes.

It registers, under the name `strictcall`: the tool parser (`--tool-call-parser strictcall`), the renderer with
vLLM's own Hugging Face tokenizer (`--tokenizer-mode strictcall`); and it installs the structured-output backend
(backend.py), which vLLM offers no registry for, by wrapping two functions:
- in the API process, `SamplingParams._validate_structured_outputs` lets a strictcall turn spec through (the
  tool parser compiled it already; xgrammar's validator would refuse a structural tag it does not know);
- in the engine core, `StructuredOutputManager.grammar_init` makes the engine's backend a `StrictcallBackend`,
  which compiles turn specs and hands any other request to the backend vLLM creates for it (xgrammar by default);
  `_create_grammar` gives a strictcall grammar its request's token budget (budget-aware closing).

Invariant: registering twice changes nothing; a request without a strictcall turn spec takes vLLM's own code
path, unchanged; the plugin does nothing where vLLM is not installed.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("strictcall.vllm")

NAME = "strictcall"
_PATCHED = "_strictcall_patched"


def register() -> None:
    """The entry point vLLM calls in every process (idempotent)."""
    try:
        import vllm
    except ImportError:  # installed without vLLM: nothing to register
        return
    from strictcall.vllm import TESTED_VLLM

    version = getattr(vllm, "__version__", "?")
    if not version.startswith(TESTED_VLLM):
        logger.warning("strictcall.vllm is tested with vLLM %s, this is %s: its hooks may have changed", " / ".join(TESTED_VLLM), version)
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    ToolParserManager.register_lazy_module(NAME, "strictcall.vllm.tool_parser", "StrictcallToolParser")
    if NAME not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(NAME, "vllm.tokenizers.hf", "CachedHfTokenizer")
    if NAME not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(NAME, "strictcall.vllm.renderer", "StrictcallRenderer")
    _patch_validation()
    _patch_grammar_init()


def _patch_validation() -> None:
    from vllm.sampling_params import SamplingParams

    from strictcall.vllm.turn_spec import is_turn_spec

    original = SamplingParams._validate_structured_outputs
    if getattr(original, _PATCHED, False):
        return

    def validate(self: Any, model_config: Any, structured_outputs_config: Any, tokenizer: Any) -> None:
        params = self.structured_outputs
        if structured_outputs_config is None or params is None or not is_turn_spec(params.structural_tag):
            return original(self, model_config, structured_outputs_config, tokenizer)
        if tokenizer is None:
            from vllm.exceptions import VLLMValidationError

            raise VLLMValidationError("strictcall's tool calls need a tokenizer, so they cannot be used with skip_tokenizer_init")
        if params._backend is None:
            # vLLM's manager keys its one backend by this name; ours wraps whichever it is.
            configured = structured_outputs_config.backend
            params._backend = "xgrammar" if configured == "auto" else configured
            params._backend_was_auto = configured == "auto"
        return None

    setattr(validate, _PATCHED, True)
    setattr(SamplingParams, "_validate_structured_outputs", validate)  # noqa: B010 (a method is replaced)


def _patch_grammar_init() -> None:
    from vllm.v1.structured_output import StructuredOutputManager

    from strictcall.vllm.turn_spec import is_turn_spec

    original = StructuredOutputManager.grammar_init
    if getattr(original, _PATCHED, False):
        return

    def grammar_init(self: Any, request: Any) -> None:
        if request.structured_output_request is None:
            return original(self, request)
        from strictcall.vllm.backend import StrictcallBackend

        backend = self.backend
        if not isinstance(backend, StrictcallBackend):
            backend = StrictcallBackend(self.vllm_config, tokenizer=self.tokenizer, vocab_size=self.vllm_config.model_config.get_vocab_size(),
                                        delegate=backend)
            logger.info("strictcall: tool-call turns are compiled by strictcall's grammars in this engine")
        _, spec = request.structured_output_request.structured_output_key
        if backend.delegate is None and not is_turn_spec(spec):
            # vLLM builds its own backend for this request, as it would without us; then ours wraps it.
            self.backend = None
            try:
                original(self, request)
            finally:
                backend.delegate, self.backend = self.backend, backend
            return None
        self.backend = backend
        return original(self, request)

    setattr(grammar_init, _PATCHED, True)
    setattr(StructuredOutputManager, "grammar_init", grammar_init)  # noqa: B010 (a method is replaced)

    create = StructuredOutputManager._create_grammar

    def create_grammar(self: Any, request: Any) -> Any:
        grammar = create(self, request)
        from strictcall.vllm.grammar import MatcherGrammar

        if isinstance(grammar, MatcherGrammar):
            # Set before the grammar is ready (this runs inside its compile future): the first mask already knows it.
            grammar.budget = min(request.max_tokens, self.vllm_config.model_config.max_model_len - request.num_prompt_tokens)
        return grammar

    setattr(StructuredOutputManager, "_create_grammar", create_grammar)  # noqa: B010 (a method is replaced)
