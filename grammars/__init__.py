"""strictcall.grammars: JSON Schemas and tool sets compiled to token-level finite-state machines.

The pipeline, one module each: `json_schema` (schema -> regex; with `json_numbers`, `json_strings`,
`schema_merge`) -> `regex` (regex -> AST) -> `automaton` (AST -> byte NFA -> lazy DFA) -> `masks` (DFA state ->
token mask over a `vocabulary`) -> `compiler` (cached `CompiledGrammar`s) -> `matcher` (the `Matcher` interface,
per request). `formats`, `tools` and `turn` compose per-tool grammars into a turn, one more grammar kind.
`errors` holds the only errors that mean "this input cannot be compiled". No torch here, except in
`logits_processor` (the Hugging Face integration), which is imported on its own. This module is the package's
public face: the server imports nothing else from it.
"""

from __future__ import annotations

from strictcall.grammars.cancel import CompileCancelledError, cancellable, check_cancelled
from strictcall.grammars.compiler import CompiledGrammar, CompilerLimits, GrammarCompiler
from strictcall.grammars.disk_cache import DiskCache
from strictcall.grammars.errors import AutomatonLimitError, GrammarError, InvalidSchemaError, RegexSyntaxError, TurnError
from strictcall.grammars.formats import FORMATS, ToolCall, ToolCallFormat, detect_format, get_format
from strictcall.grammars.json_schema import SchemaOptions, UnsupportedSchemaError, json_schema_to_regex
from strictcall.grammars.matcher import Grammar, GrammarMatcher, Matcher
from strictcall.grammars.regex import escape
from strictcall.grammars.schema_check import check_schema
from strictcall.grammars.tools import AnswerSpec, ToolChoice, ToolGrammarCompiler, ToolSpec, turn_key
from strictcall.grammars.turn import TurnGrammar, Unenforced
from strictcall.grammars.turn_matcher import TurnMatcher
from strictcall.grammars.vocabulary import Vocabulary

__all__ = [
    "FORMATS",
    "AnswerSpec",
    "AutomatonLimitError",
    "CompileCancelledError",
    "CompiledGrammar",
    "CompilerLimits",
    "DiskCache",
    "Grammar",
    "GrammarCompiler",
    "GrammarError",
    "GrammarMatcher",
    "InvalidSchemaError",
    "Matcher",
    "RegexSyntaxError",
    "SchemaOptions",
    "ToolCall",
    "ToolCallFormat",
    "ToolChoice",
    "ToolGrammarCompiler",
    "ToolSpec",
    "TurnError",
    "TurnGrammar",
    "TurnMatcher",
    "Unenforced",
    "UnsupportedSchemaError",
    "Vocabulary",
    "cancellable",
    "check_cancelled",
    "check_schema",
    "detect_format",
    "escape",
    "get_format",
    "json_schema_to_regex",
    "turn_key",
]
