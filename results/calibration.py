"""The report's calibration section: does measured transfer rank like the world's declared truth?

The embedded world declares, from its generative process alone, how similar each source is to
each downstream set (``world.json``'s ``similarity[source][set]``; every evaluation row of a
world source on a world set carries it as ``declared_similarity``). A sound protocol measures
transfer gains that rank like it. For every *block* of the store with at least
:data:`MIN_SOURCES` world sources pre-trained at one (size, method, curation, label noise,
budget, backbone), the section plots, per (source, set), the measured gain over the random-init
floor of the same backbone (linear probe: the config's mean score minus the floor's on the same
set and shots) against the declared similarity, at 10 shots (or the few-shot count nearest to
it) and at full data, with Spearman's rank correlation and its 95% interval.

The interval resamples each (source, set) point with the two-level bootstrap of
:mod:`results.stats` (pre-training seeds, then eval seeds; a source's pre-training draw is
shared by its sets, the floor's eval draw is paired with the configurations' on each set) and
recomputes Spearman's rho per replicate. The declared similarity is never fitted to the
measurements: it is read from the rows as the world wrote it.

Most of the declared similarity differs between sets (every source resembles a set of everyday
photographs more than one of satellite images), and a set's gain also depends on how much the
encoder can improve on it at all. So the section gives a second rho: with each set's and each
source's mean removed from both the gains and the similarities (when every source of the block
has every set), it asks whether a pair's match, beyond the set's ease and the source's overall
quality, ranks like the declaration.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from results.plotting import (
    FLOOR_METHOD,
    empty_note,
    esc,
    figure_html,
    final_checkpoints,
    fmt_size,
    html_table,
    percent_scale,
    save_figure,
    shots_order,
    shots_title,
)
from results.stats import LEVEL, N_BOOT, hierarchical_bootstrap, percentile_interval, seed_note, spearman_draws

PROTOCOL = "linear"
MIN_SOURCES = 4
"""Sources with a declared similarity a block needs before its calibration is drawn."""
FEW_SHOTS = 10
"""The few-shot count of the calibration (the nearest available one when absent)."""
BLOCK_COLUMNS = ("pretrain_size", "method", "curation", "label_noise", "pretrain_epochs", "samples_budget", "backbone")
"""What the sources of one block share."""
MAX_BLOCKS = 4
"""Blocks drawn at most (the ones with the most sources first)."""
_FLOOR = "\x00random init"


@dataclass
class Calibration:
    """One block at one shot count: the points and Spearman's rho with its interval."""

    block: dict
    shot: float
    points: pd.DataFrame
    """``source, downstream, similarity, gain, lo, hi, n_pretrain_seeds`` per (source, set)."""
    rho: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    centred_rho: float = math.nan
    """Spearman's rho with every set's and every source's mean removed (NaN unless every source has every set)."""
    centred_lo: float = math.nan
    centred_hi: float = math.nan

    @property
    def verdict(self) -> str:
        return _verdict(self.rho, self.lo, self.hi)

    @property
    def centred_verdict(self) -> str:
        if math.isnan(self.centred_rho):
            return (
                "not computed: it needs every source on every set (at least 3 of each) "
                "and a similarity that varies beyond their means"
            )
        return _verdict(self.centred_rho, self.centred_lo, self.centred_hi)


def _verdict(rho: float, lo: float, hi: float) -> str:
    if math.isnan(rho):
        return "not computed: fewer than 3 points, or a constant similarity or gain"
    if math.isfinite(lo) and lo > 0:
        return "measured gains rank with the declared similarity (the interval excludes 0)"
    if math.isfinite(hi) and hi < 0:
        return "measured gains rank against the declared similarity (the interval excludes 0)"
    return "within noise: no evidence that measured gains follow the declared similarity"


def centre_sources_and_sets(values: np.ndarray, sources: pd.Series, sets: pd.Series) -> np.ndarray | None:
    """``values`` (..., N) over N (source, set) points with each source's and each set's mean
    removed (the grand mean added back: the interaction of a two-way table); None unless the
    points are every (source, set) of at least 3 sources and 3 sets, once each."""
    src, src_names = pd.factorize(sources)
    ds, ds_names = pd.factorize(sets)
    n_src, n_ds = len(src_names), len(ds_names)
    cells = src * n_ds + ds
    if n_src < 3 or n_ds < 3 or len(cells) != n_src * n_ds or len(np.unique(cells)) != len(cells):
        return None
    x = np.asarray(values, dtype=float)
    grid = np.empty(x.shape[:-1] + (n_src, n_ds))
    grid[..., src, ds] = x
    grid = (
        grid
        - grid.mean(axis=-1, keepdims=True)
        - grid.mean(axis=-2, keepdims=True)
        + grid.mean(axis=(-2, -1), keepdims=True)
    )
    return grid[..., src, ds]


def calibration_blocks(runs_ok: pd.DataFrame) -> tuple[list[tuple[dict, pd.DataFrame]], int]:
    """Blocks of final-checkpoint ``linear`` rows with a declared similarity that hold at least
    :data:`MIN_SOURCES` sources, most sources first; and the most sources any block holds."""
    if runs_ok.empty or "declared_similarity" not in runs_ok.columns:
        return [], 0
    df = final_checkpoints(runs_ok)
    df = df[
        (df["protocol"] == PROTOCOL)
        & df["score"].notna()
        & (df["method"].astype(object) != FLOOR_METHOD)
        & df["declared_similarity"].notna()
        & df["pretrain_size"].notna()
    ]
    if df.empty:
        return [], 0
    cols = [c for c in BLOCK_COLUMNS if c in df.columns]
    blocks = []
    for key, rows in df.groupby(cols, dropna=False, sort=False):
        blocks.append((dict(zip(cols, key if isinstance(key, tuple) else (key,))), rows))
    blocks.sort(key=lambda b: (-b[1]["source"].nunique(), -float(b[0]["pretrain_size"])))
    most = blocks[0][1]["source"].nunique() if blocks else 0
    return [b for b in blocks if b[1]["source"].nunique() >= MIN_SOURCES], int(most)


def _chosen_shots(rows: pd.DataFrame, floor: pd.DataFrame) -> list[float]:
    have = set(rows["shots"].map(shots_order)) & set(floor["shots"].map(shots_order))
    few = sorted(s for s in have if 0 < s < math.inf)
    chosen = [min(few, key=lambda s: (abs(s - FEW_SHOTS), s))] if few else []
    return chosen + ([math.inf] if math.inf in have else [])


def calibrate(
    rows: pd.DataFrame, floor: pd.DataFrame, shot: float, block: dict, n_boot: int = N_BOOT, seed: int = 0
) -> Calibration:
    """Gain over the floor per (source, set) at ``shot`` with intervals, and Spearman's rho
    between declared similarity and gain with its two-level bootstrap interval."""
    at = rows[rows["shots"].map(shots_order) == shot]
    fl = floor[floor["shots"].map(shots_order) == shot]
    at = at[at["downstream"].isin(set(fl["downstream"]))]
    fl = fl[fl["downstream"].isin(set(at["downstream"]))]
    empty = pd.DataFrame(columns=["source", "downstream", "similarity", "gain", "lo", "hi", "n_pretrain_seeds"])
    if at.empty:
        return Calibration(block, shot, empty)
    both = pd.concat([at.assign(_unit=at["source"].astype(str)), fl.assign(_unit=_FLOOR)], ignore_index=True)
    draws = hierarchical_bootstrap(both, ["_unit", "downstream"], strata=None, n_boot=n_boot, seed=seed)
    keys = list(draws.keys.itertuples(index=False, name=None))
    where = {k: i for i, k in enumerate(keys)}
    similarity = at.groupby(["source", "downstream"])["declared_similarity"].mean()
    records, gain_draws = [], []
    for (unit, ds_name), i in where.items():
        if unit == _FLOOR or (_FLOOR, ds_name) not in where:
            continue
        f = where[(_FLOOR, ds_name)]
        g = draws.draws[:, i] - draws.draws[:, f]
        lo, hi = percentile_interval(g, draws.level)
        records.append(
            {
                "source": unit,
                "downstream": ds_name,
                "similarity": float(similarity[(unit, ds_name)]),
                "gain": float(draws.estimate[i] - draws.estimate[f]),
                "lo": lo,
                "hi": hi,
                "n_pretrain_seeds": int(draws.n_pretrain[i]),
            }
        )
        gain_draws.append(g)
    points = pd.DataFrame(records, columns=empty.columns)
    result = Calibration(block, shot, points)
    if len(points) >= 3 and points["similarity"].nunique() > 1 and points["gain"].nunique() > 1:
        sim, gains = points["similarity"].to_numpy(), np.vstack([points["gain"].to_numpy(), np.array(gain_draws).T])
        result.rho, result.lo, result.hi = _rho_and_interval(sim, gains)
        # one centring of the similarity, the estimate's gains and every replicate's together
        centred = centre_sources_and_sets(np.vstack([sim, gains]), points["source"], points["downstream"])
        if centred is not None and np.ptp(centred[0]) > 0:
            result.centred_rho, result.centred_lo, result.centred_hi = _rho_and_interval(centred[0], centred[1:])
    return result


def _rho_and_interval(sim: np.ndarray, gains: np.ndarray) -> tuple[float, float, float]:
    """Spearman's rho of ``sim`` with ``gains[0]`` (the estimate) and the percentile interval over
    ``gains[1:]`` (the bootstrap replicates)."""
    rhos = spearman_draws(sim, gains)
    lo, hi = percentile_interval(rhos[1:], LEVEL)
    return float(rhos[0]), lo, hi


def _block_title(block: dict) -> str:
    parts = [str(block.get("method")), f"n={fmt_size(block.get('pretrain_size'))}"]
    if block.get("curation") not in (None, "none") and not pd.isna(block.get("curation")):
        parts.append(f"curation={block['curation']}")
    noise = block.get("label_noise")
    if noise is not None and not pd.isna(noise) and float(noise) > 0:
        parts.append(f"noise={float(noise):g}")
    budget = block.get("samples_budget")
    if budget is not None and not pd.isna(budget):
        parts.append(f"{fmt_size(budget)} samples seen")
    elif block.get("pretrain_epochs") is not None and not pd.isna(block.get("pretrain_epochs")):
        parts.append(f"{int(block['pretrain_epochs'])} epochs")
    if block.get("backbone") is not None and not pd.isna(block.get("backbone")):
        parts.append(str(block["backbone"]))
    return " · ".join(parts)


def _rho_text(c: Calibration) -> str:
    if math.isnan(c.rho):
        return "ρ not computed"
    return f"ρ = {c.rho:.2f} [{c.lo:.2f}, {c.hi:.2f}]"


_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]


def _figure(cals: list[Calibration], title: str, out_dir: Path, number: int, scaled: bool) -> str:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    sets = sorted({d for c in cals for d in c.points["downstream"]})
    sources = sorted({s for c in cals for s in c.points["source"]})
    colours = {d: f"C{i % 10}" for i, d in enumerate(sets)}
    markers = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(sources)}
    k = 100.0 if scaled else 1.0
    legend_rows = math.ceil((len(sets) + len(sources)) / 6)
    height = 3.6 + 0.22 * legend_rows
    fig = Figure(figsize=(5.0 * len(cals) + 0.6, height))
    axes = np.atleast_1d(fig.subplots(1, len(cals), squeeze=False)).ravel()
    for ax, c in zip(axes, cals):
        for rec in c.points.itertuples(index=False):
            ax.errorbar(
                [rec.similarity],
                [k * rec.gain],
                yerr=[[k * max(rec.gain - rec.lo, 0)], [k * max(rec.hi - rec.gain, 0)]],
                fmt=markers[rec.source],
                color=colours[rec.downstream],
                markersize=5,
                capsize=2,
                elinewidth=0.8,
                alpha=0.9,
            )
        ax.axhline(0, color="0.35", linestyle="--", linewidth=0.9)
        ax.set_title(f"{shots_title(c.shot)}: Spearman {_rho_text(c)}", fontsize=9)
        ax.set_xlabel("declared similarity (world.json)", fontsize=8)
        ax.set_ylabel("gain over random init" + (" (x100)" if scaled else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colours[d], marker="o", linestyle="", label=d) for d in sets]
    handles += [Line2D([], [], color="0.3", marker=markers[s], linestyle="", label=s) for s in sources]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    width = fig.get_size_inches()[0]
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 0.25 / width,
        top=1 - 0.7 / height,
        bottom=(0.65 + 0.22 * legend_rows) / height,
        wspace=0.28,
    )
    return save_figure(fig, out_dir, f"calibration_{number}.png")


def calibration_section(runs_ok: pd.DataFrame, out_dir: Path, n_boot: int = N_BOOT) -> str:
    """Measured gain over random init against the world's declared similarity, per block."""
    blocks, most = calibration_blocks(runs_ok)
    explain = (
        "<p>The embedded world declares how similar each source is to each downstream set, from its "
        "generative process alone (<code>world.json</code>, the rows' <code>declared_similarity</code>). "
        f"For every group of ≥{MIN_SOURCES} sources pre-trained at one size, method, curation, label noise, "
        f"budget and backbone: the {PROTOCOL} probe's gain over the random-init floor (config mean minus "
        "floor mean on the same set and shots), one point per (source, set), against that similarity, with "
        "Spearman's ρ. Intervals: 95% bootstrap over pre-training seeds, then eval seeds, per point; ρ is "
        "recomputed on every replicate. A protocol that measures transfer soundly ranks like the "
        "declaration. Most of the declared similarity differs between sets, and a set's gain also depends "
        "on how much the encoder can improve on it at all; so the table also gives ρ with every set's and "
        "every source's mean removed from both (when every source has every set): whether a pair's match, "
        "beyond the set's ease and the source's overall quality, ranks like the declaration.</p>"
    )
    if not blocks:
        return explain + empty_note(
            f"Too few sources for the calibration: it needs ≥{MIN_SOURCES} world sources (rows with a "
            f"declared_similarity) pre-trained at one size, method, curation, label noise and budget, evaluated "
            f"with {PROTOCOL}; the store has at most {most} at any one (configs/calibration.yaml has seven)."
        )
    df = final_checkpoints(runs_ok)
    floor_all = df[(df["method"].astype(object) == FLOOR_METHOD) & (df["protocol"] == PROTOCOL) & df["score"].notna()]
    parts, rows = [explain], []
    for number, (block, block_rows) in enumerate(blocks[:MAX_BLOCKS], start=1):
        block_parts, block_summary = _block_html(number, block, block_rows, floor_all, out_dir, n_boot)
        parts += block_parts
        rows += block_summary
    if rows:
        header = ["block", "shots", "points", "Spearman ρ", "95% interval", "verdict", "seeds"]
        header += ["ρ, set and source means removed", "95% interval", "verdict"]
        parts.append(html_table(header, rows))
    if len(blocks) > MAX_BLOCKS:
        parts.append(f"<p>{len(blocks) - MAX_BLOCKS} more block(s) with ≥{MIN_SOURCES} sources not drawn.</p>")
    return "\n".join(parts)


def _block_html(
    number: int, block: dict, block_rows: pd.DataFrame, floor_all: pd.DataFrame, out_dir: Path, n_boot: int
) -> tuple[list[str], list[list[str]]]:
    """One block's heading, figure and points (or a note saying what is missing), and its rows
    of the summary table, one per shot count; the floor is the random-init rows of the block's
    backbone (all of them when the block has none)."""
    title = _block_title(block)
    floor = (
        floor_all[floor_all["backbone"].astype(object) == block.get("backbone")]
        if "backbone" in block and not pd.isna(block.get("backbone"))
        else floor_all
    )
    shots = _chosen_shots(block_rows, floor)
    parts = [f"<h3>{esc(title)} ({block_rows['source'].nunique()} sources)</h3>"]
    if not shots:
        parts.append(
            empty_note(
                f"No random-init {PROTOCOL} rows at this block's shot counts: the gain needs "
                "the floor (downstream.random_init_floor: true)."
            )
        )
        return parts, []
    cals = [calibrate(block_rows, floor, shot, block, n_boot=n_boot) for shot in shots]
    cals = [c for c in cals if not c.points.empty]
    if not cals:
        parts.append(empty_note("No (source, set) has both configuration and random-init rows."))
        return parts, []
    name = _figure(cals, f"calibration: {title}", out_dir, number, percent_scale(block_rows["score"]))
    parts.append(
        figure_html(
            name,
            f"calibration {title}",
            "Points: gain over random init per (source, set), colour by set, marker by "
            "source, with 95% intervals; dashed: no gain.",
        )
    )
    rows = [
        [
            esc(title),
            html.escape(shots_title(c.shot)),
            str(len(c.points)),
            f"<b>{c.rho:.2f}</b>" if not math.isnan(c.rho) else "",
            f"[{c.lo:.2f}, {c.hi:.2f}]" if math.isfinite(c.lo) else "",
            esc(c.verdict),
            esc(seed_note(c.points["n_pretrain_seeds"].tolist())),
            f"<b>{c.centred_rho:.2f}</b>" if not math.isnan(c.centred_rho) else "",
            f"[{c.centred_lo:.2f}, {c.centred_hi:.2f}]" if math.isfinite(c.centred_lo) else "",
            esc(c.centred_verdict),
        ]
        for c in cals
    ]
    parts.append(_points_html(cals))
    return parts, rows


def _points_html(cals: list[Calibration]) -> str:
    """Every (source, set) point of a block, per shot count, in a folded table: similarity and gain."""
    details = "".join(
        f"<tr><td>{html.escape(shots_title(c.shot))}</td><td>{esc(r.source)}</td><td>{esc(r.downstream)}</td>"
        f"<td>{r.similarity:.3f}</td><td>{r.gain:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]</td></tr>"
        for c in cals
        for r in c.points.sort_values(["downstream", "similarity"]).itertuples(index=False)
    )
    return (
        f"<details><summary>the {sum(len(c.points) for c in cals)} points</summary><table><thead><tr>"
        "<th>shots</th><th>source</th><th>set</th><th>declared similarity</th>"
        f"<th>gain over random init, 95% interval</th></tr></thead><tbody>{details}</tbody></table>"
        "</details>"
    )
