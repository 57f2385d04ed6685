"""The compact table ``tbench run`` prints: mean score per configuration and shot count, with
its 95% interval over pre-training seeds, then eval seeds (:mod:`results.stats`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.markup import escape
from rich.table import Table

from results.stats import N_BOOT, hierarchical_bootstrap, seed_note


def config_label(row: pd.Series) -> str:
    """A short name for a pre-training configuration, e.g. ``supervised laion/clean n=4000 noise=0.2``
    (the curation variant after a slash unless it is ``none``; no brackets: rich reads them as markup)."""
    if row["method"] == "none":
        return "random init"
    source = row["source"] if row["curation"] in ("none", None) else f"{row['source']}/{row['curation']}"
    label = f"{row['method']} {source} n={int(row['pretrain_size'])}"
    if row["label_noise"] and row["label_noise"] > 0:
        label += f" noise={row['label_noise']:g}"
    return label


_INDEX = ["protocol", "pre-training", "epoch"]


def summary_intervals(runs: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """One row per (protocol, configuration, checkpoint epoch, shots) of the ``ok`` rows: the mean
    score over sets (each set weighing the same) and its 95% interval (``estimate, lo, hi``),
    with ``n_pretrain_seeds``, ``n_eval_seeds`` and ``sets``; ``shots`` is text (``"full"``)."""
    ok = runs[runs["status"] == "ok"].copy() if "status" in runs.columns else runs.iloc[:0]
    ok = ok[ok["score"].notna()]
    if ok.empty:
        return pd.DataFrame()
    ok["shots"] = ok["shots"].map(lambda s: "full" if pd.isna(s) else str(int(s)))
    ok["pretrain_size"] = ok["pretrain_size"].fillna(0).astype(int)
    ok["epoch"] = ok["checkpoint_epoch"].fillna(0).astype(int)
    # label each configuration once, not each row
    codes = ok.groupby(
        ["method", "source", "curation", "pretrain_size", "label_noise"], dropna=False, sort=False
    ).ngroup()
    first = ~codes.duplicated()
    labels = {code: config_label(row) for code, (_, row) in zip(codes[first], ok[first].iterrows())}
    ok["pre-training"] = codes.map(labels)
    table = hierarchical_bootstrap(ok, [*_INDEX, "shots"], strata="downstream", n_boot=n_boot, seed=seed).table()
    return table.rename(columns={"n_sets": "sets"})


def summary_frame(runs: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0, scale: float = 100.0) -> pd.DataFrame:
    """The printed table: per (protocol, configuration, epoch), one text column per shot count
    (``"52.2 [50.9,53.4]"``: mean score x ``scale`` over sets and seeds with its 95% interval),
    ``seeds`` (the fewest pre-training x eval seeds behind a cell) and ``sets``."""
    long = summary_intervals(runs, n_boot, seed)
    if long.empty:
        return long
    long["cell"] = [_cell(e, lo, hi, scale) for e, lo, hi in zip(long["estimate"], long["lo"], long["hi"])]
    table = long.pivot(index=_INDEX, columns="shots", values="cell")
    order = sorted((c for c in table.columns if c != "full"), key=int) + (["full"] if "full" in table.columns else [])
    table = table[order].fillna("")
    grouped = long.groupby(_INDEX)
    table["seeds"] = (
        grouped["n_pretrain_seeds"].min().astype(int).astype(str)
        + "×"
        + grouped["n_eval_seeds"].min().astype(int).astype(str)
    )
    table["sets"] = grouped["sets"].max().astype(int)
    table.columns.name = None
    return table.reset_index().sort_values(_INDEX).reset_index(drop=True)


def _cell(estimate: float, lo: float, hi: float, scale: float) -> str:
    if pd.isna(estimate):
        return ""
    if pd.isna(lo) or pd.isna(hi):
        return f"{scale * estimate:.1f}"
    # no space inside the brackets: a narrow console wraps the cell between estimate and interval only
    return f"{scale * estimate:.1f} [{scale * lo:.1f},{scale * hi:.1f}]"


def results_table(store_root: str | Path, spec: str | None = None, n_boot: int = N_BOOT) -> Table | str:
    """A rich table of :func:`summary_frame` for one spec's rows (or all rows)."""
    from results.store import Store

    runs = Store(store_root).read("runs")
    if spec is not None:
        runs = runs[runs["spec"] == spec]
    frame = summary_frame(runs, n_boot)
    if frame.empty:
        return "no results in the store yet"
    n_failed = int((runs["status"] != "ok").sum())
    title = (
        f"mean score x100 over sets and seeds, by shots per class, with 95% intervals ({len(runs)} rows"
        + (f", {n_failed} failed" if n_failed else "")
        + ")"
    )
    # the linear floor has one initialisation per pre-training seed; `scratch` draws its weights from the eval seed
    pretrained = (frame["pre-training"] != "random init") | (frame["protocol"] != "scratch")
    caption = (
        "intervals: 95% bootstrap over pre-training seeds, then eval seeds, stratified by set; "
        "seeds: pre-training × eval seeds"
    )
    note = seed_note([int(s.split("×")[0]) for s in frame.loc[pretrained, "seeds"]])
    if note:
        caption += f"; {note.replace('intervals rest', 'rows rest')}"
    t = Table(title=title, caption=caption)
    shot_columns = set(frame.columns) - {*_INDEX, "seeds", "sets"}
    for c in frame.columns:
        # a shot column is never narrower than its intervals: narrow consoles wrap the labels instead
        width = 8 if c == "protocol" else max(len(v.split(" ")[-1]) for v in frame[c]) if c in shot_columns else None
        t.add_column(str(c), justify="left" if c in ("protocol", "pre-training") else "right", min_width=width)
    for _, row in frame.iterrows():
        t.add_row(*[escape("" if pd.isna(v) else str(v)) for v in row])
    return t
