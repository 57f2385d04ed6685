"""The Ray edge of pre-training: run :func:`pretrain.loop.train_loop` in a Ray task or under Ray Train.

A run of one worker is the loop called in one process: a Ray task that holds the run's CPUs
(and GPU), or the calling process when it already holds them (the runner's task for the job).
Ray Train (``TorchTrainer``, DDP) is used for two or more workers, or when asked for: its
start-up (controller and worker-group actors, a placement group, a process group) costs about
15 s per run on 2 cores (``bench/pretrain_overhead.py``), which a one-worker run does not need.
``launcher`` picks the path:

- ``"auto"``: ``"task"`` for one worker, ``"ray_train"`` for more;
- ``"task"``: one worker in a Ray task (``num_cpus=cpus_per_worker``, ``num_gpus=gpus_per_worker``)
  that Ray retries ``max_failures`` times, on an exception or a lost worker process;
- ``"in_process"``: one worker in this process, which must already hold the run's resources (a Ray
  task sized for it); the caller retries it;
- ``"ray_train"``: Ray Train for any number of workers, restarted by its ``FailureConfig``.

Ray's context is read once, at the edge, and handed down as a plain
:class:`pretrain.loop.DistInfo`; the loop itself knows nothing about Ray. Fault tolerance is the
loop's own on every path: a restarted task or worker group calls the loop again, which resumes
from ``out_dir/state/last.pt`` (Ray Train checkpoints are not used).

Ray Train's resources (Ray 2.58, Train v2, the default): the ``TrainController`` actor and Train's
helper actors are ``num_cpus=0``; only the workers hold resources, reserved as one placement-group
bundle of ``{"CPU": cpus_per_worker, "GPU": gpus_per_worker}`` each. ``run_pretrain`` may be
called from a ``num_cpus=0`` Ray task: runs that do not fit wait for their placement group (the
controller retries a worker group that failed to start in time without counting it against
``max_failures``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pretrain.loop import DistInfo, TrainConfig, train_loop

logger = logging.getLogger(__name__)

RAY_DIR = "ray"  # Ray Train's own storage, under the run's out_dir
LAUNCHERS = ("auto", "task", "in_process", "ray_train")


def _synced_loop(
    cfg: TrainConfig,
    view_dir: str,
    out_dir: str,
    dist: DistInfo,
    sync: tuple[Any, str, str] | None,
    after_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The loop of one rank, with a workdir on object storage kept in step (``sync``: see
    :func:`run_pretrain`): the view and the run's uploads are pulled into this node's cache first,
    and rank 0 uploads every epoch's checkpoint and state, then the summary the loop writes last."""
    if sync is not None:
        wd, key, view_key = sync
        view_dir, out_dir = wd.pull("view", view_key), pull_run(wd, key)

    def report(metrics: dict[str, Any]) -> None:
        if sync is not None and dist.rank == 0:  # what a restart on any node resumes from
            push_epoch(sync[0], sync[1])
        if after_epoch is not None:
            after_epoch(metrics)

    summary = train_loop(cfg, view_dir, out_dir, dist, report)
    if sync is not None and dist.rank == 0:
        push_epoch(sync[0], sync[1])
    return summary


def _train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: read Ray's context once, then run the plain loop."""
    import ray.train
    import ray.train.torch
    import torch

    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    dist = DistInfo(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        local_rank=ctx.get_local_rank(),
        device=str(ray.train.torch.get_device()),
    )
    logging.getLogger("pretrain").setLevel(config["log_level"])
    # ray.train.report is a barrier: every rank reports once per epoch
    _synced_loop(
        config["cfg"],
        config["view_dir"],
        config["out_dir"],
        dist,
        config.get("sync"),
        lambda metrics: ray.train.report(dict(metrics)),
    )


def _one_worker(
    cfg: TrainConfig, view_dir: str, out_dir: str, cpus: float, gpus: float, sync: tuple[Any, str, str] | None
) -> dict[str, Any]:
    """The loop as the only rank, in this process (which holds ``cpus`` CPUs and ``gpus`` GPUs:
    under Ray, ``CUDA_VISIBLE_DEVICES`` names the assigned GPU, so it is ``cuda:0`` here)."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    device = "cuda:0" if gpus > 0 and torch.cuda.is_available() else "cpu"
    return _synced_loop(cfg, view_dir, out_dir, DistInfo(rank=0, world_size=1, local_rank=0, device=device), sync)


def _train_task(
    cfg: TrainConfig,
    view_dir: str,
    out_dir: str,
    cpus: float,
    gpus: float,
    log_level: str,
    sync: tuple[Any, str, str] | None,
) -> dict[str, Any]:
    """The body of the Ray task of a one-worker run (``launcher="task"``)."""
    logging.getLogger("pretrain").setLevel(log_level)
    return _one_worker(cfg, view_dir, out_dir, cpus, gpus, sync)


# Files of a run folder rewritten in place every epoch (their size may not change).
MUTABLE = ("state/last.pt", "metrics.json", "train_log.jsonl")


def pull_run(wd, key: str) -> Path:
    """Pull what a pre-training run has uploaded so far (checkpoints, its training state) into
    this node's cache, so :func:`pretrain.loop.train_loop` resumes from it; returns the folder."""
    d = wd.pull("pretrain", key, allow_partial=True, exclude=(RAY_DIR,))
    mutable = [m for m in MUTABLE if m in wd.files("pretrain", key)]
    if mutable:
        wd.pull("pretrain", key, only=mutable, allow_partial=True, force=True)
    return d


def push_epoch(wd, key: str) -> None:
    """Upload a run's new checkpoints, then its training state, metrics and log (rank 0, after
    every epoch): a run restarted anywhere resumes from the last epoch uploaded."""
    d = wd.dir("pretrain", key)
    wd.push("pretrain", key, exclude=(RAY_DIR, *{m.split("/")[0] for m in MUTABLE}))
    wd.push("pretrain", key, files=[m for m in MUTABLE if (d / m).is_file()], force=True)


def run_pretrain(
    cfg: TrainConfig,
    view_dir: str | Path,
    out_dir: str | Path,
    *,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    max_failures: int = 1,
    log_level: str = "WARNING",
    sync: tuple[Any, str, str] | None = None,
    launcher: str = "auto",
) -> dict[str, Any]:
    """Pre-train over ``num_workers`` workers; returns the loop's summary with ``wall_seconds``,
    ``num_workers`` and ``launcher`` (the path taken, see the module docstring).

    ``"task"`` and ``"ray_train"`` use the running Ray instance (or start a local one, as any Ray
    call does) and are safe to call from inside a Ray task declared with ``num_cpus=0``.
    ``max_failures``: how many times a failed run is restarted (Ray's ``max_retries`` for the task,
    Ray Train's ``FailureConfig`` for Ray Train). ``log_level`` applies to the loop's logging in the
    task or workers, and to Ray Train's own logs. Ray Train's detached ``PlacementGroupCleaner``
    warns every second when the State API is missing (no dashboard): start Ray with
    ``logging_config=ray.LoggingConfig(log_level="ERROR")`` or ``log_to_driver=False`` to keep
    the driver quiet. ``sync``: ``(workdir, run key, view key)`` for a workdir on object storage
    (a :class:`harness.workdir.Workdir`): the task or workers pull the view and the run's uploads on
    whatever node they land, and rank 0 uploads every epoch's checkpoint and state.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ValueError(
            f"need cpus_per_worker > 0 and gpus_per_worker >= 0, got {cpus_per_worker} and {gpus_per_worker}"
        )
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher == "auto":
        launcher = "task" if num_workers == 1 else "ray_train"
    if launcher in ("task", "in_process") and num_workers != 1:
        raise ValueError(
            f"launcher {launcher!r} runs one worker, got num_workers={num_workers}; use 'ray_train' or 'auto'"
        )
    view_dir, out_dir = Path(view_dir).resolve(), Path(out_dir).resolve()  # Ray workers chdir elsewhere
    if not (view_dir / "sizes.json").is_file():
        raise FileNotFoundError(f"{view_dir} is not a view folder (no sizes.json)")
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    if launcher == "in_process":
        summary = _one_worker(cfg, str(view_dir), str(out_dir), cpus_per_worker, gpus_per_worker, sync)
    elif launcher == "task":
        import ray

        task = ray.remote(_train_task).options(
            name="pretrain",
            num_cpus=float(cpus_per_worker),
            num_gpus=float(gpus_per_worker),
            max_retries=max_failures,
            retry_exceptions=True,
        )
        summary = ray.get(
            task.remote(cfg, str(view_dir), str(out_dir), cpus_per_worker, gpus_per_worker, log_level, sync)
        )
    else:
        summary = _fit_ray_train(
            cfg, view_dir, out_dir, num_workers, cpus_per_worker, gpus_per_worker, max_failures, log_level, sync
        )
    wall = time.perf_counter() - t0
    return {**summary, "wall_seconds": wall, "num_workers": num_workers, "launcher": launcher}


def _fit_ray_train(
    cfg: TrainConfig,
    view_dir: Path,
    out_dir: Path,
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    max_failures: int,
    log_level: str,
    sync: tuple[Any, str, str] | None,
) -> dict[str, Any]:
    """Run the loop under Ray Train's ``TorchTrainer``; returns the summary rank 0 wrote."""
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker > 0:
        resources["GPU"] = float(gpus_per_worker)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "cfg": cfg,
            "view_dir": str(view_dir),
            "out_dir": str(out_dir),
            "threads": max(1, int(cpus_per_worker)),
            "log_level": log_level,
            "sync": sync,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name="pretrain",
            storage_path=str(out_dir / RAY_DIR),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            **(
                {"logging_config": ray.train.LoggingConfig(log_level=log_level)}
                if hasattr(ray.train, "LoggingConfig")
                else {}
            ),
        ),
    )
    trainer.fit()  # raises if training failed beyond max_failures

    if sync is not None:  # the workers may have run on another node
        sync[0].pull("pretrain", sync[1], only=["metrics.json"], allow_partial=True, force=True)
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.is_file():
        raise RuntimeError(f"Ray Train finished but {metrics_path} is missing; see the worker logs")
    summary = json.loads(metrics_path.read_text()).get("summary")
    if summary is None:
        raise RuntimeError(f"{metrics_path} has no summary: the run did not finish")
    return summary
