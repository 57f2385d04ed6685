"""The report's analysis sections beyond the scaling curves.

Each ``*_section`` function reads DataFrames of the store (and sometimes the store itself for
its SQL views), draws its figures into ``out_dir`` and returns the section's HTML. A section
without data returns a ``p.empty`` note saying what it needs, never an error.

- :func:`fewshot_section`: how the spread between pre-training configurations changes with shots.
- :func:`heatmap_section`: configuration x downstream set at chosen shot counts.
- :func:`multiplier_section`: the data multiplier between two configurations, per shot count,
  from saturating power-law fits with bootstrap intervals; the pairs and the maths are in
  :mod:`results.multiplier`, this module only writes its tables, figures and sentences.
- :func:`checkpoints_section`: mid-training checkpoints as frozen feature extractors (linear)
  versus fine-tuning starts (Deng et al., ICCV 2023).
- :func:`spectra_section`: singular-value spectra of penultimate features, k80 and effective rank.
- :func:`convergence_section`: fine-tuning from pre-trained weights versus from scratch, per
  epoch (Pu et al., 2023), from the store's ``convergence`` and ``convergence_gaps`` views.
- :func:`funnel_section`: the curation funnels and label accuracy of the ``views`` table.
- :func:`missing_section`: planned rows without a result, against the spec's plan.
"""

from __future__ import annotations

import functools
import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from results.errors import ReportError
from results.multiplier import (
    EXTRAPOLATION,
    LABELLED_SOURCES,
    MIN_SIZES,
    Bounded,
    MultiplierPair,
    MultiplierResult,
    compute_multiplier,
    default_pairs,
    fmt_factor,
)
from results.plotting import (
    FLOOR_METHOD,
    SUMMARY_PROTOCOL,
    annotate,
    colour_map,
    config_label,
    empty_note,
    esc,
    figure_html,
    final_checkpoints,
    fmt_num,
    fmt_size,
    html_table,
    log_size_axis,
    marker,
    percent_scale,
    save_figure,
    shots_order,
    shots_title,
    slug,
)
from results.stats import Interval, difference_text, hierarchical_bootstrap, paired_difference, seed_note

FE_PROTOCOL = "linear"
"""The protocol that uses a checkpoint as a frozen feature extractor."""
FT_PROTOCOLS = ("finetune", "lp_ft")
"""Protocols that use a checkpoint as a fine-tuning start."""


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _layout(
    fig,
    *,
    left: float = 0.75,
    right: float = 0.25,
    top: float = 0.65,
    bottom: float = 0.6,
    wspace: float = 0.28,
    hspace: float = 0.5,
) -> None:
    """Fixed margins in inches (tight_layout measures every label and costs seconds per figure)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=wspace,
        hspace=hspace,
    )


def _style_panel(ax, title: str, xlabel: str, *, legend: int | None = None, integer_x: bool = False) -> None:
    """The common look of a small panel: title, x label, small ticks, a light grid, an optional legend."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    if integer_x:
        _integer_ticks(ax)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=legend)


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _pct(value: float, scaled: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{100 * value:.1f}" if scaled else f"{value:.3g}"


def _shot_cols(shots: Sequence[float]) -> list[str]:
    return ["full" if s == math.inf else str(int(s)) for s in shots]


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


# --------------------------------------------------------------------------- few-shot vs full


def fewshot_section(runs_ok: pd.DataFrame, out_dir: Path) -> str:
    """Mean score per configuration against shots, and the spread between configurations."""
    df = annotate(final_checkpoints(runs_ok))
    if df.empty:
        return empty_note("No data yet for the few-shot picture (no runs with a score).")
    protocols = [
        p
        for p in sorted(df["protocol"].dropna().unique())
        if p not in ("zeroshot", "scratch") and df.loc[df["protocol"] == p, "_shots"].nunique() >= 2
    ]
    if not protocols:
        return empty_note(
            "No data yet for the few-shot picture: it needs a protocol (e.g. linear) "
            "evaluated at two or more shot counts."
        )
    parts = [
        "<p>How far apart the pre-training configurations are at each shot count: mean score "
        "over the downstream sets every configuration has (each set weighs the same), bands: 95% intervals over "
        "pre-training seeds, then eval seeds. "
        "Configurations are compared at a matched pre-training size, the one most of them share.</p>"
    ]
    for protocol in protocols:
        parts.append(_fewshot_protocol(df[df["protocol"] == protocol], protocol, out_dir))
    return "\n".join(parts)


def _fewshot_protocol(d: pd.DataFrame, protocol: str, out_dir: Path) -> str:
    title = f'<h3 id="fewshot-{slug(protocol)}">{html.escape(protocol)}</h3>'
    is_floor = d["method"].astype(object) == FLOOR_METHOD
    pre = d[~is_floor & d["pretrain_size"].notna()]
    if pre.empty:
        return title + empty_note(f"No pre-trained rows yet for {protocol}.")
    sel, size_note = _fewshot_selection(pre)
    have = sel.groupby(["_line", "_shots"])["downstream"].agg(lambda s: frozenset(s))
    common = frozenset.intersection(*have.tolist()) if len(have) else frozenset()
    if not common:
        return title + empty_note(
            f"No downstream set has rows for every configuration at every shot count ({protocol})."
        )
    sel = sel[sel["downstream"].isin(common)]
    shots = sorted(sel["_shots"].unique())
    boot = hierarchical_bootstrap(sel, ["_line", "_shots"], strata="downstream").intervals()
    floor = d[is_floor & d["downstream"].isin(common)].groupby("_shots")["score"].mean()
    scaled = percent_scale(sel["score"])
    rows, spreads = _fewshot_rows(sel, shots, boot, scaled)
    name = _fewshot_figure(sel, shots, boot, floor, spreads, protocol, size_note, len(common), out_dir)
    unit = " (x100)" if scaled else ""
    table = html_table(
        [
            "shots",
            f"range{unit}",
            f"mean per-set range{unit}",
            f"std{unit}",
            "best",
            "worst",
            f"best − worst{unit}, 95% interval",
        ],
        rows,
    )
    caption = (
        f"{size_note}; sets: {', '.join(sorted(common))}. Range: best minus worst configuration mean; "
        "per-set range: the same within each set, averaged over sets. Bands and the best − worst interval: "
        "bootstrap over pre-training seeds, then eval seeds, stratified by set (paired on shared eval "
        "seeds); 'within noise' when the interval covers 0."
    )
    note = seed_note([iv.n_pretrain_seeds for iv in boot.values()])
    extra = f'<p class="data">Intervals: {html.escape(note)}.</p>' if note else ""
    return title + figure_html(name, f"few-shot versus full data, {protocol}", caption) + table + extra


def _fewshot_selection(pre: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The pre-trained rows compared: the size most configurations share, else each one's largest."""
    per_size = pre.groupby("pretrain_size")["_line"].nunique()
    size, n_lines = max(per_size.items(), key=lambda kv: (kv[1], kv[0]))
    if n_lines >= 2:
        return (
            pre[pre["pretrain_size"] == size],
            f"matched pre-training size n={fmt_size(size)} ({n_lines} configurations)",
        )
    largest = pre.groupby("_line")["pretrain_size"].transform("max")
    return (
        pre[pre["pretrain_size"] == largest],
        "each configuration at its largest size (no size is shared by two configurations)",
    )


def _fewshot_rows(sel: pd.DataFrame, shots: list, boot: dict, scaled: bool) -> tuple[list[list[str]], tuple[list, ...]]:
    """The table's rows (spreads, best and worst configuration, their paired gap) per shot count,
    and the three spreads per shot count for the figure."""
    line_mean = pd.Series({key: iv.estimate for key, iv in boot.items()})
    per_set = sel.groupby(["_line", "_shots", "downstream"])["score"].mean()
    rows, spread_range, spread_sets, spread_std = [], [], [], []
    for shot in shots:
        means = line_mean.xs(shot, level=1)
        rng = float(means.max() - means.min())
        within = per_set.xs(shot, level=1).groupby(level="downstream").agg(lambda s: s.max() - s.min())
        spread_range.append(rng)
        spread_sets.append(float(within.mean()))
        spread_std.append(float(means.std(ddof=0)))
        best, worst = means.idxmax(), means.idxmin()
        at = sel[sel["_shots"] == shot]
        gap = paired_difference(at[at["_line"] == best], at[at["_line"] == worst])
        rows.append(
            [
                html.escape(shots_title(shot)),
                _pct(rng, scaled),
                _pct(float(within.mean()), scaled),
                _pct(spread_std[-1], scaled),
                f"{esc(best.label)} ({_pct(float(means.max()), scaled)})",
                f"{esc(worst.label)} ({_pct(float(means.min()), scaled)})",
                esc(difference_text(gap, 100 if scaled else 1, 1 if scaled else 3)) if best != worst else "",
            ]
        )
    return rows, (spread_range, spread_sets, spread_std)


def _fewshot_figure(
    sel: pd.DataFrame,
    shots: list,
    boot: dict,
    floor: pd.Series,
    spreads: tuple[list, ...],
    protocol: str,
    size_note: str,
    n_sets: int,
    out_dir: Path,
) -> str:
    """Mean score per configuration against shots (with bands and the floor) beside the spreads; its file name."""
    spread_range, spread_sets, spread_std = spreads
    lines = sorted(set(sel["_line"]), key=lambda ln: ln.label)
    x = np.arange(len(shots))
    fig = _figure(11.0, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    colours = colour_map(lines)
    for line in lines:
        ivs = [boot.get((line, shot)) for shot in shots]
        mean = [iv.estimate if iv else math.nan for iv in ivs]
        ax1.plot(x, mean, color=colours[line], marker=marker(line.method), label=line.label, linewidth=1.5)
        ax1.fill_between(
            x,
            [iv.lo if iv else math.nan for iv in ivs],
            [iv.hi if iv else math.nan for iv in ivs],
            color=colours[line],
            alpha=0.15,
            linewidth=0,
        )
    if not floor.empty:
        ax1.plot(x, [floor.get(s, math.nan) for s in shots], color="0.35", linestyle="--", label="random init")
    ax1.set_title(f"mean score over {n_sets} set(s)", fontsize=10)
    ax2.plot(x, spread_range, marker="o", color="C3", label="range of the configurations' means")
    ax2.plot(x, spread_sets, marker="s", color="C0", linestyle="--", label="range within a set, mean over sets")
    ax2.plot(x, spread_std, marker="^", color="C2", linestyle=":", label="std of the configurations' means")
    ax2.set_title("spread between configurations", fontsize=10)
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.set_xticks(x, _shot_cols(shots))
        ax.set_xlabel("shots per class")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{protocol}: few-shot versus full data, {size_note}", fontsize=11)
    _layout(fig, top=0.75, bottom=0.65, wspace=0.22)
    return save_figure(fig, out_dir, f"fewshot_{slug(protocol)}.png")


# --------------------------------------------------------------------------- heatmap


def heatmap_section(
    runs_ok: pd.DataFrame, out_dir: Path, shots: Sequence[int | None] | None = None, protocol: str = SUMMARY_PROTOCOL
) -> str:
    """Configuration x downstream set at the chosen shot counts (default: the fewest shots and full data)."""
    df = annotate(final_checkpoints(runs_ok))
    d = df[df["protocol"] == protocol] if not df.empty else df
    if d.empty:
        return empty_note(f"No data yet for the heatmap: no {protocol} rows with a score.")
    available = sorted(d["_shots"].unique())
    if shots is None:
        few = [s for s in available if 0 < s < math.inf]
        wanted = sorted({*(few[:1]), *([math.inf] if math.inf in available else [])}) or available[:1]
    else:
        wanted = [shots_order(s) for s in shots]
    parts = [
        f"<p>Mean {html.escape(protocol)} score per pre-training configuration (last checkpoint) and "
        "downstream set. Colour: the score minus the set's mean over configurations (blue above, red below), "
        "so each column reads as a ranking; numbers are the scores.</p>"
    ]
    for shot in wanted:
        s = d[d["_shots"] == shot]
        if s.empty:
            parts.append(
                empty_note(
                    f"No {protocol} rows at {shots_title(shot)} (available: {', '.join(_shot_cols(available))})."
                )
            )
            continue
        parts.append(_heatmap(s, protocol, shot, out_dir))
    return "\n".join(parts)


def _heatmap(s: pd.DataFrame, protocol: str, shot: float, out_dir: Path) -> str:
    from matplotlib import colormaps

    labels = [config_label(line, size) for line, size in zip(s["_line"], s["pretrain_size"])]
    table = s.assign(_config=labels).pivot_table(index="_config", columns="downstream", values="score", aggfunc="mean")
    table["mean"] = table.mean(axis=1, skipna=True)
    table = table.sort_values("mean", ascending=False)
    values = table.to_numpy(dtype=float)
    centred = values - np.nanmean(values, axis=0, keepdims=True)
    vmax = float(np.nanmax(np.abs(centred))) if np.isfinite(centred).any() else 1.0
    scaled = percent_scale(s["score"])
    nrows, ncols = values.shape
    label_w = 0.075 * max(len(str(i)) for i in table.index) + 0.4
    fig = _figure(label_w + 0.62 * ncols + 1.2, 1.4 + 0.32 * nrows)
    ax = fig.add_axes(
        [
            label_w / (label_w + 0.62 * ncols + 1.2),
            1.05 / (1.4 + 0.32 * nrows),
            0.62 * ncols / (label_w + 0.62 * ncols + 1.2),
            0.32 * nrows / (1.4 + 0.32 * nrows),
        ]
    )
    image = ax.imshow(centred, cmap=colormaps["RdBu"], vmin=-(vmax or 1), vmax=vmax or 1, aspect="auto")
    for i in range(nrows):
        for j in range(ncols):
            if np.isfinite(values[i, j]):
                ax.text(
                    j,
                    i,
                    _pct(values[i, j], scaled),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(centred[i, j]) > 0.6 * (vmax or 1) else "black",
                )
    ax.set_xticks(range(ncols), [str(c) for c in table.columns], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(nrows), [str(i) for i in table.index], fontsize=8)
    ax.axvline(ncols - 1.5, color="black", linewidth=1.0)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    title = f"{protocol}, {shots_title(shot)}" + (" (score x100)" if scaled else "")
    ax.set_title(title, fontsize=10)
    name = save_figure(fig, out_dir, f"heatmap_{slug(protocol)}_{_shot_cols([shot])[0]}.png")
    return (
        f'<h3 id="heatmap-{slug(protocol)}-{_shot_cols([shot])[0]}">{html.escape(shots_title(shot))}</h3>'
        + figure_html(
            name,
            f"heatmap {protocol} {shots_title(shot)}",
            f"{nrows} configuration(s) x {ncols - 1} set(s); the last column is the mean over sets.",
        )
    )


# --------------------------------------------------------------------------- data multiplier


_WITHIN_NOISE = " The interval includes 1×: within noise, A and B are equally data-efficient."
"""The headline's closing sentence when a pair's interval includes 1×."""


def _range_text(lo: Bounded, hi: Bounded, text: Callable[[Bounded], str] = Bounded.text) -> str:
    """An interval ``"lo – hi"`` with each end written by ``text``; one bound followed by
    ``(whole interval)`` when both ends lie beyond the measured range on the same side."""
    if not lo.relation:
        return ""
    if lo.is_bound and lo.relation == hi.relation:  # the whole interval lies beyond the measured range
        return f"{text(lo)} (whole interval)"
    return f"{text(lo)} – {text(hi)}"


def _interval_text(r: MultiplierResult) -> str:
    """The multiplier's 95% interval as the report states it."""
    return _range_text(*r.shown()[1:])


def multiplier_section(
    runs_ok: pd.DataFrame, out_dir: Path, pairs: Sequence[MultiplierPair] | None = None, n_boot: int = 200
) -> str:
    """The data multiplier per pair and shot count, with fits and bootstrap intervals."""
    explain = (
        "<p>For configuration A against reference B: each curve (mean score over the sets both have, "
        "per pre-training size) is fitted with a saturating power law "
        "<code>score(n) = a − b·n<sup>−c</sup></code>; the multiplier is the factor of B's samples that A "
        "needs to reach B's score at n<sub>B</sub> (B's largest size unless set). Interval: 95% bootstrap "
        f"({n_boot} draws) over pre-training seeds, then eval seeds within them, stratified by set, both "
        f"curves refitted per draw. Where A's matched size lies more than {EXTRAPOLATION:g}× outside A's "
        "measured sizes the report gives a bound (“more than …”), not an extrapolated number. "
        "Choose pairs with <code>tbench report --multiplier 'source=laion,method=clip vs "
        "source=imagenet,method=supervised@3000'</code>. An existing model (<code>model=NAME</code>, "
        "either side) is one point at its declared size: the other side's curve is inverted at the model's "
        "score, and the multiplier is that matched size over the model's declared size (A's samples over "
        "B's, whichever side the model is), bootstrapped the same way (the model's eval seeds); a model "
        "that declares no size gets the matched size only.</p>"
    )
    if runs_ok.empty:
        return empty_note("No data yet for the data multiplier (no runs).")
    if pairs is None:
        pairs = default_pairs(runs_ok)
        if not pairs:
            return explain + empty_note(
                "No data yet for the data multiplier: by default it compares every configuration with "
                f">= {MIN_SIZES} pre-training sizes against the labelled source ({', '.join(LABELLED_SOURCES)}) "
                f"under supervised training with >= {MIN_SIZES} sizes; the store has no such pair "
                "(name one with --multiplier)."
            )
    parts = [explain]
    for index, pair in enumerate(pairs):
        try:
            results, desc_a, desc_b = compute_multiplier(runs_ok, pair, n_boot=n_boot)
        except ReportError as exc:
            parts.append(f"<h3>{esc(pair.label)}</h3>" + empty_note(str(exc)))
            continue
        draw = _model_multiplier_html if pair.model_side else _multiplier_html
        parts.append(draw(pair, results, desc_a, desc_b, index, out_dir))
    return "\n".join(parts)


def _matched_size_text(r: MultiplierResult) -> str:
    shown = r.shown()[0]
    if not shown.relation:
        return ""
    n = fmt_size(round(shown.value * r.at))
    return n if shown.relation == "=" else f"{shown.relation} {n}"


def _multiplier_headline(r: MultiplierResult) -> str:
    est, lo, hi = r.shown()
    where = f"to match B's score {fmt_num(r.target)} at n<sub>B</sub>={esc(fmt_size(r.at))}"
    interval = f"95% interval {esc(_interval_text(r))}"
    at = f"At {html.escape(shots_title(r.shot))}"
    if est.relation == "=":
        text = f"<b>{at}, A needs {esc(est.text())}× ({interval}) the samples of B</b> {where}."
    elif est.relation == ">":
        why = (
            "A's fitted curve levels off below that score"
            if math.isinf(r.estimate)
            else f"A's fit reaches that score only beyond {EXTRAPOLATION:g}× A's largest measured size "
            f"({esc(fmt_size(r.sizes_a[1]))}), further than the fit is trusted"
        )
        text = (
            f"<b>{at}, A needs more than {esc(fmt_factor(est.value))}× the samples of B</b> {where}: {why} "
            f"({interval})."
        )
    else:
        text = (
            f"<b>{at}, A needs less than {esc(fmt_factor(est.value))}× the samples of B</b> {where}: its fit "
            f"reaches that score below a tenth of A's smallest measured size ({esc(fmt_size(r.sizes_a[0]))}), "
            f"further than the fit is trusted ({interval})."
        )
    if math.isfinite(r.lo) and r.lo <= 1 <= r.hi:
        text += _WITHIN_NOISE
    return f"<p>{text}</p>"


def _multiplier_html(
    pair: MultiplierPair, results: list[MultiplierResult], desc_a: str, desc_b: str, index: int, out_dir: Path
) -> str:
    """A grid pair's headline, table and figure (both fitted curves per shot count)."""
    head = f"<h3>A = {esc(desc_a)} &nbsp;vs&nbsp; B = {esc(desc_b)} ({esc(pair.protocol)})</h3>"
    rows = []
    for r in results:
        est = r.shown()[0]
        rows.append(
            [
                html.escape(shots_title(r.shot)),
                esc(fmt_size(r.at) if math.isfinite(r.at) else ""),
                fmt_num(r.target),
                esc(_matched_size_text(r)),
                f"<b>{esc(est.text())}</b>" if est.relation else "",
                esc(_interval_text(r)),
                f"{fmt_num(r.fits[0].rmse, 4)} / {fmt_num(r.fits[1].rmse, 4)}" if r.fits else "",
                esc(r.note),
            ]
        )
    good = [r for r in results if not math.isnan(r.estimate)]
    headline = _multiplier_headline(good[-1]) if good else ""  # full data when present, else the most shots
    seeds = [iv.n_pretrain_seeds for r in results if r.points for side in r.points for iv in side.values()]
    note = seed_note(seeds)
    if note:
        headline += f'<p class="data">Intervals: {html.escape(note)}.</p>'
    table = html_table(
        [
            "shots",
            "n<sub>B</sub>",
            "B's score",
            "n<sub>A</sub> to match",
            "multiplier (×)",
            "95% interval (×)",
            "fit rmse A / B",
            "note",
        ],
        rows,
    )
    drawn = [r for r in results if r.points]
    if not drawn:
        return head + headline + table
    name = _pair_figure(drawn, _draw_multiplier_panel, f"A = {desc_a}   vs   B = {desc_b}", index, pair, out_dir)
    caption = (
        "Points: mean score over the common sets with 95% intervals (pre-training seeds, then eval seeds); "
        "lines: the fitted power laws; dotted: B's score at n_B (red dashed); blue dashed: the n at which "
        f"A's fit reaches it, drawn only within {EXTRAPOLATION:g}× of A's measured sizes (beyond, the "
        "multiplier is a bound)."
    )
    return head + headline + figure_html(name, f"data multiplier {desc_a} vs {desc_b}", caption) + table


def _draw_multiplier_panel(ax, r: MultiplierResult) -> None:
    """One shot count of a grid pair: both sides' points and fits, B's score at n_B and, when
    stated as a number, the n at which A's fit reaches it."""
    pa_, pb_ = r.points
    est = r.shown()[0]
    every = [*pa_, *pb_] + ([r.at] if math.isfinite(r.at) else [])
    if est.relation == "=":  # a bound is never drawn: the axis stays within 10x of the measured sizes
        every.append(est.value * r.at)
    lo_x, hi_x = min(every) / 1.5, max(every) * 1.5
    grid = np.logspace(math.log10(lo_x), math.log10(hi_x), 80)
    for (pts, colour, name), fit in zip(((pa_, "C0", "A"), (pb_, "C3", "B")), r.fits or (None, None)):
        xs = sorted(pts)
        ivs = [pts[x] for x in xs]
        ax.errorbar(
            xs,
            [iv.estimate for iv in ivs],
            yerr=[[max(iv.estimate - iv.lo, 0) for iv in ivs], [max(iv.hi - iv.estimate, 0) for iv in ivs]],
            fmt="o",
            color=colour,
            markersize=4,
            capsize=2,
            label=name,
        )
        if fit is not None:
            ax.plot(grid, fit(grid), color=colour, linewidth=1.2, alpha=0.8)
    if math.isfinite(r.target):
        ax.axhline(r.target, color="0.3", linestyle=":", linewidth=1)
        ax.axvline(r.at, color="C3", linestyle="--", linewidth=0.8)
        if est.relation == "=":
            ax.axvline(est.value * r.at, color="C0", linestyle="--", linewidth=0.8)
    ax.set_xlim(lo_x, hi_x)
    log_size_axis(ax)
    title = f"{shots_title(r.shot)}: not estimated"
    if est.relation:
        interval = _interval_text(r).replace(" (whole interval)", "")
        title = f"{shots_title(r.shot)}: {est.text()}×" + (f" [{interval}]" if "–" in _interval_text(r) else "")
    if est.is_bound:
        title += (
            "\nA's fit levels off below B's score"
            if math.isinf(r.estimate)
            else "\nA's fit matches B only "
            + ("beyond 10× its largest" if est.relation == ">" else "below a tenth of its smallest")
            + " size"
        )
    _style_panel(ax, title, "pre-training samples", legend=7)


def _pair_figure(
    drawn: list[MultiplierResult],
    draw_panel: Callable[[Any, MultiplierResult], None],
    title: str,
    index: int,
    pair: MultiplierPair,
    out_dir: Path,
) -> str:
    """One panel per shot count (``draw_panel(ax, result)``), three to a row, saved as the pair's
    ``multiplier_<index>_<protocol>.png``; returns the file name."""
    nrows, ncols = _grid(len(drawn), 3)
    fig = _figure(4.0 * ncols, 3.3 * nrows + 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, r in zip(axes, drawn):
        draw_panel(ax, r)
    for ax in axes[len(drawn) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    _layout(fig, top=0.75, bottom=0.6, wspace=0.3, hspace=0.55)
    return save_figure(fig, out_dir, f"multiplier_{index + 1}_{slug(pair.protocol)}.png")


def _samples_text(b: Bounded) -> str:
    """A matched sample count as text (three significant digits), with its bound's relation."""
    if not b.relation:
        return ""
    n = _fmt_samples(b.value)
    return n if b.relation == "=" else f"{b.relation} {n}"


def _fmt_samples(value: float) -> str:
    """``7.71k``, ``640k``, ``2.8M``, ``1,280M``: three significant digits up to thousands of millions."""
    if not math.isfinite(value):
        return "∞"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            v = value / scale
            return f"{v:,.0f}{unit}" if v >= 1000 else f"{float(f'{v:.3g}'):g}{unit}"
    return f"{float(f'{value:.3g}'):g}"


def _model_headline(r: MultiplierResult) -> str:
    """One sentence for a model pair: the fitted side's matched size, then the factor when the model has a size."""
    fitted, model = ("B", "A") if r.model_side == "A" else ("A", "B")
    n_est, n_lo, n_hi = r.shown_matched()
    at = f"At {html.escape(shots_title(r.shot))}"
    needs = {"=": "", ">": "more than ", "<": "fewer than "}[n_est.relation]
    interval = f"95% interval {esc(_range_text(n_lo, n_hi, _samples_text))}"
    why = ""
    if n_est.relation == ">":
        why = (
            f": {fitted}'s fitted curve levels off below it"
            if math.isinf(r.matched[0])
            else f": {fitted}'s fit reaches it only beyond {EXTRAPOLATION:g}× its largest measured size "
            f"({esc(fmt_size(r.sizes_fit[1]))}), further than the fit is trusted"
        )
    elif n_est.relation == "<":
        why = (
            f": {fitted}'s fit reaches it below a tenth of its smallest measured size "
            f"({esc(fmt_size(r.sizes_fit[0]))}), further than the fit is trusted"
        )
    matched = (
        f"{fitted} needs {needs}{esc(_fmt_samples(n_est.value))} samples to reach model {model}'s "
        f"score {fmt_num(r.target)}{why} ({interval})"
    )
    est = r.shown()[0]
    if not est.relation:
        return f"<p>{at}, <b>{matched}</b>; model {model} declares no pre-training size, so there is no factor.</p>"
    rel = {"=": "", ">": "more than ", "<": "less than "}[est.relation]
    text = (
        f"<b>{at}, A needs {rel}{esc(fmt_factor(est.value))}× the samples of B</b> "
        f"(95% interval {esc(_interval_text(r))}; model {model} declares n={esc(fmt_size(r.declared))}): {matched}."
    )
    if math.isfinite(r.lo) and r.lo <= 1 <= r.hi and math.isfinite(r.hi):
        text += _WITHIN_NOISE
    return f"<p>{text}</p>"


def _model_multiplier_html(
    pair: MultiplierPair, results: list[MultiplierResult], desc_a: str, desc_b: str, index: int, out_dir: Path
) -> str:
    """A model pair's headline, table and figure (the fitted curve, the model as a star or a line)."""
    fitted = "B" if pair.model_side == "A" else "A"
    head = f"<h3>A = {esc(desc_a)} &nbsp;vs&nbsp; B = {esc(desc_b)} ({esc(pair.protocol)})</h3>"
    rows = []
    for r in results:
        n_est, n_lo, n_hi = r.shown_matched()
        fit = next((f for f in r.fits if f is not None), None)
        rows.append(
            [
                html.escape(shots_title(r.shot)),
                fmt_num(r.target),
                esc(_samples_text(n_est)),
                esc(_range_text(n_lo, n_hi, _samples_text)),
                f"<b>{esc(r.shown()[0].text())}</b>" if r.shown()[0].relation else "",
                esc(_interval_text(r)),
                fmt_num(fit.rmse, 4) if fit else "",
                esc(r.note),
            ]
        )
    good = [r for r in results if r.shown_matched()[0].relation]
    headline = _model_headline(good[-1]) if good else ""
    table = html_table(
        [
            "shots",
            "model's score",
            f"n<sub>{fitted}</sub> to match",
            "95% interval (samples)",
            "multiplier (×)",
            "95% interval (×)",
            f"fit rmse {fitted}",
            "note",
        ],
        rows,
    )
    drawn = [r for r in results if r.points]
    if not drawn:
        return head + headline + table
    panel = functools.partial(_draw_model_panel, fitted=fitted)
    name = _pair_figure(drawn, panel, f"A = {desc_a}   vs   B = {desc_b}", index, pair, out_dir)
    caption = (
        f"Points: {fitted}'s mean score over the common sets with 95% intervals, and its fitted power law; "
        "the star: the model at its declared size (a dash-dot line when it declares none); dotted: the model's "
        f"score; blue dashed: the n at which {fitted}'s fit reaches it, drawn only within {EXTRAPOLATION:g}× "
        f"of {fitted}'s measured sizes (beyond, it is a bound)."
    )
    return head + headline + figure_html(name, f"data multiplier {desc_a} vs {desc_b}", caption) + table


def _draw_model_panel(ax, r: MultiplierResult, fitted: str) -> None:
    pts_f, pts_m = r.points if fitted == "A" else r.points[::-1]
    fit = next((f for f in r.fits if f is not None), None)
    n_est = r.shown_matched()[0]
    every = [*pts_f] + ([r.declared] if math.isfinite(r.declared) else [])
    if n_est.relation == "=":
        every.append(n_est.value)
    lo_x, hi_x = min(every) / 1.5, max(every) * 1.5
    xs = sorted(pts_f)
    ivs = [pts_f[x] for x in xs]
    ax.errorbar(
        xs,
        [iv.estimate for iv in ivs],
        fmt="o",
        color="C0",
        markersize=4,
        capsize=2,
        label=fitted,
        yerr=[[max(iv.estimate - iv.lo, 0) for iv in ivs], [max(iv.hi - iv.estimate, 0) for iv in ivs]],
    )
    if fit is not None:
        grid = np.logspace(math.log10(lo_x), math.log10(hi_x), 80)
        ax.plot(grid, fit(grid), color="C0", linewidth=1.2, alpha=0.8)
    (iv,) = pts_m.values()
    if math.isfinite(r.declared):
        ax.errorbar(
            [r.declared],
            [iv.estimate],
            yerr=[[max(iv.estimate - iv.lo, 0)], [max(iv.hi - iv.estimate, 0)]],
            fmt="*",
            color="C3",
            markersize=10,
            capsize=2,
            label="model",
        )
    else:
        ax.axhline(iv.estimate, color="C3", linestyle="-.", linewidth=1.1, label="model (no size)")
    ax.axhline(r.target, color="0.3", linestyle=":", linewidth=1)
    if n_est.relation == "=":
        ax.axvline(n_est.value, color="C0", linestyle="--", linewidth=0.8)
    ax.set_xlim(lo_x, hi_x)
    log_size_axis(ax)
    est = r.shown()[0]
    title = f"{shots_title(r.shot)}: " + (
        f"{est.text()}×" if est.relation else f"n={_samples_text(n_est)}" if n_est.relation else "not estimated"
    )
    _style_panel(ax, title, "pre-training samples", legend=7)


# --------------------------------------------------------------------------- mid-training checkpoints


def checkpoints_section(runs_ok: pd.DataFrame, out_dir: Path) -> str:
    """Checkpoints from the middle of pre-training: frozen features (linear) versus fine-tuning starts."""
    df = annotate(runs_ok)
    if df.empty:
        return empty_note("No data yet for mid-training checkpoints (no runs).")
    pre = df[
        (df["method"].astype(object) != FLOOR_METHOD) & df["pretrain_key"].notna() & df["checkpoint_epoch"].notna()
    ]
    # the runs evaluated at two or more epochs, pooled per configuration (its pre-training seeds):
    # a run evaluated at its last epoch only would shift that epoch's point and not the others'
    counts = pre.groupby("pretrain_key")["checkpoint_epoch"].nunique()
    pre = pre[pre["pretrain_key"].isin(counts[counts >= 2].index)]
    if pre.empty:
        return empty_note(
            "No data yet for mid-training checkpoints: evaluate a pre-training run at two or more "
            "checkpoint epochs (pretrain.checkpoint_epochs with downstream.checkpoint_epochs: all)."
        )
    pre = pre.assign(
        _config=[
            config_label(line, size) + ("" if pd.isna(epochs) else f" · {int(epochs)} epochs")
            for line, size, epochs in zip(pre["_line"], pre["pretrain_size"], pre["pretrain_epochs"])
        ]
    )
    configs = dict(tuple(pre.groupby("_config", sort=True)))  # label -> its rows, in label order
    note = seed_note([int(rows["pretrain_seed"].nunique()) for rows in configs.values()])
    parts = [
        "<p>Each pre-training configuration evaluated at several checkpoint epochs: as a frozen feature "
        f"extractor (<code>{FE_PROTOCOL}</code>, FE) and as the start of fine-tuning "
        f"(<code>{'</code>, <code>'.join(FT_PROTOCOLS)}</code>, FT). Stars mark each curve's best epoch; "
        "bands are 95% bootstrap intervals over the configuration's pre-training seeds (the runs "
        "evaluated at several epochs), then eval seeds"
        + (f" ({html.escape(note)})" if note else "")
        + ". Deng et al. (ICCV 2023) found FE can peak before the end of pre-training while FT keeps "
        "improving.</p>"
    ]
    table_rows: list[list[str]] = []
    summary = {"FE": [0, 0, 0], "FT": [0, 0, 0]}
    for index, config_rows in enumerate(configs.values()):
        figure, rows = _checkpoint_run(config_rows, index, summary, out_dir)
        if figure:
            parts.append(figure)
        table_rows += rows
    parts.append(_checkpoint_peaks(summary))
    parts.append(
        html_table(
            [
                "run",
                "set",
                "curve",
                "best epoch",
                "score",
                "last epoch",
                "score",
                "best − last, 95% interval (paired on pre-training and eval seeds)",
            ],
            table_rows,
        )
    )
    return "\n".join(parts)


def _checkpoint_run(
    run: pd.DataFrame, index: int, summary: dict[str, list[int]], out_dir: Path
) -> tuple[str, list[list[str]]]:
    """One configuration's figure (a panel per set, a curve per FE/FT protocol and shot count) as
    HTML, and its table rows; ``run`` holds the rows of its runs evaluated at several epochs (one
    per pre-training seed). Each curve is counted into ``summary`` (see :func:`_checkpoint_curve`).
    No figure and no rows when it has no curve with two or more epochs."""
    label = config_label(run["_line"].iloc[0], run["pretrain_size"].iloc[0])
    series, curve_rows = _checkpoint_series(run)
    sets = sorted({ds for (_, ds) in series})
    if not sets:
        return "", []
    nrows, ncols = _grid(len(sets), 4)
    fig = _figure(3.3 * ncols, 2.8 * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    names = sorted({name for (name, _) in series})
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    rows = []
    for ax, ds_name in zip(axes, sets):
        for name in names:
            points = series.get((name, ds_name))
            if not points:
                continue
            curve = curve_rows[(curve_rows["_curve"] == name) & (curve_rows["downstream"] == ds_name)]
            rows.append([esc(label), esc(ds_name), *_checkpoint_curve(ax, name, points, colours[name], curve, summary)])
        _style_panel(ax, ds_name, "checkpoint epoch", legend=6, integer_x=True)
    for ax in axes[len(sets) :]:
        ax.set_visible(False)
    fig.suptitle(f"{label}: score by checkpoint epoch", fontsize=10)
    _layout(fig, top=0.75, bottom=0.6, wspace=0.3, hspace=0.6)
    name = save_figure(fig, out_dir, f"checkpoints_{index + 1}.png")
    runs = sorted(run["pretrain_key"].unique())
    source = f"pre-training run{'s' if len(runs) > 1 else ''} {', '.join(runs)}"
    return f"<h3>{esc(label)}</h3>" + figure_html(name, f"checkpoints of {label}", source), rows


def _checkpoint_curve(
    ax, name: str, points: dict[int, Interval], colour: str, curve: pd.DataFrame, summary: dict[str, list[int]]
) -> list[str]:
    """Draw one curve (mean, band, a star at its best epoch) and return its table cells after run and set.

    ``summary[kind]`` (kind FE or FT) counts [curves peaking before the last epoch, curves, peaks
    whose paired best − last interval excludes 0]; ``curve`` holds the curve's rows on this set,
    for that paired interval."""
    epochs = sorted(points)
    means = [points[e].estimate for e in epochs]
    style = "-" if name.startswith("FE") else "--"
    ax.plot(epochs, means, style, color=colour, marker="o", markersize=3, label=name)
    ax.fill_between(
        epochs,
        [points[e].lo for e in epochs],
        [points[e].hi for e in epochs],
        color=colour,
        alpha=0.15,
        linewidth=0,
    )
    best = int(np.nanargmax(means))
    ax.plot([epochs[best]], [means[best]], marker="*", markersize=11, color=colour)
    kind = "FE" if name.startswith("FE") else "FT"
    gap_text = ""
    if epochs[best] < epochs[-1]:
        gap = paired_difference(
            curve[curve["checkpoint_epoch"] == epochs[best]],
            curve[curve["checkpoint_epoch"] == epochs[-1]],
            strata=None,
        )
        summary[kind][2] += gap.excludes_zero()
        gap_text = difference_text(gap, 1, 3)
    summary[kind][0] += epochs[best] < epochs[-1]
    summary[kind][1] += 1
    return [
        esc(name),
        str(epochs[best]),
        fmt_num(means[best]),
        str(epochs[-1]),
        fmt_num(means[-1]),
        esc(gap_text or fmt_num(means[best] - means[-1])),
    ]


def _checkpoint_peaks(summary: dict[str, list[int]]) -> str:
    """The sentence counting, for FE and FT, the curves that peak before their last epoch."""
    lines = [
        f"{kind} peaks before the last evaluated epoch in {n} of {total} (configuration, set) curve(s)"
        + (f", {beyond} of them by more than noise (the best − last interval excludes 0)" if n else "")
        for kind, (n, total, beyond) in summary.items()
        if total
    ]
    return f"<p>{html.escape('; '.join(lines))}.</p>"


def _checkpoint_series(run: pd.DataFrame) -> tuple[dict[tuple[str, str], dict[int, Interval]], pd.DataFrame]:
    """(curve name, set) -> epoch -> the score's interval over seeds (two-level bootstrap), and
    the rows behind them (with their curve name in ``_curve``); FE at full data and at the
    fewest shots, FT at every shot count."""
    parts = []
    fe = run[run["protocol"] == FE_PROTOCOL]
    few = [s for s in fe["_shots"].unique() if 0 < s < math.inf]
    chosen = ([min(few)] if few else []) + ([math.inf] if (fe["_shots"] == math.inf).any() else [])
    for shot in chosen:
        parts.append(fe[fe["_shots"] == shot].assign(_curve=f"FE {FE_PROTOCOL}, {_shot_cols([shot])[0]}"))
    for protocol in FT_PROTOCOLS:
        ft = run[run["protocol"] == protocol]
        for shot in sorted(ft["_shots"].unique()):
            parts.append(ft[ft["_shots"] == shot].assign(_curve=f"FT {protocol}, {_shot_cols([shot])[0]}"))
    if not parts:
        return {}, run.iloc[:0].assign(_curve=pd.Series(dtype=object))
    rows = pd.concat(parts)
    out: dict[tuple[str, str], dict[int, Interval]] = {}
    for (name, ds_name, epoch), iv in (
        hierarchical_bootstrap(rows, ["_curve", "downstream", "checkpoint_epoch"], strata=None).intervals().items()
    ):
        out.setdefault((name, ds_name), {})[int(epoch)] = iv
    return {k: v for k, v in out.items() if len(v) >= 2}, rows


# --------------------------------------------------------------------------- spectra


def spectra_section(spectra: pd.DataFrame, runs: pd.DataFrame, out_dir: Path) -> str:
    """Singular-value spectra of penultimate features: k80 and effective rank by checkpoint, and the spectra."""
    if spectra.empty:
        return empty_note("No data yet for feature spectra: the features jobs write them to the spectra table.")
    split = "train" if (spectra["split"] == "train").any() else str(spectra["split"].dropna().iloc[0])
    sp = spectra[spectra["split"] == split]
    labels = _run_labels(runs)
    sp = sp.assign(
        _run=[labels.get(k) or f"{m} · {s}" for k, m, s in zip(sp["pretrain_key"], sp["method"], sp["source"])]
    )
    summary = (
        sp.groupby(["_run", "pretrain_key", "downstream", "checkpoint_epoch"])[
            ["k80", "effective_rank", "feature_dim", "num_examples"]
        ]
        .first()
        .reset_index()
    )
    sets = sorted(summary["downstream"].unique())
    runs_here = sorted(summary["_run"].unique())
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(runs_here) <= 10 else "tab20"]
    colours = {r: cmap(i % cmap.N) for i, r in enumerate(runs_here)}
    parts = [
        f"<p>Singular values of the penultimate features of each checkpoint on each set ({html.escape(split)} "
        "split). k80: the smallest number of singular values holding 80% of their sum (Deng et al., ICCV 2023); "
        "effective rank: exp of the entropy of the normalised singular values. Top row: k80 by checkpoint "
        "epoch; bottom row: the spectrum of each run's last checkpoint, relative to its largest value.</p>"
    ]
    per_figure = 4
    for index in range(0, len(sets), per_figure):
        chunk = sets[index : index + per_figure]
        parts.append(_spectra_figure(summary, sp, chunk, colours, out_dir, index // per_figure + 1))
    rows = []
    for (run_label, ds_name), g in summary.groupby(["_run", "downstream"]):
        g = g.sort_values("checkpoint_epoch")
        rows.append(
            [
                esc(run_label),
                esc(ds_name),
                " · ".join(f"e{int(e)}: {int(k)}" for e, k in zip(g["checkpoint_epoch"], g["k80"])),
                " · ".join(f"e{int(e)}: {r:.1f}" for e, r in zip(g["checkpoint_epoch"], g["effective_rank"])),
                esc(g["feature_dim"].iloc[-1]),
            ]
        )
    parts.append(html_table(["run", "set", "k80 by epoch", "effective rank by epoch", "feature dim"], rows))
    return "\n".join(parts)


def _spectra_figure(
    summary: pd.DataFrame, sp: pd.DataFrame, sets: Sequence[str], colours: dict[str, Any], out_dir: Path, number: int
) -> str:
    fig = _figure(3.3 * max(len(sets), 2), 6.0)
    axes = fig.subplots(2, len(sets), squeeze=False)
    names: list[str] = []
    for c, ds_name in enumerate(sets):
        s = summary[summary["downstream"] == ds_name]
        for run_label, g in s.groupby("_run"):
            g = g.sort_values("checkpoint_epoch")
            axes[0][c].plot(
                g["checkpoint_epoch"], g["k80"], marker="o", markersize=3, color=colours[run_label], label=run_label
            )
        axes[0][c].set_title(ds_name, fontsize=9)
        axes[0][c].set_xlabel("checkpoint epoch", fontsize=8)
        _integer_ticks(axes[0][c])
        last = sp[sp["downstream"] == ds_name]
        last = last[last["checkpoint_epoch"] == last.groupby("pretrain_key")["checkpoint_epoch"].transform("max")]
        floor = 1.0
        for (run_label, _), g in last.groupby(["_run", "pretrain_key"]):
            sv = g.sort_values("rank_index")["singular_value"].to_numpy(dtype=float)
            if sv.size and sv[0] > 0:
                rel = sv / sv[0]
                # values below 1e-6 of the largest are numerical noise: keep them off the axis range
                rel = np.where(rel > 1e-6, rel, np.nan)
                floor = min(floor, float(np.nanmin(rel)))
                axes[1][c].plot(np.arange(1, sv.size + 1), rel, color=colours[run_label], linewidth=1.1)
        axes[1][c].set_xscale("log")
        axes[1][c].set_yscale("log")
        axes[1][c].set_ylim(max(floor, 1e-6) / 1.5, 1.5)
        axes[1][c].set_xlabel("rank", fontsize=8)
        for ax in axes[:, c]:
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
        for h_label in axes[0][c].get_legend_handles_labels()[1]:
            if h_label not in names:
                names.append(h_label)
    axes[0][0].set_ylabel("k80", fontsize=8)
    axes[1][0].set_ylabel("σ_i / σ_1 (last checkpoint)", fontsize=8)
    for c in range(len(sets), axes.shape[1]):
        axes[0][c].set_visible(False)
        axes[1][c].set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[n], marker="o", markersize=3, label=n) for n in names]
    legend_rows = math.ceil(len(names) / 2) if names else 0
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, frameon=False)
    _layout(fig, top=0.4, bottom=0.6 + 0.18 * legend_rows, left=0.85, wspace=0.3, hspace=0.45)
    name = save_figure(fig, out_dir, f"spectra_{number}.png")
    return figure_html(name, f"feature spectra: {', '.join(sets)}", f"sets: {', '.join(sets)}")


def _run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """pretrain_key -> configuration label (with size) from the runs rows."""
    df = annotate(runs)
    if df.empty:
        return {}
    first = df[df["pretrain_key"].notna()].drop_duplicates("pretrain_key")
    return {
        k: config_label(line, size)
        for k, line, size in zip(first["pretrain_key"], first["_line"], first["pretrain_size"])
    }


# --------------------------------------------------------------------------- convergence


def convergence_section(store: Any, runs_ok: pd.DataFrame, out_dir: Path) -> str:
    """Fine-tuning from pre-trained checkpoints against training from scratch, epoch by epoch."""
    # ORDER BY: DuckDB returns a view's rows in no fixed order, and the figure's lines and legend follow it
    conv = store.query("SELECT * FROM convergence ORDER BY downstream, protocol, method, key")
    if conv.empty:
        return empty_note(
            "No data yet for convergence: it needs finetune, lp_ft or scratch runs with per-epoch "
            "curves (the curves table)."
        )
    gaps = store.query("SELECT * FROM convergence_gaps ORDER BY downstream, protocol, method, key, epoch")
    labels = _run_labels(runs_ok)
    parts = [
        "<p>Validation score per epoch of fine-tuning (each run's selected learning rate) from pre-trained "
        "checkpoints against training from scratch with the same backbone, set, shots and seed, and the "
        "relative gaps <code>(pre-trained − scratch) / scratch</code> in validation accuracy and training "
        "loss (Pu et al., 2023). Only each run's last checkpoint is drawn.</p>"
    ]
    last = conv.groupby("pretrain_key", dropna=False)["checkpoint_epoch"].transform("max")
    conv = conv[conv["checkpoint_epoch"].isna() | (conv["checkpoint_epoch"] == last)]
    curves = store.query("SELECT key, epoch, val_score, train_loss FROM curves ORDER BY key, epoch")
    sets = sorted(conv["downstream"].dropna().unique())
    shown = sets[:6]
    run_names = {
        key: "scratch" if proto == "scratch" else f"{proto} ← {labels.get(pkey, pkey)}"
        for key, proto, pkey in zip(conv["key"], conv["protocol"], conv["pretrain_key"])
    }
    name = _convergence_figure(conv, gaps, curves, run_names, shown, out_dir)
    caption = f"{len(conv)} run(s) on {len(sets)} set(s)" + (
        f"; first {len(shown)} sets shown" if len(sets) > len(shown) else ""
    )
    if gaps.empty:
        caption += "; no scratch run matches a pre-trained one (same backbone, set, shots, seed), so no gaps"
    parts.append(figure_html(name, "convergence against scratch", caption))
    parts.append(_convergence_table(conv, run_names))
    return "\n".join(parts)


def _convergence_figure(
    conv: pd.DataFrame,
    gaps: pd.DataFrame,
    curves: pd.DataFrame,
    run_names: dict[str, str],
    shown: Sequence[str],
    out_dir: Path,
) -> str:
    """A row of three panels per shown set (validation score per epoch, the relative accuracy gap
    and the relative train-loss gap to scratch) with one legend of the runs; its file name."""
    fig = _figure(11.5, 2.7 * len(shown) + 0.9)
    axes = fig.subplots(len(shown), 3, squeeze=False)
    colours = {n: f"C{i % 10}" for i, n in enumerate(sorted(set(run_names.values()) - {"scratch"}))}
    keep_gaps = gaps[gaps["key"].isin(set(conv["key"]))] if not gaps.empty else gaps
    for r, ds_name in enumerate(shown):
        keys = conv.loc[conv["downstream"] == ds_name, "key"]
        g = keep_gaps[keep_gaps["downstream"] == ds_name] if not keep_gaps.empty else keep_gaps
        _convergence_row(axes[r], ds_name, keys, curves, g, run_names, colours, bottom=r == len(shown) - 1)
    handles, names = axes[0][0].get_legend_handles_labels()
    by_name = dict(zip(names, handles))
    for r in range(1, len(shown)):
        h, n = axes[r][0].get_legend_handles_labels()
        by_name.update(zip(n, h))
    fig.legend(
        list(by_name.values()), list(by_name), loc="lower center", ncol=min(3, len(by_name)), fontsize=7, frameon=False
    )
    _layout(fig, top=0.4, bottom=0.55 + 0.2 * math.ceil(len(by_name) / 3), wspace=0.25, hspace=0.55)
    return save_figure(fig, out_dir, "convergence_1.png")


def _convergence_row(
    row,
    ds_name: str,
    keys: pd.Series,
    curves: pd.DataFrame,
    gaps: pd.DataFrame,
    run_names: dict[str, str],
    colours: dict[str, str],
    *,
    bottom: bool,
) -> None:
    """One set's three panels: each run's validation curve (scratch black and dashed), then each
    pre-trained run's relative accuracy and train-loss gaps per epoch; the x label on the bottom row only."""
    for key in keys:
        c = curves[curves["key"] == key].sort_values("epoch")
        name = run_names[key]
        row[0].plot(
            c["epoch"],
            c["val_score"],
            color="black" if name == "scratch" else colours[name],
            linestyle="--" if name == "scratch" else "-",
            linewidth=1.3,
            label=name,
        )
    for key, part in gaps.groupby("key") if not gaps.empty else []:
        part = part.sort_values("epoch")
        row[1].plot(part["epoch"], part["rel_acc_gap"], color=colours[run_names[key]], marker="o", markersize=3)
        row[2].plot(part["epoch"], part["rel_loss_gap"], color=colours[run_names[key]], marker="o", markersize=3)
    for c_, title in enumerate(("validation score", "relative accuracy gap", "relative train-loss gap")):
        ax = row[c_]
        if c_:
            ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_title(f"{ds_name}: {title}", fontsize=9)
        _integer_ticks(ax)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if bottom:
            ax.set_xlabel("epoch", fontsize=8)


def _convergence_table(conv: pd.DataFrame, run_names: dict[str, str]) -> str:
    """A row per run: epochs, epochs to 95% of the final score, final and test scores, and the
    speed-up against the scratch run of the same backbone, set, shots and eval seed."""
    scratch_e95 = {
        (b, d, s if not pd.isna(s) else None, e): v
        for b, d, s, e, v, p in zip(
            conv["backbone"],
            conv["downstream"],
            conv["shots"],
            conv["eval_seed"],
            conv["epochs_to_95"],
            conv["protocol"],
        )
        if p == "scratch"
    }
    rows = []
    for rec in conv.sort_values(["downstream", "protocol", "key"]).to_dict("records"):
        shots = None if pd.isna(rec["shots"]) else rec["shots"]
        ref = scratch_e95.get((rec["backbone"], rec["downstream"], shots, rec["eval_seed"]))
        speedup = (
            ""
            if rec["protocol"] == "scratch" or not ref or not rec["epochs_to_95"]
            else f"{ref / rec['epochs_to_95']:.2g}×"
        )
        rows.append(
            [
                esc(rec["downstream"]),
                esc(run_names[rec["key"]]),
                esc(rec["epochs"]),
                esc(rec["epochs_to_95"]),
                fmt_num(rec["final_val_score"]),
                fmt_num(rec["test_score"]),
                speedup,
            ]
        )
    return html_table(
        ["set", "run", "epochs", "epochs to 95% of final", "final val", "test score", "speed-up vs scratch"], rows
    )


# --------------------------------------------------------------------------- curation funnels


def funnel_section(views: pd.DataFrame, out_dir: Path) -> str:
    """A bar per curated view: what each step removed and what was kept, with label accuracy."""
    if views.empty or views["funnel"].isna().all():
        return ""
    records = []
    for rec in views.sort_values(["source", "curation", "requested_size", "label_noise"], na_position="last").to_dict(
        "records"
    ):
        try:
            funnel = json.loads(rec["funnel"]) if isinstance(rec["funnel"], str) else {}
        except json.JSONDecodeError:
            funnel = {}
        if not isinstance(funnel, dict):
            continue
        records.append((rec, {str(k): float(v) for k, v in funnel.items() if isinstance(v, (int, float))}))
    if not records:
        return ""
    steps = list(dict.fromkeys(k for _, f in records for k in f))
    colours = {s: f"C{i % 10}" for i, s in enumerate(steps)}
    fig = _figure(10.0, 0.9 + 0.42 * len(records) + 0.3 * math.ceil((len(steps) + 1) / 5))
    ax = fig.add_subplot()
    ticks = []
    for i, (rec, funnel) in enumerate(records):
        kept = float(rec["size"]) if not pd.isna(rec["size"]) else 0.0
        left = 0.0
        ax.barh(i, kept, left=left, color="0.25", height=0.6)
        left += kept
        for step, removed in funnel.items():
            ax.barh(i, removed, left=left, color=colours[step], height=0.6)
            left += removed
        acc = rec.get("label_accuracy")
        noise = rec.get("label_noise")
        note = ("" if acc is None or pd.isna(acc) else f"label acc. {acc:.2f}") + (
            "" if noise is None or pd.isna(noise) or not noise else f", noise {noise:g}"
        )
        ax.text(left, i, f"  {note}", va="center", fontsize=7)
        ticks.append(
            f"{rec['source']}/{rec['curation']} n={fmt_size(rec['requested_size'])}"
            + ("" if noise is None or pd.isna(noise) or not noise else f" noise={noise:g}")
        )
    seen = {t: ticks.count(t) for t in ticks}
    ticks = [t if seen[t] == 1 else f"{t} ({str(rec['view_key'])[:6]})" for t, (rec, _) in zip(ticks, records)]
    ax.set_yticks(range(len(records)), ticks, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("samples of the pool", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(color="0.25", label="kept")] + [Patch(color=colours[s], label=f"removed by {s}") for s in steps]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)
    ax.set_title("curation funnels: kept (dark) and removed per step", fontsize=10)
    label_w = 0.065 * max(len(t) for t in ticks) + 0.3
    _layout(fig, left=label_w, right=1.6, top=0.45, bottom=0.55 + 0.2 * math.ceil((len(steps) + 1) / 5))
    name = save_figure(fig, out_dir, "funnel_1.png")
    return figure_html(name, "curation funnels", f"{len(records)} view(s); bars add up to the pool each view drew from")


# --------------------------------------------------------------------------- missing runs


def missing_section(runs: pd.DataFrame, expected: pd.DataFrame | None, pruned: Sequence[tuple[str, str]] | None) -> str:
    """Planned rows without any row in the store, grouped by evaluation job."""
    if expected is None:
        return empty_note(
            "Missing runs are found against a plan: give the spec (tbench report --spec SPEC) "
            "to list planned rows that have no result yet."
        )
    have_ok = set(runs.loc[runs["status"].astype(object) == "ok", "key"]) if not runs.empty else set()
    have_bad = set(runs.loc[runs["status"].astype(object) != "ok", "key"]) if not runs.empty else set()
    exp = expected.assign(
        _state=["ok" if k in have_ok else "failed" if k in have_bad else "missing" for k in expected["key"]]
    )
    counts = exp["_state"].value_counts()
    n_ok, n_failed, n_missing = (int(counts.get(state, 0)) for state in ("ok", "failed", "missing"))
    parts = [
        f'<p class="data">{len(exp)} planned row(s): {n_ok} ok, {n_failed} failed, '
        f"<b>{n_missing} missing</b> (no row in the store: not run yet, or interrupted).</p>"
    ]
    missing = exp[exp["_state"] == "missing"]
    if not missing.empty:
        rows = []
        for job_key, g in missing.groupby("job_key", sort=False):
            first = g.iloc[0]
            total = int((exp["job_key"] == job_key).sum())
            rows.append(
                [
                    esc(job_key),
                    esc(first.get("label", "")),
                    esc(first.get("protocol", "")),
                    esc(first.get("downstream", "")),
                    f"{len(g)} / {total}",
                    esc(", ".join(sorted({_shot_cols([shots_order(s)])[0] for s in g["shots"]}))),
                ]
            )
        parts.append(
            html_table(["eval job", "what", "protocol", "set", "missing / planned", "shots"], rows[:500], "missing")
        )
        if len(rows) > 500:
            parts.append(f"<p>… and {len(rows) - 500} more job(s).</p>")
    if pruned:
        items = "".join(f"<li>{esc(what)}: {esc(why)}</li>" for what, why in pruned)
        parts.append(
            f"<details><summary>{len(pruned)} combination(s) the planner left out on purpose</summary>"
            f"<ul>{items}</ul></details>"
        )
    return "\n".join(parts)
