"""Tiny Markdown helpers (tables without extra dependencies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from apd.analysis._columns import fmt_value, is_missing


def cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value)
    if is_missing(value):
        return "–"
    return fmt_value(value).replace("|", "\\|").replace("\n", " ")


def table(df: pd.DataFrame, columns: Sequence[str] | None = None, headers: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of `columns` of `df` (all columns by default)."""
    cols = list(columns) if columns is not None else [str(c) for c in df.columns]
    names = list(headers) if headers is not None else cols
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(cell(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def image(path: str, alt: str) -> str:
    return f"![{alt}]({path})"
