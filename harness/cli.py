"""``tbench``: a thin command line over the harness's typed functions."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness.spec import SpecError, load_spec

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="transfer-bench: how does pre-training data shape transfer?",
)
results_app = typer.Typer(no_args_is_help=True, help="Query, list and compact the results store.")
app.add_typer(results_app, name="results")
data_app = typer.Typer(no_args_is_help=True, help="Inspect pre-training sources and build curated views.")
app.add_typer(data_app, name="data")
console = Console()
if not console.is_terminal:  # piped or logged: rich would assume 80 columns and cut the tables
    console = Console(width=140)
err = Console(stderr=True)


def _load(spec_path: Path):
    try:
        return load_spec(spec_path)
    except SpecError as e:
        err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        raise typer.Exit(2) from None


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def plan(
    spec: Path = typer.Argument(..., help="The YAML spec."),
    workdir: str | None = typer.Option(None, help="Override the spec's workdir (a folder or s3://bucket/prefix)."),
    store: str | None = typer.Option(None, help="Override the spec's results store (a folder or s3://bucket/prefix)."),
    jobs: bool = typer.Option(False, "--jobs", help="List every job, not only the counts."),
) -> None:
    """Print the job graph: counts per kind, resource asks, what is already finished, what was pruned,
    and the estimate: GPU- and CPU-hours and storage per kind, with the figures and assumptions used."""
    from harness.plan import KINDS
    from harness.runner import done_keys, resolve_paths
    from results.store import Store

    s = _load(spec)
    p = _plan_or_exit(s)
    paths = resolve_paths(s, p, workdir=workdir, store=store)
    done = done_keys(p, paths, Store(paths.store).part_keys("runs"))
    t = Table(title=f"plan of {s.name!r}: {len(p.jobs)} jobs, {p.planned_rows()} result rows")
    for col in ("kind", "jobs", "done", "to run", "resources per job", "rows"):
        t.add_column(col, justify="right" if col not in ("kind", "resources per job") else "left")
    for kind in KINDS:
        js = p.of_kind(kind)
        if not js:
            continue
        res = sorted(
            {
                ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in j.resources.items())
                for j in js
            }
        )
        n_done = sum(j.key in done for j in js)
        t.add_row(
            kind,
            str(len(js)),
            str(n_done),
            str(len(js) - n_done),
            "; ".join(res),
            str(sum(j.rows for j in js)) if kind == "eval" else "",
        )
    console.print(t)
    console.print(f"workdir {paths.workdir}\nstore   {paths.store}\nworld   {paths.world}")
    if p.pruned:
        pt = Table(title=f"pruned combinations ({len(p.pruned)})")
        pt.add_column("what")
        pt.add_column("why")
        seen = set()
        for what, why in p.pruned:
            if (what, why) not in seen:
                seen.add((what, why))
                pt.add_row(what, why)
        console.print(pt)
    _views_table(p, paths)
    from harness.cli_estimate import print_estimate
    from harness.estimate import estimate

    print_estimate(console, estimate(p, paths.workdir))
    if jobs:
        jt = Table(title="jobs")
        for col in ("kind", "key", "state", "what"):
            jt.add_column(col)
        for j in p.jobs.values():
            jt.add_row(j.kind, j.key, "done" if j.key in done else "todo", j.label)
        console.print(jt)


def _views_table(p, paths) -> None:
    """Each view of the plan: its curation steps and, once built, its funnel (step -> removed)."""
    import json

    from harness.core.artifacts import job_dir

    views = p.of_kind("view")
    if not views:
        return
    vt = Table(title=f"views ({len(views)}): the funnel of each built view, step -> samples removed")
    for col in ("source", "curation", "size", "noise", "pool", "funnel", "kept", "label acc.", "achieved noise"):
        vt.add_column(col, justify="right" if col in ("size", "noise", "pool", "kept") else "left")
    for j in views:
        c = j.config
        mpath = job_dir(paths.workdir, "view", j.key) / "manifest.json"
        noise = f"{c['label_noise']:g}" + (f" {c['noise_model']}" if c.get("noise_model") else "")
        if mpath.is_file():
            m = json.loads(mpath.read_text())
            funnel = ", ".join(f"{k} -{v}" for k, v in m["funnel"].items())
            acc = "" if m.get("label_accuracy") is None else f"{m['label_accuracy']:.3f}"
            ach = "" if m.get("achieved_noise") is None else f"{m['achieved_noise']:.3f}"
            vt.add_row(
                j.coords["source"],
                c["curation_name"],
                str(c["size"]),
                noise,
                str(m["pool_size"]),
                funnel,
                str(m["size"]),
                acc,
                ach,
            )
        else:
            steps = " -> ".join(s["step"] for s in c["curation"]) or "(no steps)"
            vt.add_row(
                j.coords["source"], c["curation_name"], str(c["size"]), noise, "", f"not built: {steps}", "", "", ""
            )
    console.print(vt)


@app.command()
def run(
    spec: Path = typer.Argument(..., help="The YAML spec."),
    store: str | None = typer.Option(None, help="Override the spec's results store (a folder or s3://bucket/prefix)."),
    workdir: str | None = typer.Option(None, help="Override the spec's workdir (a folder or s3://bucket/prefix)."),
    address: str | None = typer.Option(None, help="Ray address of an existing cluster (default: local Ray)."),
    num_cpus: int | None = typer.Option(None, help="CPUs for local Ray (default: all)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress display."),
) -> None:
    """Run the spec on Ray (local or an existing cluster); finished jobs are skipped."""
    _run_and_print(
        _load(spec), store=store, workdir=workdir, address=address, num_cpus=num_cpus, progress=not no_progress
    )


def _plan_or_exit(s):
    """The spec's plan; an existing model whose weights are missing exits with its error."""
    from harness.plan import make_plan
    from pretrain.existing import ModelError

    try:
        return make_plan(s)
    except ModelError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def _run_and_print(
    s, *, store: str | None, workdir: str | None, address: str | None, num_cpus: int | None, progress: bool
) -> None:
    """``tbench run``'s body: run the spec, print what ran and the results table."""
    from harness.plan import KINDS
    from harness.runner import resolve_paths
    from harness.runner import run as run_spec
    from pretrain.existing import ModelError
    from results.summary import results_table

    _plan_or_exit(s)
    try:
        summary = run_spec(s, workdir=workdir, store=store, address=address, num_cpus=num_cpus, progress=progress)
    except ModelError as e:  # an existing model that cannot be used: found before any work
        err.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    ran = sum(summary.ran.values())
    console.print(
        f"{summary.planned_jobs} jobs planned, {summary.already_done} already finished, {ran} ran"
        f" ({', '.join(f'{k} {summary.ran[k]}' for k in KINDS if summary.ran[k]) or 'none'}), "
        f"{len(summary.failed)} failed; {summary.rows_written} rows written in {summary.seconds:.1f}s"
        + (
            f"; {summary.started_early} started on a mid-training checkpoint while its run trained on"
            if summary.started_early
            else ""
        )
    )
    paths = resolve_paths(s, _plan_or_exit(s), workdir=workdir, store=store)
    console.print(results_table(paths.store, s.name))
    if summary.failed:
        err.print(f"[bold red]{len(summary.failed)} job(s) failed[/]; their rows carry status='failed' and the error:")
        for key, e in list(summary.failed.items())[:10]:
            err.print(f"  {key}: {e}", highlight=False)
        raise typer.Exit(1)


@app.command("eval")
def eval_models(
    models: list[str] = typer.Argument(
        ...,
        help="Models as [NAME=]FRAMEWORK:ARCH:WEIGHTS, e.g. "
        "timm:resnet50:/w/r50.safetensors, open_clip:ViT-B-32:laion2b_s34b_b79k, "
        "timm:resnet50.a1_in1k:hf-hub:timm/resnet50.a1_in1k.",
    ),
    sets: str = typer.Option(..., help="Downstream sets, comma-separated (e.g. dtd,digits,real.cifar100)."),
    protocols: str = typer.Option(
        "linear", help="Protocols, comma-separated (linear, finetune, lp_ft, zeroshot: open_clip models only)."
    ),
    shots: str = typer.Option("full", help="Shot counts, comma-separated, 'full' for full data (zeroshot: 0)."),
    eval_seeds: str = typer.Option("0", help="Evaluation seeds, comma-separated."),
    name: str = typer.Option("eval", help="The spec's name (the rows' spec column)."),
    store: str | None = typer.Option(
        None,
        help="The results store (default tbench-out/NAME/store); the store of a grid's run puts the models beside it.",
    ),
    workdir: str | None = typer.Option(None, help="The workdir (default tbench-out/NAME/work)."),
    world_dir: str | None = typer.Option(None, help="An embedded world already on disk (default: in the workdir)."),
    world_scale: float = typer.Option(1.0, help="The embedded world's scale (as the grid's spec has it)."),
    address: str | None = typer.Option(None, help="Ray address of an existing cluster (default: local Ray)."),
    num_cpus: int | None = typer.Option(None, help="CPUs for local Ray (default: all)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress display."),
) -> None:
    """Evaluate existing models (open_clip, timm; a tag, a local file or hf-hub:org/name) without writing a
    spec: the spec built is saved next to the store (tbench run on it repeats the run); finished jobs are skipped."""
    from harness.eval_models import eval_spec, save_spec, saved_spec_path
    from harness.spec import parse_spec

    try:
        data = eval_spec(
            models,
            sets=sets,
            protocols=protocols,
            shots=shots,
            eval_seeds=eval_seeds,
            name=name,
            store=store,
            workdir=workdir,
            world_dir=world_dir,
            world_scale=world_scale,
        )
        s = parse_spec(data, "tbench eval")
    except (SpecError, ValueError) as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    path = save_spec(data, saved_spec_path(data))
    console.print(f"spec saved to {path} (tbench run {path} repeats this run)", highlight=False)
    _run_and_print(s, store=None, workdir=None, address=address, num_cpus=num_cpus, progress=not no_progress)


@app.command()
def world(
    out: Path = typer.Option(Path("tbench-out/world"), help="Where to write the world."),
    seed: int = typer.Option(0),
    scale: float = typer.Option(1.0, help="Multiplies every pool and split size."),
) -> None:
    """Write the embedded world (sources as webdataset shards, downstream sets as HF datasets)."""
    from curation.world import build_world

    info = build_world(out, seed=seed, scale=scale)
    console.print(f"world v{info.get('version')} (seed {seed}, scale {scale}) at {out}")


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(
        ...,
        help="A registered source (world: cc3m, laion, ...; real: "
        "real.laion, ...) or a folder, brace pattern, glob or URL of shards.",
    ),
    world: Path = typer.Option(Path("tbench-out/world"), help="The embedded world's root (world sources)."),
    data_dir: Path | None = typer.Option(
        None, help="The data dir for real sources (default: $TBENCH_DATA, else ~/tbench-data)."
    ),
    out: Path | None = typer.Option(
        None, help="Where to write inspect.json and contact_sheet.png (default: tbench-out/inspect/<source>)."
    ),
    sample: int = typer.Option(64, min=0, help="Images on the contact sheet (seeded random)."),
    max_samples: int | None = typer.Option(None, min=1, help="Scan at most this many samples."),
    seed: int = typer.Option(0, help="Seed of the contact sheet's draw."),
) -> None:
    """Counts, field coverage, caption/size/similarity distributions and a contact sheet of a source."""
    import re

    from rich.markup import escape

    from curation.inspect import inspect_source, report_tables
    from curation.sources import SourceError, open_source
    from harness.core.registry import UnknownNameError

    try:
        opened = open_source(source, world_root=world, data_dir=data_dir)
        if out is None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source.strip("/")).strip("_") or "source"
            out = Path("tbench-out/inspect") / slug[-80:]
        result = inspect_source(
            opened, out, sample=sample, seed=seed, max_samples=max_samples, progress=console.is_terminal
        )
    except (SourceError, UnknownNameError, ValueError) as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    for t in report_tables(result):
        console.print(t)


@data_app.command("curate")
def data_curate(
    spec: Path = typer.Argument(..., help="The YAML spec."),
    workdir: str | None = typer.Option(None, help="Override the spec's workdir (a folder or s3://bucket/prefix)."),
    store: str | None = typer.Option(None, help="Override the spec's results store (a folder or s3://bucket/prefix)."),
    address: str | None = typer.Option(None, help="Ray address of an existing cluster (default: local Ray)."),
    num_cpus: int | None = typer.Option(None, help="CPUs for local Ray (default: all)."),
) -> None:
    """Build the spec's curated views only (world and view jobs); their funnels land in the views table."""
    from harness.plan import make_plan
    from harness.runner import resolve_paths
    from harness.runner import run as run_spec

    s = _load(spec)
    summary = run_spec(
        s, workdir=workdir, store=store, address=address, num_cpus=num_cpus, progress=False, kinds=("world", "view")
    )
    p = make_plan(s)
    paths = resolve_paths(s, p, workdir=workdir, store=store)
    console.print(f"{summary.ran.get('view', 0)} view(s) built, {len(summary.failed)} failed in {summary.seconds:.1f}s")
    _views_table(p, paths)
    if summary.failed:
        for key, e in list(summary.failed.items())[:10]:
            err.print(f"  {key}: {e}", highlight=False)
        raise typer.Exit(1)


@results_app.command("query")
def results_query(
    sql: str = typer.Argument(..., help="SQL over the tables runs, curves, spectra, views."),
    store: str = typer.Option(
        "tbench-out/quickstart/store", help="The results store: a directory or a URI (s3://bucket/prefix)."
    ),
    format: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet."),
    out: Path | None = typer.Option(None, help="Output file (required for parquet)."),
) -> None:
    """Answer SQL over the store with DuckDB."""
    from results.query import format_frame
    from results.store import Store

    try:
        df = Store(store).query(sql)
        rendered = format_frame(df, format, out=out)
    except (ValueError, RuntimeError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    if rendered is not None:
        console.print(rendered) if not isinstance(rendered, str) else sys.stdout.write(rendered + "\n")


@results_app.command("ls")
def results_ls(
    store: str = typer.Option(
        "tbench-out/quickstart/store", help="The results store: a directory or a URI (s3://bucket/prefix)."
    ),
) -> None:
    """Per table: part files (loose and compacted), keys and rows; per spec: runs, failed, last write."""
    from results.schema import TABLES
    from results.store import Store

    try:
        st = Store(store)
        t = Table(title=f"results store {store}")
        for col in ("table", "part files", "compacted files", "keys", "rows"):
            t.add_column(col, justify="left" if col == "table" else "right")
        for table in TABLES:
            n_rows = st.query(f'SELECT count(*) AS n FROM "{table}"')["n"].iloc[0]
            t.add_row(
                table,
                str(len(st.part_files(table))),
                str(len(st.compacted_files(table))),
                str(len(st.part_keys(table))),
                str(int(n_rows)),
            )
        specs = st.query(
            "SELECT spec, count(*) AS rows, count(*) FILTER (WHERE status = 'failed') AS failed, "
            "max(created_at) AS last_created_at FROM runs GROUP BY spec ORDER BY spec NULLS LAST"
        )
    except (ValueError, RuntimeError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    console.print(t)
    if len(specs):
        sp = Table(title="runs per spec")
        for col in ("spec", "rows", "failed", "last created_at"):
            sp.add_column(col, justify="left" if col in ("spec", "last created_at") else "right")
        import pandas as pd

        for row in specs.itertuples(index=False):
            last = row.last_created_at
            sp.add_row(
                "(none)" if pd.isna(row.spec) else str(row.spec),
                str(int(row.rows)),
                str(int(row.failed)),
                "" if pd.isna(last) else str(last),
            )
        console.print(sp)


@results_app.command("compact")
def results_compact(
    store: str = typer.Option(
        "tbench-out/quickstart/store", help="The results store: a directory or a URI (s3://bucket/prefix)."
    ),
    table: str | None = typer.Option(None, help="Compact only this table (default: all)."),
    min_parts: int = typer.Option(2, help="Leave a table alone with fewer loose parts than this."),
    target_rows: int | None = typer.Option(None, help="Rows per compacted file."),
) -> None:
    """Merge small part files into larger compacted files (safe while others read and write)."""
    from results.schema import TABLES
    from results.store import DEFAULT_TARGET_ROWS, Store

    try:
        st = Store(store)
        tables = [table] if table is not None else list(TABLES)
        reports = [
            st.compact(name, min_parts=min_parts, target_rows=target_rows or DEFAULT_TARGET_ROWS) for name in tables
        ]
    except (ValueError, RuntimeError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    for r in reports:
        kept = f", {len(r['parts_kept'])} re-written meanwhile and kept" if r["parts_kept"] else ""
        console.print(
            f"{r['table']}: {r['parts_merged']} part(s) with {r['rows']} row(s) merged into "
            f"{len(r['files_written'])} file(s), {r['parts_removed']} part(s) removed{kept}",
            highlight=False,
        )


@app.command()
def report(
    store: str = typer.Option(
        "tbench-out/quickstart/store",
        help="The results store (a folder, or an object-storage URI such as s3://bucket/store).",
    ),
    out: Path = typer.Option(Path("tbench-out/quickstart/report"), help="Where to write index.html."),
    spec: Path | None = typer.Option(None, help="The spec whose plan the missing-runs table is checked against."),
    multiplier: list[str] | None = typer.Option(
        None,
        "--multiplier",
        "-m",
        help="A data-multiplier pair 'A vs B[@N]', each side column=value pairs, e.g. "
        "'source=laion,method=supervised vs source=imagenet,method=supervised@3000'; either side may be "
        "an existing model, model=NAME, compared at its declared size (repeatable; default: every "
        "configuration with 3+ sizes and every model against the labelled source under supervised).",
    ),
    heatmap_shots: str | None = typer.Option(
        None, help="Shot counts of the heatmap, comma-separated, 'full' for full data (default: fewest and full)."
    ),
    n_boot: int = typer.Option(200, help="Bootstrap draws of the data-multiplier intervals."),
    title: str | None = typer.Option(None, help="The page title."),
    force: bool = typer.Option(
        False, "--force", help="Render even when the store, options and code are those of the report already there."
    ),
) -> None:
    """Write the HTML report: scaling curves, data multiplier, few-shot spread, heatmaps, checkpoints,
    spectra, convergence, curation funnels, missing and failed runs. A report whose inputs (the
    store's files, these options, the report code) have not changed is left as it is."""
    import pandas as pd

    from results.errors import ReportError
    from results.multiplier import MultiplierPair
    from results.report import report_inputs, report_is_current, write_report

    try:
        pairs = [MultiplierPair.parse(text) for text in multiplier] if multiplier else None
        shots = None
        if heatmap_shots:
            shots = []
            for item in (x.strip() for x in heatmap_shots.split(",") if x.strip()):
                if item == "full":
                    shots.append(None)
                elif item.isdigit():
                    shots.append(int(item))
                else:
                    raise ReportError(
                        f"--heatmap-shots: {item!r} is not a shot count; give numbers or 'full', e.g. 5,full"
                    )
        if n_boot < 10:
            raise ReportError(f"--n-boot must be at least 10, got {n_boot}")
    except ReportError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    expected = pruned = None
    if spec is not None:
        from harness.plan import make_plan

        p = make_plan(_load(spec))
        expected, pruned = pd.DataFrame(p.expected_rows()), p.pruned
    options = {
        "title": title or (f"transfer-bench report: {spec.stem}" if spec else None),
        "expected": expected,
        "pruned": pruned,
        "multipliers": pairs,
        "heatmap_shots": shots,
        "n_boot": n_boot,
    }
    try:
        digest = report_inputs(store, **options)
        if not force and report_is_current(out, digest):
            console.print(f"report unchanged: {out / 'index.html'} was rendered from this store, options and code")
            return
        path = write_report(store, out, digest=digest, **options)
    except (ValueError, RuntimeError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"report written to {path}")


import harness.cli_cluster  # noqa: E402,F401  (registers submit, status, logs, stop, jobs on app)

if __name__ == "__main__":
    app()
