"""The results store at scale: many concurrent writers, a compaction beside them, exactly-once
reads, and a grouped query against pandas reading the same rows from CSV.

Writes: ``--procs`` worker processes (multiprocessing, spawn) write ``--rows`` rows of the
``runs`` table between them through :meth:`results.store.Store.write_part`, as the runner's
evaluation jobs do: one part per job, ``--part-rows`` rows each (the last part smaller), parts
dealt round-robin to the workers. Rows carry realistic values in every column: the
pre-training coordinates (7 sources, 3 methods, 5 sizes, seeds, checkpoints), 9 downstream
sets, 6 protocols, shots (null = full data, 0 for zero-shot), evaluation seeds, scores that
depend on them plus noise, about 1% failed rows (null scores, an error text), timings,
hyperparameters as JSON. The workers and a compactor process start together on a barrier
(process start-up and imports are not timed); the compactor runs ``Store.compact`` every
``--compact-every`` seconds while the writers write (``--no-compactor`` to leave it out), which
is the hard case: parts are merged and deleted while others are being written.

Checks, in the state the writers leave (loose parts and compacted files mixed) and again after
a full ``compact``: the rows read through ``Store.read`` and through SQL are exactly the keys
written (none lost, none twice, none unexpected), and the sum of scores matches the writers'.

Timing: the grouped query (mean score and row count by source, method, pretrain_size,
downstream, protocol, shots) through ``Store.query`` on a fresh ``Store`` each time (as
``tbench results query`` runs it), median of ``--reps``, in both states; and the same
aggregation with pandas: ``read_csv`` of one CSV file holding the same rows (written once,
untimed) plus ``groupby(dropna=False)``, median of ``--csv-reps``; with ``usecols`` (only the
seven columns the query needs) as well. Both answers are compared. The bench fails (exit 1)
if a row is lost or duplicated or the query on the compacted store takes more than 1 s.

This bench needs neither torch nor Ray (so it does not import ``bench._common``).

    .venv/bin/python bench/store_scale.py --quick     # 100,000 rows, about a minute on 2 cores
    .venv/bin/python bench/store_scale.py             # 1,000,000 rows by 16 processes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_CACHE = REPO_ROOT / "tbench-out" / "bench"
TARGET_QUERY_S = 1.0
GROUP_COLUMNS = ["source", "method", "pretrain_size", "downstream", "protocol", "shots"]
QUERY = f"SELECT {', '.join(GROUP_COLUMNS)}, avg(score) AS mean_score, count(*) AS n FROM runs GROUP BY ALL"

SOURCES = ("laion", "datacomp", "yfcc", "cc12m", "shutterstock", "wit", "imagenet")
SOURCE_QUALITY = dict(zip(SOURCES, (0.02, 0.03, -0.04, 0.0, -0.01, -0.03, 0.05)))
METHODS = {"supervised": 0.04, "clip": 0.06, "simclr": 0.0}
SIZES = (1_000, 3_000, 10_000, 30_000, 100_000)
DOWNSTREAM = {
    "cifar100": 100,
    "pets": 37,
    "flowers": 102,
    "dtd": 47,
    "eurosat": 10,
    "cameratraps": 14,
    "food": 101,
    "aircraft": 100,
    "cars": 196,
}
PROTOCOLS = {"linear": 0.0, "knn": -0.05, "finetune": 0.06, "lp_ft": 0.07, "zeroshot": -0.12, "scratch": -0.15}
SHOTS = (None, 1, 5, 10, 20)
CURATIONS = ("none", "clip_top50", "dedup", "clip_top30+dedup")
ERRORS = (
    "RuntimeError: CUDA out of memory",
    "ValueError: empty few-shot sample",
    "TimeoutError: evaluation exceeded 3600 s",
)


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured.",
    )
    p.add_argument("--quick", action="store_true", help="100,000 rows (a smoke run; --rows overrides)")
    p.add_argument("--rows", type=int, default=None, help="rows to write (default: 1,000,000; --quick 100,000)")
    p.add_argument("--procs", type=int, default=16, help="writer processes (default: %(default)s)")
    p.add_argument("--part-rows", type=int, default=500, help="rows per part file, one per job (default: %(default)s)")
    p.add_argument("--no-compactor", action="store_true", help="no compaction while the writers write")
    p.add_argument(
        "--compact-every",
        type=float,
        default=2.0,
        help="seconds between the concurrent compactor's rounds (default: %(default)s)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=5,
        help="Store.query repetitions per state; the median is reported (default: %(default)s)",
    )
    p.add_argument(
        "--csv-reps", type=int, default=3, help="pandas read_csv + groupby repetitions (default: %(default)s)"
    )
    p.add_argument(
        "--store",
        default=None,
        help="store root, a directory or a URI (default: <cache-dir>/store_scale/store); emptied first",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the store and the CSV go (default: %(default)s)"
    )
    p.add_argument("--keep", action="store_true", help="keep the store and the CSV afterwards")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = 100_000 if args.quick else 1_000_000
    if args.rows < 1 or args.procs < 1 or args.part_rows < 1 or args.reps < 1 or args.csv_reps < 1:
        p.error("--rows, --procs, --part-rows, --reps and --csv-reps must be >= 1")
    return args


# --------------------------------------------------------------------------- rows


def part_sizes(rows: int, part_rows: int) -> list[int]:
    """Rows of each part: ``part_rows`` each, the last one smaller."""
    n = math.ceil(rows / part_rows)
    return [min(part_rows, rows - i * part_rows) for i in range(n)]


def part_key(part: int) -> str:
    return f"eval-{part:06d}"


def row_key(part: int, i: int) -> str:
    return f"r{part:06d}-{i:04d}"


def make_rows(part: int, n: int, seed: int) -> list[dict[str, Any]]:
    """The ``n`` rows of part ``part``: one evaluation job over runs of several pre-trainings."""
    rng = random.Random(seed * 1_000_003 + part)
    created = dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=7 * part)
    device = rng.choice(("cuda:0 NVIDIA H100 80GB HBM3", "cuda:0 NVIDIA A100-SXM4-40GB", "cpu"))
    rows = []
    for i in range(n):
        source = rng.choice(SOURCES)
        method = rng.choice(tuple(METHODS))
        size = rng.choice(SIZES)
        downstream = rng.choice(tuple(DOWNSTREAM))
        protocol = rng.choice(tuple(PROTOCOLS))
        shots = 0 if protocol == "zeroshot" else rng.choice(SHOTS)
        pretrain_seed = rng.randrange(3)
        epochs = 30
        checkpoint = rng.choice((5, 10, 20, 30))
        num_classes = DOWNSTREAM[downstream]
        chance = 1.0 / num_classes
        skill = (
            0.35
            + 0.06 * math.log10(size)
            + METHODS[method]
            + SOURCE_QUALITY[source]
            + PROTOCOLS[protocol]
            + (0.0 if shots is None else -0.25 / math.sqrt(1 + shots))
            + 0.02 * math.log2(checkpoint / 5 + 1)
        )
        top1 = min(0.99, max(chance, skill + rng.gauss(0, 0.03)))
        failed = rng.random() < 0.01
        pretrain_key = f"pt-{source}-{method}-{size}-s{pretrain_seed}"
        rows.append(
            {
                "key": row_key(part, i),
                "spec": "scaling-grid",
                "created_at": created + dt.timedelta(milliseconds=37 * i),
                "code_version": "0.9.0+g3f2c1ab",
                "status": "failed" if failed else "ok",
                "error": rng.choice(ERRORS) if failed else None,
                "pretrain_key": pretrain_key,
                "source": source,
                "curation": rng.choice(CURATIONS),
                "label_noise": rng.choice((0.0, 0.0, 0.1, 0.3)),
                "pretrain_size": size,
                "method": method,
                "backbone": "resnet18",
                "pretrain_epochs": epochs,
                "checkpoint_epoch": checkpoint,
                "pretrain_seed": pretrain_seed,
                "samples_seen": size * checkpoint,
                "downstream": downstream,
                "num_classes": num_classes,
                "metric": "balanced_acc" if downstream == "cameratraps" else "top1",
                "chance": chance,
                "protocol": protocol,
                "shots": shots,
                "eval_seed": rng.randrange(3),
                "top1": None if failed else top1,
                "balanced_acc": None if failed else top1 - abs(rng.gauss(0, 0.02)),
                "score": None if failed else top1,
                "loss": None if failed else -math.log(max(top1, 1e-3)) + rng.gauss(0, 0.05),
                "train_seconds": rng.uniform(1.0, 900.0),
                "eval_seconds": rng.uniform(0.2, 30.0),
                "device": device,
                "job_key": part_key(part),
                "view_key": f"view-{source}-{size}",
                "image_size": 64,
                "val_score": None if failed else top1 + rng.gauss(0, 0.01),
                "hparams": None
                if protocol in ("knn", "zeroshot")
                else {"lr": rng.choice((1e-3, 3e-3, 1e-2)), "l2": 1e-4},
            }
        )
    return rows


# --------------------------------------------------------------------------- processes


def _writer(root: str, parts: list[tuple[int, int]], seed: int, barrier, results) -> None:
    """Write ``parts`` ((part, rows) pairs) one after another; report what was written."""
    from results.store import Store

    store = Store(root)
    out = {"pid": os.getpid(), "parts": 0, "rows": 0, "score_sum": 0.0, "make_s": 0.0, "write_s": 0.0}
    try:
        barrier.wait()
        t_start = time.perf_counter()
        for part, n in parts:
            t0 = time.perf_counter()
            rows = make_rows(part, n, seed)
            t1 = time.perf_counter()
            store.write_part("runs", part_key(part), rows)
            out["write_s"] += time.perf_counter() - t1
            out["make_s"] += t1 - t0
            out["parts"] += 1
            out["rows"] += n
            out["score_sum"] += sum(r["score"] for r in rows if r["score"] is not None)
        out["wall_s"] = time.perf_counter() - t_start
        out["done_at"] = time.time()
    except Exception as exc:  # noqa: BLE001 - reported, so the bench can fail loudly
        out["error"] = f"{type(exc).__name__}: {exc}"
    results.put(("writer", out))


def _compactor(root: str, every: float, barrier, stop, results) -> None:
    """Compact ``runs`` every ``every`` seconds until ``stop`` is set."""
    from results.store import Store

    store = Store(root)
    out = {"rounds": 0, "parts_merged": 0, "files_written": 0, "parts_kept": 0, "rows": 0, "busy_s": 0.0}
    try:
        barrier.wait()
        while not stop.wait(every):
            t0 = time.perf_counter()
            report = store.compact("runs", min_parts=2)
            out["busy_s"] += time.perf_counter() - t0
            out["rounds"] += 1
            out["parts_merged"] += report["parts_merged"]
            out["files_written"] += len(report["files_written"])
            out["parts_kept"] += len(report["parts_kept"])
            out["rows"] += report["rows"]
    except Exception as exc:  # noqa: BLE001 - reported
        out["error"] = f"{type(exc).__name__}: {exc}"
    results.put(("compactor", out))


def write_concurrently(root: str, args: argparse.Namespace) -> dict[str, Any]:
    sizes = part_sizes(args.rows, args.part_rows)
    shares: list[list[tuple[int, int]]] = [[] for _ in range(args.procs)]
    for part, n in enumerate(sizes):
        shares[part % args.procs].append((part, n))
    ctx = mp.get_context("spawn")
    with_compactor = not args.no_compactor
    barrier = ctx.Barrier(args.procs + 1 + int(with_compactor))
    results, stop = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_writer, args=(root, share, args.seed, barrier, results), name=f"writer-{w}")
        for w, share in enumerate(shares)
    ]
    if with_compactor:
        procs.append(
            ctx.Process(target=_compactor, args=(root, args.compact_every, barrier, stop, results), name="compactor")
        )
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    barrier.wait()  # every process has started and imported the store
    start, start_wall = time.perf_counter(), time.time()
    log(
        f"  {len(procs)} processes started in {start - t0:.1f}s (not timed); writing {args.rows:,} rows in "
        f"{len(sizes):,} parts of {args.part_rows} rows"
    )
    writers, compactor = [], None
    while len(writers) < args.procs:
        try:
            kind, out = results.get(timeout=10)
        except queue.Empty:
            dead = [p.name for p in procs if p.exitcode not in (None, 0)]
            if dead:  # killed without reporting (out of memory, a signal)
                stop.set()
                for p in procs:
                    p.join(timeout=30)
                return {"errors": [f"{', '.join(dead)} died without reporting"]}
            continue
        if kind == "writer":
            writers.append(out)
    write_s = max(w.get("done_at", time.time()) for w in writers) - start_wall
    stop.set()
    if with_compactor:
        kind, compactor = results.get()
    for p in procs:
        p.join()
    errors = [w["error"] for w in writers if "error" in w] + (
        [compactor["error"]] if compactor and "error" in compactor else []
    )
    return {
        "write_s": write_s,
        "writers": writers,
        "compactor": compactor,
        "errors": errors,
        "rows_reported": sum(w["rows"] for w in writers),
        "score_sum": sum(w["score_sum"] for w in writers),
        "make_s_total": sum(w["make_s"] for w in writers),
        "write_part_s_total": sum(w["write_s"] for w in writers),
    }


# --------------------------------------------------------------------------- checks and timing


def expected_keys(args: argparse.Namespace) -> set[str]:
    return {row_key(part, i) for part, n in enumerate(part_sizes(args.rows, args.part_rows)) for i in range(n)}


def check(store, expected: set[str], score_sum: float) -> dict[str, Any]:
    """Rows through Store.read and through SQL against the keys written."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    df = store.read("runs")
    out["read_s"] = time.perf_counter() - t0
    keys = df["key"]
    seen = set(keys)
    out["read"] = {
        "rows": len(df),
        "distinct": len(seen),
        "lost": len(expected - seen),
        "duplicated": len(df) - len(seen),
        "unexpected": len(seen - expected),
        "score_sum_matches": math.isclose(float(df["score"].sum()), score_sum, rel_tol=1e-9),
    }
    del df
    t0 = time.perf_counter()
    q = store.query("SELECT count(*) AS n, count(DISTINCT key) AS d, sum(score) AS s FROM runs")
    keys_sql = set(store.query("SELECT key FROM runs")["key"])
    out["sql_s"] = time.perf_counter() - t0
    n, d = int(q["n"].iloc[0]), int(q["d"].iloc[0])
    out["sql"] = {
        "rows": n,
        "distinct": d,
        "lost": len(expected - keys_sql),
        "duplicated": n - d,
        "unexpected": len(keys_sql - expected),
        "score_sum_matches": math.isclose(float(q["s"].iloc[0]), score_sum, rel_tol=1e-9),
    }
    out["ok"] = (
        all(v[k] == 0 for v in (out["read"], out["sql"]) for k in ("lost", "duplicated", "unexpected"))
        and out["read"]["rows"] == out["sql"]["rows"] == len(expected)
        and out["read"]["score_sum_matches"]
        and out["sql"]["score_sum_matches"]
    )
    return out


def time_query(root: str, reps: int) -> tuple[float, list[float], Any]:
    """Median seconds of the grouped query through a fresh Store each time."""
    from results.store import Store

    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = Store(root).query(QUERY)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def time_pandas(csv: Path, reps: int, usecols: list[str] | None = None) -> tuple[float, list[float], Any]:
    import pandas as pd

    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        frame = pd.read_csv(csv, usecols=usecols)
        result = (
            frame.groupby(GROUP_COLUMNS, dropna=False)
            .agg(mean_score=("score", "mean"), n=("score", "size"))
            .reset_index()
        )
        times.append(time.perf_counter() - t0)
        del frame
    return statistics.median(times), times, result


def same_answer(store_result, pandas_result) -> bool:
    """Whether DuckDB's and pandas' group tables agree (counts exactly, means to 1e-9)."""
    import numpy as np

    def norm(frame):
        frame = frame.copy()
        frame["shots"] = frame["shots"].astype("float64")
        frame["pretrain_size"] = frame["pretrain_size"].astype("int64")
        frame["n"] = frame["n"].astype("int64")
        return frame.sort_values(GROUP_COLUMNS, na_position="first").reset_index(drop=True)

    a, b = norm(store_result), norm(pandas_result)
    if len(a) != len(b):
        return False
    for c in GROUP_COLUMNS:
        if c == "shots":
            if not np.array_equal(a[c].to_numpy(), b[c].to_numpy(), equal_nan=True):
                return False
        elif not (a[c].to_numpy() == b[c].to_numpy()).all():
            return False
    return bool(
        (a["n"].to_numpy() == b["n"].to_numpy()).all()
        and np.allclose(a["mean_score"].to_numpy(float), b["mean_score"].to_numpy(float), rtol=1e-9, equal_nan=True)
    )


def store_files(store) -> dict[str, int]:
    return {"loose_parts": len(store.part_files("runs")), "compacted_files": len(store.compacted_files("runs"))}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import duckdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from results.store import Store

    work = Path(args.cache_dir) / "store_scale"
    root = args.store or str(work / "store")
    if "://" not in root and Path(root).exists():
        shutil.rmtree(root)
    elif "://" in root:
        store = Store(root)
        store.fs.delete_dir_contents(store.table_dir("runs"), missing_dir_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "duckdb": duckdb.__version__,
        "pandas": pd.__version__,
        "loadavg_start": os.getloadavg(),
    }
    log(
        f"store_scale: {args.rows:,} rows, {args.procs} writer processes, parts of {args.part_rows} rows, "
        f"compactor {'off' if args.no_compactor else f'every {args.compact_every:g}s'}; store {root}"
    )
    log(
        f"  {env['cpu_count']} CPUs, load average {', '.join(f'{x:.1f}' for x in env['loadavg_start'])}; "
        f"pyarrow {env['pyarrow']}, duckdb {env['duckdb']}, pandas {env['pandas']}"
    )

    w = write_concurrently(root, args)
    if w["errors"]:
        for e in w["errors"]:
            log(f"  process failed: {e}")
        raise SystemExit(1)
    c = w["compactor"]
    log(
        f"wrote {w['rows_reported']:,} rows in {w['write_s']:.1f}s: {w['rows_reported'] / w['write_s']:,.0f} rows/s "
        f"(inside the writers: {w['make_s_total']:.1f}s making rows, {w['write_part_s_total']:.1f}s in write_part, "
        "summed over processes)"
    )
    if c:
        log(
            f"  concurrent compactor: {c['rounds']} rounds, {c['parts_merged']:,} parts merged into "
            f"{c['files_written']} "
            f"files, {c['parts_kept']} re-written meanwhile, busy {c['busy_s']:.1f}s"
        )

    store = Store(root)
    expected = expected_keys(args)
    states: dict[str, Any] = {}
    for state in ("as_written", "compacted"):
        if state == "compacted":
            t0 = time.perf_counter()
            rep = store.compact("runs", min_parts=1)
            log(
                f"compact: {rep['parts_merged']:,} parts, {rep['rows']:,} rows into {len(rep['files_written'])} "
                f"files in {time.perf_counter() - t0:.1f}s"
            )
        files = store_files(store)
        chk = check(Store(root), expected, w["score_sum"])
        med, times, result = time_query(root, args.reps)
        states[state] = {
            "files": files,
            "check": chk,
            "query_s": med,
            "query_times": times,
            "groups": len(result),
            "result": result,
        }
        log(
            f"[{state}] {files['loose_parts']:,} loose parts + {files['compacted_files']} compacted files: "
            f"read {chk['read']['rows']:,} rows ({chk['read']['distinct']:,} keys), lost {chk['read']['lost']}, "
            f"duplicated {chk['read']['duplicated']}, unexpected {chk['read']['unexpected']} in {chk['read_s']:.1f}s; "
            f"SQL {chk['sql']['rows']:,} rows ({chk['sql']['distinct']:,} keys), lost {chk['sql']['lost']}, "
            f"duplicated {chk['sql']['duplicated']}; score sums match: "
            f"{chk['read']['score_sum_matches'] and chk['sql']['score_sum_matches']}"
        )
        log(
            f"[{state}] grouped query ({len(result):,} groups): median {med:.3f}s of {args.reps} "
            f"({', '.join(f'{t:.3f}' for t in times)})"
        )

    csv = work / "runs.csv"
    t0 = time.perf_counter()
    pacsv.write_csv(store.read_arrow("runs"), csv)
    log(
        f"CSV of the same rows: {csv} ({csv.stat().st_size / 2**20:.0f} MiB, written in "
        f"{time.perf_counter() - t0:.1f}s, untimed)"
    )
    pd_med, pd_times, pd_result = time_pandas(csv, args.csv_reps)
    pdu_med, _, pdu_result = time_pandas(csv, args.csv_reps, usecols=GROUP_COLUMNS + ["score"])
    agree = same_answer(states["compacted"]["result"], pd_result) and same_answer(
        states["compacted"]["result"], pdu_result
    )
    log(
        f"pandas read_csv + groupby: median {pd_med:.2f}s of {args.csv_reps} "
        f"({', '.join(f'{t:.2f}' for t in pd_times)}); "
        f"with usecols (7 columns): {pdu_med:.2f}s; same answer as the store: {agree}"
    )

    lost = max(s["check"][via]["lost"] for s in states.values() for via in ("read", "sql"))
    duplicated = max(s["check"][via]["duplicated"] for s in states.values() for via in ("read", "sql"))
    ok_rows = all(s["check"]["ok"] for s in states.values())
    q_compacted, q_loose = states["compacted"]["query_s"], states["as_written"]["query_s"]
    env["loadavg_end"] = os.getloadavg()
    summary = {
        "bench": "store_scale",
        "rows": args.rows,
        "procs": args.procs,
        "part_rows": args.part_rows,
        "compactor": not args.no_compactor,
        "write_s": w["write_s"],
        "rows_per_s": args.rows / w["write_s"],
        "lost": lost,
        "duplicated": duplicated,
        "rows_ok": ok_rows,
        "query_s_as_written": q_loose,
        "query_s_compacted": q_compacted,
        "files_as_written": states["as_written"]["files"],
        "files_compacted": states["compacted"]["files"],
        "pandas_csv_s": pd_med,
        "pandas_csv_usecols_s": pdu_med,
        "ratio_pandas_csv_over_store_compacted": pd_med / q_compacted,
        "ratio_pandas_csv_over_store_as_written": pd_med / q_loose,
        "ratio_pandas_csv_usecols_over_store_compacted": pdu_med / q_compacted,
        "same_answer": agree,
        "compactor_stats": w["compactor"],
        "env": env,
        "checks": {k: v["check"] for k, v in states.items()},
        "query_times": {k: v["query_times"] for k, v in states.items()},
    }
    log("")
    log(f"{'rows written':<34}{args.rows:>14,}")
    log(
        f"{'seconds to write':<34}{w['write_s']:>14.1f}   ({args.procs} processes"
        f"{', compaction running' if not args.no_compactor else ''})"
    )
    log(f"{'rows/s':<34}{args.rows / w['write_s']:>14,.0f}")
    log(f"{'lost / duplicated rows':<34}{f'{lost} / {duplicated}':>14}")
    log(
        f"{'query s, as written (median)':<34}{q_loose:>14.3f}   ({states['as_written']['files']['loose_parts']:,} "
        "loose parts, "
        f"{states['as_written']['files']['compacted_files']} compacted files)"
    )
    log(
        f"{'query s, compacted (median)':<34}{q_compacted:>14.3f}   "
        f"({states['compacted']['files']['compacted_files']} compacted files)"
    )
    log(f"{'pandas read_csv + groupby s':<34}{pd_med:>14.2f}   (usecols: {pdu_med:.2f})")
    log(
        f"{'pandas-CSV / store query':<34}{pd_med / q_compacted:>14.1f}x  compacted; {pd_med / q_loose:.1f}x as "
        "written; "
        f"usecols {pdu_med / q_compacted:.1f}x"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str))
        log(f"wrote {args.json}")
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k not in ("checks", "query_times", "compactor_stats")}, default=str
        ),
        flush=True,
    )
    if not args.keep:
        csv.unlink(missing_ok=True)
        if "://" not in root:
            shutil.rmtree(root, ignore_errors=True)
    failures = []
    if not ok_rows:
        failures.append(f"rows lost ({lost}) or duplicated ({duplicated}) or unexpected, or score sums differ")
    if q_compacted > TARGET_QUERY_S:
        failures.append(f"the grouped query on the compacted store took {q_compacted:.3f}s > {TARGET_QUERY_S:g}s")
    if not agree:
        failures.append("pandas and the store disagree on the grouped answer")
    if failures:
        log("FAILED: " + "; ".join(failures))
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
