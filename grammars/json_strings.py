"""JSON string content as regexes: any string, and `pattern`/`format` languages written with JSON escapes.

Invariant: `STRING_UNIT` matches exactly one code point of a JSON string's content, written any way JSON allows
(raw, a short escape or `\\u`, a surrogate pair as one unit); `json_escaped` keeps a language over decoded code
points and writes each one only as `json.dumps(ensure_ascii=False)` does. Format regexes accept subsets of what
jsonschema's format checkers accept (the bounds `json_schema` documents). `limit_length` is exact where it
answers (None: no simple regex does it); `key_not_in` is exactly the strings that are none of the names.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from strictcall.grammars.regex import Alternation, CharClass, Concat, Node, Repeat, RuleRef, parse_regex, to_regex
from strictcall.grammars.regex_builders import alt

# JSON string content: one unit per decoded code point (a surrogate pair escape is one code point).
_HEX = "[0-9a-fA-F]"
_NON_SURROGATE_U = f"\\\\u(?:[0-9a-cA-CeEfF]{_HEX}{{3}}|[dD][0-7]{_HEX}{{2}})"
_SURROGATE_PAIR = f"\\\\u[dD][89abAB]{_HEX}{{2}}\\\\u[dD][c-fC-F]{_HEX}{{2}}"
STRING_UNIT = f'(?:[^"\\\\\\x00-\\x1f]|\\\\["\\\\/bfnrt]|{_NON_SURROGATE_U}|{_SURROGATE_PAIR})'
# json.dumps's own escapes, by code point (ensure_ascii=False).
_SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_MUST_ESCAPE = CharClass.of([(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])
_RAW = _MUST_ESCAPE.complement()

# Formats, as regexes over decoded code points.
_YEAR = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001-9999: Python's date has no year 0
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
         f"|02-(?:0[1-9]|1[0-9]|2[0-8]))|{_LEAP_YEAR}-02-29)")
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
# Hostnames (the bound `json_schema` documents): labels of letters, digits and inner hyphens, the last one
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
# OpenAPI's `byte`: base64 (RFC 4648, padded), as Kubernetes' binary fields use it.
_BASE64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_PCHAR = "(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
_URI = (f"[A-Za-z][A-Za-z0-9+.-]*:(?://(?:(?:[A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{{2}})*@)?"
        f"(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{{2}})*(?::[0-9]{{1,5}})?(?:/{_PCHAR}*)*"
        f"|/?(?:{_PCHAR}+(?:/{_PCHAR}*)*)?)(?:\\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?")
_EMAIL = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@" \
         "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"


def _format_regex(name: str, max_digits: int) -> str | None:
    """The regex of a supported format (None: unknown); `max_digits` bounds each number in a duration."""
    duration_number = f"[0-9]{{1,{max_digits}}}"
    date_part = [f"{duration_number}{unit}" for unit in "YMD"]
    time_part = "T(?:" + _non_empty_sequence([f"{duration_number}{unit}" for unit in "HMS"]) + ")"
    duration = f"P(?:{_non_empty_sequence([*date_part, time_part])}|{duration_number}W)"
    return {
        "date-time": f"{_DATE}[Tt]{_TIME}", "date": _DATE, "time": _TIME, "duration": duration, "email": _EMAIL,
        "hostname": _HOSTNAME, "ipv4": _IPV4, "ipv6": _IPV6, "uuid": _UUID, "uri": _URI, "byte": _BASE64,
    }.get(name)


def _non_empty_sequence(items: list[str]) -> str:
    """Each item optional, in order, at least one present (no separators)."""
    return "|".join(items[index] + "".join(f"(?:{later})?" for later in items[index + 1 :])
                    for index in range(len(items)))


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


def json_escaped(node: Node) -> Node:
    """The same language with each code point written as json.dumps(ensure_ascii=False) writes it."""
    if isinstance(node, CharClass):
        return _json_escaped_class(node)
    if isinstance(node, Concat):
        return Concat(tuple(json_escaped(part) for part in node.parts))
    if isinstance(node, Alternation):
        return Alternation(tuple(json_escaped(option) for option in node.options))
    if isinstance(node, RuleRef):
        raise TypeError("a string pattern cannot call a rule")
    return Repeat(json_escaped(node.node), node.min_count, node.max_count)


def _length_range(node: Node) -> tuple[int, int | None]:
    if isinstance(node, CharClass):
        return 1, 1
    if isinstance(node, Concat):
        low = 0
        total: int | None = 0
        for part in node.parts:
            part_low, part_high = _length_range(part)
            low += part_low
            total = None if total is None or part_high is None else total + part_high
        return low, total
    if isinstance(node, Alternation):
        ranges = [_length_range(option) for option in node.options] or [(0, 0)]
        highs = [high for _, high in ranges]
        return min(low for low, _ in ranges), None if None in highs else max(highs)  # type: ignore[type-var]
    if isinstance(node, RuleRef):
        raise TypeError("a string pattern cannot call a rule")
    inner_low, inner_high = _length_range(node.node)
    return inner_low * node.min_count, None if node.max_count is None or inner_high is None else inner_high * node.max_count


def limit_length(node: Node, low: int, high: int | None) -> Node | None:
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
        limited = [limit_length(option, low, high) for option in node.options]
        return None if any(option is None for option in limited) else Alternation(tuple(limited))  # type: ignore[arg-type]
    if isinstance(node, Concat):
        ranges = [_length_range(part) for part in node.parts]
        variable = [index for index, (part_low, part_high) in enumerate(ranges) if part_low != part_high]
        if len(variable) != 1:
            return None
        fixed = sum(part_low for index, (part_low, _) in enumerate(ranges) if index != variable[0])
        inner = limit_length(node.parts[variable[0]], max(0, low - fixed), None if high is None else high - fixed) \
            if high is None or high >= fixed else Alternation(())
        if inner is None:
            return None
        return Concat(node.parts[: variable[0]] + (inner,) + node.parts[variable[0] + 1 :])
    return None


def grouped(node: Node) -> str:
    """`to_regex(node)`, safe to concatenate: a top-level alternation is put in a group."""
    return f"(?:{to_regex(node)})" if isinstance(node, Alternation) else to_regex(node)


# Formats a JSON Schema vocabulary defines (2020-12's format-assertion list) that we cannot enforce: a validator
# may assert them, so a schema naming one is refused. Any other name (`url`, `semver`, OpenAPI's `int64` or
# `password`) is defined by no vocabulary and asserted by no validator: an annotation, any string is valid.
UNENFORCED_STANDARD_FORMATS = frozenset({
    "idn-email", "idn-hostname", "uri-reference", "iri", "iri-reference", "uri-template", "json-pointer",
    "relative-json-pointer", "regex",
})


@lru_cache(maxsize=64)
def parsed_format(name: str, max_digits: int) -> Node | None:
    """A supported format's language over decoded code points (None: unknown format)."""
    regex = _format_regex(name, max_digits)
    return None if regex is None else parse_regex(regex)


@lru_cache(maxsize=1)
def _canonical_unit() -> str:
    return to_regex(json_escaped(CharClass.of([(0, 0x10FFFF)])))


def key_not_in(names: Iterable[str]) -> str:
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
        options = ["" if "" not in node else None, grouped(json_escaped(others)) + any_units]
        options += [grouped(json_escaped(CharClass.literal(char))) + complement(node[char]) for char in children]
        return alt(options)  # type: ignore[return-value]  # the "others" option is always there

    return '"' + complement(trie) + '"'
