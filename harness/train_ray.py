"""The Ray edge of pre-training: run :func:`pretrain.loop.train_loop` under Ray Train.

Ray's context is read once, in the per-worker function, and handed down as a plain
:class:`pretrain.loop.DistInfo`; the loop itself knows nothing about Ray. Fault tolerance is the
loop's own: a restarted worker group calls the loop again, which resumes from
``out_dir/state/last.pt`` (Ray Train checkpoints are not used).

Resources (Ray 2.58, Train v2, the default): the ``TrainController`` actor and Train's helper
actors are ``num_cpus=0``; only the workers hold resources, reserved as one placement-group
bundle of ``{"CPU": cpus_per_worker, "GPU": gpus_per_worker}`` each. So a 1-worker run needs
exactly ``cpus_per_worker`` CPUs, and ``run_pretrain`` may be called from a ``num_cpus=0`` Ray
task: runs that do not fit wait for their placement group (the controller retries a worker
group that failed to start in time without counting it against ``max_failures``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pretrain.loop import DistInfo, TrainConfig, train_loop

logger = logging.getLogger(__name__)

RAY_DIR = "ray"  # Ray Train's own storage, under the run's out_dir


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
    view_dir, out_dir, sync = config["view_dir"], config["out_dir"], config.get("sync")
    if sync is not None:  # a workdir on object storage: this node's cache, then resume from the uploads
        wd, key, view_key = sync
        view_dir, out_dir = wd.pull("view", view_key), pull_run(wd, key)

    def report(metrics: dict[str, Any]) -> None:
        if sync is not None and dist.rank == 0:  # what a restart on any node resumes from
            push_epoch(sync[0], sync[1])
        ray.train.report(dict(metrics))  # a barrier: every rank reports once per epoch

    train_loop(config["cfg"], view_dir, out_dir, dist, report)
    if sync is not None and dist.rank == 0:  # the summary the loop writes last
        push_epoch(sync[0], sync[1])


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
) -> dict[str, Any]:
    """Pre-train with Ray Train (DDP over ``num_workers`` workers); returns the loop's summary.

    Uses the running Ray instance (or starts a local one, as any Ray call does). Safe to call from
    inside a Ray task declared with ``num_cpus=0``. ``log_level`` applies to Ray Train's own
    logs and to the loop's logging in the workers. Ray Train's detached ``PlacementGroupCleaner``
    warns every second when the State API is missing (no dashboard): start Ray with
    ``logging_config=ray.LoggingConfig(log_level="ERROR")`` or ``log_to_driver=False`` to keep
    the driver quiet. ``sync``: ``(workdir, run key, view key)`` for a workdir on object storage
    (a :class:`harness.workdir.Workdir`): the workers pull the view and the run's uploads on
    whatever node they land, and rank 0 uploads every epoch's checkpoint and state.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ValueError(f"need cpus_per_worker > 0 and gpus_per_worker >= 0, got {cpus_per_worker} and {gpus_per_worker}")
    view_dir, out_dir = Path(view_dir).resolve(), Path(out_dir).resolve()  # workers chdir elsewhere
    if not (view_dir / "sizes.json").is_file():
        raise FileNotFoundError(f"{view_dir} is not a view folder (no sizes.json)")
    out_dir.mkdir(parents=True, exist_ok=True)

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
            **({"logging_config": ray.train.LoggingConfig(log_level=log_level)} if hasattr(ray.train, "LoggingConfig") else {}),
        ),
    )
    t0 = time.perf_counter()
    trainer.fit()  # raises if training failed beyond max_failures
    wall = time.perf_counter() - t0

    if sync is not None:  # the workers may have run on another node
        sync[0].pull("pretrain", sync[1], only=["metrics.json"], allow_partial=True, force=True)
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.is_file():
        raise RuntimeError(f"Ray Train finished but {metrics_path} is missing; see the worker logs")
    summary = json.loads(metrics_path.read_text()).get("summary")
    if summary is None:
        raise RuntimeError(f"{metrics_path} has no summary: the run did not finish")
    return {**summary, "wall_seconds": wall, "num_workers": num_workers}
