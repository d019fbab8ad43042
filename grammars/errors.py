"""The grammar package's errors: `GrammarError` and its kinds, the only grammar errors that mean "the input
cannot be compiled" (the server answers them with a 400; anything else a grammar raises is a bug, and fails
only the request it happened in).

Invariant: every error names what could not be compiled and where (a JSON pointer into the schema, a
position in the regex, the tool), in terms of the grammar's inputs, never of a wire protocol: the server
maps them to its request fields.
"""

from __future__ import annotations


class GrammarError(Exception):
    """An input (schema, regex, tool set) that cannot be compiled within the limits."""


class UnsupportedSchemaError(GrammarError):
    """A schema (or a keyword in it) that cannot be compiled to a finite-state machine.

    Attributes:
        pointer: JSON pointer to the schema holding the keyword ("" is the root).
        keyword: the keyword, e.g. "patternProperties".
    """

    def __init__(self, pointer: str, keyword: str, reason: str) -> None:
        self.pointer = pointer
        self.keyword = keyword
        super().__init__(f"schema at {pointer or '/'}: keyword {keyword!r} {reason}")


class InvalidSchemaError(GrammarError):
    """Not a JSON Schema at all (a keyword of the wrong type, a number JSON cannot hold, too deep).

    Attributes:
        pointer: JSON pointer to the offending value ("" is the root).
    """

    def __init__(self, pointer: str, reason: str) -> None:
        self.pointer = pointer
        super().__init__(f"schema at {pointer or '/'} {reason}")


class RegexSyntaxError(GrammarError):
    """A pattern outside our syntax; the message names the position and the construct."""


class AutomatonLimitError(GrammarError):
    """A grammar needs more automaton states than the configured limit."""


class TurnError(GrammarError):
    """A turn's tools, tool choice or answer format cannot be compiled.

    Attributes:
        part: which input: "tools", "tool_choice" or "answer".
        index: the tool's position in the turn's tools (for `part == "tools"`).
        cause: the underlying error (an `UnsupportedSchemaError`, ...), if any.
    """

    def __init__(self, message: str, part: str, index: int | None = None, cause: GrammarError | None = None):
        super().__init__(message)
        self.part = part
        self.index = index
        self.cause = cause
