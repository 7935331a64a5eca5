"""Markdown tables, the one place reports build them (eval results and experiment reports)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["markdown_table", "percent_cell"]


def percent_cell(v: Any) -> str:
    """Returns a cell's text: floats in [0, 1] as percentages (one decimal), other floats with
    three decimals, anything else as `str`."""
    if isinstance(v, float):
        return f"{100 * v:.1f}" if 0.0 <= v <= 1.0 else f"{v:.3f}"
    return str(v)


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], cell: Callable[[Any], str] = percent_cell
) -> str:
    """Returns a markdown table (header row, separator, one line per row); `cell` turns each
    row value into its text (default `percent_cell`; `str` for values already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
