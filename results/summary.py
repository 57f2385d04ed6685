"""The compact table ``tbench run`` prints: mean score per configuration and shot count."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table


def summary_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean headline score (x100) over sets and seeds, per (protocol, method, source, size) x shots."""
    ok = runs[runs["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["shots"] = ok["shots"].map(lambda s: "full" if pd.isna(s) else str(int(s)))
    ok["pretrain_size"] = ok["pretrain_size"].fillna(0).astype(int)
    ok["checkpoint_epoch"] = ok["checkpoint_epoch"].fillna(0).astype(int)
    index = ["protocol", "method", "source", "curation", "label_noise", "pretrain_size", "checkpoint_epoch"]
    table = ok.pivot_table(index=index, columns="shots", values="score", aggfunc="mean") * 100
    order = sorted((c for c in table.columns if c != "full"), key=int) + (["full"] if "full" in table.columns else [])
    table = table[order].round(1).reset_index()
    table["sets"] = ok.groupby(index)["downstream"].nunique().values
    return table.sort_values(index).reset_index(drop=True)


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
    title = (f"mean score x100 over sets and eval seeds ({len(runs)} rows"
             + (f", {n_failed} failed" if n_failed else "") + ")")
    t = Table(title=title)
    for c in frame.columns:
        t.add_column(str(c), justify="right" if c not in ("protocol", "method", "source", "curation") else "left")
    for _, row in frame.iterrows():
        t.add_row(*["" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v) for v in row])
    return t
