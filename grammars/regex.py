"""Our regular-expression syntax as a small AST: a parser, a serializer, and JSON Schema `pattern` search semantics.

The syntax is the subset of Python `re` that a finite automaton can enforce, with the meaning of
`re.fullmatch(pattern, s, re.ASCII)`: literals, escapes, `.`, classes, groups, alternation and greedy or lazy
quantifiers (laziness does not change the language). Lookaround, backreferences, inline flags, word boundaries,
possessive quantifiers and atomic groups raise `RegexSyntaxError` naming the construct and its position.

`\\d`, `\\w` and `\\s` are ASCII classes (`[0-9]`, `[A-Za-z0-9_]`, `[ \\t\\n\\r\\f\\v]`), as in ECMA-262, whose
`\\d`/`\\w` JSON Schema's `pattern` uses (ECMA's `\\s` also holds Unicode spaces; ours is the ASCII subset, so a
string we accept for `\\s` is accepted there too). `.` is any code point but `\\n`.

A grammar (`parse_grammar`, `grammar_text`) adds named rules that may call each other and themselves, which no
regex can: `(?(DEFINE)(?<name>...)...)` then the main pattern, with `(?&name)` a call (PCRE's syntax). Only a
grammar's own patterns may call rules; a user's regex may not.

Invariants: `parse_regex(to_regex(node))` denotes the same language as `node`, and `to_regex` writes only syntax
that Python `re` and Rust's `regex` crate (outlines-core) read identically (rule calls aside). Surrogate code points (U+D800-U+DFFF)
never appear in a `CharClass`: they cannot be encoded in UTF-8. Parsing and serializing are iterative and linear
in the pattern's length, so 100 KB patterns and deeply nested groups are fine.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from strictcall.grammars.cancel import check_cancelled
from strictcall.grammars.errors import RegexSyntaxError

MAX_CODE_POINT = 0x10FFFF
SURROGATE_LO, SURROGATE_HI = 0xD800, 0xDFFF
# Python's own limit on a counted repeat (sre's MAXREPEAT - 1).
MAX_REPEAT_COUNT = 4_294_967_294


@dataclass(frozen=True)
class CharClass:
    """A set of Unicode code points; one literal character is a one-range class.

    Attributes:
        ranges: inclusive `(lo, hi)` pairs, sorted, non-overlapping, non-adjacent, within 0..0x10FFFF, with no
            surrogates. Build from arbitrary ranges with `CharClass.of`.
    """

    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        previous_hi = -2
        for lo, hi in self.ranges:
            if not (previous_hi + 1 < lo <= hi <= MAX_CODE_POINT):
                raise ValueError(f"CharClass ranges must be sorted, disjoint, non-adjacent: {self.ranges!r}")
            if lo <= SURROGATE_HI and hi >= SURROGATE_LO:
                raise ValueError(f"CharClass ranges must exclude surrogates U+D800-U+DFFF: {self.ranges!r}")
            previous_hi = hi

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int]]) -> CharClass:
        """The class of the union of arbitrary inclusive ranges, normalized, surrogates dropped."""
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges):
            lo, hi = max(lo, 0), min(hi, MAX_CODE_POINT)
            if lo > hi:
                continue
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        result: list[tuple[int, int]] = []
        for lo, hi in merged:
            if lo < SURROGATE_LO:
                result.append((lo, min(hi, SURROGATE_LO - 1)))
            if hi > SURROGATE_HI:
                result.append((max(lo, SURROGATE_HI + 1), hi))
        return cls(tuple(result))

    @classmethod
    def literal(cls, char: str) -> CharClass:
        """The class holding exactly one character (empty for a lone surrogate)."""
        return _literal(ord(char))

    def complement(self) -> CharClass:
        """Every code point (surrogates excluded) not in this class."""
        gaps: list[tuple[int, int]] = []
        start = 0
        for lo, hi in self.ranges:
            if lo > start:
                gaps.append((start, lo - 1))
            start = hi + 1
        if start <= MAX_CODE_POINT:
            gaps.append((start, MAX_CODE_POINT))
        return CharClass.of(gaps)

    def contains(self, code_point: int) -> bool:
        """Whether `code_point` is in the class."""
        index = bisect.bisect_right(self.ranges, (code_point, MAX_CODE_POINT + 1)) - 1
        return index >= 0 and self.ranges[index][0] <= code_point <= self.ranges[index][1]


@dataclass(frozen=True)
class Concat:
    """The parts matched one after the other; `()` is the empty string."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Alternation:
    """Any one of the options; `()` matches nothing."""

    options: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    """`node` matched `min_count` to `max_count` times (`None`: unbounded)."""

    node: Node
    min_count: int
    max_count: int | None

    def __post_init__(self) -> None:
        if self.min_count < 0 or (self.max_count is not None and self.max_count < self.min_count):
            raise ValueError(f"Repeat bounds must satisfy 0 <= min <= max: {self.min_count}, {self.max_count}")


@dataclass(frozen=True)
class RuleRef:
    """`(?&name)`: the language of the grammar's rule `name` (defined in a `(?(DEFINE)...)` prefix, see
    `parse_grammar`); rules may refer to each other and to themselves, which no regex can."""

    name: str


Node = CharClass | Concat | Alternation | Repeat | RuleRef

EMPTY = Concat(())
NOTHING = Alternation(())
ANY_CHAR = CharClass.of([(0, MAX_CODE_POINT)])
DOT = CharClass.of([(0, 9), (11, MAX_CODE_POINT)])  # `.`: anything but "\n", as in Python without DOTALL
DIGIT = CharClass.of([(0x30, 0x39)])
WORD = CharClass.of([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
SPACE = CharClass.of([(0x09, 0x0D), (0x20, 0x20)])


@lru_cache(maxsize=4096)
def _literal(code_point: int) -> CharClass:
    return CharClass.of([(code_point, code_point)])


@dataclass(frozen=True)
class _Anchor:
    """`^`/`\\A` (start) or `$`/`\\Z` (end) while parsing; resolved away before a Node is returned."""

    is_start: bool
    position: int


_CATEGORIES = {"d": DIGIT, "D": DIGIT.complement(), "w": WORD, "W": WORD.complement(), "s": SPACE,
               "S": SPACE.complement()}
_CONTROL_ESCAPES = {"a": 0x07, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}
_HEX_ESCAPE_WIDTHS = {"x": 2, "u": 4, "U": 8}
_OCTAL = "01234567"
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_UNSUPPORTED_ESCAPES = {"b": "word boundary \\b", "B": "word boundary \\B", "p": "Unicode property \\p",
                        "P": "Unicode property \\P", "N": "named character \\N{...}", "k": "named backreference \\k",
                        "z": "anchor \\z", "G": "anchor \\G"}
_UNSUPPORTED_GROUPS = {"=": "lookahead", "!": "negative lookahead", "<=": "lookbehind",
                       "<!": "negative lookbehind", "P=": "named backreference", "(": "conditional group",
                       ">": "atomic group"}


class _Parser:
    """A single left-to-right pass with an explicit stack of open groups (no recursion)."""

    def __init__(self, pattern: str, allow_rules: bool = False) -> None:
        self.pattern = pattern
        self.pos = 0
        self.allow_rules = allow_rules  # `(?&name)`: only in a grammar's patterns, never in a user's regex

    def error(self, position: int, message: str) -> RegexSyntaxError:
        shown = self.pattern if len(self.pattern) <= 80 else self.pattern[max(0, position - 30) : position + 30]
        where = "" if len(self.pattern) <= 80 else f" (of {len(self.pattern)} characters, shown near {position})"
        return RegexSyntaxError(f"regex {shown!r}{where} at {position}: {message}")

    def parse(self) -> Node | _Anchor:
        pattern, end = self.pattern, len(self.pattern)
        stack: list[tuple[int, list[Node | _Anchor], list[Node | _Anchor]]] = []
        options: list[Node | _Anchor] = []
        items: list[Node | _Anchor] = []
        can_repeat = is_repeat = False
        while self.pos < end:
            if not self.pos & 4095:
                check_cancelled()
            start = self.pos
            char = pattern[start]
            self.pos += 1
            if char == "(" and pattern.startswith("?&", self.pos) and self.allow_rules:
                close = pattern.find(")", self.pos)
                name = pattern[self.pos + 2 : close] if close >= 0 else ""
                if not name.isidentifier():
                    raise self.error(start, f"bad rule reference {name!r}")
                self.pos = close + 1
                items.append(RuleRef(name))
                can_repeat = True
                is_repeat = False
            elif char == "(":
                if not self._open_group(start):
                    continue  # a (?#...) comment
                stack.append((start, options, items))
                options, items = [], []
                can_repeat = is_repeat = False
            elif char == ")":
                if not stack:
                    raise self.error(start, "unbalanced parenthesis ')'")
                node = _alternation([*options, _concat(items)])
                _, options, items = stack.pop()
                items.append(node)
                can_repeat, is_repeat = True, False
            elif char == "|":
                options.append(_concat(items))
                items = []
                can_repeat = is_repeat = False
            elif char in "*+?" or (char == "{" and self._counted_repeat(start) is not None):
                if not can_repeat:
                    raise self.error(start, "multiple repeat" if is_repeat else "nothing to repeat")
                low, high = self._quantifier(start)
                if self.pos < end and pattern[self.pos] == "+":
                    raise self.error(self.pos, "possessive quantifier is not supported")
                if self.pos < end and pattern[self.pos] == "?":
                    self.pos += 1  # lazy: same language
                items[-1] = Repeat(items[-1], low, high)  # type: ignore[arg-type]  # can_repeat: not an anchor
                can_repeat, is_repeat = False, True
            else:
                atom = self._atom(start, char)
                items.append(atom)
                can_repeat, is_repeat = not isinstance(atom, _Anchor), False
        if stack:
            raise self.error(stack[-1][0], "missing ')', unterminated group")
        return _alternation([*options, _concat(items)])

    def _open_group(self, start: int) -> bool:
        """Consume a group's opening after '('; False for a comment, which is skipped whole."""
        pattern = self.pattern
        if not pattern.startswith("?", self.pos):
            return True
        self.pos += 1
        if pattern.startswith(":", self.pos):
            self.pos += 1
            return True
        if pattern.startswith("#", self.pos):
            close = pattern.find(")", self.pos)
            if close < 0:
                raise self.error(start, "missing ')', unterminated comment")
            self.pos = close + 1
            return False
        for prefix, construct in _UNSUPPORTED_GROUPS.items():
            if pattern.startswith(prefix, self.pos):
                raise self.error(start, f"{construct} is not supported")
        for prefix in ("P<", "<"):
            if pattern.startswith(prefix, self.pos):
                close = pattern.find(">", self.pos)
                name = pattern[self.pos + len(prefix) : close] if close >= 0 else ""
                if not name.isidentifier():
                    raise self.error(start, f"bad group name {name!r}")
                self.pos = close + 1
                return True
        raise self.error(start, "inline flags and other (?...) extensions are not supported")

    def _counted_repeat(self, start: int) -> tuple[str, str, int] | None:
        """`{m}`, `{m,}`, `{,n}`, `{m,n}` at `start` as (low digits, high digits, end), or None: a literal '{'."""
        pattern, index = self.pattern, start + 1
        low_end = index
        while low_end < len(pattern) and pattern[low_end].isascii() and pattern[low_end].isdigit():
            low_end += 1
        low = pattern[index:low_end]
        if pattern.startswith(",", low_end):
            high_end = low_end + 1
            while high_end < len(pattern) and pattern[high_end].isascii() and pattern[high_end].isdigit():
                high_end += 1
            high = pattern[low_end + 1 : high_end]
        else:
            high_end, high = low_end, low
        if not pattern.startswith("}", high_end) or high_end == start + 1:
            return None
        return low, high, high_end + 1

    def _quantifier(self, start: int) -> tuple[int, int | None]:
        char = self.pattern[start]
        if char != "{":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        counted = self._counted_repeat(start)
        if counted is None:  # checked by the caller
            raise self.error(start, "bad repeat")
        low_text, high_text, self.pos = counted
        low = int(low_text) if low_text else 0
        high = int(high_text) if high_text else None
        if max(low, high or 0) > MAX_REPEAT_COUNT:
            raise self.error(start, f"the repetition number is too large (at most {MAX_REPEAT_COUNT})")
        if high is not None and high < low:
            raise self.error(start, "min repeat greater than max repeat")
        return low, high

    def _atom(self, start: int, char: str) -> Node | _Anchor:
        if char == "[":
            return self._class(start)
        if char == ".":
            return DOT
        if char in "^$":
            return _Anchor(char == "^", start)
        if char == "\\":
            escaped = self._escape(start, in_class=False)
            return _literal(ord(escaped)) if isinstance(escaped, str) else escaped
        return _literal(ord(char))

    def _class(self, start: int) -> CharClass:
        pattern, end = self.pattern, len(self.pattern)
        negate = pattern.startswith("^", self.pos)
        if negate:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.pos >= end:
                raise self.error(start, "unterminated character set")
            item_start = self.pos
            if pattern[item_start] == "]" and not first:  # a leading "]" is a literal, as in Python
                self.pos += 1
                break
            first = False
            low = self._class_item()
            if not pattern.startswith("-", self.pos) or pattern.startswith("-]", self.pos):
                ranges.extend(low.ranges if isinstance(low, CharClass) else [(ord(low), ord(low))])
                continue
            self.pos += 1
            if self.pos >= end:
                raise self.error(start, "unterminated character set")
            high = self._class_item()
            if isinstance(low, CharClass) or isinstance(high, CharClass):
                raise self.error(item_start, "bad character range: an end is a class, not a character")
            if ord(high) < ord(low):
                raise self.error(item_start, f"bad character range {low}-{high}: start after end")
            ranges.append((ord(low), ord(high)))
        result = CharClass.of(ranges)
        return result.complement() if negate else result

    def _class_item(self) -> str | CharClass:
        """One character of a class (as a str, possibly "]") or an escaped category such as \\d."""
        start = self.pos
        char = self.pattern[start]
        self.pos += 1
        if char != "\\":
            return char
        escaped = self._escape(start, in_class=True)
        if isinstance(escaped, _Anchor):  # _escape never returns an anchor in a class
            raise self.error(start, "anchor in a character class")
        return escaped

    def _escape(self, start: int, *, in_class: bool) -> str | CharClass | _Anchor:
        """An escape after its backslash: one character, a category class, or an anchor (outside classes)."""
        pattern = self.pattern
        if self.pos >= len(pattern):
            raise self.error(start, "bad escape (end of pattern)")
        char = pattern[self.pos]
        self.pos += 1
        if char in _CATEGORIES:
            return _CATEGORIES[char]
        if char in _CONTROL_ESCAPES:
            return chr(_CONTROL_ESCAPES[char])
        if char == "b" and in_class:
            return "\x08"  # backspace inside a class, as in Python and ECMA
        if char in _HEX_ESCAPE_WIDTHS:
            width = _HEX_ESCAPE_WIDTHS[char]
            digits = pattern[self.pos : self.pos + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(start, f"incomplete escape \\{char}{digits}: needs {width} hex digits")
            self.pos += width
            code_point = int(digits, 16)
            if code_point > MAX_CODE_POINT:
                raise self.error(start, f"bad escape \\{char}{digits}: beyond U+10FFFF")
            return chr(code_point)
        if char in "AZ" and not in_class:
            return _Anchor(char == "A", start)
        if char in _OCTAL and (in_class or char == "0" or self._three_octal_digits()):
            digits = char
            while len(digits) < 3 and self.pos < len(pattern) and pattern[self.pos] in _OCTAL:
                digits += pattern[self.pos]
                self.pos += 1
            if int(digits, 8) > 0o377:
                raise self.error(start, f"octal escape value \\{digits} outside of range 0-0o377")
            return chr(int(digits, 8))
        if char.isascii() and char.isdigit():
            raise self.error(start, f"backreference \\{char} is not supported")
        if char in _UNSUPPORTED_ESCAPES:
            raise self.error(start, f"{_UNSUPPORTED_ESCAPES[char]} is not supported")
        if char in _ASCII_LETTERS:
            raise self.error(start, f"bad escape \\{char}")
        return char

    def _three_octal_digits(self) -> bool:
        """Python reads `\\ddd` as octal when all three are octal digits, else as a backreference."""
        digits = self.pattern[self.pos - 1 : self.pos + 2]
        return len(digits) == 3 and all(d in _OCTAL for d in digits)


def _concat(items: list[Node | _Anchor]) -> Node | _Anchor:
    return items[0] if len(items) == 1 else Concat(tuple(items))  # type: ignore[arg-type]


def _alternation(options: list[Node | _Anchor]) -> Node | _Anchor:
    return options[0] if len(options) == 1 else Alternation(tuple(options))  # type: ignore[arg-type]


def _split_anchor(node: Node | _Anchor, *, at_start: bool) -> list[tuple[bool, Node | _Anchor]]:
    """`node` as branches `(anchored, rest)` by whether a leading (trailing) anchor begins (ends) them."""
    if isinstance(node, _Anchor):
        return [(True, EMPTY)] if node.is_start == at_start else [(False, node)]
    if isinstance(node, Alternation):
        branches = [branch for option in node.options for branch in _split_anchor(option, at_start=at_start)]
        return branches if any(anchored for anchored, _ in branches) else [(False, node)]
    if isinstance(node, Concat) and node.parts:
        edge = node.parts[0] if at_start else node.parts[-1]
        branches = _split_anchor(edge, at_start=at_start)
        if not any(anchored for anchored, _ in branches):
            return [(False, node)]
        # While parsing, a Concat may hold an _Anchor among its parts; they are all resolved before a Node is returned.
        if at_start:
            return [(anchored, Concat((cast(Node, rest), *node.parts[1:]))) for anchored, rest in branches]
        return [(anchored, Concat((*node.parts[:-1], cast(Node, rest)))) for anchored, rest in branches]
    return [(False, node)]


def _resolve_anchors(node: Node | _Anchor, padding: Node, parser: _Parser) -> Node:
    """Honour anchors at the edges of top-level alternatives: an unanchored edge gets `padding`."""
    for at_start in (True, False):
        branches = _split_anchor(node, at_start=at_start)
        anchored = [rest for is_anchored, rest in branches if is_anchored]
        free = [rest for is_anchored, rest in branches if not is_anchored]
        if free and padding != EMPTY:
            loose = _alternation(free)
            free = [Concat((padding, loose) if at_start else (loose, padding))]  # type: ignore[arg-type]
        node = _alternation(anchored + free)
    stack: list[Node | _Anchor] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, _Anchor):
            where = "start" if item.is_start else "end"
            raise parser.error(item.position, f"anchor is only supported at the {where} of the pattern or of a "
                                              f"top-level alternative")
        if isinstance(item, Concat):
            stack.extend(item.parts)
        elif isinstance(item, Alternation):
            stack.extend(item.options)
        elif isinstance(item, Repeat):
            stack.append(item.node)
    return node  # type: ignore[return-value]  # no anchors left


def parse_regex(pattern: str) -> Node:
    """Parse `pattern` with full-match semantics (`re.fullmatch(pattern, s, re.ASCII)`).

    Args:
        pattern: a regex in our syntax (see the module docstring). `^`/`$` are accepted, and ignored, at the
            edges of top-level alternatives.

    Returns:
        The AST of the language of strings `pattern` fully matches.

    Raises:
        RegexSyntaxError: the pattern is malformed or uses an unsupported construct (named, with its position).
    """
    parser = _Parser(pattern)
    return _resolve_anchors(parser.parse(), EMPTY, parser)


@lru_cache(maxsize=256)
def _parse_rule_pattern(pattern: str) -> Node:
    """A pattern of a grammar (ASTs are immutable: a rule compiled into several grammars, a tool's schema and its
    call envelope, is parsed once)."""
    parser = _Parser(pattern, allow_rules=True)
    return _resolve_anchors(parser.parse(), EMPTY, parser)


def parse_search_pattern(pattern: str) -> Node:
    """Parse a JSON Schema `pattern`: an unanchored search, as ECMA-262's `RegExp.prototype.test` does.

    The returned language is every string in which `pattern` occurs: an edge of a top-level alternative that is
    not anchored with `^` (start) or `$` (end) gets any-string padding. Anchors anywhere else are refused.

    Args:
        pattern: the `pattern` keyword's value, in our syntax.

    Returns:
        The AST of the strings the pattern is found in.

    Raises:
        RegexSyntaxError: malformed, unsupported construct, or an anchor inside the pattern.
    """
    parser = _Parser(pattern)
    return _resolve_anchors(parser.parse(), Repeat(ANY_CHAR, 0, None), parser)


_META = frozenset("\\.^$*+?{}[]()|")
_CLASS_META = frozenset("\\]^[-&~|")


def _escape_code_point(code_point: int, meta: frozenset[str]) -> str:
    char = chr(code_point)
    if char in meta:
        return "\\" + char
    if code_point == 0x20 or (code_point > 0x20 and char.isprintable()):
        return char
    if code_point <= 0xFF:
        return f"\\x{code_point:02x}"
    return f"\\u{code_point:04x}" if code_point <= 0xFFFF else f"\\U{code_point:08x}"


def escape(text: str) -> str:
    """`text` as a regex matching exactly it (written the way `to_regex` writes literals)."""
    return "".join(_escape_code_point(ord(char), _META) for char in text)


def _class_body(ranges: tuple[tuple[int, int], ...]) -> str:
    parts = []
    for lo, hi in ranges:
        parts.append(_escape_code_point(lo, _CLASS_META))
        if hi > lo:
            parts.append(("-" if hi > lo + 1 else "") + _escape_code_point(hi, _CLASS_META))
    return "".join(parts)


def _class_to_regex(char_class: CharClass) -> str:
    ranges = char_class.ranges
    if not ranges:
        return "[^\\x00-\\U0010ffff]"  # matches nothing; Python and Rust both accept it
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _escape_code_point(ranges[0][0], _META)
    complement = char_class.complement().ranges
    if complement and len(complement) < len(ranges):
        return "[^" + _class_body(complement) + "]"
    return "[" + _class_body(ranges) + "]"


def _quantifier_text(low: int, high: int | None) -> str:
    if high is None:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _is_atom(node: Node) -> bool:
    return isinstance(node, (CharClass, RuleRef)) or (isinstance(node, Concat) and len(node.parts) == 1 and _is_atom(node.parts[0]))


def to_regex(node: Node) -> str:
    """Serialize an AST to a pattern that `parse_regex`, Python `re` and Rust `regex` read as the same language.

    Args:
        node: the AST (any depth: the walk is iterative).

    Returns:
        The pattern, for full-match use.
    """
    out: list[str] = []
    stack: list[Node | str] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, CharClass):
            out.append(_class_to_regex(item))
        elif isinstance(item, RuleRef):
            out.append(f"(?&{item.name})")
        elif isinstance(item, Concat):
            for part in reversed(item.parts):
                stack.extend((")", part, "(?:") if isinstance(part, Alternation) and part.options else (part,))
        elif isinstance(item, Alternation):
            if not item.options:
                out.append(_class_to_regex(CharClass(())))
            for index in range(len(item.options) - 1, -1, -1):
                stack.append(item.options[index])
                if index:
                    stack.append("|")
        else:
            stack.append(_quantifier_text(item.min_count, item.max_count))
            stack.extend((item.node,) if _is_atom(item.node) else (")", item.node, "(?:"))
    return "".join(out)


_DEFINE = "(?(DEFINE)"


def grammar_text(main: str, rules: Iterable[tuple[str, str]]) -> str:
    """A grammar as one string: `rules` (name, regex) in a PCRE-style `(?(DEFINE)(?<name>regex)...)` prefix, then
    `main`. With no rules it is `main` itself, a plain regex."""
    definitions = "".join(f"(?<{name}>{regex})" for name, regex in rules)
    return f"{_DEFINE}{definitions}){main}" if definitions else main


def parse_grammar(text: str) -> tuple[Node, dict[str, Node]]:
    """Parse a grammar written by `grammar_text`: the main pattern's AST and each rule's, by name.

    Raises:
        RegexSyntaxError: a malformed pattern or definition, a rule defined twice, or a reference to no rule.
    """
    rules: dict[str, Node] = {}
    main = text
    if text.startswith(_DEFINE):
        position = len(_DEFINE)
        while text.startswith("(?<", position):
            close = text.find(">", position)
            name = text[position + 3 : close] if close >= 0 else ""
            end = _group_end(text, position)
            if not name.isidentifier() or name in rules:
                raise _Parser(text).error(position, f"bad or repeated rule name {name!r}")
            rules[name] = _parse_rule_pattern(text[close + 1 : end])
            position = end + 1
        if not text.startswith(")", position):
            raise _Parser(text).error(position, "a (?(DEFINE)...) prefix holds only (?<name>...) rules")
        main = text[position + 1 :]
    root = _parse_rule_pattern(main)
    stack: list[Node] = [root, *rules.values()]
    while stack:
        item = stack.pop()
        if isinstance(item, RuleRef) and item.name not in rules:
            raise RegexSyntaxError(f"grammar refers to rule {item.name!r}, which it does not define")
        stack.extend(item.parts if isinstance(item, Concat) else item.options if isinstance(item, Alternation)
                     else (item.node,) if isinstance(item, Repeat) else ())
    return root, rules


def _group_end(text: str, start: int) -> int:
    """The index of the ')' closing the group opened at `start` (escapes and classes skipped)."""
    depth, index = 0, start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":
            index += 2 if text.startswith("^", index + 1) else 1
            index += 1 if text.startswith("]", index) else 0
            while index < len(text) and text[index] != "]":
                index += 2 if text[index] == "\\" else 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise _Parser(text).error(start, "missing ')', unterminated rule")
