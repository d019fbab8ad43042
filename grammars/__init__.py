"""strictcall.grammars: JSON Schemas and tool sets compiled to token-level finite-state machines.

The pipeline, one module each: `json_schema` (schema -> regex) -> `regex` (regex -> AST) -> `automaton` (AST ->
byte NFA -> lazy DFA) -> `masks` (DFA state -> token mask over a `vocabulary`) -> `compiler` (cached
`CompiledGrammar`s) -> `matcher` (per request). `formats` and `tools` compose per-tool grammars into a turn.
No torch here, except in `logits_processor` (the Hugging Face integration), which is imported on its own.
"""

from __future__ import annotations

from strictcall.grammars.automaton import AutomatonLimitError
from strictcall.grammars.compiler import CompiledGrammar, CompilerLimits, GrammarCompiler
from strictcall.grammars.disk_cache import DiskCache
from strictcall.grammars.formats import FORMATS, ToolCall, ToolCallFormat, detect_format, get_format
from strictcall.grammars.json_schema import SchemaOptions, UnsupportedSchemaError, json_schema_to_regex
from strictcall.grammars.matcher import GrammarMatcher
from strictcall.grammars.regex import RegexSyntaxError
from strictcall.grammars.tools import ToolChoice, ToolGrammarCompiler, ToolGrammarError, TurnGrammar, TurnMatcher
from strictcall.grammars.vocabulary import Vocabulary

__all__ = [
    "FORMATS",
    "AutomatonLimitError",
    "CompiledGrammar",
    "CompilerLimits",
    "DiskCache",
    "GrammarCompiler",
    "GrammarMatcher",
    "RegexSyntaxError",
    "SchemaOptions",
    "ToolCall",
    "ToolCallFormat",
    "ToolChoice",
    "ToolGrammarCompiler",
    "ToolGrammarError",
    "TurnGrammar",
    "TurnMatcher",
    "UnsupportedSchemaError",
    "Vocabulary",
    "detect_format",
    "get_format",
    "json_schema_to_regex",
]
