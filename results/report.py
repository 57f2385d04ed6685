"""The HTML report: scaling curves, a linear-probe summary, failures and curated views.

:func:`write_report` reads a store and writes ``out_dir/index.html`` with PNG figures beside
it (relative links, so the folder can be copied or zipped as is). Sections:

1. **Scaling curves**, one figure per protocol: downstream ``score`` against pre-training
   samples (``pretrain_size``, log axis), one line per (source, method), panels per downstream
   set (rows) x shots (columns; null shots = "full"). Each point is the mean over pre-training
   seeds of the mean over eval seeds; the band is its 95% two-level bootstrap interval
   (pre-training seeds, then eval seeds: :mod:`results.stats`). Rows with ``method == 'none'`` are
   the random-initialisation floor (dashed), the set's chance level is dotted. When curation,
   label noise or backbone vary in the store they are added to the line identity instead of
   being averaged over. Only each pre-training run's last evaluated checkpoint is plotted.
   Existing models (rows with a ``model``: the spec's ``models:``) are reference points, not
   lines: a star at their declared ``pretrain_size``, a dash-dot line where none is declared.
2. **Linear-probe summary**: mean score per (source, method, pretrain_size) x downstream set,
   one table per shot count.
3. **Failed runs**: rows whose status is not ``ok``, with their error.
4. **Curated views**: the ``views`` table with each curation funnel.

Sections without data say so instead of failing, so the report renders from an empty store.
Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas), never through
pyplot's global state.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from results.calibration import calibration_section
from results.multiplier import MultiplierPair
from results.plotting import (  # noqa: F401  (spread, shots_label, final_checkpoints: public API here too)
    FIGURE_DPI,
    FIGURE_PREFIXES,
    FLOOR_METHOD,
    LEGEND_COLUMNS,
    MAX_SET_ROWS_PER_FIGURE,
    PANEL_SIZE,
    SUMMARY_PROTOCOL,
    VARIANT_COLUMNS,
    Line,
    colour_map,
    empty_note,
    esc,
    figure_html,
    final_checkpoints,
    fmt_num,
    fmt_size,
    html_table,
    line_keys,
    log_size_axis,
    marker,
    shade,
    shots_label,
    shots_order,
    shots_title,
    slug,
    spread,
    varying,
)
from results.schema import SCHEMA_VERSION, columns
from results.sections import (
    checkpoints_section,
    convergence_section,
    fewshot_section,
    funnel_section,
    heatmap_section,
    missing_section,
    multiplier_section,
    spectra_section,
)
from results.stats import hierarchical_bootstrap, seed_note
from results.store import Store

log = logging.getLogger(__name__)

_FIGURE_PREFIX = "scaling_"
_Cell = list[tuple[Line, list[float], list[float], list[float], list[float]]]


def _aggregate_cells(curves: pd.DataFrame) -> dict[tuple[str, float], _Cell]:
    """(set, shots order) -> per line: sizes, mean, band low, band high (sorted by size). The band
    is the 95% two-level bootstrap interval over pre-training seeds, then eval seeds
    (:mod:`results.stats`)."""
    cells: dict[tuple[str, float], _Cell] = {}
    if curves.empty:
        return cells
    frame = curves.assign(_size=curves["pretrain_size"].astype(float))
    table = hierarchical_bootstrap(frame, ["downstream", "_shots", "_line", "_size"], strata=None).table()
    points: dict[tuple, list[tuple[float, float, float, float]]] = {}
    for ds_name, shot, line, size, est, lo, hi in zip(
        table["downstream"],
        table["_shots"],
        table["_line"],
        table["_size"],
        table["estimate"],
        table["lo"],
        table["hi"],
    ):
        points.setdefault((ds_name, shot, line), []).append((size, est, lo, hi))
    for (ds_name, shot, line), values in points.items():
        values.sort()
        cells.setdefault((ds_name, shot), []).append((line, *map(list, zip(*values))))
    for drawn in cells.values():
        drawn.sort(key=lambda item: item[0].label)
    return cells


def _row_ylim(ds_name: str, shots: Sequence[float], cells: dict, floor_means: dict, chance: Any) -> tuple[float, float]:
    """A shared y range for one set's row of panels (data, bands, floor and chance included)."""
    values: list[float] = []
    for shot in shots:
        for _, _, mean, lo, hi in cells.get((ds_name, shot), []):
            values += mean + lo + hi
        if (ds_name, shot) in floor_means:
            values.append(floor_means[(ds_name, shot)])
    if chance is not None and not pd.isna(chance):
        values.append(float(chance))
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return (0.0, 1.0)
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.05, 0.01)
    lo, hi = lo - pad, hi + pad
    means = [v for shot in shots for _, _, mean, _, _ in cells.get((ds_name, shot), []) for v in mean]
    if means and all(0.0 <= v <= 1.0 for v in means if math.isfinite(v)):
        # Scores are fractions: a wide confidence band should not push the axis past [0, 1].
        lo, hi = max(lo, -0.02), min(hi, 1.02)
    return (lo, hi)


@dataclass
class _Scaling:
    """What every protocol's scaling figure shares: the rows, the existing models' points, the
    lines and their colours, and each set's chance level and metric."""

    full: pd.DataFrame  # every final-checkpoint row with a score
    df: pd.DataFrame  # those without an existing model, with their _line
    models: pd.DataFrame
    model_colours: dict[str, str]
    all_lines: list[Line]
    colours: dict[Line, Any]
    chance: pd.Series
    metric: pd.Series


@dataclass
class _ProtocolPlot:
    """One protocol's figure data: its plottable rows, the models' points and the panel grid."""

    protocol: str
    pdf: pd.DataFrame
    marks: pd.DataFrame
    sets: list[str]
    shots: list[float]
    floor: pd.DataFrame
    lines_here: list[Line]
    cells: dict[tuple[str, float], _Cell]
    floor_means: dict
    xlim: tuple[float, float] | None


def _scaling_figures(runs_ok: pd.DataFrame, out_dir: Path) -> list[tuple[str, list[str], str]]:
    """Draw the scaling figures; returns (protocol, [png names], note) per protocol."""
    ctx = _scaling_context(runs_ok)
    if ctx is None:
        return []
    return [
        _protocol_figures(ctx, str(protocol), protocol, out_dir)
        for protocol in sorted(ctx.full["protocol"].dropna().unique())
    ]


def _scaling_context(runs_ok: pd.DataFrame) -> _Scaling | None:
    """The final checkpoints' scored rows split into lines and model points; None without any."""
    df = final_checkpoints(runs_ok)
    df = df[df["score"].notna()]
    if df.empty:
        return None
    df = df.assign(_shots=df["shots"].map(shots_order))
    models = _model_points(df)  # existing models: reference points, not lines
    full, df = df, (df[df["model"].isna()] if "model" in df.columns else df)
    model_colours = {name: f"C{(i + 3) % 10}" for i, name in enumerate(sorted(models["model"].unique()))}
    is_floor = df["method"].astype(object) == FLOOR_METHOD
    pre = df[~is_floor & df["pretrain_size"].notna()]
    variant_cols = varying(pre, VARIANT_COLUMNS)
    df = df.assign(_line=line_keys(df, variant_cols))
    all_lines = sorted(set(df.loc[pre.index, "_line"]), key=lambda ln: ln.label)
    chance = full.groupby("downstream")["chance"].mean()
    metric = full.groupby("downstream")["metric"].agg(lambda s: next((m for m in s if isinstance(m, str)), ""))
    return _Scaling(full, df, models, model_colours, all_lines, colour_map(all_lines), chance, metric)


def _protocol_figures(ctx: _Scaling, name: str, protocol: Any, out_dir: Path) -> tuple[str, list[str], str]:
    """One protocol's figures (one per chunk of sets) and their note, or a note on why none."""
    every = ctx.df[ctx.df["protocol"] == protocol]
    floor_mask = every["method"].astype(object) == FLOOR_METHOD
    plottable = floor_mask | every["pretrain_size"].notna()
    pdf = every[plottable & every["downstream"].notna()]
    marks = ctx.models[ctx.models["protocol"] == protocol]
    if pdf.empty and marks.empty:
        return (name, [], f"{len(every)} row(s) but none with a pretrain_size to plot against.")
    curves = pdf[~floor_mask[pdf.index]]
    present = set(curves["_line"])
    lines_here = [ln for ln in ctx.all_lines if ln in present]
    plot = _ProtocolPlot(
        protocol=protocol,
        pdf=pdf,
        marks=marks,
        sets=sorted(set(pdf["downstream"].unique()) | set(marks["downstream"])),
        shots=sorted(set(pdf["_shots"].unique()) | set(marks["_shots"])),
        floor=pdf[floor_mask[pdf.index]],
        lines_here=lines_here,
        cells=_aggregate_cells(curves),
        floor_means=pdf[floor_mask[pdf.index]].groupby(["downstream", "_shots"])["score"].mean().to_dict(),
        xlim=None,
    )
    if not lines_here and marks.empty:
        return (
            name,
            [],
            f"{len(pdf)} row(s), all from the random-init encoder (no pre-training size to plot against).",
        )
    sizes = pd.concat([curves["pretrain_size"].dropna().astype(float), marks["size"].dropna().astype(float)])
    sizes = sizes[sizes > 0]
    plot.xlim = (float(sizes.min()) / 1.4, float(sizes.max()) * 1.4) if not sizes.empty else None
    sets = plot.sets
    chunks = [sets[i : i + MAX_SET_ROWS_PER_FIGURE] for i in range(0, len(sets), MAX_SET_ROWS_PER_FIGURE)]
    names = [
        _draw_chunk(ctx, plot, chunk, chunk_index, len(chunks), out_dir) for chunk_index, chunk in enumerate(chunks)
    ]
    return (name, names, _protocol_note(plot, len(every)))


def _protocol_note(plot: _ProtocolPlot, n_every: int) -> str:
    """The caption of a protocol's figures: rows left out, models, counts and values per point."""
    pdf, marks = plot.pdf, plot.marks
    n_values = pdf.groupby(["downstream", "_shots", "pretrain_size", "_line"], dropna=False, sort=False).size()
    skipped = n_every - len(pdf)
    return (
        (f"{skipped} row(s) without a pretrain_size not plotted; " if skipped else "")
        + (
            f"existing models ({', '.join(sorted(set(marks['model'])))}): a star at their declared "
            "pretrain_size (mean over seeds), a dash-dot line where none is declared; "
            if not marks.empty
            else ""
        )
        + f"{len(pdf)} rows, {len(plot.sets)} set(s), {len(plot.shots)} shot setting(s), "
        f"{len(plot.lines_here)} line(s); "
        f"up to {int(n_values.max()) if len(n_values) else 0} values per point."
    )


def _draw_chunk(
    ctx: _Scaling, plot: _ProtocolPlot, chunk: list[str], chunk_index: int, n_chunks: int, out_dir: Path
) -> str:
    """Draw one figure (a chunk of sets as rows, shots as columns) and save it; return its file name."""
    fig, axes, legend_cols, height = _chunk_figure(ctx, plot, len(chunk))
    nrows = len(chunk)
    for r, ds_name in enumerate(chunk):
        ylim = _row_ylim(ds_name, plot.shots, plot.cells, plot.floor_means, ctx.chance.get(ds_name))
        ys = plot.marks.loc[plot.marks["downstream"] == ds_name, "score"].dropna()
        if not ys.empty:  # the models' points inside the row's range too
            pad = 0.03 * max(ylim[1] - ylim[0], 1e-3)
            ylim = (min(ylim[0], float(ys.min()) - pad), max(ylim[1], float(ys.max()) + pad))
        for c, shot in enumerate(plot.shots):
            _draw_panel(axes[r][c], ctx, plot, ds_name, shot, ylim)
            _label_panel(axes[r][c], ctx, ds_name, shot, r, c, nrows)
    handles = _legend_handles(ctx, plot)
    protocol = plot.protocol
    suffix = f" ({chunk_index + 1}/{n_chunks})" if n_chunks > 1 else ""
    fig.suptitle(f"{protocol}: score vs pre-training samples{suffix}", fontsize=11, y=1 - 0.12 / height, va="top")
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, 0.08 / height),
            ncol=min(len(handles), legend_cols),
            fontsize=8,
            frameon=False,
        )
    name = f"{_FIGURE_PREFIX}{slug(protocol)}" + (f"_{chunk_index + 1}" if n_chunks > 1 else "") + ".png"
    fig.savefig(out_dir / name)
    return name


def _chunk_figure(ctx: _Scaling, plot: _ProtocolPlot, nrows: int) -> tuple[Any, Any, int, float]:
    """A figure of ``nrows`` x shots panels with room for the legend; (figure, axes, legend columns, height)."""
    from matplotlib.figure import Figure

    ncols = len(plot.shots)
    width = max(5.5, PANEL_SIZE[0] * ncols + 1.05)
    # as many legend columns as the widest label lets fit across the figure
    label_inches = (
        0.075 * max([len(ln.label) for ln in plot.lines_here] + [len(n) + 12 for n in ctx.model_colours]) + 0.55
    )
    legend_cols = max(1, min(LEGEND_COLUMNS, int((width - 0.3) // label_inches)))
    legend_rows = math.ceil((len(plot.lines_here) + len(set(plot.marks["model"])) + 2) / legend_cols)
    margins = {"left": 0.85, "right": 0.2, "top": 0.75, "bottom": 0.55 + 0.2 * legend_rows + 0.15}
    height = PANEL_SIZE[1] * nrows + margins["top"] + margins["bottom"]
    # A fixed layout in inches: constrained layout measured every tick label of every
    # panel and cost as much as the drawing itself on 60+ panel grids.
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI)
    fig.subplots_adjust(
        left=margins["left"] / width,
        right=1 - margins["right"] / width,
        top=1 - margins["top"] / height,
        bottom=margins["bottom"] / height,
        wspace=0.06,
        hspace=0.08,
    )
    # Axes are not shared and limits are set by hand: matplotlib's shared-axis autoscaling
    # is quadratic in the number of panels and dominated the report's run time.
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes, legend_cols, height


def _draw_panel(
    ax: Any, ctx: _Scaling, plot: _ProtocolPlot, ds_name: str, shot: float, ylim: tuple[float, float]
) -> None:
    """One panel's data: the lines with their bands, the models, the floor and chance."""
    ax.set_autoscale_on(False)
    if plot.xlim is not None:
        log_size_axis(ax)
        ax.set_xlim(*plot.xlim)
    ax.set_ylim(*ylim)
    drawn = plot.cells.get((ds_name, shot), [])
    for line, x, mean, lo, hi in drawn:
        ax.plot(
            x,
            mean,
            color=ctx.colours[line],
            marker=marker(line.method),
            markersize=3.5,
            linewidth=1.4,
            label=line.label,
        )
        ax.fill_between(x, lo, hi, color=ctx.colours[line], alpha=0.18, linewidth=0)
    marks = plot.marks
    _draw_models(ax, marks[(marks["downstream"] == ds_name) & (marks["_shots"] == shot)], ctx.model_colours)
    fl = plot.floor_means.get((ds_name, shot))
    if fl is not None:
        ax.axhline(fl, color="0.35", linestyle="--", linewidth=1.1)
    ch = ctx.chance.get(ds_name)
    if ch is not None and not pd.isna(ch):
        ax.axhline(float(ch), color="0.2", linestyle=":", linewidth=1.0)
    if not drawn and fl is None and marks[marks["downstream"] == ds_name].empty:
        ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", va="center", color="0.5", fontsize=8)


def _label_panel(ax: Any, ctx: _Scaling, ds_name: str, shot: float, r: int, c: int, nrows: int) -> None:
    """Ticks, grid and the titles of the grid's outer panels."""
    from matplotlib.ticker import NullLocator

    ax.tick_params(labelsize=7, labelleft=(c == 0), labelbottom=(r == nrows - 1))
    ax.grid(True, which="major", alpha=0.3, linewidth=0.5)
    ax.xaxis.set_minor_locator(NullLocator())
    if r == 0:
        ax.set_title(shots_title(shot), fontsize=9)
    if c == 0:
        metric = ctx.metric
        label = ds_name if not metric.get(ds_name) else f"{ds_name}\n{metric[ds_name]}"
        ax.set_ylabel(label, fontsize=8)
    if r == nrows - 1:
        ax.set_xlabel("pre-training samples", fontsize=8)


def _legend_handles(ctx: _Scaling, plot: _ProtocolPlot) -> list[Any]:
    """The legend: one entry per line, per existing model, the floor and chance where drawn."""
    from matplotlib.lines import Line2D

    colours, marks = ctx.colours, plot.marks
    handles = [
        Line2D([], [], color=colours[ln], marker=marker(ln.method), markersize=4, label=ln.label)
        for ln in plot.lines_here
    ]
    for name in sorted(set(marks["model"])):
        sized = marks.loc[marks["model"] == name, "size"].notna().any()
        handles.append(
            Line2D(
                [],
                [],
                color=ctx.model_colours[name],
                marker="*" if sized else None,
                markersize=8,
                linestyle="none" if sized else "-.",
                label=f"model {name}",
            )
        )
    if not plot.floor.empty:
        handles.append(Line2D([], [], color="0.35", linestyle="--", label="random init (method none)"))
    if ctx.chance.notna().any():
        handles.append(Line2D([], [], color="0.2", linestyle=":", label="chance"))
    return handles


def _model_points(df: pd.DataFrame) -> pd.DataFrame:
    """Existing models' rows (the ``model`` column, pretrain/existing.py) as one mean score per
    (protocol, set, shots, model), with the model's declared size (NaN where none is declared)."""
    cols = ["protocol", "downstream", "_shots", "model", "score", "size"]
    if "model" not in df.columns or df["model"].isna().all():
        return pd.DataFrame(columns=cols)
    rows = df[df["model"].notna()].assign(size=lambda d: d["pretrain_size"].astype(float))
    return rows.groupby(["protocol", "downstream", "_shots", "model"], as_index=False).agg(
        score=("score", "mean"), size=("size", "first")
    )[cols]


def _draw_models(ax: Any, marks: pd.DataFrame, colours: dict[str, Any]) -> None:
    """Each model's mean score: a star at its declared size, else a dash-dot line across the panel."""
    for name, score, size in zip(marks["model"], marks["score"], marks["size"]):
        if pd.notna(size):
            ax.plot([size], [score], marker="*", markersize=9, color=colours[name], linestyle="none", zorder=5)
        else:
            ax.axhline(score, color=colours[name], linestyle="-.", linewidth=1.1)


# --------------------------------------------------------------------------- tables


def _summary_section(runs_ok: pd.DataFrame) -> str:
    df = final_checkpoints(runs_ok)
    df = df[(df["protocol"] == SUMMARY_PROTOCOL) & df["score"].notna()]
    if df.empty:
        return f'<p class="empty">No rows yet for the {SUMMARY_PROTOCOL} protocol.</p>'
    variant_cols = varying(df[df["method"].astype(object) != FLOOR_METHOD], VARIANT_COLUMNS)
    keys = ["source", "method", *variant_cols, "pretrain_size"]
    sets = sorted(df["downstream"].dropna().unique())
    parts = [
        f"<p>Mean <code>score</code> over eval and pre-training seeds, {SUMMARY_PROTOCOL} protocol, "
        "last checkpoint of each pre-training run. Shading is per column (darker is better). "
        f"Rows with method <code>{FLOOR_METHOD}</code> are the random-initialisation floor. The mean over sets "
        "(each set weighing the same) comes with its 95% interval: a bootstrap over pre-training seeds, then "
        "eval seeds, stratified by set; <i>seeds</i> counts pre-training × eval seeds.</p>"
    ]
    frame = df.assign(_shots=df["shots"].map(shots_order))
    seeds: list[int] = []
    for shot in sorted(frame["_shots"].unique()):
        sdf = frame[frame["_shots"] == shot]
        key_frame = sdf[keys].astype(object).where(sdf[keys].notna(), None)
        sdf = sdf.assign(**{f"_k_{k}": key_frame[k].map(lambda v: "" if v is None else v) for k in keys})
        kcols = [f"_k_{k}" for k in keys]
        table = sdf.pivot_table(index=kcols, columns="downstream", values="score", aggfunc="mean")
        table = table.reindex(columns=sets)
        boot = hierarchical_bootstrap(sdf, kcols, strata="downstream").intervals()
        table["mean"] = [boot[idx].estimate if idx in boot else math.nan for idx in table.index]
        ranges = {c: (table[c].min(), table[c].max()) for c in table.columns}

        def sort_key(idx: tuple) -> tuple:
            row = dict(zip(keys, idx))
            size = row["pretrain_size"]
            return (
                row["method"] == FLOOR_METHOD,
                str(row["source"]),
                str(row["method"]),
                *(str(row[c]) for c in variant_cols),
                float(size) if size != "" else -1.0,
            )

        rows = []
        for idx in sorted(table.index, key=sort_key):
            vals = table.loc[idx]
            cells = [esc(v) for v in idx[:-1]] + [esc(fmt_size(idx[-1]) if idx[-1] != "" else "")]
            for c in table.columns:
                v = float(vals[c]) if not pd.isna(vals[c]) else math.nan
                lo, hi = ranges[c]
                cells.append(f"<span{shade(v, float(lo), float(hi))}>{fmt_num(v)}</span>" if not math.isnan(v) else "")
            iv = boot.get(idx)
            cells.append(f"[{fmt_num(iv.lo)}, {fmt_num(iv.hi)}]" if iv is not None and math.isfinite(iv.lo) else "")
            cells.append(f"{iv.n_pretrain_seeds}×{iv.n_eval_seeds}" if iv is not None else "")
            if iv is not None:  # the floor too: one initialisation per pre-training seed of the grid
                seeds.append(iv.n_pretrain_seeds)
            rows.append(cells)
        header = [*keys[:-1], "samples", *(html.escape(s) for s in sets), "<b>mean</b>", "95% interval", "seeds"]
        title = shots_title(shot)
        parts.append(f"<h3>{title}</h3>")
        parts.append(html_table(header, rows, "summary"))
    note = seed_note(seeds)
    if note:
        parts.append(f'<p class="data">Intervals of the pre-trained rows: {html.escape(note)}.</p>')
    return "\n".join(parts)


def _failed_section(runs: pd.DataFrame) -> str:
    bad = runs[runs["status"].astype(object) != "ok"] if not runs.empty else runs
    if bad.empty:
        return '<p class="empty">No failed runs.</p>'
    cols = [
        "key",
        "job_key",
        "source",
        "method",
        "pretrain_size",
        "downstream",
        "protocol",
        "shots",
        "eval_seed",
        "status",
    ]
    rows = []
    for _, r in bad.sort_values(["protocol", "downstream", "key"], na_position="last").iterrows():
        cells = [esc(r[c]) if c != "shots" else esc(shots_label(r[c])) for c in cols]
        err = "" if pd.isna(r["error"]) else str(r["error"])
        first = err.strip().splitlines()[-1] if err.strip() else ""
        if len(err) > 160 or "\n" in err.strip():
            cells.append(
                f"<details><summary>{html.escape(first[:160])}</summary><pre>{html.escape(err)}</pre></details>"
            )
        else:
            cells.append(html.escape(err))
        rows.append(cells)
    return f"<p>{len(bad)} row(s) with status other than <code>ok</code>.</p>" + html_table(
        [*cols, "error"], rows, "failed"
    )


def _funnel_html(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    try:
        funnel = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return html.escape(str(value))
    if not isinstance(funnel, dict) or not funnel:
        return html.escape(str(value)) if not isinstance(funnel, dict) else "—"
    return "<br>".join(f"{html.escape(str(k))}: −{html.escape(str(v))}" for k, v in funnel.items())


def _views_section(views: pd.DataFrame) -> str:
    if views.empty:
        return '<p class="empty">No rows yet for views (no curated pre-training views recorded).</p>'
    cols = [
        "view_key",
        "source",
        "curation",
        "requested_size",
        "size",
        "label_noise",
        "achieved_noise",
        "label_accuracy",
        "num_classes",
    ]
    rows = []
    for _, r in views.sort_values(["source", "curation", "requested_size"], na_position="last").iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(esc(fmt_num(v) if isinstance(v, (float, np.floating)) else v))
        cells.append(_funnel_html(r["funnel"]))
        rows.append(cells)
    return html_table([*cols, "funnel (removed per step)"], rows, "views")


# --------------------------------------------------------------------------- page


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1400px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em;
       margin-top: 2em; } h3 { margin: 1.2em 0 .4em; font-size: 1.05em; }
.meta { color: #57606a; } .empty { color: #57606a; font-style: italic; }
nav a { margin-right: 1em; } code { background: #f6f8fa; padding: 0 .25em; border-radius: 3px; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 12.5px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tbody tr:nth-child(even) { background: #fbfcfd; }
table.summary td span { display: block; padding: 0 2px; text-align: right; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 12.5px; }
.error { color: #b42318; font-weight: 600; }
details pre { white-space: pre-wrap; max-width: 70ch; font-size: 11.5px; }
""".strip()


def _overview(runs: pd.DataFrame, views: pd.DataFrame) -> str:
    if runs.empty:
        return '<p class="empty">The store has no rows yet for runs.</p>'
    ok = runs[runs["status"].astype(object) == "ok"]
    facts = [
        ("rows", f"{len(runs)} ({len(ok)} ok, {len(runs) - len(ok)} not ok)"),
        ("protocols", ", ".join(sorted(map(str, runs["protocol"].dropna().unique())))),
        ("downstream sets", ", ".join(sorted(map(str, runs["downstream"].dropna().unique())))),
        (
            "sources",
            ", ".join(
                sorted(map(str, runs.loc[runs["method"].astype(object) != FLOOR_METHOD, "source"].dropna().unique()))
            ),
        ),
        ("methods", ", ".join(sorted(map(str, runs["method"].dropna().unique())))),
        ("specs", ", ".join(sorted(map(str, runs["spec"].dropna().unique())))),
        ("views", str(len(views))),
    ]
    return html_table(None, [[f"<b>{html.escape(k)}</b>", html.escape(v)] for k, v in facts], "overview")


def _read(store: Store, table: str) -> pd.DataFrame:
    df = store.read(table)
    for c in columns(table):
        if c not in df.columns:
            df[c] = pd.NA
    return df


def _guarded(name: str, build: Callable[[], str]) -> str:
    """Build one section; a bug in one section is shown in its place instead of losing the page."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - the rest of the report is still worth writing
        log.exception("report section %r failed", name)
        return (
            f'<p class="error">This section could not be drawn: {html.escape(type(exc).__name__)}: '
            f"{html.escape(str(exc))}</p>"
        )


#: Beside ``index.html``: the digest of the inputs the page was rendered from, and its figures.
INPUTS_FILE = ".report-inputs.json"
#: The store's tables a report reads (the convergence views are built on runs and curves).
REPORT_TABLES = ("runs", "views", "spectra", "curves")


def report_inputs(
    store_root: str | os.PathLike[str],
    title: str | None = None,
    *,
    expected: pd.DataFrame | None = None,
    pruned: Sequence[tuple[str, str]] | None = None,
    multipliers: Sequence[MultiplierPair] | None = None,
    heatmap_shots: Sequence[int | None] | None = None,
    n_boot: int = 200,
) -> str:
    """A digest of everything :func:`write_report` renders from: the files holding the store's
    tables (any row written, replaced or compacted changes it), the options, and the code that
    draws (the ``results`` package's source, the schema version, matplotlib's version)."""
    import matplotlib

    h = hashlib.sha256(Store(store_root).files_digest(REPORT_TABLES).encode())
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    planned = None
    if expected is not None:
        planned = hashlib.sha256(pd.util.hash_pandas_object(expected.astype(str), index=False).values.tobytes())
    options = [title, planned and planned.hexdigest(), sorted(map(repr, pruned or []))]
    options += [[repr(p) for p in multipliers or []], heatmap_shots, n_boot, SCHEMA_VERSION, matplotlib.__version__]
    h.update(repr(options).encode())
    return h.hexdigest()


def report_is_current(out_dir: str | os.PathLike[str], digest: str) -> bool:
    """Whether ``out_dir`` holds a whole report (page and every figure) rendered from inputs with ``digest``."""
    out = Path(out_dir)
    try:
        record = json.loads((out / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    files = ["index.html", *record.get("figures", [])]
    return record.get("digest") == digest and all((out / name).is_file() for name in files)


def write_report(
    store_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    title: str | None = None,
    *,
    expected: pd.DataFrame | None = None,
    pruned: Sequence[tuple[str, str]] | None = None,
    multipliers: Sequence[MultiplierPair] | None = None,
    heatmap_shots: Sequence[int | None] | None = None,
    n_boot: int = 200,
    digest: str | None = None,
) -> Path:
    """Render the report for the store at ``store_root`` into ``out_dir``; return ``index.html``'s path.

    ``expected`` (the planned rows: ``key, job_key, label, protocol, downstream, shots, ...``, see
    :func:`harness.plan.expected_rows`) and ``pruned`` (the planner's left-out combinations) fill
    the missing-runs table; ``multipliers`` chooses the data-multiplier pairs (default: every
    configuration with three or more sizes against the labelled source under supervised
    training); ``heatmap_shots`` the heatmap's shot counts (``None`` = full data; default: the
    fewest shots and full data); ``n_boot`` the multiplier's bootstrap draws.

    ``out_dir`` is created if needed; figures from an earlier report in the same folder are
    replaced. The page links its PNGs relatively, so the folder is self-contained. :data:`INPUTS_FILE`
    records ``digest`` (default: :func:`report_inputs` of these arguments, taken before anything is
    read), so a caller can skip rendering the same inputs again (:func:`report_is_current`).
    """
    if digest is None:
        options = {"expected": expected, "pruned": pruned, "multipliers": multipliers, "heatmap_shots": heatmap_shots}
        digest = report_inputs(store_root, title, n_boot=n_boot, **options)
    store = Store(store_root)
    out = Path(out_dir)
    _clear_figures(out)
    runs = _read(store, "runs")
    views = _read(store, "views")
    spectra = _read(store, "spectra")
    runs_ok = runs[runs["status"].astype(object) == "ok"] if not runs.empty else runs

    page_title = title or "transfer-bench report"
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def summary() -> str:
        if runs_ok.empty:
            return empty_note(f"No data yet for the {SUMMARY_PROTOCOL} protocol.")
        return _summary_section(runs_ok)

    def curation() -> str:
        return funnel_section(views, out) + _views_section(views)

    def missing_and_failed() -> str:
        return "<h3>Missing</h3>" + missing_section(runs, expected, pruned) + "<h3>Failed</h3>" + _failed_section(runs)

    builders: list[tuple[str, str, Callable[[], str]]] = [
        ("overview", "Overview", lambda: _overview(runs, views)),
        ("scaling", "Scaling curves", lambda: _scaling_section(runs_ok, out)),
        ("multiplier", "Data multiplier", lambda: multiplier_section(runs_ok, out, multipliers, n_boot=n_boot)),
        ("fewshot", "Few-shot versus full data", lambda: fewshot_section(runs_ok, out)),
        ("heatmap", "Configurations × downstream sets", lambda: heatmap_section(runs_ok, out, heatmap_shots)),
        (
            "calibration",
            "Calibration: measured gain against the world's declared similarity",
            lambda: calibration_section(runs_ok, out),
        ),
        ("summary", f"Summary table ({SUMMARY_PROTOCOL} protocol)", summary),
        (
            "checkpoints",
            "Mid-training checkpoints: feature extractor versus fine-tuning start",
            lambda: checkpoints_section(runs_ok, out),
        ),
        ("spectra", "Feature spectra", lambda: spectra_section(spectra, runs_ok, out)),
        ("convergence", "Convergence against training from scratch", lambda: convergence_section(store, runs_ok, out)),
        ("views", "Curation: funnels and label accuracy", curation),
        ("missing", "Missing and failed runs", missing_and_failed),
    ]
    sections = [(sid, name, _guarded(sid, build)) for sid, name, build in builders]
    return _write_page(out, _page(page_title, store.root, now, sections), digest)


def _write_page(out: Path, page: str, digest: str) -> Path:
    """``index.html`` replaced whole, then the record of the inputs it was rendered from and its figures."""
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    figures = sorted(p.name for prefix in FIGURE_PREFIXES for p in out.glob(f"{prefix}*.png"))
    (out / INPUTS_FILE).write_text(json.dumps({"digest": digest, "figures": figures}), encoding="utf-8")
    log.info("wrote report %s (%d figure(s))", index, page.count("<figure>"))
    return index


def _clear_figures(out: Path) -> None:
    """Create ``out`` if needed and remove the figures an earlier report left there (and its inputs'
    record, so a rendering cut short is never taken for a whole one)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / INPUTS_FILE).unlink(missing_ok=True)
    for prefix in FIGURE_PREFIXES:
        for old in out.glob(f"{prefix}*.png"):
            old.unlink()


def _scaling_section(runs_ok: pd.DataFrame, out: Path) -> str:
    """The scaling-curves section: the explanation, the seed note and one figure per protocol."""
    figures = _scaling_figures(runs_ok, out) if not runs_ok.empty else []
    if not figures:
        return empty_note("No data yet for scaling curves (no runs with status ok and a score).")
    fig_html = [
        "<p>Mean downstream <code>score</code> against pre-training samples (log scale), one line per "
        "(source, method); panels are downstream sets (rows) × shots per class (columns). Bands: 95% "
        "bootstrap intervals over pre-training seeds, then eval seeds within them. "
        "Dashed: random-initialisation floor (<code>method = 'none'</code>); dotted: chance.</p>"
    ]
    pre = final_checkpoints(runs_ok)
    pre = pre[(pre["method"].astype(object) != FLOOR_METHOD) & pre["pretrain_size"].notna()]
    seeds = pre.groupby(["source", "method", "curation", "label_noise", "backbone", "pretrain_size"], dropna=False)[
        "pretrain_seed"
    ].nunique(dropna=False)
    note = seed_note(seeds.astype(int).tolist())
    if note:
        fig_html.append(f'<p class="data">Bands of the pre-trained points: {html.escape(note)}.</p>')
    for protocol, names, note in figures:
        fig_html.append(f'<h3 id="scaling-{slug(protocol)}">{html.escape(protocol)}</h3>')
        if not names:
            fig_html.append(empty_note(f"No data yet to plot for {protocol}: {note}"))
        for name in names:
            fig_html.append(figure_html(name, f"scaling curves, {protocol}", note))
    return "\n".join(fig_html)


def _page(page_title: str, store_root: str, now: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole HTML page: head, navigation, the sections-without-data line and the sections."""
    no_data = [name for _, name, content in sections if _only_empty(content)]
    status = f'<p class="meta">Sections without data yet: {html.escape(", ".join(no_data))}.</p>' if no_data else ""
    nav = " ".join(f'<a href="#{sid}">{html.escape(name.split(":")[0])}</a>' for sid, name, _ in sections)
    body = "\n".join(
        f'<section id="{sid}"><h2>{html.escape(name)}</h2>\n{content}\n</section>' for sid, name, content in sections
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(page_title)}</title>
<style>
{_CSS}
</style>
</head>
<body>
<h1>{html.escape(page_title)}</h1>
<p class="meta">Store <code>{html.escape(store_root)}</code> · generated {now} · results schema v{SCHEMA_VERSION}</p>
<nav>{nav}</nav>
{status}
{body}
</body>
</html>
"""


def _only_empty(content: str) -> bool:
    """Whether a section holds nothing but notes that its data is missing."""
    has_data = any(mark in content for mark in ("<figure>", "<table", 'class="data"'))
    return not has_data and 'class="empty"' in content
