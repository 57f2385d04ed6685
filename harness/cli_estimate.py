"""Rendering of a plan's cost estimate (:mod:`harness.estimate`) for ``tbench plan`` and
``tbench submit --dry-run``: one function, so both print the same tables."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.estimate import Estimate, KindCost, human_bytes, human_hours


def _row(t: Table, k: KindCost, label: str | None = None, style: str | None = None, wall: bool = True) -> None:
    t.add_row(
        label or k.kind,
        f"{k.jobs:,}",
        human_hours(k.gpu_hours),
        human_hours(k.cpu_hours),
        human_bytes(k.bytes),
        human_hours(k.longest_hours) if wall else "—",
        style=style,
    )


def print_estimate(console: Console, est: Estimate) -> None:
    """The estimate: per kind (evaluations also per protocol) and in total; storage; the figures
    used and where each came from; the assumptions."""
    tot = est.total
    read = f" (+{human_bytes(est.input_bytes)} of source shards read)" if est.inputs else ""
    t = Table(
        title=f"estimate of {est.spec!r}: {human_hours(tot.gpu_hours)} GPU-hours, "
        f"{human_hours(tot.cpu_hours)} CPU-hours, {human_bytes(tot.bytes)} written{read}"
    )
    for col in ("kind", "jobs", "GPU-hours", "CPU-hours", "storage", "longest job (h)"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for k in est.kinds:
        _row(t, k, wall=k.kind != "view")
        if k.kind == "eval" and len(est.protocols) > 1:
            for p in est.protocols:
                _row(t, p, label=f"  {p.kind}", style="dim")
    _row(t, tot, label="total", style="bold", wall=False)
    console.print(t)

    st = Table(title="storage: what the plan writes (and the source shards its views read)")
    for col in ("what", "bytes", "counted as"):
        st.add_column(col, justify="right" if col == "bytes" else "left")
    for what, n, how in est.storage:
        st.add_row(what, human_bytes(n), how)
    for name, samples, n in est.inputs:
        st.add_row(
            f"read: {name}", human_bytes(n), f"{samples:,} samples in its pool (input, not written)", style="dim"
        )
    console.print(st)

    ft = Table(
        title="figures used (measured: finished runs in the workdir; spec: resources.throughput; "
        "default: harness/estimate.py)"
    )
    for col in ("figure", "value", "unit", "source", "basis"):
        ft.add_column(col, justify="right" if col == "value" else "left", overflow="fold")
    for f in sorted(est.figures, key=lambda f: f.name):
        ft.add_row(f.name, f"{f.value:,.0f}" if f.value >= 10 else f"{f.value:.2f}", f.unit, f.source, escape(f.basis))
    console.print(ft)
    console.print("assumptions:", highlight=False)
    for a in est.assumptions:
        console.print(f"  - {a}", markup=False, highlight=False)
