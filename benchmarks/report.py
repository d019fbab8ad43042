"""How the benchmarks report: nearest-rank percentiles, ratios, durations with units, Markdown tables, and the
code version the numbers were measured at.

Every formatter prints "-" for a number that is missing (None or NaN), so a table row never fails on an engine
that measured nothing.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), NaN for no values."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="nearest"))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is missing or b is not positive."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b <= 0:
        return None
    return a / b


def fmt_time(seconds: float | None) -> str:
    """A duration with a unit that keeps 2-3 significant digits."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_ratio(ours: float | None, peer: float | None) -> str:
    value = ratio(ours, peer)
    return "-" if value is None else f"{value:.2g}x"


def fmt_percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def fmt_startup(startup_s: dict[str, float]) -> str:
    """The per-tokenizer costs paid once, as one line."""
    return "Startup (per tokenizer, paid once): " + ", ".join(f"{k} {fmt_time(v)}" for k, v in startup_s.items())


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def code_version() -> str:
    """The commit the engine code is at, and which of its files differ from it (others edit them concurrently)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "grammars"], cwd=root, capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
