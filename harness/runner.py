"""The Ray runner: submits a plan's unfinished jobs as Ray tasks and lands every row in the store.

Dependencies are expressed the way Ray expresses them: a job's task receives the object refs
of its inputs' tasks, so Ray starts it when they are done (an evaluation starts as soon as its
checkpoint exists) and fails it with the upstream error when one of them failed. Nothing here
schedules, queues or pools workers by hand. Finished jobs are skipped before Ray even starts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.artifacts import is_done, job_dir, mark_done
from harness.executors import RunContext, clean_unfinished, execute, failed_rows, spectra_rows
from harness.plan import KINDS, Job, Plan, make_plan
from harness.spec import Spec

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    planned_jobs: int
    already_done: int
    ran: Counter = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)  # job key -> error
    rows_written: int = 0
    planned_rows: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class Paths:
    workdir: Path
    store: Path
    report: Path
    world: Path
    data: Path | None = None  # real and declared sets with relative paths (None: $TBENCH_DATA or ~/tbench-data)


def resolve_paths(spec: Spec, plan: Plan, *, base_dir: Path | None = None, workdir: str | Path | None = None,
                  store: str | Path | None = None) -> Paths:
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    wd = Path(workdir) if workdir is not None else spec.path("workdir", base)
    st = Path(store) if store is not None else spec.path("store", base)
    world_job = plan.of_kind("world")[0]
    world = Path(spec.world.dir) if spec.world.dir else job_dir(wd, "world", world_job.key)
    if not world.is_absolute():
        world = base / world
    data = None
    if spec.downstream.data_dir:
        data = Path(spec.downstream.data_dir).expanduser()
        data = data if data.is_absolute() else base / data
    return Paths(wd.absolute(), st.absolute(), spec.path("report", base).absolute(), world.absolute(), data)


def code_version() -> str:
    """The git commit of the code that produced a row (with '+dirty' for local edits).

    A job submitted to a cluster runs from an uploaded copy without ``.git``: ``tbench submit``
    passes the submitting checkout's version in ``TBENCH_CODE_VERSION``."""
    sent = os.environ.get("TBENCH_CODE_VERSION", "").strip()
    if sent:
        return sent
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"transfer-bench=={version('transfer-bench')}"


def _short_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    while getattr(cause, "cause", None) is not None and cause is not cause.cause:
        cause = cause.cause
    text = f"{type(cause).__name__}: {cause}"
    return text.strip()[-2000:]


def run(spec: Spec, *, base_dir: Path | None = None, workdir: str | Path | None = None,
        store: str | Path | None = None, address: str | None = None, num_cpus: int | None = None,
        progress: bool = True, kinds: tuple[str, ...] | None = None) -> RunSummary:
    """Run every unfinished job of ``spec``; rows of finished evaluations land in the store.

    ``kinds``: run only jobs of these kinds (e.g. ``("world", "view")`` for `tbench data curate`).
    """
    from results.store import Store

    t0 = time.perf_counter()
    plan = make_plan(spec)
    paths = resolve_paths(spec, plan, base_dir=base_dir, workdir=workdir, store=store)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    st = Store(paths.store)
    done = plan.done_keys(paths.workdir, st.part_keys("runs"))
    todo = [j for j in plan.jobs.values() if j.key not in done and (kinds is None or j.kind in kinds)]
    summary = RunSummary(len(plan.jobs), len(done), planned_rows=plan.planned_rows())
    if not todo:
        _backfill(plan, paths, st)
        summary.seconds = time.perf_counter() - t0
        return summary

    import ray

    # A Ray Train run waits for its workers' CPUs while evaluations hold them; by default Train
    # gives up after 60 s and restarts its worker group (new processes, torch imported again),
    # which on a small machine costs more than the wait. Let it wait instead.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "3600")
    started_ray = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR, "configure_logging": True}
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A Ray instance of our own, on this machine: no node is ever preempted, so Train's
            # preemption watcher (one more actor process importing Ray Train) is not started,
            # and the controller polls its workers every 0.5 s rather than 2 s. Measured on 2
            # cores: about 4 s less per pre-training run (27 s -> 23 s of Ray Train overhead).
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
            os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
            cpus = num_cpus or os.cpu_count() or 1
            ray.init(num_cpus=cpus, resources={TRAINER_SLOT: _trainer_slots(spec, cpus), VIEW_SLOT: 1}, **kwargs)
        started_ray = True
    try:
        _run_jobs(plan, todo, done, paths, st, summary, progress)
    finally:
        if started_ray:
            ray.shutdown()
    _backfill(plan, paths, st)
    summary.seconds = time.perf_counter() - t0
    return summary


TRAINER_SLOT = "tbench_trainer_slot"
# A view built with Ray Data spreads over every CPU by itself; on a local Ray one is built at a
# time (each asks for this slot), or every view's coordinator would start its own Ray Data job
# at once and crowd the machine with worker processes. A cluster has no slot: no limit.
VIEW_SLOT = "tbench_view_slot"


def _trainer_slots(spec: Spec, cpus: int) -> int:
    """How many Ray Train runs fit side by side on a local Ray of ``cpus`` CPUs.

    The task that drives a Ray Train run holds no CPU (its workers reserve their own), so on a
    local machine it holds one of these slots instead: without them every pre-training would
    start its controller and worker processes at once and wait for CPUs, crowding the machine.
    On a cluster the autoscaler decides and no slot is asked for.
    """
    r = spec.resources.pretrain
    return max(1, int(cpus // max(r.num_workers * r.cpus_per_worker, 1e-9)))


def _run_jobs(plan: Plan, todo: list[Job], done: set[str], paths: Paths, st, summary: RunSummary,
              progress: bool) -> None:
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    remote = ray.remote(_task)
    version = code_version()
    refs: dict[str, Any] = {}
    pending: dict[Any, Job] = {}
    retries = plan.spec.resources.max_retries
    for job in todo:
        ctx = RunContext(plan.spec.name, paths.workdir, paths.world, version,
                         num_threads=max(1, int(job.resources.get("num_cpus", 1))), data_dir=paths.data)
        if job.kind == "pretrain":
            # Ray Train reserves the workers' CPUs/GPUs itself; the task that drives it holds none.
            opts = {"num_cpus": 0, "max_retries": 0}
            if TRAINER_SLOT in ray.cluster_resources():
                opts["resources"] = {TRAINER_SLOT: 1}
        elif job.kind == "view" and job.resources.get("engine", "auto") != "local":
            # The view task coordinates a Ray Data job whose tasks take the CPUs; holding one
            # itself could starve them on a small machine.
            opts = {"num_cpus": 0, "max_retries": retries, "retry_exceptions": True}
            if VIEW_SLOT in ray.cluster_resources():
                opts["resources"] = {VIEW_SLOT: 1}
        else:
            opts = {"num_cpus": job.resources.get("num_cpus", 1), "num_gpus": job.resources.get("num_gpus", 0),
                    "max_retries": retries, "retry_exceptions": True}
        upstream = [refs[d] for d in job.deps if d in refs]
        ref = remote.options(name=f"{job.kind}:{job.key[:8]}", **opts).remote(job, ctx, *upstream)
        refs[job.key] = ref
        pending[ref] = (job, ctx)

    kinds = Counter(j.kind for j in todo)
    cols = [TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*cols, disable=not progress, transient=False) as bar:
        tasks = {k: bar.add_task(k, total=kinds[k]) for k in KINDS if kinds[k]}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            job, ctx = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # the job (or one it depends on) failed: record it, go on
                err = _short_error(exc)
                summary.failed[job.key] = err
                log.error("%s failed: %s", job.label, err)
                if job.kind == "eval":
                    rows = failed_rows(job, ctx, err)
                    st.write_part("runs", job.key, rows)
                    summary.rows_written += len(rows)
            else:
                if job.kind == "eval":
                    st.write_part("curves", job.key, result["curves"])
                    st.write_part("runs", job.key, result["runs"])  # the rows land before the marker
                    mark_done(job_dir(paths.workdir, "eval", job.key), {"rows": len(result["runs"])})
                    summary.rows_written += len(result["runs"])
                elif job.kind == "view":
                    _write_view_row(st, job, ctx.spec_name, paths)
                elif job.kind == "features":
                    st.write_part("spectra", job.key, spectra_rows(job, ctx))
                summary.ran[job.kind] += 1
            bar.advance(tasks[job.kind])


def _task(job: Job, ctx: RunContext, *upstream: Any) -> dict[str, Any]:
    """The body of every Ray task: upstream results arrive as arguments only to order the work."""
    logging.basicConfig(level=logging.WARNING)
    clean_unfinished(job, ctx)
    return execute(job, ctx)


def _backfill(plan: Plan, paths: Paths, st) -> None:
    """Give every finished view its `views` row and every finished feature cache its `spectra`
    rows (e.g. after the store was moved or wiped, or the work was done by an older version)."""
    have = st.part_keys("views")
    for job in plan.of_kind("view"):
        if job.key not in have and is_done(job_dir(paths.workdir, "view", job.key)):
            _write_view_row(st, job, plan.spec.name, paths)
    have = st.part_keys("spectra")
    for job in plan.of_kind("features"):
        if job.key not in have and is_done(job_dir(paths.workdir, "features", job.key)):
            ctx = RunContext(plan.spec.name, paths.workdir, paths.world, "", data_dir=paths.data)
            st.write_part("spectra", job.key, spectra_rows(job, ctx))


def _write_view_row(st, job: Job, spec_name: str, paths: Paths) -> None:
    import json

    manifest = json.loads((job_dir(paths.workdir, "view", job.key) / "manifest.json").read_text())
    st.write_part("views", job.key, [{
        "view_key": job.key,
        "spec": spec_name,
        "created_at": datetime.now(timezone.utc),
        "source": job.coords["source"],
        "curation": job.coords["curation"],
        "requested_size": manifest.get("requested_size"),
        "size": manifest.get("size"),
        "label_noise": manifest.get("label_noise"),
        "achieved_noise": manifest.get("achieved_noise"),
        "label_accuracy": manifest.get("label_accuracy"),
        "num_classes": manifest.get("num_classes"),
        "funnel": json.dumps(manifest.get("funnel", {})),
        "pool_size": manifest.get("pool_size"),
        "noise_model": manifest.get("noise_model", "symmetric"),
        "materialize": manifest.get("materialize", "shards"),
        "details": json.dumps({"steps": manifest.get("steps", {}), "per_source": manifest.get("per_source", {}),
                               "achieved_noise_per_class": manifest.get("achieved_noise_per_class"),
                               "skipped_samples": manifest.get("skipped_samples", 0)}),
    }])
