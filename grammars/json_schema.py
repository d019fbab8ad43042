"""JSON Schema -> a regex (our syntax, see `regex.py`) over the compact serialization of the schema's instances.

Invariant: every string the regex matches is the compact serialization of an instance valid under the schema;
every valid instance, serialized as `json.dumps(x, ensure_ascii=False, separators=(", ", ": "))` with object keys
in declared order and within the documented bounds below, matches.

Layout: one space after `:` and `,`, none elsewhere; declared properties in `properties` order, optional ones
may be absent; extra properties (only where `additionalProperties` allows them) come after the declared ones.

Documented bounds (the schema leaves these open; `SchemaOptions` overrides them):
- integers have at most `max_integer_digits` digits (16: every integer a double holds exactly, |x| <= 2**53);
  numbers likewise in their integer part, at most `max_fraction_digits` fraction digits (20: every double's
  shortest form in fixed notation, e.g. Python's `repr`) and `max_exponent_digits` exponent digits (3: 1e308).
  A bound the schema states itself (`maximum`, ...) always wins over these.
- numbers with a `minimum`/`maximum` bound are written in fixed notation (no exponent): exact for any decimal
  bound. Integers never have a fraction or exponent (`1.0` is not accepted for `integer`).
- `$ref` recursion is unrolled `max_recursion_depth` times; `{}`/`true` (any value) nests `max_any_depth` deep.
- strings inside `pattern`/`format` values and extra property names use `json.dumps`'s escapes only; other
  strings accept every JSON escape. String lengths are unbounded unless the schema bounds them.
- a schema without `type` gets the types its keywords imply (`properties` -> object, `items` -> array, ...).
- an object schema that declares `properties` or `required` allows no other keys unless `additionalProperties`
  is a schema or `true`; one that declares neither (`{"type": "object"}`) allows any keys with any values.
  Required keys missing from `properties` come after the declared ones and take any value.
- `pattern` is an ECMA-262 search (see `regex.parse_search_pattern`): unanchored sides may hold anything.
  With `minLength`/`maxLength` both are enforced where the pattern is a simple run (`^[a-z]+$`, `^x\\d*$`),
  else the length is refused (or reported with `strict=False`). Unknown `format`s are refused likewise.
- the regex is at most `max_regex_chars` long: `$ref`s are expanded in place (a regex cannot share), so large
  schemas (Kubernetes) can exceed it; the error says so.
- `oneOf` compiles as `anyOf`: exact when no value generated for one option is valid under another (disjoint
  JSON types or constants, a required key the other option never writes, a tag property with distinct
  constants); otherwise exclusivity cannot be enforced (an error, or reported with `strict=False`).
- formats are subsets each checker accepts: date-time/time with at most 9 fraction digits, hostname as above,
  ipv6 without embedded ipv4 or zone, uri with a scheme and RFC 3986 characters, email as dot-atoms@hostname.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

import jsonschema

from strictcall.grammars.regex import (
    Alternation,
    CharClass,
    Concat,
    Node,
    RegexSyntaxError,
    Repeat,
    escape,
    parse_regex,
    parse_search_pattern,
    to_regex,
)

JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")

# Keywords that only annotate: never change which instances are valid.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "id", "$comment", "deprecated",
    "readOnly", "writeOnly", "optional", "$anchor", "$vocabulary", "contentMediaType", "contentEncoding",
    "contentSchema", "definitions", "$defs", "nullable",
})
_KEYWORD_TYPES = {
    "object": ("properties", "required", "additionalProperties", "minProperties", "maxProperties",
               "patternProperties", "propertyNames", "dependentRequired", "dependentSchemas", "dependencies"),
    "array": ("items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains"),
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
}

# JSON string content: one unit per decoded code point (a surrogate pair escape is one code point).
_HEX = "[0-9a-fA-F]"
_NON_SURROGATE_U = f"\\\\u(?:[0-9a-cA-CeEfF]{_HEX}{{3}}|[dD][0-7]{_HEX}{{2}})"
_SURROGATE_PAIR = f"\\\\u[dD][89abAB]{_HEX}{{2}}\\\\u[dD][c-fC-F]{_HEX}{{2}}"
STRING_UNIT = f'(?:[^"\\\\\\x00-\\x1f]|\\\\["\\\\/bfnrt]|{_NON_SURROGATE_U}|{_SURROGATE_PAIR})'
# json.dumps's own escapes, by code point (ensure_ascii=False).
_SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_MUST_ESCAPE = CharClass.of([(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])
_RAW = _MUST_ESCAPE.complement()

_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001-9999: Python's date has no year 0
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
         f"|02-(?:0[1-9]|1[0-9]|2[0-8]))|{_LEAP_YEAR}-02-29)")
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
# Hostnames ("hostname as above" in the docstring): labels of letters, digits and inner hyphens, the last one
# starting with a letter (`fqdn`, which jsonschema uses, wants a top-level label that is not all digits). A regex
# cannot count 253 characters across labels, so we accept up to 3 labels of up to 63 characters or up to 8 of up
# to 30: both stay within 253.
_LABEL_63 = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LABEL_30 = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,28}[A-Za-z0-9])?"
_HOSTNAME = (f"(?:{_LABEL_63}\\.){{0,2}}[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?"
             f"|(?:{_LABEL_30}\\.){{0,7}}[A-Za-z](?:[A-Za-z0-9-]{{0,28}}[A-Za-z0-9])?")
_IPV4_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = f"{_IPV4_OCTET}(?:\\.{_IPV4_OCTET}){{3}}"
_H16 = "[0-9a-fA-F]{1,4}"
_IPV6 = "|".join([
    f"(?:{_H16}:){{7}}{_H16}", f"(?:{_H16}:){{1,7}}:", f"(?:{_H16}:){{1,6}}:{_H16}",
    f"(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}", f"(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}",
    f"(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}", f"(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}",
    f"{_H16}:(?::{_H16}){{1,6}}", f":(?:(?::{_H16}){{1,7}}|:)",
])
_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_PCHAR = "(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
_URI = (f"[A-Za-z][A-Za-z0-9+.-]*:(?://(?:(?:[A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{{2}})*@)?"
        f"(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{{2}})*(?::[0-9]{{1,5}})?(?:/{_PCHAR}*)*"
        f"|/?(?:{_PCHAR}+(?:/{_PCHAR}*)*)?)(?:\\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?")
_EMAIL = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@" \
         "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"


def _format_regex(name: str, max_digits: int) -> str | None:
    duration_number = f"[0-9]{{1,{max_digits}}}"
    date_part = [f"{duration_number}{unit}" for unit in "YMD"]
    time_part = "T(?:" + _non_empty_sequence([f"{duration_number}{unit}" for unit in "HMS"]) + ")"
    duration = f"P(?:{_non_empty_sequence([*date_part, time_part])}|{duration_number}W)"
    return {
        "date-time": f"{_DATE}[Tt]{_TIME}", "date": _DATE, "time": _TIME, "duration": duration, "email": _EMAIL,
        "hostname": _HOSTNAME, "ipv4": _IPV4, "ipv6": _IPV6, "uuid": _UUID, "uri": _URI,
    }.get(name)


def _non_empty_sequence(items: list[str]) -> str:
    """Each item optional, in order, at least one present (no separators)."""
    return "|".join(items[index] + "".join(f"(?:{later})?" for later in items[index + 1 :])
                    for index in range(len(items)))




class UnsupportedSchemaError(ValueError):
    """A schema (or a keyword in it) that cannot be compiled to a finite-state machine.

    Attributes:
        pointer: JSON pointer to the schema holding the keyword ("" is the root).
        keyword: the keyword, e.g. "patternProperties".
    """

    def __init__(self, pointer: str, keyword: str, reason: str) -> None:
        self.pointer = pointer
        self.keyword = keyword
        super().__init__(f"schema at {pointer or '/'}: keyword {keyword!r} {reason}")


_FIX = "; pass strict=False to enforce the rest and report it, or remove it"


@dataclass(frozen=True)
class SchemaOptions:
    """Bounds on what a schema leaves open (see the module docstring), and on the regex's size.

    Attributes:
        max_integer_digits: digits of an unbounded integer, and of a number's integer part (16: 2**53).
        max_fraction_digits: digits after a number's decimal point (20: any double in fixed notation).
        max_exponent_digits: digits of a number's exponent (3: up to 1e308).
        max_recursion_depth: how many times one `$ref` may be expanded within itself.
        max_any_depth: nesting depth of arrays and objects in an untyped (`{}`/`true`) value.
        max_regex_chars: size limit of the produced regex; the automaton is built from it and grows with it.
    """

    max_integer_digits: int = 16
    max_fraction_digits: int = 20
    max_exponent_digits: int = 3
    max_recursion_depth: int = 3
    max_any_depth: int = 3
    max_regex_chars: int = 1_000_000

    def __post_init__(self) -> None:
        limits = {"max_integer_digits": (1, 1000), "max_fraction_digits": (0, 1000), "max_exponent_digits": (1, 10),
                  "max_recursion_depth": (0, 32), "max_any_depth": (0, 16), "max_regex_chars": (1000, 10**9)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"SchemaOptions.{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class SchemaRegex:
    """A compiled schema.

    Attributes:
        regex: the pattern, in our syntax, over the compact serialization (full match).
        unenforced: `(pointer, keyword)` pairs not enforced; only ever non-empty with `strict=False`.
    """

    regex: str
    unenforced: tuple[tuple[str, str], ...] = field(default=())


def json_schema_to_regex(schema: dict[str, Any] | bool, *, strict: bool = True,
                         options: SchemaOptions = SchemaOptions()) -> SchemaRegex:
    """Compile a JSON Schema to a regex over its instances' compact serialization.

    Args:
        schema: the schema (any draft from 4 to 2020-12); local `$ref`s only.
        strict: raise on any keyword that cannot be enforced; with False, enforce the rest and report it.
        options: bounds on runaway values, recursion and the regex's size.

    Returns:
        The regex and the keywords left unenforced.

    Raises:
        UnsupportedSchemaError: a keyword cannot be enforced (with `strict`), a `$ref` cannot be resolved, the
            schema accepts no value within the bounds, or the regex would exceed `options.max_regex_chars`.
    """
    compiler = _Compiler(schema, strict, options)
    regex = compiler.compile(schema, "")
    if regex is None:
        raise UnsupportedSchemaError("", "$ref" if compiler.recursion_cut else "false",
                                     "leaves no value to generate: the schema accepts no instance"
                                     + (f" within max_recursion_depth={options.max_recursion_depth}"
                                        if compiler.recursion_cut else ""))
    return SchemaRegex(regex, tuple(compiler.unenforced))


# Regex builders over strings, with None standing for "matches nothing".
def _seq(*parts: str | None) -> str | None:
    return None if any(part is None for part in parts) else "".join(parts)  # type: ignore[arg-type]


def _alt(options: Iterable[str | None]) -> str | None:
    unique = list(dict.fromkeys(option for option in options if option is not None))
    if not unique:
        return None
    return unique[0] if len(unique) == 1 else "(?:" + "|".join(unique) + ")"


def _opt(regex: str | None) -> str:
    return "" if not regex else f"(?:{regex})?"


def _repeat(regex: str | None, low: int, high: int | None) -> str | None:
    if regex is None or high == 0:
        return "" if low == 0 else None
    if (low, high) == (1, 1):
        return regex
    quantifier = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((low, high))
    if quantifier is None:
        quantifier = f"{{{low},}}" if high is None else (f"{{{low}}}" if low == high else f"{{{low},{high}}}")
    return f"(?:{regex}){quantifier}"


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _literal(value: Any) -> str:
    return escape(_dump(value))


# Numbers.
def _digit_class(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


def _same_length_range(low: str, high: str) -> str:
    """Digit strings of one length between `low` and `high` (inclusive), leading zeros as given."""
    if low == high:
        return low
    if len(low) == 1:
        return _digit_class(int(low), int(high))
    rest = len(low) - 1
    if low[0] == high[0]:
        return low[0] + _alt([_same_length_range(low[1:], high[1:])])  # type: ignore[operator]
    options = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * rest:
        options.append(low[0] + _same_length_range(low[1:], "9" * rest))
        first += 1
    tail = None
    if high[1:] != "9" * rest:
        tail = high[0] + _same_length_range("0" * rest, high[1:])
        last -= 1
    if first <= last:
        options.append(_digit_class(first, last) + ("[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
    if tail is not None:
        options.append(tail)
    return _alt(options)  # type: ignore[return-value]


def _natural_range(low: int, high: int) -> str | None:
    """Canonical decimals (no leading zeros) of the integers in [low, high], 0 <= low."""
    options = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        stop = min(high, 10**digits - 1)
        if start <= stop:
            options.append(_same_length_range(str(start), str(stop)))
    return _alt(options)


def _integer_range(low: int | None, high: int | None, max_digits: int) -> str | None:
    """Canonical integers in [low, high]; an open side stops at `max_digits` digits (or the other bound's)."""
    cap = 10**max_digits - 1
    if low is None:
        low = -max(cap, 10 ** len(str(abs(high))) - 1) if high is not None else -cap
    if high is None:
        high = max(cap, 10 ** len(str(abs(low))) - 1)
    if low > high:
        return None
    options = []
    if low < 0:
        negative = _natural_range(abs(min(high, -1)), abs(low))
        options.append(None if negative is None else "-" + negative)
    if high >= 0:
        options.append(_natural_range(max(low, 0), high))
    return _alt(options)


def _fraction_digits(value: Decimal) -> str:
    """The digits after the point of a non-negative decimal, trailing zeros dropped ("" for an integer)."""
    text = f"{value:f}"
    return text.partition(".")[2].rstrip("0")


def _fraction(low: str | None, low_inclusive: bool, high: str | None, high_inclusive: bool,
              max_digits: int) -> str | None:
    """The optional `.digits` part of a number whose fraction 0.F lies between 0.`low` and 0.`high`.

    `low`/`high` are digit strings without trailing zeros; None: that side is open. A digit-by-digit comparison
    automaton (is F still equal to the bound's prefix?) written as nested groups: linear in `max_digits`.
    """
    max_digits = max(max_digits, len(low or ""), len(high or ""))

    @lru_cache(maxsize=None)
    def state(position: int, low_equal: bool, high_equal: bool) -> tuple[bool, str | None]:
        can_end = True
        if low_equal and low is not None:
            can_end = position >= len(low) and low_inclusive
        if high_equal and high is not None:
            can_end = can_end and (position < len(high) or high_inclusive)
        if position == max_digits:
            return can_end, None
        if not low_equal and not high_equal:
            return True, f"[0-9]{{1,{max_digits - position}}}" if max_digits - position > 1 else "[0-9]"
        low_digit = int(low[position]) if low_equal and position < len(low) else 0  # type: ignore[index,arg-type]
        high_digit = int(high[position]) if high_equal and position < len(high) else (0 if high_equal else 9)  # type: ignore[index,arg-type]
        groups: dict[tuple[bool, bool], list[int]] = {}
        for digit in range(low_digit, high_digit + 1):
            key = (low_equal and digit == low_digit, high_equal and digit == high_digit)
            groups.setdefault(key, []).append(digit)
        options = []
        for (next_low, next_high), digits in groups.items():
            accepts_end, more = state(position + 1, next_low, next_high)
            if not accepts_end and more is None:
                continue
            rest = more if not accepts_end else _opt(more)
            options.append(_digit_class(digits[0], digits[-1]) + rest)
        return can_end, _alt(options)

    accepts_empty, digits = state(0, low is not None, high is not None)
    if digits is None:
        return "" if accepts_empty else None
    return _opt("\\." + digits) if accepts_empty else "\\." + digits


def _magnitude(low: Decimal, low_exclusive: bool, high: Decimal | None, high_exclusive: bool,
               options: SchemaOptions) -> str | None:
    """Fixed-notation non-negative numbers in the interval (integer part, then fraction by comparison)."""
    low_int, low_digits = int(low), _fraction_digits(low)
    low_bound = None if (low_digits == "" and not low_exclusive) else low_digits  # F >= 0 always holds
    parts: list[str | None] = []
    if high is None:
        parts.append(_seq(str(low_int), _fraction(low_bound, not low_exclusive, None, True,
                                                  options.max_fraction_digits)))
        middle_high = max(10**options.max_integer_digits - 1, 10 ** len(str(low_int)) - 1)
    else:
        high_int, high_digits = int(high), _fraction_digits(high)
        if high_int == low_int:
            parts.append(_seq(str(low_int), _fraction(low_bound, not low_exclusive, high_digits, not high_exclusive,
                                                      options.max_fraction_digits)))
        else:
            parts.append(_seq(str(low_int), _fraction(low_bound, not low_exclusive, None, True,
                                                      options.max_fraction_digits)))
            parts.append(_seq(str(high_int), _fraction(None, True, high_digits, not high_exclusive,
                                                       options.max_fraction_digits)))
        middle_high = high_int - 1
    if low_int + 1 <= middle_high:
        parts.append(_seq(_natural_range(low_int + 1, middle_high),
                          _opt(f"\\.[0-9]{{1,{options.max_fraction_digits}}}") if options.max_fraction_digits else ""))
    return _alt(parts)


def _number_range(low: Decimal | None, low_exclusive: bool, high: Decimal | None, high_exclusive: bool,
                  options: SchemaOptions) -> str | None:
    if low is None and high is None:
        integer = f"(?:0|[1-9][0-9]{{0,{options.max_integer_digits - 1}}})"
        fraction = _opt(f"\\.[0-9]{{1,{options.max_fraction_digits}}}") if options.max_fraction_digits else ""
        return f"-?{integer}{fraction}(?:[eE][+-]?[0-9]{{1,{options.max_exponent_digits}}})?"
    parts: list[str | None] = []
    if high is None or high > 0 or (high == 0 and not high_exclusive):
        non_negative = (Decimal(0), False) if low is None or low < 0 else (low, low_exclusive)
        if high is None or non_negative[0] < high or (non_negative[0] == high and not (non_negative[1] or
                                                                                        high_exclusive)):
            parts.append(_magnitude(non_negative[0], non_negative[1], high, high_exclusive, options))
    if low is None or low < 0:
        magnitude_low = (Decimal(0), True) if high is None or high >= 0 else (-high, high_exclusive)
        magnitude_high = (None, False) if low is None else (-low, low_exclusive)
        if magnitude_high[0] is None or magnitude_low[0] < magnitude_high[0]:
            magnitude = _magnitude(magnitude_low[0], magnitude_low[1], magnitude_high[0], magnitude_high[1], options)
            parts.append(None if magnitude is None else "-" + magnitude)
    return _alt(parts)


# Strings: a pattern or format's AST over decoded code points -> an AST over their JSON escapes.
def _intersect(first: CharClass, second: CharClass) -> CharClass:
    return CharClass.of(first.complement().ranges + second.complement().ranges).complement()


def _json_escaped_class(char_class: CharClass) -> Node:
    options: list[Node] = []
    raw = _intersect(char_class, _RAW)
    if raw.ranges:
        options.append(raw)
    for low, high in _intersect(char_class, _MUST_ESCAPE).ranges:
        for code_point in range(low, high + 1):
            text = _SHORT_ESCAPES.get(code_point, f"\\u{code_point:04x}")
            options.append(Concat(tuple(CharClass.literal(char) for char in text)))
    return options[0] if len(options) == 1 else Alternation(tuple(options))


def _json_escaped(node: Node) -> Node:
    """The same language with each code point written as json.dumps(ensure_ascii=False) writes it."""
    if isinstance(node, CharClass):
        return _json_escaped_class(node)
    if isinstance(node, Concat):
        return Concat(tuple(_json_escaped(part) for part in node.parts))
    if isinstance(node, Alternation):
        return Alternation(tuple(_json_escaped(option) for option in node.options))
    return Repeat(_json_escaped(node.node), node.min_count, node.max_count)


def _length_range(node: Node) -> tuple[int, int | None]:
    if isinstance(node, CharClass):
        return 1, 1
    if isinstance(node, Concat):
        low, high = 0, 0
        for part in node.parts:
            part_low, part_high = _length_range(part)
            low += part_low
            high = None if high is None or part_high is None else high + part_high
        return low, high
    if isinstance(node, Alternation):
        ranges = [_length_range(option) for option in node.options] or [(0, 0)]
        highs = [high for _, high in ranges]
        return min(low for low, _ in ranges), None if None in highs else max(highs)  # type: ignore[type-var]
    inner_low, inner_high = _length_range(node.node)
    high = None if node.max_count is None or inner_high is None else inner_high * node.max_count
    return inner_low * node.min_count, high


def _limit_length(node: Node, low: int, high: int | None) -> Node | None:
    """`node` restricted to strings of `low`..`high` code points, where that stays a simple regex; else None."""
    node_low, node_high = _length_range(node)
    if node_low >= low and (high is None or (node_high is not None and node_high <= high)):
        return node
    if isinstance(node, Repeat) and isinstance(node.node, CharClass):
        new_low = max(node.min_count, low)
        new_high = high if node.max_count is None else (node.max_count if high is None else
                                                         min(node.max_count, high))
        return Repeat(node.node, new_low, new_high) if new_high is None or new_low <= new_high else Alternation(())
    if isinstance(node, Alternation):
        limited = [_limit_length(option, low, high) for option in node.options]
        return None if any(option is None for option in limited) else Alternation(tuple(limited))  # type: ignore[arg-type]
    if isinstance(node, Concat):
        ranges = [_length_range(part) for part in node.parts]
        variable = [index for index, (part_low, part_high) in enumerate(ranges) if part_low != part_high]
        if len(variable) != 1:
            return None
        fixed = sum(part_low for index, (part_low, _) in enumerate(ranges) if index != variable[0])
        inner = _limit_length(node.parts[variable[0]], max(0, low - fixed), None if high is None else high - fixed) \
            if high is None or high >= fixed else Alternation(())
        if inner is None:
            return None
        return Concat(node.parts[: variable[0]] + (inner,) + node.parts[variable[0] + 1 :])
    return None


def _grouped(node: Node) -> str:
    """`to_regex(node)`, safe to concatenate: a top-level alternation is put in a group."""
    return f"(?:{to_regex(node)})" if isinstance(node, Alternation) else to_regex(node)


@lru_cache(maxsize=64)
def _parsed_format(name: str, max_digits: int) -> Node | None:
    regex = _format_regex(name, max_digits)
    return None if regex is None else parse_regex(regex)


@lru_cache(maxsize=1)
def _canonical_unit() -> str:
    return to_regex(_json_escaped(CharClass.of([(0, 0x10FFFF)])))


def _key_not_in(names: Iterable[str]) -> str:
    """A JSON string (json.dumps escapes only) whose value is none of `names`: the complement of their trie."""
    trie: dict[str, Any] = {}
    for name in names:
        node = trie
        for char in name:
            node = node.setdefault(char, {})
        node[""] = True  # the end-of-name mark; "" is never a character key
    any_units = f"(?:{_canonical_unit()})*"

    def complement(node: dict[str, Any]) -> str:
        children = [char for char in node if char]
        others = CharClass.of([(ord(char), ord(char)) for char in children]).complement()
        options = ["" if "" not in node else None, _grouped(_json_escaped(others)) + any_units]
        options += [_grouped(_json_escaped(CharClass.literal(char))) + complement(node[char]) for char in children]
        return _alt(options)  # type: ignore[return-value]  # the "others" option is always there

    return '"' + complement(trie) + '"'


def _schema_types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema's `type` (or, without one, its keywords) allows; None: any type."""
    declared = schema.get("type")
    if declared is not None:
        names = {declared} if isinstance(declared, str) else set(declared)
        return names | {"integer"} if "number" in names else names
    implied = {kind for kind, keywords in _KEYWORD_TYPES.items() if any(keyword in schema for keyword in keywords)}
    if "number" in implied:
        implied.add("integer")
    return implied or None


def _value_types(values: Iterable[Any]) -> set[str]:
    kinds = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "object"}
    return {kinds[type(value)] for value in values}


class _Compiler:
    """One compilation: the root (for `$ref`), the options, the keywords left unenforced, the recursion state."""

    def __init__(self, root: dict[str, Any] | bool, strict: bool, options: SchemaOptions) -> None:
        self.root = root
        self.strict = strict
        self.options = options
        self.unenforced: list[tuple[str, str]] = []
        self.ref_counts: dict[str, int] = {}
        self.recursion_cut = False
        self.cache: dict[tuple[str, tuple[tuple[str, int], ...]], str | None] = {}
        self.any_cache: dict[int, str] = {}

    def unsupported(self, pointer: str, keyword: str, reason: str) -> None:
        if self.strict:
            raise UnsupportedSchemaError(pointer, keyword, reason + _FIX)
        if (pointer, keyword) not in self.unenforced:
            self.unenforced.append((pointer, keyword))

    def sized(self, regex: str | None, pointer: str) -> str | None:
        if regex is not None and len(regex) > self.options.max_regex_chars:
            raise UnsupportedSchemaError(pointer, "$ref" if self.ref_counts else "properties",
                                         f"makes the regex longer than max_regex_chars="
                                         f"{self.options.max_regex_chars}; lower max_recursion_depth or "
                                         f"max_any_depth, raise max_regex_chars, or simplify the schema")
        return regex

    def compile(self, schema: Any, pointer: str) -> str | None:
        if schema is True:
            return self.any_value(self.options.max_any_depth)
        if schema is False:
            return None
        if not isinstance(schema, dict):
            raise UnsupportedSchemaError(pointer, "(schema)", f"is not a JSON Schema: expected an object or a "
                                                              f"boolean, got {type(schema).__name__}")
        if "$ref" in schema:
            return self.compile_ref(schema, pointer)
        if "allOf" in schema:
            inlined: list[str] = []
            merged = self.merge_all_of(schema, pointer, inlined)
            return self.expand(inlined, lambda: self.compile(merged, pointer))
        if "anyOf" in schema or "oneOf" in schema:
            return self.sized(self.compile_union(schema, pointer), pointer)
        return self.sized(self.compile_plain(schema, pointer), pointer)

    # References.
    def resolve(self, reference: Any, pointer: str) -> tuple[Any, str]:
        if not isinstance(reference, str) or not reference.startswith("#"):
            raise UnsupportedSchemaError(pointer, "$ref", f"{reference!r} is not a local reference ('#/...'); "
                                                          f"inline the referenced schema")
        target_pointer = reference[1:]
        target: Any = self.root
        if target_pointer and not target_pointer.startswith("/"):
            raise UnsupportedSchemaError(pointer, "$ref", f"{reference!r}: anchors are not supported; use a JSON "
                                                          f"pointer such as '#/$defs/name'")
        for token in target_pointer.split("/")[1:]:
            token = token.replace("%25", "%").replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise UnsupportedSchemaError(pointer, "$ref", f"{reference!r} does not resolve in this schema")
        return target, target_pointer

    def expand(self, references: list[str], compile_inside: Callable[[], str | None]) -> str | None:
        """Run `compile_inside` with `references` counted as expanded once more; None past the depth bound."""
        counts = dict(self.ref_counts)
        for reference in references:
            self.ref_counts[reference] = self.ref_counts.get(reference, 0) + 1
        try:
            if any(self.ref_counts[reference] > self.options.max_recursion_depth for reference in references):
                self.recursion_cut = True
                return None
            return compile_inside()
        finally:
            self.ref_counts = counts

    def compile_ref(self, schema: dict[str, Any], pointer: str) -> str | None:
        reference = schema["$ref"]
        target, target_pointer = self.resolve(reference, pointer)
        siblings = {key: value for key, value in schema.items() if key != "$ref" and key not in _ANNOTATIONS}
        if siblings:
            return self.compile({"allOf": [{"$ref": reference}, siblings]}, pointer)
        key = (reference, tuple(sorted(self.ref_counts.items())))
        if key not in self.cache:
            self.cache[key] = self.expand([reference], lambda: self.compile(target, target_pointer))
        return self.cache[key]

    def inline(self, schema: Any, pointer: str, inlined: list[str], hops: int = 0) -> Any:
        """A schema with its top-level `$ref` replaced by the target (merged with siblings), for merging."""
        if not isinstance(schema, dict) or "$ref" not in schema:
            return schema
        if hops > 32:
            raise UnsupportedSchemaError(pointer, "$ref", "forms a cycle of references without any structure")
        target, _ = self.resolve(schema["$ref"], pointer)
        inlined.append(schema["$ref"])
        siblings = {key: value for key, value in schema.items() if key != "$ref"}
        target = self.inline(target, pointer, inlined, hops + 1)
        if not siblings:
            return target
        if isinstance(target, bool):
            return siblings if target else False
        return {"allOf": [target, siblings]}

    # allOf, anyOf, oneOf.
    def merge_all_of(self, schema: dict[str, Any], pointer: str, inlined: list[str]) -> Any:
        members = [{key: value for key, value in schema.items() if key != "allOf"}, *schema["allOf"]]
        merged: dict[str, Any] = {}
        pending = list(reversed(members))
        while pending:
            member = self.inline(pending.pop(), pointer, inlined)
            if member is False:
                return False
            if member is True:
                continue
            if not isinstance(member, dict):
                raise UnsupportedSchemaError(pointer, "allOf", "must hold schemas (objects or booleans)")
            if "allOf" in member:
                pending.extend(reversed([{k: v for k, v in member.items() if k != "allOf"}, *member["allOf"]]))
                continue
            merged = self.merge_two(merged, _normalized(member), pointer)
        return merged

    def merge_two(self, first: dict[str, Any], second: dict[str, Any], pointer: str) -> dict[str, Any]:
        result = dict(first)
        for side, other in ((first, second), (second, first)):
            # A property declared on one side only must also satisfy the other side's additionalProperties.
            if "additionalProperties" in other and other["additionalProperties"] is not True:
                for name in side.get("properties", {}):
                    if name not in other.get("properties", {}):
                        side_properties = result.setdefault("properties", dict(first.get("properties", {})))
                        side_properties[name] = {"allOf": [side_properties.get(name, side["properties"][name]),
                                                           other["additionalProperties"]]}
        for key, value in second.items():
            if key not in result:
                result[key] = value
            elif key == "properties":
                properties = dict(result["properties"])
                for name, subschema in value.items():
                    properties[name] = {"allOf": [properties[name], subschema]} if name in properties else subschema
                result[key] = properties
            elif key == "type":
                first_types, second_types = _schema_types({"type": result[key]}), _schema_types({"type": value})
                result[key] = sorted((first_types or set()) & (second_types or set()))
            elif key == "required":
                result[key] = list(dict.fromkeys([*result[key], *value]))
            elif key in ("additionalProperties", "items", "additionalItems") and isinstance(value, (dict, bool)) \
                    and isinstance(result[key], (dict, bool)):
                result[key] = {"allOf": [result[key], value]}
            elif key == "enum":
                allowed = {json.dumps(item, sort_keys=True) for item in value}
                result[key] = [item for item in result[key] if json.dumps(item, sort_keys=True) in allowed]
            elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
                result[key] = max(result[key], value)
            elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
                result[key] = min(result[key], value)
            elif key in ("anyOf", "oneOf"):
                product = [{"allOf": [left, right]} for left in result[key] for right in value]
                if len(product) > 64:
                    raise UnsupportedSchemaError(pointer, "allOf", f"merging two '{key}' lists gives {len(product)} "
                                                                   f"options (limit 64); flatten the schema")
                result[key] = product
            elif key not in _ANNOTATIONS and result[key] != value:
                self.unsupported(pointer, "allOf", f"cannot merge two different '{key}' values")
        return result

    def compile_union(self, schema: dict[str, Any], pointer: str) -> str | None:
        if "anyOf" in schema and "oneOf" in schema:
            rest = {key: value for key, value in schema.items() if key not in ("anyOf", "oneOf")}
            return self.compile({"allOf": [rest, {"anyOf": schema["anyOf"]}, {"oneOf": schema["oneOf"]}]}, pointer)
        keyword = "anyOf" if "anyOf" in schema else "oneOf"
        options = schema[keyword]
        if not isinstance(options, list) or not options:
            raise UnsupportedSchemaError(pointer, keyword, "must be a non-empty list of schemas")
        siblings = {key: value for key, value in schema.items() if key != keyword}
        constrained = any(key not in _ANNOTATIONS for key in siblings)
        if keyword == "oneOf" and not self.exclusive(options, siblings, pointer):
            self.unsupported(pointer, "oneOf", "has options that may overlap: exclusivity cannot be enforced "
                                               "(it would compile as anyOf)")
        return _alt(self.compile({"allOf": [siblings, option]} if constrained else option,
                                 f"{pointer}/{keyword}/{index}") for index, option in enumerate(options))

    def exclusive(self, options: list[Any], siblings: dict[str, Any], pointer: str) -> bool:
        """Whether no value we generate for one option is valid under another (so oneOf == anyOf)."""
        merged = [self.merge_all_of({"allOf": [siblings, option]}, pointer, []) for option in options]
        if not all(isinstance(option, dict) for option in merged):
            return False
        return all(_excludes(merged[i], merged[j]) and _excludes(merged[j], merged[i])
                   for i in range(len(merged)) for j in range(i))

    # Plain schemas.
    def compile_plain(self, schema: dict[str, Any], pointer: str) -> str | None:
        schema = _normalized(schema)
        for keyword in ("not", "if", "then", "else", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef",
                        "$recursiveRef"):
            if keyword in schema:
                self.unsupported(pointer, keyword, "cannot be compiled to a finite-state machine")
        if "enum" in schema:
            return self.compile_enum(schema, pointer)
        types = _schema_types(schema)
        if types is None:
            return self.any_value(self.options.max_any_depth)
        unknown = types - set(JSON_TYPES)
        if unknown:
            raise UnsupportedSchemaError(pointer, "type", f"names unknown types {sorted(unknown)}; use "
                                                          f"{', '.join(JSON_TYPES)}")
        builders = {"null": lambda: "null", "boolean": lambda: "(?:true|false)",
                    "integer": lambda: self.compile_integer(schema, pointer),
                    "number": lambda: self.compile_number(schema, pointer),
                    "string": lambda: self.compile_string(schema, pointer),
                    "array": lambda: self.compile_array(schema, pointer),
                    "object": lambda: self.compile_object(schema, pointer)}
        if "number" in types:
            types = types - {"integer"}
        return _alt(builders[name]() for name in JSON_TYPES if name in types)

    def compile_enum(self, schema: dict[str, Any], pointer: str) -> str | None:
        values = schema["enum"]
        if not isinstance(values, list):
            raise UnsupportedSchemaError(pointer, "enum", "must be a list of values")
        rest = {key: value for key, value in schema.items() if key != "enum" and key not in _ANNOTATIONS}
        if rest:
            if isinstance(self.root, dict):
                rest = {**{key: self.root[key] for key in ("definitions", "$defs") if key in self.root}, **rest}
            validator_class = jsonschema.validators.validator_for(rest, default=jsonschema.Draft202012Validator)
            validator = validator_class(rest, format_checker=validator_class.FORMAT_CHECKER)
            values = [value for value in values if validator.is_valid(value)]
        return _alt(_literal(value) for value in values)

    def bounds(self, schema: dict[str, Any]) -> tuple[Decimal | None, bool, Decimal | None, bool]:
        low: tuple[Decimal | None, bool] = (None, False)
        high: tuple[Decimal | None, bool] = (None, False)
        for keyword, exclusive, is_low in (("minimum", False, True), ("exclusiveMinimum", True, True),
                                           ("maximum", False, False), ("exclusiveMaximum", True, False)):
            if keyword not in schema:
                continue
            value = Decimal(str(schema[keyword]))
            current = low if is_low else high
            tighter = current[0] is None or (value > current[0] if is_low else value < current[0]) or \
                (value == current[0] and exclusive)
            if tighter:
                if is_low:
                    low = (value, exclusive)
                else:
                    high = (value, exclusive)
        return low[0], low[1], high[0], high[1]

    def compile_integer(self, schema: dict[str, Any], pointer: str) -> str | None:
        low, low_exclusive, high, high_exclusive = self.bounds(schema)
        low_int = None if low is None else (math.floor(low) + 1 if low_exclusive else math.ceil(low))
        high_int = None if high is None else (math.ceil(high) - 1 if high_exclusive else math.floor(high))
        multiple = schema.get("multipleOf")
        if multiple is not None and Decimal(str(multiple)) != 1:
            step = Decimal(str(multiple))
            if step == step.to_integral_value() and low_int is not None and high_int is not None and \
                    step > 0 and (high_int - low_int) // int(step) < 256:
                first = -(-low_int // int(step)) * int(step)
                return _alt(str(value) for value in range(first, high_int + 1, int(step)))
            self.unsupported(pointer, "multipleOf", f"{multiple} on an integer is only enforced within bounds "
                                                    f"holding at most 256 multiples")
        return _integer_range(low_int, high_int, self.options.max_integer_digits)

    def compile_number(self, schema: dict[str, Any], pointer: str) -> str | None:
        if "multipleOf" in schema:
            self.unsupported(pointer, "multipleOf", "on a number cannot be compiled to a finite-state machine")
        return _number_range(*self.bounds(schema), self.options)

    def compile_string(self, schema: dict[str, Any], pointer: str) -> str | None:
        min_length, max_length = schema.get("minLength", 0), schema.get("maxLength")
        content: Node | None = None
        if "pattern" in schema:
            try:
                content = parse_search_pattern(schema["pattern"])
            except RegexSyntaxError as error:
                self.unsupported(pointer, "pattern", f"cannot be compiled: {error}")
        if "format" in schema:
            parsed = _parsed_format(schema["format"], self.options.max_integer_digits)
            if parsed is None:
                self.unsupported(pointer, "format", f"{schema['format']!r} is not a supported format (supported: "
                                                    f"date-time, date, time, duration, email, hostname, ipv4, ipv6, "
                                                    f"uuid, uri)")
            elif content is not None:
                self.unsupported(pointer, "format", "cannot be enforced together with 'pattern'")
            else:
                content = parsed
        if content is None:
            return '"' + _repeat(STRING_UNIT, min_length, max_length) + '"'  # type: ignore[operator]
        if min_length or max_length is not None:
            limited = _limit_length(content, min_length, max_length)
            if limited is None:
                self.unsupported(pointer, "maxLength" if max_length is not None else "minLength",
                                 "cannot be enforced together with this pattern or format")
            else:
                content = limited
        if isinstance(content, Alternation) and not content.options:
            return None
        return '"' + _grouped(_json_escaped(content)) + '"'

    def compile_array(self, schema: dict[str, Any], pointer: str) -> str | None:
        if schema.get("uniqueItems") is True:
            self.unsupported(pointer, "uniqueItems", "cannot be compiled to a finite-state machine")
        for keyword in ("contains", "minContains", "maxContains"):
            if keyword in schema:
                self.unsupported(pointer, keyword, "cannot be compiled to a finite-state machine")
        items = schema.get("items", True)
        if "prefixItems" in schema:
            prefix, prefix_keyword, rest, rest_keyword = schema["prefixItems"], "prefixItems", items, "items"
        elif isinstance(items, list):
            prefix, prefix_keyword = items, "items"
            rest, rest_keyword = schema.get("additionalItems", True), "additionalItems"
        else:
            prefix, prefix_keyword, rest, rest_keyword = [], "", items, "items"
        min_items, max_items = schema.get("minItems", 0), schema.get("maxItems")
        if max_items is not None:
            prefix = prefix[:max_items]
        elements = [self.compile(item, f"{pointer}/{prefix_keyword}/{index}") for index, item in enumerate(prefix)]
        rest_regex = self.compile(rest, f"{pointer}/{rest_keyword}") if max_items is None or \
            max_items > len(prefix) else None
        extra_low = max(0, min_items - len(prefix))
        extra_high = None if max_items is None else max_items - len(prefix)
        if not prefix:
            if rest_regex is None:
                body: str | None = "" if extra_low == 0 else None
            else:
                more = _repeat(", " + rest_regex, max(0, extra_low - 1), None if extra_high is None else
                               extra_high - 1)
                body = _seq(rest_regex, more) if extra_low else _opt(_seq(rest_regex, more))
        else:
            body = _repeat(None if rest_regex is None else ", " + rest_regex, extra_low, extra_high)
            for index in range(len(prefix) - 1, -1, -1):
                piece = _seq(", " if index else "", elements[index], body)
                body = piece if index < min_items else _opt(piece)
        return self.sized(_seq("\\[", body, "\\]"), pointer)

    def compile_object(self, schema: dict[str, Any], pointer: str) -> str | None:
        for keyword in ("patternProperties", "propertyNames", "dependentRequired", "dependentSchemas",
                        "dependencies"):
            if keyword in schema:
                self.unsupported(pointer, keyword, "cannot be compiled to a finite-state machine")
        properties = schema.get("properties", {})
        required = list(schema.get("required", []))
        # With nothing declared, an object schema means "any object"; with declared properties, no extras.
        additional = schema.get("additionalProperties",
                                False if ("properties" in schema or "required" in schema) else True)
        entries: list[tuple[str, str, bool]] = []
        for name, subschema in properties.items():
            value = self.compile(subschema, f"{pointer}/properties/{_escape_pointer(name)}")
            if value is None:
                if name in required:
                    return None
                continue
            entries.append((name, value, name in required))
        for name in required:
            if name not in properties:  # any value, unless additionalProperties says otherwise
                value = self.compile(schema.get("additionalProperties", True), f"{pointer}/additionalProperties")
                if value is None:
                    return None
                entries.append((name, value, True))
        extra_value = None if additional is False else self.compile(additional, f"{pointer}/additionalProperties")
        extra = None if extra_value is None else _seq(_key_not_in(name for name, _, _ in entries), ": ", extra_value)
        min_properties, max_properties = schema.get("minProperties", 0), schema.get("maxProperties")
        num_required = sum(is_required for _, _, is_required in entries)
        body = None
        can_be_empty = True
        for name, value, is_required in entries:
            item = _literal(name) + ": " + value
            with_previous = None if body is None else body + (", " + item if is_required else _opt(", " + item))
            body = _alt([with_previous, item if can_be_empty else None])
            can_be_empty = can_be_empty and not is_required
        if extra is not None:
            if not entries:
                low = max(min_properties, 0)
                if low or max_properties is not None:
                    more = _repeat(", " + extra, max(0, low - 1), None if max_properties is None else
                                   max_properties - 1)
                    inner = _seq(extra, more) if max_properties != 0 else None
                    body = inner if low else _opt(inner)
                    return self.sized(_seq("\\{", body, "\\}"), pointer)
            extras = f"(?:, {extra})*"
            body = _alt([None if body is None else body + extras, extra + extras if can_be_empty else None])
        if min_properties > num_required and not (min_properties == 1 and extra is None):
            self.unsupported(pointer, "minProperties", "can only be enforced up to the number of required "
                                                       "properties, or as 1 without additionalProperties")
        if min_properties >= 1:
            can_be_empty = False
        if max_properties is not None and (extra is not None or max_properties < len(entries)):
            self.unsupported(pointer, "maxProperties", "can only be enforced when it allows every declared "
                                                       "property and no additional ones")
        return self.sized(_seq("\\{", _opt(body) if can_be_empty else body, "\\}"), pointer)

    def any_value(self, depth: int) -> str:
        if depth not in self.any_cache:
            string = f'"{STRING_UNIT}*"'
            scalars = ["null", "true", "false", _number_range(None, False, None, False, self.options), string]
            if depth > 0:
                inner = self.any_value(depth - 1)
                scalars.append(f"\\[(?:{inner}(?:, {inner})*)?\\]")
                scalars.append(f"\\{{(?:{string}: {inner}(?:, {string}: {inner})*)?\\}}")
            self.any_cache[depth] = _alt(scalars)  # type: ignore[assignment]
        return self.any_cache[depth]


def _constants(schema: dict[str, Any]) -> list[Any] | None:
    return schema.get("enum", [schema["const"]] if "const" in schema else None)


def _emitted_keys(schema: dict[str, Any]) -> set[str] | None:
    """The keys our regex for an object schema can write; None: unbounded (extra keys allowed)."""
    declared = "properties" in schema or "required" in schema
    if schema.get("additionalProperties", not declared) is not False:
        return None
    return set(schema.get("properties", {})) | set(schema.get("required", []))


def _excludes(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether no value our regex generates for `first` is valid under `second` (a sufficient check)."""
    first_values, second_values = _constants(first), _constants(second)
    if first_values is not None and second_values is not None:
        dumped = {json.dumps(value, sort_keys=True) for value in second_values}
        return not any(json.dumps(value, sort_keys=True) in dumped for value in first_values)
    first_types = _value_types(first_values) if first_values is not None else _schema_types(first)
    second_types = _value_types(second_values) if second_values is not None else _schema_types(second)
    first_kinds = {"number" if name == "integer" else name for name in first_types or JSON_TYPES}
    second_kinds = {"number" if name == "integer" else name for name in second_types or JSON_TYPES}
    if not first_kinds & second_kinds:
        return True
    if first_kinds != {"object"}:
        return False
    keys = _emitted_keys(first)
    if keys is not None and not set(second.get("required", [])) <= keys:
        return True  # `second` requires a key we never write
    for name in first.get("required", []):  # a tag property: always written, with values `second` refuses
        tag, other = first.get("properties", {}).get(name), second.get("properties", {}).get(name)
        if isinstance(tag, dict) and isinstance(other, dict) and _constants(tag) is not None and \
                _constants(other) is not None and _excludes(tag, other):
            return True
    return False


def _escape_pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _normalized(schema: dict[str, Any]) -> dict[str, Any]:
    """Draft-4 boolean exclusive bounds as draft-6 numbers; `const` as a one-value `enum`."""
    result = dict(schema)
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(result.get(exclusive), bool):
            if result.pop(exclusive) and inclusive in result:
                result[exclusive] = result.pop(inclusive)
    if "const" in result:
        const = result.pop("const")
        result["enum"] = [value for value in result.get("enum", [const]) if value == const and
                          type(value) is type(const)]
    return result
