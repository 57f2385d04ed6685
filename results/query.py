"""Formatting query results for ``tbench results query --format table|csv|json|parquet``.

:func:`format_frame` turns a DataFrame into the requested output:

- ``table``: a :class:`rich.table.Table` renderable (print it with a rich ``Console``; on a
  non-terminal rich prints plain text without colour codes, so piping still works). Long
  frames are cut at ``max_rows`` with a caption saying how many rows were left out.
- ``csv``: a string, header first, no index, empty field for null.
- ``json``: a string holding one JSON array of records (``null`` for missing values,
  timestamps in ISO 8601).
- ``parquet``: writes the frame to ``out`` and returns that :class:`~pathlib.Path`.

:func:`print_frame` is the CLI's one call: it formats and writes to a console or stream.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import io
import json
import math
import sys
from pathlib import Path
from typing import IO, Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

FORMATS: tuple[str, ...] = ("table", "csv", "json", "parquet")
"""The output formats of ``tbench results query``."""


class FormatError(ValueError):
    """An unknown output format, or a format missing what it needs (a path for parquet)."""


def _check_format(fmt: str) -> str:
    name = (fmt or "").strip().lower()
    if name not in FORMATS:
        raise FormatError(f"unknown output format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return name


def _plain(value: Any) -> Any:
    """A JSON-ready Python value (None for every kind of missing)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (pd.Timestamp, _dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):  # DuckDB's SUM over integers and booleans is a DECIMAL
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, pd.Timedelta):
        return value.total_seconds()
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return _plain(item())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if hasattr(value, "tolist"):  # numpy arrays from list columns
        return _plain(value.tolist())
    return value


def _cell(value: Any) -> str:
    """Text for one table cell."""
    value = _plain(value)
    if value is None:
        return "[dim]null[/dim]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def frame_to_table(df: pd.DataFrame, *, max_rows: int | None = 200, title: str | None = None) -> Table:
    """A rich table of ``df`` (at most ``max_rows`` rows; ``None`` for all)."""
    table = Table(title=title, show_lines=False, header_style="bold")
    for name in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[name].dtype)
        table.add_column(str(name), justify="right" if numeric else "left", overflow="fold")
    shown = df if max_rows is None else df.head(max_rows)
    for row in shown.itertuples(index=False, name=None):
        table.add_row(*(_cell(v) for v in row))
    left_out = len(df) - len(shown)
    n = len(df)
    table.caption = f"{n} row{'s' if n != 1 else ''}" + (
        f" ({left_out} not shown; use --format csv or parquet for all)" if left_out else ""
    )
    return table


def frame_to_csv(df: pd.DataFrame) -> str:
    """CSV text of ``df`` (header, no index, empty field for null)."""
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def frame_to_json(df: pd.DataFrame) -> str:
    """One JSON array of records; missing values are ``null``."""
    columns = [str(c) for c in df.columns]
    records = [{c: _plain(v) for c, v in zip(columns, row)} for row in df.itertuples(index=False, name=None)]
    return json.dumps(records, ensure_ascii=False, allow_nan=False)


def frame_to_parquet(df: pd.DataFrame, out: str | Path) -> Path:
    """Write ``df`` to the Parquet file ``out`` (parent folders created); return its path."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(target, engine="pyarrow", index=False)
    return target


def format_frame(
    df: pd.DataFrame,
    fmt: str,
    out: str | Path | None = None,
    *,
    max_rows: int | None = 200,
) -> Table | str | Path:
    """Format ``df`` as ``fmt`` (one of :data:`FORMATS`).

    Returns a rich :class:`~rich.table.Table` for ``table``, a string for ``csv`` and ``json``,
    and for ``parquet`` writes ``out`` (required) and returns it as a :class:`~pathlib.Path`.
    """
    name = _check_format(fmt)
    if name == "table":
        return frame_to_table(df, max_rows=max_rows)
    if name == "csv":
        return frame_to_csv(df)
    if name == "json":
        return frame_to_json(df)
    if out is None:
        raise FormatError("format 'parquet' writes a file: give an output path (e.g. --out result.parquet)")
    return frame_to_parquet(df, out)


def print_frame(
    df: pd.DataFrame,
    fmt: str = "table",
    out: str | Path | None = None,
    *,
    file: IO[str] | None = None,
    console: Console | None = None,
    max_rows: int | None = 200,
) -> None:
    """Format ``df`` and write it to ``file`` (stdout by default).

    ``table`` goes through a rich console (``console`` or one on ``file``); ``csv`` and ``json``
    are written verbatim; ``parquet`` writes ``out`` and prints one line saying so.
    """
    rendered = format_frame(df, fmt, out, max_rows=max_rows)
    stream = file if file is not None else sys.stdout
    if isinstance(rendered, Table):
        (console or Console(file=stream)).print(rendered)
    elif isinstance(rendered, Path):
        stream.write(f"wrote {len(df)} row(s) to {rendered}\n")
    else:
        stream.write(rendered if rendered.endswith("\n") else rendered + "\n")
