"""Markdown tables: the one writer, for the report (rows of cells it has already formatted) and for
the benchmark and the GPU tools (a DataFrame, whose floats are formatted here)."""
from __future__ import annotations

import pandas as pd


def md_table(rows: list[dict], columns: list | None = None) -> str:
    """A markdown table of ``rows`` under ``columns`` (default: the first row's keys); a ``|`` in a
    cell would end it, so it is written as ``/``. No rows and no columns: "(none)"."""
    cols = list(rows[0]) if columns is None and rows else list(columns or [])
    if not cols:
        return "(none)"
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(out)


def frame_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A DataFrame as a markdown table: floats in ``floatfmt``, a missing value (None, NaN, NA) empty."""
    def cell(v) -> str:
        if pd.api.types.is_scalar(v) and pd.isna(v):
            return ""
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    return md_table([{c: cell(v) for c, v in zip(df.columns, row)} for row in df.itertuples(index=False)],
                    list(df.columns))
