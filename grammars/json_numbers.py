"""Integer and number ranges as regexes over their JSON serializations, and the range a schema's bounds state.

Invariant: `integer_range` matches exactly the canonical decimals (no leading zeros, `+` or `-0`) of the
integers in its range; `number_range` matches exactly the numbers whose value lies in its interval (each side
inclusive or exclusive, exact for any decimal bound), written in fixed notation, or any JSON number when neither
side is bounded. An open side stops at the digit bounds given (`DigitBounds`: `SchemaOptions`'s `max_*_digits`,
see `json_schema`), or at the other bound's digit count where that is larger.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from typing import Any, Protocol

from strictcall.grammars.regex_builders import alt, opt, seq


class DigitBounds(Protocol):
    """The digit bounds for the sides a schema leaves open (`SchemaOptions` has them)."""

    @property
    def max_integer_digits(self) -> int: ...

    @property
    def max_fraction_digits(self) -> int: ...

    @property
    def max_exponent_digits(self) -> int: ...


def schema_bounds(schema: dict[str, Any]) -> tuple[Decimal | None, bool, Decimal | None, bool]:
    """The tightest `(low, low_exclusive, high, high_exclusive)` of a (normalized) schema's bound keywords."""
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
        return low[0] + alt([_same_length_range(low[1:], high[1:])])  # type: ignore[operator]
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
    return alt(options)  # type: ignore[return-value]


def _natural_range(low: int, high: int) -> str | None:
    """Canonical decimals (no leading zeros) of the integers in [low, high], 0 <= low."""
    options = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        stop = min(high, 10**digits - 1)
        if start <= stop:
            options.append(_same_length_range(str(start), str(stop)))
    return alt(options)


def integer_range(low: int | None, high: int | None, max_digits: int) -> str | None:
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
    return alt(options)


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

    @cache
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
            rest = opt(more) if accepts_end else more or ""  # not accepting: `more` is set (checked above)
            options.append(_digit_class(digits[0], digits[-1]) + rest)
        return can_end, alt(options)

    accepts_empty, digits = state(0, low is not None, high is not None)
    if digits is None:
        return "" if accepts_empty else None
    return opt("\\." + digits) if accepts_empty else "\\." + digits


def _magnitude(low: Decimal, low_exclusive: bool, high: Decimal | None, high_exclusive: bool,
               options: DigitBounds) -> str | None:
    """Fixed-notation non-negative numbers in the interval (integer part, then fraction by comparison)."""
    low_int, low_digits = int(low), _fraction_digits(low)
    low_bound = None if (low_digits == "" and not low_exclusive) else low_digits  # F >= 0 always holds
    parts: list[str | None] = []
    if high is None:
        parts.append(seq(str(low_int), _fraction(low_bound, not low_exclusive, None, True,
                                                 options.max_fraction_digits)))
        middle_high = max(10**options.max_integer_digits - 1, 10 ** len(str(low_int)) - 1)
    else:
        high_int, high_digits = int(high), _fraction_digits(high)
        if high_int == low_int:
            parts.append(seq(str(low_int), _fraction(low_bound, not low_exclusive, high_digits, not high_exclusive,
                                                     options.max_fraction_digits)))
        else:
            parts.append(seq(str(low_int), _fraction(low_bound, not low_exclusive, None, True,
                                                     options.max_fraction_digits)))
            parts.append(seq(str(high_int), _fraction(None, True, high_digits, not high_exclusive,
                                                      options.max_fraction_digits)))
        middle_high = high_int - 1
    if low_int + 1 <= middle_high:
        parts.append(seq(_natural_range(low_int + 1, middle_high),
                         opt(f"\\.[0-9]{{1,{options.max_fraction_digits}}}") if options.max_fraction_digits else ""))
    return alt(parts)


# The largest finite double is 1.797e308. An exponent follows a one-digit integer part only (as Python's repr and
# JavaScript write numbers: `1.5e+300`), and a positive one is at most 307, so every number is finite as a double
# (`9e999` is valid JSON text, but JSON parsers read it as infinity).
_MAX_POSITIVE_EXPONENT = 307


def _positive_exponent(options: DigitBounds) -> str:
    """Exponent digit strings up to 307 (leading zeros allowed, as in Python's `1e+16` and JSON)."""
    return alt(_same_length_range("0" * length, str(min(_MAX_POSITIVE_EXPONENT, 10**length - 1)).zfill(length))
               for length in range(1, options.max_exponent_digits + 1)) or ""


def number_range(low: Decimal | None, low_exclusive: bool, high: Decimal | None, high_exclusive: bool,
                 options: DigitBounds) -> str | None:
    """Numbers between `low` and `high` (None: open), in fixed notation; with neither bound, any JSON number."""
    if low is None and high is None:
        fraction = opt(f"\\.[0-9]{{1,{options.max_fraction_digits}}}") if options.max_fraction_digits else ""
        exponent = f"(?:[eE](?:-[0-9]{{1,{options.max_exponent_digits}}}|\\+?{_positive_exponent(options)}))?"
        longer = f"|[1-9][0-9]{{1,{options.max_integer_digits - 1}}}{fraction}" if options.max_integer_digits > 1 else ""
        return f"-?(?:[0-9]{fraction}{exponent}{longer})"
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
    return alt(parts)
