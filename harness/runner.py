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
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.core.artifacts import is_done, job_dir
from harness.executors import RunContext, clean_unfinished, execute, failed_rows, publish, spectra_rows, stage_inputs
from harness.plan import KINDS, Job, Plan, make_plan
from harness.spec import Spec
from harness.workdir import Workdir

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
    started_early: int = 0  # jobs started on a mid-training checkpoint while its run was still training

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class Paths:
    workdir: Path  # where jobs read and write: the workdir itself, or the local cache of one on object storage
    store: str | Path  # a folder or an object-store URI (see results.store)
    report: Path
    world: Path
    data: Path | None = None  # real and declared sets with relative paths (None: $TBENCH_DATA or ~/tbench-data)
    wd: Workdir | None = None  # the workdir (harness.workdir), remote or not
    world_key: str | None = None  # the world job's key when the world lives in the workdir

    @property
    def remote(self) -> Workdir | None:
        """The workdir when it is on object storage (jobs then sync through a local cache)."""
        return self.wd if self.wd is not None and self.wd.is_remote else None


def _location(text: str | os.PathLike[str], base: Path) -> str | Path:
    """A URI (``s3://bucket/prefix?...``) as given, a path made absolute against ``base``."""
    text = os.fspath(text)
    if "://" in text and not text.startswith("file://"):
        return text
    p = Path(text.removeprefix("file://")).expanduser()
    return (p if p.is_absolute() else base / p).absolute()


def resolve_paths(
    spec: Spec,
    plan: Plan,
    *,
    base_dir: Path | None = None,
    workdir: str | Path | None = None,
    store: str | Path | None = None,
) -> Paths:
    """Where a run's workdir, store, report, world and data live. ``workdir`` and ``store`` may
    be object-store URIs (``s3://bucket/prefix``, see harness.workdir and results.store)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    wd = Workdir(_location(workdir if workdir is not None else spec.workdir.format(name=spec.name), base))
    st = _location(store if store is not None else spec.store.format(name=spec.name), base)
    world_job = plan.of_kind("world")[0]
    world_key = None
    if spec.world.dir:
        world = Path(spec.world.dir)
        world = world if world.is_absolute() else base / world
    else:
        world, world_key = wd.dir("world", world_job.key), world_job.key
    data = None
    if spec.downstream.data_dir:
        data = Path(spec.downstream.data_dir).expanduser()
        data = data if data.is_absolute() else base / data
    return Paths(wd.local, st, spec.path("report", base).absolute(), world.absolute(), data, wd, world_key)


def done_keys(plan: Plan, paths: Paths, store_keys: set[str] | None = None) -> set[str]:
    """Keys of the plan's finished jobs. A local workdir: one marker check per job
    (:meth:`Plan.done_keys`); one on object storage: one listing per job kind."""
    if paths.world_key is None:  # the spec's own world folder (world.dir), outside the workdir
        world_done = {j.key for j in plan.of_kind("world") if is_done(paths.world)}
    else:
        world_done = set()
    if paths.remote is None:
        return plan.done_keys(paths.workdir, store_keys) | world_done
    marked = {kind: paths.wd.done_keys(kind) for kind in KINDS}
    marked["world"] |= world_done
    done = set()
    for job in plan.jobs.values():
        if job.key not in marked[job.kind]:
            continue
        if job.kind == "eval" and store_keys is not None and job.key not in store_keys:
            continue
        done.add(job.key)
    return done


def code_version() -> str:
    """The git commit of the code that produced a row (with '+dirty' for local edits).

    A job submitted to a cluster runs from an uploaded copy without ``.git``: ``tbench submit``
    passes the submitting checkout's version in ``TBENCH_CODE_VERSION``."""
    sent = os.environ.get("TBENCH_CODE_VERSION", "").strip()
    if sent:
        return sent
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
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


def run(
    spec: Spec,
    *,
    base_dir: Path | None = None,
    workdir: str | Path | None = None,
    store: str | Path | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    kinds: tuple[str, ...] | None = None,
) -> RunSummary:
    """Run every unfinished job of ``spec``; rows of finished evaluations land in the store.

    ``kinds``: run only jobs of these kinds (e.g. ``("world", "view")`` for `tbench data curate`).
    """
    from results.store import Store

    t0 = time.perf_counter()
    plan = make_plan(spec)
    paths = resolve_paths(spec, plan, base_dir=base_dir, workdir=workdir, store=store)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    st = Store(paths.store)
    done = done_keys(plan, paths, st.part_keys("runs"))
    todo = [j for j in plan.jobs.values() if j.key not in done and (kinds is None or j.kind in kinds)]
    summary = RunSummary(len(plan.jobs), len(done), planned_rows=plan.planned_rows())
    check_models(todo)
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
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
            "configure_logging": True,
        }
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
    asks_gpu = spec.resources.pretrain.gpus_per_worker > 0 or any(j.resources.get("num_gpus", 0) > 0 for j in todo)
    cpu_only = False
    if asks_gpu and not ray.cluster_resources().get("GPU"):
        if address:  # an autoscaling cluster may have no GPU node yet: the asks stand
            log.warning("the cluster has no GPU yet; jobs asking for GPUs wait until GPU nodes join")
        else:  # this machine has none: everything falls back to CPU
            cpu_only = True
            log.warning(
                "no GPU on this machine: pre-training and evaluations run on CPU "
                "(the spec's GPU asks apply on a cluster)"
            )
    try:
        _run_jobs(plan, todo, done, paths, st, summary, progress, cpu_only=cpu_only)
    finally:
        if started_ray:
            ray.shutdown()
    _backfill(plan, paths, st)
    summary.seconds = time.perf_counter() - t0
    return summary


def check_models(todo: list[Job]) -> None:
    """Load every existing model still to import, here and before any work starts: an unknown
    architecture, missing weights or weights that do not fit raise
    :class:`pretrain.existing.ModelError` naming the model (each problem of every model, together)."""
    from pretrain.existing import ExistingModel, ModelError, check_model

    problems = []
    for job in (j for j in todo if j.kind == "model"):
        try:
            check_model(ExistingModel.from_job(job.config))
        except ModelError as exc:
            problems.append(str(exc))
    if problems:
        raise ModelError("\n".join(problems))


TRAINER_SLOT = "tbench_trainer_slot"
# A view built with Ray Data spreads over every CPU by itself; on a local Ray one is built at a
# time (each asks for this slot), or every view's coordinator would start its own Ray Data job
# at once and crowd the machine with worker processes. A cluster has no slot: no limit.
VIEW_SLOT = "tbench_view_slot"


def _trainer_slots(spec: Spec, cpus: int) -> int:
    """How many Ray Train runs (two or more workers) fit side by side on a local Ray of ``cpus`` CPUs.

    The task that drives a Ray Train run holds no CPU (its workers reserve their own), so on a
    local machine it holds one of these slots instead: without them every pre-training would
    start its controller and worker processes at once and wait for CPUs, crowding the machine.
    On a cluster the autoscaler decides and no slot is asked for. A one-worker run holds its CPUs
    in its own task and needs no slot.
    """
    r = spec.resources.pretrain
    return max(1, int(cpus // max(r.num_workers * r.cpus_per_worker, 1e-9)))


GATE_POLL_S = 1.0  # how often the driver looks for mid-training checkpoints that unblock evaluations


def _early_epoch(job: Job, dep: Job) -> int | None:
    """The checkpoint epoch ``job`` needs from pre-training ``dep`` when it is not that run's last
    epoch (such a job may start as soon as the checkpoint exists), else None."""
    if dep.kind != "pretrain" or job.kind not in ("features", "eval"):
        return None
    epoch, epochs = job.config.get("epoch"), dep.config.get("epochs")  # a samples_seen run has no "epochs":
    return epoch if isinstance(epoch, int) and (epochs is None or epoch < epochs) else None  # its ints precede LAST


class Scheduler:
    """Which of a run's jobs may be submitted now, and which running tasks each must wait for.

    A job may go once each of its inputs is finished (before or during this run) or submitted:
    it then waits for the submitted ones' tasks (Ray starts it when they end). A job that reads a
    mid-training checkpoint of a pre-training run of this run is held instead until that
    checkpoint exists (``checkpoint_ready(run key, epoch)``), then goes without waiting for the
    run: it does not wait for the rest of the training, and still runs if the run later fails.
    A job whose input failed is given up with that error. Pure bookkeeping, no Ray: the runner
    passes :meth:`release` its submit function and reports what ends.
    """

    def __init__(self, plan: Plan, todo: list[Job], checkpoint_ready: Callable[[str, int], bool]):
        self.plan = plan
        self.todo_keys = {j.key for j in todo}
        self.waiting = list(todo)  # not yet submitted, in dependency order
        self.handles: dict[str, Any] = {}  # submitted job key -> its task (what dependants wait for)
        self.finished: set[str] = set()
        self.failed: dict[str, str] = {}
        self.early: list[tuple[str, str]] = []  # (job, run) released on a checkpoint of a run still training
        self._checkpoint_ready = checkpoint_ready
        self._ready: set[tuple[str, int]] = set()  # checkpoints known to exist
        self._absent: set[tuple[str, int]] = set()  # checkpoints missing in this pass of release()

    def _checkpoint(self, run: str, epoch: int) -> bool:
        """Whether the checkpoint exists: asked once per checkpoint per pass (every feature cache
        and evaluation of a checkpoint waits on the same file), and never again once it does."""
        if (run, epoch) not in self._ready and (run, epoch) not in self._absent:
            if self._checkpoint_ready(run, epoch):
                self._ready.add((run, epoch))
            else:
                self._absent.add((run, epoch))
        return (run, epoch) in self._ready

    def _inputs(self, job: Job) -> tuple[bool, list[Any], str | None, list[str]]:
        """(still held, handles to wait for, error of an input that failed, runs skipped early)."""
        handles, early = [], []
        for d in job.deps:
            if d not in self.todo_keys:
                continue  # finished before this run
            if d in self.finished:
                handles.append(self.handles[d])
                continue
            dep = self.plan.jobs[d]
            epoch = _early_epoch(job, dep)
            if epoch is not None and self._checkpoint(d, epoch):
                early.append(d)  # the checkpoint it reads exists: no need to wait for the rest of the run
                continue
            if d in self.failed:
                return False, [], f"input failed: {dep.label}: {self.failed[d]}", []
            if d not in self.handles or epoch is not None:
                return True, [], None, []
            handles.append(self.handles[d])
        return False, handles, None, early

    def release(self, submit: Callable[[Job, list[Any]], Any]) -> list[tuple[Job, str]]:
        """Submit every job that may go now: ``submit(job, handles it waits for)`` returns the
        job's handle (its task). Returns the jobs given up, each with the error of an input."""
        give_up, still = [], []
        self._absent.clear()
        for job in self.waiting:
            held, handles, err, early = self._inputs(job)
            if held:
                still.append(job)
            elif err is not None:
                give_up.append((job, err))
                self.failed[job.key] = err
            else:
                self.handles[job.key] = submit(job, handles)
                self.early += [(job.key, run) for run in early if run not in self.finished]
        self.waiting = still
        return give_up

    def done(self, key: str) -> None:
        self.finished.add(key)

    def fail(self, key: str, error: str) -> None:
        self.failed[key] = error


def _run_jobs(
    plan: Plan,
    todo: list[Job],
    done: set[str],
    paths: Paths,
    st,
    summary: RunSummary,
    progress: bool,
    cpu_only: bool = False,
) -> None:
    """Submit ``todo`` as Ray tasks and land their results as they finish.

    A job is submitted once every input it needs is finished or submitted: Ray starts it when the
    tasks it depends on end (their refs are its arguments). A job that reads a mid-training
    checkpoint of a run still training is held here instead and submitted as soon as that
    checkpoint's file exists, without the run's ref: it does not wait for the rest of the run (and
    still runs if the run later fails). Ray retries a task that raises ``max_retries`` times; each
    attempt's error is logged under ``<workdir>/attempts/``, and a job that still fails is recorded
    (an evaluation as one `failed` row per shots and seed) while the rest goes on. ``cpu_only``:
    drop every GPU ask (a local Ray on a machine without one).
    """
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    sched = Scheduler(plan, todo, lambda run, epoch: checkpoint_ready(paths, run, epoch))
    kinds = Counter(j.kind for j in todo)
    cols = [TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*cols, disable=not progress, transient=False) as bar:
        tasks = {k: bar.add_task(k, total=kinds[k]) for k in KINDS if kinds[k]}
        flight = _InFlight(plan, paths, st, summary, sched, bar, tasks, cpu_only=cpu_only)
        flight.release()
        while flight.pending or sched.waiting:
            if not flight.pending:  # cannot happen: a held job waits on a running pre-training
                for job in sched.waiting:
                    flight.record_failure(
                        job, flight.context(job), "never became runnable (an input neither ran nor failed)"
                    )
                break
            ready, _ = ray.wait(list(flight.pending), num_returns=1, timeout=GATE_POLL_S if sched.waiting else None)
            for ref in ready:
                flight.land(ref)
            if sched.waiting:
                flight.release()
    summary.started_early = len(sched.early)


class _InFlight:
    """One run's Ray tasks in flight: submits the jobs the scheduler releases and lands (or
    records as failed) each task that ends.

    It holds what every submission and landing shares (the remote function, the run's id and code
    version, the store, the summary and the progress bar), so :func:`_run_jobs` is the wait loop.
    """

    def __init__(
        self, plan: Plan, paths: Paths, st, summary: RunSummary, sched: Scheduler, bar, tasks, *, cpu_only: bool
    ):
        import ray

        self.remote = ray.remote(_task)
        self.version = code_version()
        self.run_id = uuid.uuid4().hex[:12]
        self.retries = plan.spec.resources.max_retries
        self.plan, self.paths, self.st, self.summary, self.sched = plan, paths, st, summary, sched
        self.bar, self.tasks, self.cpu_only = bar, tasks, cpu_only
        self.pending: dict[Any, tuple[Job, RunContext]] = {}

    def context(self, job: Job) -> RunContext:
        """The context ``job``'s task runs with (this run's id and code version)."""
        return _job_context(
            self.plan, self.paths, job, version=self.version, run_id=self.run_id, cpu_only=self.cpu_only
        )

    def record_failure(self, job: Job, ctx: RunContext, err: str) -> None:
        """A job given up: the scheduler and the summary learn it, an evaluation gets its `failed` rows."""
        self.sched.fail(job.key, err)
        self.summary.failed[job.key] = err
        log.error("%s failed: %s", job.label, err)
        if job.kind == "eval":
            rows = failed_rows(job, ctx, err)
            self.st.write_part("runs", job.key, rows)
            self.summary.rows_written += len(rows)
        self.bar.advance(self.tasks[job.kind])

    def submit(self, job: Job, handles: list[Any]) -> Any:
        """Start ``job``'s task on the refs it waits for; its ref is its handle for the jobs after it."""
        ctx = self.context(job)
        options = _task_options(job, self.retries, self.cpu_only)
        ref = self.remote.options(name=f"{job.kind}:{job.key[:8]}", **options).remote(job, ctx, *handles)
        self.pending[ref] = (job, ctx)
        return ref

    def release(self) -> None:
        """Submit every job that may go now; one whose input failed is recorded as failed."""
        for job, err in self.sched.release(self.submit):
            self.record_failure(job, self.context(job), err)

    def land(self, ref: Any) -> None:
        """Land the result of the task ``ref`` that ended, or record its failure (the rest goes on):
        the job's own after its attempts (counted in the workdir), else the input's that failed."""
        import ray

        job, ctx = self.pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # the job (or one it depends on) failed: record it, go on
            n = attempts_of(self.paths.wd, job.key, self.run_id)
            err = _short_error(exc)
            self.record_failure(job, ctx, f"{err} [failed {n} attempt(s)]" if n else f"input failed: {err}")
            return
        _land_result(job, ctx, result, self.st, self.paths, self.summary)
        self.sched.done(job.key)
        self.summary.ran[job.kind] += 1
        self.bar.advance(self.tasks[job.kind])


def _job_context(plan: Plan, paths: Paths, job: Job, *, version: str, run_id: str, cpu_only: bool) -> RunContext:
    """The context a job's task runs with (its threads, the workdir's paths, its inputs' kinds)."""
    return RunContext(
        plan.spec.name,
        paths.workdir,
        paths.world,
        version,
        num_threads=max(1, int(job.resources.get("num_cpus", 1))),
        data_dir=paths.data,
        run_id=run_id,
        remote=paths.remote,
        world_key=paths.world_key,
        inputs=tuple((plan.jobs[d].kind, d) for d in job.deps),
        cpu_only=cpu_only,
    )


def _task_options(job: Job, retries: int, cpu_only: bool) -> dict[str, Any]:
    """Ray task options of a job: the resources it holds and whether Ray retries it."""
    import ray

    if job.kind == "pretrain" and int(job.resources.get("num_workers", 1)) == 1:
        # One worker: the loop runs in this task itself (harness.executors._pretrain), which
        # holds the run's CPUs/GPU, so Ray runs as many runs side by side as fit; Ray retries
        # it, and the loop resumes from its last epoch.
        opts: dict[str, Any] = {
            "num_cpus": job.resources.get("cpus_per_worker", 1),
            "num_gpus": 0 if cpu_only else job.resources.get("gpus_per_worker", 0),
            "max_retries": retries,
            "retry_exceptions": True,
        }
    elif job.kind == "pretrain":
        # Ray Train reserves the workers' CPUs/GPUs itself and restores failed workers itself
        # (FailureConfig); the task that drives it holds nothing and is not retried.
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
        opts = {
            "num_cpus": job.resources.get("num_cpus", 1),
            "num_gpus": 0 if cpu_only else job.resources.get("num_gpus", 0),
            "max_retries": retries,
            "retry_exceptions": True,
        }
    return opts


def _land_result(job: Job, ctx: RunContext, result: Any, st, paths: Paths, summary: RunSummary) -> None:
    """Write what a finished job's task returned: an evaluation's rows (then its marker), a view's
    row, a feature cache's spectra rows."""
    if job.kind == "eval":
        st.write_part("curves", job.key, result["curves"])
        st.write_part("runs", job.key, result["runs"])  # the rows land before the marker
        paths.wd.mark_done("eval", job.key, {"rows": len(result["runs"])})
        summary.rows_written += len(result["runs"])
    elif job.kind == "view":
        _write_view_row(st, job, ctx.spec_name, paths)
    elif job.kind == "features":
        _write_spectra_rows(st, job, ctx, paths)


def checkpoint_ready(paths: Paths, pretrain_key: str, epoch: int) -> bool:
    """Whether the encoder checkpoint of ``pretrain_key`` at ``epoch`` exists (it is written
    atomically, and uploaded in one piece to object storage)."""
    return paths.wd.exists("pretrain", pretrain_key, f"checkpoints/epoch_{epoch:03d}.pt")


ATTEMPTS = "attempts"  # <workdir>/attempts/<job key>/<run id>-<n>.json: every failed attempt of a job


def record_attempt(job: Job, ctx: RunContext, exc: BaseException) -> None:
    """Keep one failed attempt of ``job`` (run id, host, error, traceback) in the workdir."""
    import json
    import socket
    import traceback

    d = job_dir(ctx.workdir if ctx.remote is None else ctx.remote.local, ATTEMPTS, job.key)
    d.mkdir(parents=True, exist_ok=True)
    name = f"{ctx.run_id}-{uuid.uuid4().hex[:8]}.json"
    (d / name).write_text(
        json.dumps(
            {
                "run_id": ctx.run_id,
                "kind": job.kind,
                "label": job.label,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "time": datetime.now(UTC).isoformat(),
                "error": f"{type(exc).__name__}: {exc}"[-2000:],
                "traceback": "".join(traceback.format_exception(exc))[-8000:],
            },
            indent=1,
        )
    )
    if ctx.remote is not None:
        ctx.remote.push(ATTEMPTS, job.key, files=[name])


def attempts_of(wd: Workdir, key: str, run_id: str) -> int:
    """How many attempts of job ``key`` failed in the run ``run_id`` (see :func:`record_attempt`)."""
    return sum(name.startswith(f"{run_id}-") for name in wd.files(ATTEMPTS, key))


def _task(job: Job, ctx: RunContext, *upstream: Any) -> dict[str, Any]:
    """The body of every Ray task: upstream results arrive as arguments only to order the work."""
    logging.basicConfig(level=logging.WARNING)
    try:
        ctx = stage_inputs(job, ctx)
        clean_unfinished(job, ctx)
        result = execute(job, ctx)
        publish(job, ctx)
        return result
    except Exception as exc:
        record_attempt(job, ctx, exc)
        raise


def _backfill(plan: Plan, paths: Paths, st) -> None:
    """Give every finished view its `views` row and every finished feature cache its `spectra`
    rows (e.g. after the store was moved or wiped, or the work was done by an older version)."""
    have = st.part_keys("views")
    views = [j for j in plan.of_kind("view") if j.key not in have]
    done = paths.wd.done_keys("view") if views else set()
    for job in views:
        if job.key in done:
            _write_view_row(st, job, plan.spec.name, paths)
    have = st.part_keys("spectra")
    features = [j for j in plan.of_kind("features") if j.key not in have]
    done = paths.wd.done_keys("features") if features else set()
    for job in features:
        if job.key in done:
            ctx = RunContext(plan.spec.name, paths.workdir, paths.world, "", data_dir=paths.data)
            _write_spectra_rows(st, job, ctx, paths)


def _write_spectra_rows(st, job: Job, ctx: RunContext, paths: Paths) -> None:
    if paths.remote is not None:  # the driver reads the spectra the task uploaded
        paths.wd.pull("features", job.key, only=["spectra.json"])
        ctx = RunContext(ctx.spec_name, paths.workdir, paths.world, ctx.code_version)
    st.write_part("spectra", job.key, spectra_rows(job, ctx))


def _write_view_row(st, job: Job, spec_name: str, paths: Paths) -> None:
    import json

    if paths.remote is not None:
        paths.wd.pull("view", job.key, only=["manifest.json"])
    manifest = json.loads((job_dir(paths.workdir, "view", job.key) / "manifest.json").read_text())
    st.write_part(
        "views",
        job.key,
        [
            {
                "view_key": job.key,
                "spec": spec_name,
                "created_at": datetime.now(UTC),
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
                "details": json.dumps(
                    {
                        "steps": manifest.get("steps", {}),
                        "per_source": manifest.get("per_source", {}),
                        "achieved_noise_per_class": manifest.get("achieved_noise_per_class"),
                        "skipped_samples": manifest.get("skipped_samples", 0),
                        "skipped": manifest.get("skipped", {}),
                    }
                ),
            }
        ],
    )
