"""Orchestration cost: planning a 10,000-job grid, and what Ray adds to each evaluation task.

Two measurements, both in one process:

1. **Planning.** A spec built in code (``harness.spec.parse_spec`` on a dict) over the embedded
   world: up to eight sources x three sizes x three methods x label noise {0, 0.2} (pruned for
   the methods that use no labels) x pre-training seeds, plus a curated block (LAION-like sources
   with ``clip_top50``), checkpoints at epochs 2 and 4, all eleven world and package sets, and
   ``linear`` (shots 1/5/10/20/full x 3 seeds), ``zeroshot``, ``finetune``, ``lp_ft`` and
   ``scratch``. The number of seeds and of sources in the main block is the smallest that gives
   at least ``--jobs`` jobs (sizing passes untimed). Timed: ``parse_spec`` and ``make_plan``
   (cold first call, which imports the registries, then the median of ``--plan-reps``),
   ``Plan.expected_rows()`` and ``Plan.done_keys(workdir)`` against an empty workdir (one
   marker ``stat`` per job). ``--profile`` prints where their time goes (cProfile), as does a
   run in which the three take more than 3 s together.

2. **Ray per evaluation task.** A real evaluation job: the random-init floor (``init`` job, a
   randomly initialised ``test_resnet`` at 32 px), ``linear`` on one world set (``--set``) at
   shots 1/5/10/20/full x 3 seeds, on the world at scale 0.1. The ``world``, ``init`` and
   ``features`` jobs it depends on run in-process through ``harness.executors.execute`` (once;
   cached afterwards); the plan's pre-training jobs are never run. The eval job's body is the
   runner's own task function (``harness.runner._task``: ``execute(job, ctx)``), timed
   ``--tasks`` times each way:

   (a) in-process, a plain call with the threads a worker has (torch's and BLAS's limited to
       the task's ``num_cpus``, 1), measured before Ray starts, again interleaved with (b) call
       by call (both see the same machine load and Ray's idle daemons), and in blocks of N
       before each round of (c);
   (b) as a Ray task, sequentially: submit, ``ray.get``, one at a time (per-task latency), with
       the options the runner gives an evaluation (``num_cpus=1``, retries);
   (c) ``--tasks`` Ray tasks submitted at once (throughput on ``--cpus`` CPUs): wall / N, in
       ``--rounds`` rounds, each right after a block of N in-process calls (its baseline).

   The same three modes with a no-op body (``--noop-tasks`` times) show Ray's pure cost per
   task. Each Ray task also reports the seconds its body took inside the worker, so the round
   trip splits into body and Ray (scheduling, argument and result serialisation, IPC).
   ``ray.init`` and the first (cold) task, which starts a worker and imports torch there, are
   timed and printed separately, not counted; both Ray workers are warmed up first.

Printed: jobs per kind and planning seconds; a table of per-task milliseconds per mode, the
absolute overhead (Ray - in-process, ms per task) and the ratio Ray / in-process.

    .venv/bin/python bench/orchestration.py                      # ~1.5-2.5 min on 2 cores
    .venv/bin/python bench/orchestration.py --jobs 50000 --tasks 40 --out tbench-out/bench/orchestration.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from curation.catalogue import WORLD_SETS  # noqa: E402

DEFAULT_CACHE = REPO_ROOT / "tbench-out" / "bench"
ALL_SOURCES = ["laion", "imagenet", "cc12m", "yfcc", "shutterstock", "wit", "cc3m", "redcaps"]
PROFILE_OVER_S = 3.0  # planning slower than this (make_plan + expected_rows + done_keys, medians) is profiled
_JOB_KINDS = ("world", "view", "pretrain", "init", "features", "eval")  # the plan line's order


def log(msg: str = "") -> None:
    print(msg, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured.",
    )
    p.add_argument(
        "--jobs", type=int, default=10_000, help="least number of jobs in the planned grid (default: %(default)s)"
    )
    p.add_argument("--plan-reps", type=int, default=5, help="repetitions of each planning step; the median is reported")
    p.add_argument(
        "--profile",
        action="store_true",
        help="print a cProfile of make_plan, expected_rows and done_keys "
        f"(done anyway when the three take over {PROFILE_OVER_S:g} s together)",
    )
    p.add_argument("--tasks", type=int, default=20, help="evaluation calls/tasks per mode (default: %(default)s)")
    p.add_argument("--noop-tasks", type=int, default=200, help="no-op calls/tasks per mode (default: %(default)s)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of (c), each after a block of in-process calls; medians reported (default: %(default)s)",
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed evaluation calls/tasks per mode first (default: %(default)s)"
    )
    p.add_argument("--set", default="dtd", help="world set the evaluation probes (default: %(default)s)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default: %(default)s)")
    p.add_argument(
        "--worker-niceness",
        type=int,
        default=None,
        help="niceness of Ray's worker processes (sets RAY_worker_niceness; default: Ray's own, 15)",
    )
    p.add_argument("--skip-plan", action="store_true", help="only the Ray measurement")
    p.add_argument("--skip-ray", action="store_true", help="only the planning measurement")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="where the small world and the evaluation's inputs are kept (default: %(default)s)",
    )
    p.add_argument(
        "--out", "--json", dest="out", type=Path, default=None, metavar="PATH", help="write the figures here (JSON)"
    )
    args = p.parse_args(argv)
    if min(args.jobs, args.plan_reps, args.tasks, args.noop_tasks, args.cpus, args.rounds) < 1 or args.warmup < 0:
        p.error("--jobs, --plan-reps, --tasks, --noop-tasks, --cpus and --rounds must be >= 1, --warmup >= 0")
    return args


def median_time(fn, reps: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


# --------------------------------------------------------------------------- 1. planning


def grid_spec(seeds: int, main_sources: int) -> dict[str, Any]:
    """A study-sized spec: ``main_sources`` world sources x 3 sizes x 3 methods x noise x ``seeds``."""
    seed_list = list(range(seeds))
    return {
        "name": "orchestration-grid",
        "world": {"seed": 0, "scale": 1.0},
        "curation": {
            "none": [],
            "clip_top50": [
                {"step": "caption_language"},
                {"step": "clip_score", "top_fraction": 0.5},
                {"step": "dedup", "against": "all"},
            ],
        },
        "pretrain": {
            "backbone": "test_resnet",
            "epochs": 4,
            "checkpoint_epochs": [2, 4],
            "grids": [
                {
                    "sources": ALL_SOURCES[:main_sources],
                    "sizes": [1000, 3000, 10000],
                    "methods": ["supervised", "clip", "simclr"],
                    "label_noise": [0.0, 0.2],
                    "seeds": seed_list,
                },
                {
                    "sources": ["laion", "cc12m", "yfcc"],
                    "sizes": [1000, 3000, 10000],
                    "methods": ["supervised", "clip"],
                    "curation": ["clip_top50"],
                    "seeds": seed_list,
                },
            ],
        },
        "downstream": {
            "sets": [*WORLD_SETS, "digits", "textures"],
            "eval_seeds": [0, 1, 2],
            "checkpoint_epochs": "all",
            "protocols": [
                {"name": "linear", "shots": [1, 5, 10, 20, "full"]},
                {"name": "zeroshot", "shots": [0], "sets": list(WORLD_SETS)},
                {
                    "name": "finetune",
                    "shots": ["full"],
                    "seeds": [0],
                    "sets": ["cifar100", "dtd"],
                    "epochs": 3,
                    "lrs": [0.001, 0.003],
                },
                {
                    "name": "lp_ft",
                    "shots": ["full"],
                    "seeds": [0],
                    "sets": ["cifar100", "dtd"],
                    "epochs": 3,
                    "lrs": [0.001, 0.003],
                },
                {
                    "name": "scratch",
                    "shots": ["full"],
                    "seeds": [0],
                    "sets": ["cifar100", "dtd"],
                    "epochs": 3,
                    "lrs": [0.001, 0.003],
                },
            ],
        },
    }


def size_grid(target: int) -> tuple[int, int, int]:
    """(seeds, main-block sources, jobs): the smallest grid with at least ``target`` jobs (untimed)."""
    from harness.plan import make_plan
    from harness.spec import parse_spec

    def jobs(seeds: int, sources: int) -> int:
        return len(make_plan(parse_spec(grid_spec(seeds, sources))).jobs)

    seeds = 1
    while True:
        n = jobs(seeds, len(ALL_SOURCES))
        if n >= target:
            break
        seeds = max(seeds + 1, math.ceil(seeds * target / n))
    for sources in range(1, len(ALL_SOURCES)):
        m = jobs(seeds, sources)
        if m >= target:
            return seeds, sources, m
    return seeds, len(ALL_SOURCES), n


def bench_planning(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    from harness.plan import make_plan
    from harness.spec import parse_spec

    import_s = time.perf_counter() - t0
    data = grid_spec(1, 1)
    t0 = time.perf_counter()
    spec = parse_spec(data)  # the validators import the registries (sources, filters, methods, sets)
    parse_cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_plan(spec)  # imports downstream.protocols, pretrain.methods, curation.world
    plan_cold_s = time.perf_counter() - t0
    log(
        f"imports: harness.spec + harness.plan {import_s:.2f}s; first parse_spec {parse_cold_s:.2f}s and first "
        f"make_plan {plan_cold_s:.2f}s (registry imports; once per process, not counted below)"
    )

    t0 = time.perf_counter()
    seeds, sources, _ = size_grid(args.jobs)
    log(
        f"grid: {sources} sources in the main block, {seeds} pre-training seed(s) (sized in "
        f"{time.perf_counter() - t0:.1f}s, untimed)"
    )
    data = grid_spec(seeds, sources)
    parse_s, parse_times, spec = median_time(lambda: parse_spec(data), args.plan_reps)
    plan_s, plan_times, plan = median_time(lambda: make_plan(spec), args.plan_reps)
    counts = plan.counts()
    n_jobs = len(plan.jobs)
    rows_s, rows_times, rows = median_time(plan.expected_rows, args.plan_reps)
    with tempfile.TemporaryDirectory(prefix="orch-empty-work-") as empty:
        done_s, done_times, done = median_time(lambda: plan.done_keys(Path(empty)), args.plan_reps)
    assert not done and len(rows) == plan.planned_rows()

    log(
        f"plan: {n_jobs:,} jobs "
        f"({', '.join(f'{k} {counts[k]:,}' for k in _JOB_KINDS if counts[k])}), "
        f"{len(rows):,} expected rows, {len(plan.pruned)} pruned combinations"
    )
    out = {
        "seeds": seeds,
        "main_block_sources": sources,
        "jobs": n_jobs,
        "jobs_by_kind": dict(counts),
        "expected_rows": len(rows),
        "pruned": len(plan.pruned),
        "import_s": import_s,
        "parse_spec_cold_s": parse_cold_s,
        "make_plan_cold_s": plan_cold_s,
        "parse_spec_s": parse_s,
        "make_plan_s": plan_s,
        "expected_rows_s": rows_s,
        "done_keys_empty_s": done_s,
        "times": {
            "parse_spec": parse_times,
            "make_plan": plan_times,
            "expected_rows": rows_times,
            "done_keys_empty": done_times,
        },
    }
    slow = plan_s + rows_s + done_s > PROFILE_OVER_S
    if args.profile or slow:
        if slow:
            log(f"planning took over {PROFILE_OVER_S:g} s: profiling it")
        out["profile"] = {}
        with tempfile.TemporaryDirectory(prefix="orch-empty-work-") as empty:
            for what, fn in (
                ("make_plan", lambda: make_plan(spec)),
                ("expected_rows", plan.expected_rows),
                ("done_keys", lambda: plan.done_keys(Path(empty))),
            ):
                out["profile"][what] = profile(fn)
                log(f"{what} profile (by own time):")
                log(out["profile"][what])
    return out


def profile(fn, top: int = 10) -> str:
    """cProfile of one call of ``fn``: the ``top`` functions by own time."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return "\n".join(
        line
        for line in buf.getvalue().splitlines()
        if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced"))
    )


# --------------------------------------------------------------------------- 2. Ray per evaluation task


def eval_spec(cache: Path, set_name: str) -> dict[str, Any]:
    """A tiny spec whose random-init floor gives world, init, features and eval (linear) jobs."""
    return {
        "name": "orchestration-eval",
        "world": {"seed": 0, "scale": 0.1, "dir": str(cache / "world")},
        "workdir": str(cache / "work"),
        "store": str(cache / "store"),
        "pretrain": {
            "backbone": "test_resnet",
            "image_size": 32,
            "epochs": 1,
            "grids": [{"sources": ["imagenet"], "sizes": [100], "methods": ["supervised"]}],
        },
        "downstream": {
            "sets": [set_name],
            "eval_seeds": [0, 1, 2],
            "random_init_floor": True,
            "protocols": [{"name": "linear", "shots": [1, 5, 10, 20, "full"]}],
        },
    }


def prepare_eval(args: argparse.Namespace):
    """The floor's eval job and its context, with world, init and features run in-process."""
    from harness.executors import RunContext, execute
    from harness.plan import make_plan
    from harness.runner import code_version, resolve_paths
    from harness.spec import parse_spec

    cache = args.cache_dir / "orchestration"
    spec = parse_spec(eval_spec(cache, args.set))
    plan = make_plan(spec)
    paths = resolve_paths(spec, plan, base_dir=REPO_ROOT)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    version = code_version()

    def ctx_for(job) -> RunContext:  # as harness.runner._run_jobs builds it
        return RunContext(
            spec.name,
            paths.workdir,
            paths.world,
            version,
            num_threads=max(1, int(job.resources.get("num_cpus", 1))),
            data_dir=paths.data,
        )

    floor = [j for j in plan.jobs.values() if j.coords.get("method") == "none"]
    by_kind = {j.kind: j for j in floor}
    world = plan.of_kind("world")[0]
    for job in (world, by_kind["init"], by_kind["features"]):
        t0 = time.perf_counter()
        execute(job, ctx_for(job))
        log(
            f"  {job.kind} job {job.key[:8]} ready in {time.perf_counter() - t0:.1f}s (in-process; cached after the "
            "first run)"
        )
    job = by_kind["eval"]
    assert job.config["protocol"] == "linear" and job.deps[0] == by_kind["init"].key
    return job, ctx_for(job)


def noop(job, ctx, *upstream) -> dict[str, Any]:
    return {}


def worker_niceness() -> int:
    return os.nice(0)


def timed_eval(job, ctx, *upstream):
    """A Ray task's body: the runner's task function, plus its own seconds and the worker's pid."""
    from harness.runner import _task

    t0 = time.perf_counter()
    result = _task(job, ctx, *upstream)
    return result, time.perf_counter() - t0, os.getpid()


def timed_noop(job, ctx, *upstream):
    t0 = time.perf_counter()
    result = noop(job, ctx, *upstream)
    return result, time.perf_counter() - t0, os.getpid()


def bench_ray(args: argparse.Namespace) -> dict[str, Any]:
    from harness.runner import _task

    log(
        f"evaluation job: linear on {args.set} (shots 1/5/10/20/full x 3 seeds) from the random-init test_resnet, "
        "world scale 0.1"
    )
    job, ctx = prepare_eval(args)
    rows = len(_task(job, ctx)["runs"])
    log(f"  eval job {job.key[:8]}: {rows} rows per run; ctx num_threads={ctx.num_threads}")

    # A Ray worker runs an eval task with OMP_NUM_THREADS=1 (its num_cpus), so its BLAS has one
    # thread; give the in-process calls the same (torch's threads are set by execute either way).
    from threadpoolctl import threadpool_limits

    blas = threadpool_limits(limits=max(1, ctx.num_threads))
    try:
        return _measure(args, job, ctx, rows)
    finally:
        blas.restore_original_limits()


def _measure(args: argparse.Namespace, job, ctx, rows: int) -> dict[str, Any]:
    from harness.runner import _task

    bodies = {"eval": (_task, args.tasks), "noop": (noop, args.noop_tasks)}
    res: dict[str, Any] = {name: {} for name in bodies}

    # (a) in-process, before Ray exists
    for name, (body, n) in bodies.items():
        for _ in range(args.warmup):
            body(job, ctx)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            body(job, ctx)
            times.append(time.perf_counter() - t0)
        res[name]["inproc_alone"] = times

    import ray

    if args.worker_niceness is not None:
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    init_s = time.perf_counter() - t0
    opts = {
        "num_cpus": job.resources.get("num_cpus", 1),
        "num_gpus": job.resources.get("num_gpus", 0),
        "max_retries": 1,
        "retry_exceptions": True,
    }  # what _run_jobs gives an eval job
    remotes = {"eval": ray.remote(timed_eval).options(**opts), "noop": ray.remote(timed_noop).options(**opts)}
    try:
        t0 = time.perf_counter()
        ray.get(remotes["noop"].remote(job, ctx))
        first_noop_s = time.perf_counter() - t0
        worker_nice = ray.get(ray.remote(worker_niceness).options(num_cpus=1).remote())
        t0 = time.perf_counter()
        ray.get(remotes["eval"].remote(job, ctx))
        first_eval_s = time.perf_counter() - t0
        # warm every worker: rounds of tasks submitted at once (a round of --cpus lands on each worker)
        pids: set[int] = set()
        for _ in range(max(1, args.warmup)):
            for _, _, pid in ray.get([remotes["eval"].remote(job, ctx) for _ in range(args.cpus)]):
                pids.add(pid)
        log(
            f"ray.init {init_s:.2f}s; first no-op task {first_noop_s:.2f}s, first eval task {first_eval_s:.2f}s "
            f"(worker start, torch import, data load: not counted); {len(pids)} worker(s) warm, "
            f"niceness {worker_nice} (this process: {os.nice(0)})"
        )

        for name, (body, n) in bodies.items():
            remote = remotes[name]
            for _ in range(args.warmup):
                ray.get(remote.remote(job, ctx))
            # (a') in-process and (b) Ray sequential, interleaved call by call
            inproc, seq, seq_body = [], [], []
            for _ in range(n):
                t0 = time.perf_counter()
                body(job, ctx)
                inproc.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _, inner, _ = ray.get(remote.remote(job, ctx))
                seq.append(time.perf_counter() - t0)
                seq_body.append(inner)
            # (c) all at once, in rounds, each after a block of as many in-process calls
            blocks, walls, batch_body, workers = [], [], [], set()
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for _ in range(n):
                    body(job, ctx)
                blocks.append((time.perf_counter() - t0) / n)
                t0 = time.perf_counter()
                outs = ray.get([remote.remote(job, ctx) for _ in range(n)])
                walls.append((time.perf_counter() - t0) / n)
                batch_body += [o[1] for o in outs]
                workers |= {o[2] for o in outs}
            res[name].update(
                inproc=inproc,
                seq=seq,
                seq_body=seq_body,
                block=blocks,
                batch=walls,
                batch_body=batch_body,
                batch_workers=len(workers),
            )
    finally:
        ray.shutdown()

    out: dict[str, Any] = {
        "worker_niceness": worker_nice,
        "driver_niceness": os.nice(0),
        "ray_init_s": init_s,
        "first_noop_task_s": first_noop_s,
        "first_eval_task_s": first_eval_s,
        "cpus": args.cpus,
        "eval_rows": rows,
        "eval_job": job.key,
        "set": args.set,
    }
    for name, r in res.items():
        n = len(r["inproc"])
        alone, inproc = statistics.median(r["inproc_alone"]), statistics.median(r["inproc"])
        seq, seq_body = statistics.median(r["seq"]), statistics.median(r["seq_body"])
        block, per_batch = statistics.median(r["block"]), statistics.median(r["batch"])
        out[name] = {
            "n": n,
            "inproc_alone_ms": 1e3 * alone,
            "inproc_ms": 1e3 * inproc,
            "ray_seq_ms": 1e3 * seq,
            "ray_seq_body_ms": 1e3 * seq_body,
            "ray_seq_mean_ms": 1e3 * statistics.fmean(r["seq"]),
            "inproc_mean_ms": 1e3 * statistics.fmean(r["inproc"]),
            "inproc_block_ms": 1e3 * block,
            "ray_batch_ms_per_task": 1e3 * per_batch,
            "ray_batch_body_median_ms": 1e3 * statistics.median(r["batch_body"]),
            "ray_batch_workers": r["batch_workers"],
            "overhead_seq_ms": 1e3 * (seq - inproc),
            "overhead_seq_outside_body_ms": 1e3 * statistics.median(s - b for s, b in zip(r["seq"], r["seq_body"])),
            "overhead_batch_ms": 1e3 * (per_batch - block),
            "ratio_seq": seq / inproc,
            "ratio_batch": per_batch / block,
            "ratio_batch_rounds": [w / b for w, b in zip(r["batch"], r["block"])],
            "ratio_seq_vs_alone": seq / alone,
            "raw_s": {k: r[k] for k in ("inproc_alone", "inproc", "seq", "seq_body", "block", "batch", "batch_body")},
        }
    return out


# --------------------------------------------------------------------------- main


def print_ray_table(r: dict[str, Any], cpus: int) -> None:
    log()
    log(f"{'per task, ms (median)':<34}{'eval (linear)':>12} {'no-op':>12}")
    e, z = r["eval"], r["noop"]
    rows = [
        ("calls/tasks per mode", f"{e['n']}", f"{z['n']}"),
        ("(a) in-process, before ray.init", f"{e['inproc_alone_ms']:.1f}", f"{z['inproc_alone_ms'] * 1e3:.2f} us"),
        ("(a) in-process, between (b)'s", f"{e['inproc_ms']:.1f}", f"{z['inproc_ms'] * 1e3:.2f} us"),
        ("(b) Ray, one at a time", f"{e['ray_seq_ms']:.1f}", f"{z['ray_seq_ms']:.2f}"),
        ("    its body, in the worker", f"{e['ray_seq_body_ms']:.1f}", f"{z['ray_seq_body_ms'] * 1e3:.2f} us"),
        ("(a) in-process, blocks before (c)", f"{e['inproc_block_ms']:.1f}", f"{z['inproc_block_ms'] * 1e3:.2f} us"),
        (
            f"(c) Ray, all at once ({cpus} CPUs)",
            f"{e['ray_batch_ms_per_task']:.1f}",
            f"{z['ray_batch_ms_per_task']:.2f}",
        ),
        (
            f"    x {cpus} (core-ms per task)",
            f"{e['ray_batch_ms_per_task'] * cpus:.1f}",
            f"{z['ray_batch_ms_per_task'] * cpus:.2f}",
        ),
        (
            "    its body, in the worker",
            f"{e['ray_batch_body_median_ms']:.1f}",
            f"{z['ray_batch_body_median_ms'] * 1e3:.2f} us",
        ),
        ("overhead (b) - (a), ms/task", f"{e['overhead_seq_ms']:+.1f}", f"{z['overhead_seq_ms']:+.2f}"),
        (
            "  (b) round trip - its body",
            f"{e['overhead_seq_outside_body_ms']:+.1f}",
            f"{z['overhead_seq_outside_body_ms']:+.2f}",
        ),
        ("overhead (c) - (a), ms/task", f"{e['overhead_batch_ms']:+.1f}", f"{z['overhead_batch_ms']:+.2f}"),
        ("ratio (b) / (a)", f"{e['ratio_seq']:.2f}x", f"{z['ratio_seq']:,.0f}x"),
        ("ratio (c) / (a)", f"{e['ratio_batch']:.2f}x", f"{z['ratio_batch']:,.0f}x"),
    ]
    for label, a, b in rows:
        log(f"{label:<34}{a:>12} {b:>12}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    env = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "loadavg_start": os.getloadavg(),
    }
    log(
        f"orchestration: {env['cpu_count']} CPUs, load average {', '.join(f'{x:.2f}' for x in env['loadavg_start'])}, "
        f"Python {env['python']}"
    )
    summary: dict[str, Any] = {"bench": "orchestration", "env": env}
    if not args.skip_plan:
        summary["planning"] = bench_planning(args)
    if not args.skip_ray:
        import ray
        import torch

        env.update(ray=ray.__version__, torch=torch.__version__)
        summary["ray"] = bench_ray(args)
    env["loadavg_end"] = os.getloadavg()

    log()
    log(f"load average at the end: {', '.join(f'{x:.2f}' for x in env['loadavg_end'])}")
    if "planning" in summary:
        p = summary["planning"]
        per_job_us = 1e6 * p["make_plan_s"] / p["jobs"]
        log(
            f"planning {p['jobs']:,} jobs ({', '.join(f'{k} {v:,}' for k, v in p['jobs_by_kind'].items())}), "
            f"median of {args.plan_reps}:"
        )
        log(f"  {'parse_spec (validate the dict)':<38}{p['parse_spec_s']:>9.4f} s")
        log(
            f"  {'make_plan':<38}{p['make_plan_s']:>9.3f} s   ({per_job_us:.0f} us/job; "
            f"{per_job_us * 10_000 / 1e6:.2f} s per 10,000 jobs)"
        )
        log(f"  {'expected_rows (' + format(p['expected_rows'], ',') + ' rows)':<38}{p['expected_rows_s']:>9.3f} s")
        log(
            f"  {'done_keys, empty workdir':<38}{p['done_keys_empty_s']:>9.3f} s   "
            f"({1e6 * p['done_keys_empty_s'] / p['jobs']:.1f} us/job)"
        )
        log(
            f"  {'first call, registry imports':<38}{p['parse_spec_cold_s'] + p['make_plan_cold_s']:>9.3f} s   (once "
            "per process)"
        )
    if "ray" in summary:
        r = summary["ray"]
        log(
            f"Ray: ray.init {r['ray_init_s']:.2f} s, first eval task {r['first_eval_task_s']:.2f} s (not counted); "
            f"workers at niceness {r['worker_niceness']}, this process at {r['driver_niceness']}"
        )
        print_ray_table(r, args.cpus)
        e = r["eval"]
        log()
        log(
            f"Ray / in-process per evaluation task: {e['ratio_seq']:.3f}x one at a time "
            f"({e['overhead_seq_ms']:+.1f} ms), {e['ratio_batch']:.3f}x ({e['overhead_batch_ms']:+.1f} ms) with "
            f"{args.tasks} submitted at once on "
            f"{args.cpus} CPUs; pure Ray cost per task (no-op): {r['noop']['ray_seq_ms']:.2f} ms one at a time, "
            f"{r['noop']['ray_batch_ms_per_task']:.2f} ms at once"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, default=str))
        log(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
