"""The compact table ``tbench run`` prints: mean score per configuration and shot count."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table


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


def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean headline score (x100) over sets and seeds, per (protocol, configuration, epoch) x shots."""
    ok = runs[runs["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["shots"] = ok["shots"].map(lambda s: "full" if pd.isna(s) else str(int(s)))
    ok["pretrain_size"] = ok["pretrain_size"].fillna(0).astype(int)
    ok["epoch"] = ok["checkpoint_epoch"].fillna(0).astype(int)
    ok["pre-training"] = ok.apply(config_label, axis=1)
    index = ["protocol", "pre-training", "epoch"]
    table = ok.pivot_table(index=index, columns="shots", values="score", aggfunc="mean") * 100
    order = sorted((c for c in table.columns if c != "full"), key=int) + (["full"] if "full" in table.columns else [])
    table = table[order].round(1)
    table["sets"] = ok.groupby(index)["downstream"].nunique()
    return table.reset_index().sort_values(index).reset_index(drop=True)


def results_table(store_root: str | Path, spec: str | None = None) -> Table | str:
    """A rich table of :func:`summary_frame` for one spec's rows (or all rows)."""
    from results.store import Store

    runs = Store(store_root).read("runs")
    if spec is not None:
        runs = runs[runs["spec"] == spec]
    frame = summary_frame(runs)
    if frame.empty:
        return "no results in the store yet"
    n_failed = int((runs["status"] != "ok").sum())
    title = (f"mean score x100 over sets and eval seeds, by shots per class ({len(runs)} rows"
             + (f", {n_failed} failed" if n_failed else "") + ")")
    t = Table(title=title)
    for c in frame.columns:
        t.add_column(str(c), justify="left" if c in ("protocol", "pre-training") else "right",
                     no_wrap=c == "pre-training", min_width=8 if c == "protocol" else None)
    for _, row in frame.iterrows():
        t.add_row(*["" if pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v) for v in row])
    return t
