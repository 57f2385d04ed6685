"""Shared pieces of the report's sections: seed statistics, labels, line identities, colours,
HTML tables and figure saving.

Every figure is drawn on a :class:`matplotlib.figure.Figure` (Agg canvas), never through pyplot's
global state, and saved beside the page by :func:`save_figure`.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MAX_SET_ROWS_PER_FIGURE = 12
"""Downstream sets per scaling figure; more sets continue in a second figure."""
PANEL_SIZE = (2.7, 2.1)
"""Inches per scaling panel (width, height)."""
FIGURE_DPI = 110
LEGEND_COLUMNS = 4
FLOOR_METHOD = "none"
SUMMARY_PROTOCOL = "linear"
VARIANT_COLUMNS = ("curation", "label_noise", "backbone", "samples_budget")
"""Pre-training coordinates that become part of a line's identity when they vary."""


# Two-sided 95% Student-t quantiles, degrees of freedom 1..30.
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


# --------------------------------------------------------------------------- helpers


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of ``values``: a t-based 95% CI of the mean for n >= 3, min-max otherwise.

    NaNs are ignored; all-NaN or empty input gives NaNs.
    """
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if arr.size >= 3:
        dof = arr.size - 1
        t = _T975[dof - 1] if dof <= len(_T975) else 1.96 + (_T975[-1] - 1.96) * len(_T975) / dof
        half = t * float(arr.std(ddof=1)) / math.sqrt(arr.size)
        return (mean, mean - half, mean + half)
    return (mean, float(arr.min()), float(arr.max()))


def shots_label(shots: Any) -> str:
    """``None``/NA -> ``"full"``, otherwise the number as text."""
    if shots is None or pd.isna(shots):
        return "full"
    return str(int(shots))


def shots_order(shots: Any) -> float:
    return math.inf if shots is None or pd.isna(shots) else float(shots)


def shots_title(order: float) -> str:
    if order == math.inf:
        return "full data"
    n = int(order)
    return "zero-shot" if n == 0 else f"{n} shot{'s' if n != 1 else ''}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_size(value: Any) -> str:
    if value is None or pd.isna(value):
        return ""
    v = int(value)
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if v >= scale and v % (scale // 10 or 1) == 0:
            return f"{v / scale:g}{unit}"
    return f"{v:,}"


def esc(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return html.escape(str(value))


def final_checkpoints(runs: pd.DataFrame) -> pd.DataFrame:
    """Keep, per pre-training run, only rows of its last evaluated checkpoint epoch.

    Rows with no ``checkpoint_epoch`` (e.g. from-scratch rows) are kept.
    """
    if runs.empty or runs["checkpoint_epoch"].isna().all():
        return runs
    epoch = runs["checkpoint_epoch"].astype("Float64")
    group = runs["pretrain_key"].astype(object).where(runs["pretrain_key"].notna(), "")
    last = epoch.groupby(group).transform("max")
    keep = epoch.isna() | (epoch == last)
    return runs[keep.fillna(True).astype(bool)]


def varying(df: pd.DataFrame, cols: Iterable[str]) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].astype(object).nunique(dropna=False) > 1]


@dataclass(frozen=True)
class Line:
    source: str
    method: str
    variant: tuple[tuple[str, Any], ...]

    def __lt__(self, other: Line) -> bool:  # pandas sorts group keys
        return self.label < other.label

    @property
    def label(self) -> str:
        parts = [str(self.source), str(self.method)]
        for name, value in self.variant:
            short = {"label_noise": "noise", "curation": "cur"}.get(name, name)
            parts.append(f"{short}={'∅' if value is None or pd.isna(value) else value}")
        return " · ".join(parts)


def line_keys(df: pd.DataFrame, variant_cols: Sequence[str]) -> list[Line]:
    """The line identity of every row of ``df`` (source, method and the varying coordinates)."""

    def clean(v: Any) -> Any:
        return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v

    cols = [df[c].astype(object).tolist() for c in variant_cols]
    return [
        Line(str(src), str(meth), tuple((c, clean(vals[i])) for c, vals in zip(variant_cols, cols)))
        for i, (src, meth) in enumerate(zip(df["source"].astype(object), df["method"].astype(object)))
    ]


# --------------------------------------------------------------------------- figures


_MARKERS = {"supervised": "o", "clip": "s", "simclr": "^", "mae": "D", "radreg": "v"}
_EXTRA_MARKERS = ["P", "X", "*", "h", "<", ">"]


def colour_map(lines: Sequence[Line]) -> dict[Line, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(lines) <= 10 else "tab20"]
    return {line: cmap(i % cmap.N) for i, line in enumerate(lines)}


def log_size_axis(ax: Any) -> None:
    """A log x axis of sample counts labelled 1k, 10k, 1M at the decades, as many as the axis
    length lets fit without overlapping (matplotlib's automatic tick count), minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_size(v) if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def marker(method: str) -> str:
    if method in _MARKERS:
        return _MARKERS[method]
    return _EXTRA_MARKERS[sum(map(ord, method)) % len(_EXTRA_MARKERS)]


# --------------------------------------------------------------------------- html


def html_table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], classes: str = "") -> str:
    """A table from pre-escaped cell HTML (no header row when ``header`` is None)."""
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>"
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{classes}">{head}<tbody>\n{body}\n</tbody></table>'


def shade(value: float, lo: float, hi: float) -> str:
    if math.isnan(value) or not (hi > lo):
        return ""
    frac = (value - lo) / (hi - lo)
    return f' style="background: rgba(46, 125, 200, {0.08 + 0.42 * frac:.2f})"'


# --------------------------------------------------------------------------- sections and figures

FIGURE_PREFIXES = (
    "scaling_",
    "fewshot_",
    "heatmap_",
    "calibration_",
    "multiplier_",
    "checkpoints_",
    "spectra_",
    "convergence_",
    "funnel_",
)
"""File-name prefixes of the report's figures: a new report replaces files with these prefixes."""


def empty_note(text: str) -> str:
    """The note a section (or part of one) shows when the store has no data for it yet."""
    return f'<p class="empty">{html.escape(text)}</p>'


def figure_html(name: str, alt: str, caption: str = "") -> str:
    """A linked figure (the PNG beside the page) with its caption."""
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><a href="{html.escape(name)}"><img src="{html.escape(name)}" alt="{html.escape(alt)}"></a>'
        f"{cap}</figure>"
    )


def save_figure(fig: Any, out_dir: Path, name: str) -> str:
    """Save ``fig`` as ``out_dir/name`` (PNG) and return ``name``."""
    fig.savefig(Path(out_dir) / name, dpi=FIGURE_DPI)
    return name


def annotate(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` rows with a score, plus ``_shots`` (full data = inf) and ``_line`` (the line
    identity: source, method and whichever of :data:`VARIANT_COLUMNS` vary among pre-trained rows)."""
    df = runs[runs["score"].notna()]
    if df.empty:
        return df.assign(_shots=pd.Series(dtype=float), _line=pd.Series(dtype=object))
    pre = df[(df["method"].astype(object) != FLOOR_METHOD) & df["pretrain_size"].notna()]
    cols = varying(pre, VARIANT_COLUMNS)
    return df.assign(_shots=df["shots"].map(shots_order), _line=line_keys(df, cols))


def config_label(line: Line, size: Any) -> str:
    """A line's label with its pre-training size, e.g. ``laion · clip · n=16k``."""
    if line.method == FLOOR_METHOD:
        return "random init"
    return line.label + (f" · n={fmt_size(size)}" if size is not None and not pd.isna(size) else "")


def percent_scale(values: Iterable[float]) -> bool:
    """Whether scores are fractions in [0, 1] (shown x100 in cells)."""
    vals = [v for v in values if v is not None and not pd.isna(v)]
    return bool(vals) and all(0.0 <= float(v) <= 1.0 for v in vals)
