"""Regex builders over strings in our syntax (see `regex.py`), shared by the JSON Schema modules.

Invariant: `None` stands for the regex that matches nothing, and it absorbs: a sequence with a `None` part is
`None`, an alternation drops `None` options (and is `None` when none are left). Results are safe to concatenate
whenever their inputs are: `alt` groups its alternation, `opt` and `repeat` group what they quantify.
"""

from __future__ import annotations

from collections.abc import Iterable


def seq(*parts: str | None) -> str | None:
    """The parts one after another; None if any part matches nothing."""
    return None if any(part is None for part in parts) else "".join(parts)  # type: ignore[arg-type]


def alt(options: Iterable[str | None]) -> str | None:
    """Any of the options (duplicates and None dropped, first occurrence kept); None if no option is left."""
    unique = list(dict.fromkeys(option for option in options if option is not None))
    if not unique:
        return None
    return unique[0] if len(unique) == 1 else "(?:" + "|".join(unique) + ")"


def opt(regex: str | None) -> str:
    """The regex or nothing ("" when the regex is empty or matches nothing)."""
    return "" if not regex else f"(?:{regex})?"


def repeat(regex: str | None, low: int, high: int | None) -> str | None:
    """`low` to `high` (None: unbounded) repetitions of the regex; None (nothing) when `low > high`."""
    if high is not None and low > high:
        return None
    if regex is None or high == 0:
        return "" if low == 0 else None
    if (low, high) == (1, 1):
        return regex
    quantifier = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((low, high))
    if quantifier is None:
        quantifier = f"{{{low},}}" if high is None else (f"{{{low}}}" if low == high else f"{{{low},{high}}}")
    return f"(?:{regex}){quantifier}"
