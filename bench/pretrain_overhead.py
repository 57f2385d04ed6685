"""What a one-worker pre-training run costs beyond its loop: Ray Train (the old path) vs a Ray task.

The same tiny run (``supervised`` on ``test_resnet`` at 32 px, batch 64, on a view of the embedded
world's ``imagenet`` source; ``--epochs``) is timed three ways, in one process, on one local Ray
instance started once:

(a) **floor**: :func:`pretrain.loop.train_loop` called in this process with one torch thread (as
    a worker has), after an untimed first call that imports the model code;
(b) **Ray Train** (the baseline, the path every run took before):
    ``harness.train_ray.run_pretrain(..., launcher="ray_train")``, a ``TorchTrainer`` with one
    worker (controller and worker actors, a placement group, a process group), with the settings
    ``tbench run`` gives a local Ray (no preemption watcher, 0.5 s health checks);
(c) **Ray task** (the new path): ``run_pretrain(..., launcher="task")``, the loop in a Ray task
    that holds the run's CPU. The first one starts a worker process and imports torch and the
    model code there (a ``tbench run`` pays that once per worker process); it is counted.

(b) and (c) alternate, ``--reps`` runs each, every run into a fresh folder. Per run, the
**overhead** is its wall time (the ``run_pretrain`` call) minus the floor's mean wall time, and
"outside the loop" is its wall time minus the loop's own seconds in that run (the loop's seconds
include model building, so a fresh process's imports count as loop there). Printed: every run,
the mean overhead per path and the ratio (b) / (c) of the mean overheads.

    .venv/bin/python bench/pretrain_overhead.py --quick    # 1 epoch, 2 runs per path: about a minute on 2 cores
    .venv/bin/python bench/pretrain_overhead.py            # 2 epochs, 3 runs per path
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import _common as C
from pretrain.loop import DistInfo, TrainConfig, train_loop

BASELINE = "Ray Train TorchTrainer, 1 worker (run_pretrain launcher='ray_train')"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured.",
    )
    p.add_argument("--quick", action="store_true", help="1 epoch and 2 runs per path (about a minute on 2 cores)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 2, --quick 1)")
    p.add_argument("--reps", type=int, default=None, help="runs per Ray path (default: 3, --quick 2)")
    p.add_argument(
        "--floor-reps", type=int, default=2, help="timed in-process runs for the floor (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance (default: %(default)s)")
    p.add_argument(
        "--world-dir",
        default=None,
        help="an existing world folder (sources/imagenet/); default: write the source into the cache",
    )
    p.add_argument(
        "--world-scale",
        type=float,
        default=C.DEFAULT_WORLD_SCALE,
        help="scale of the source written into the cache (default: %(default)s)",
    )
    p.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="where data is written (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.reps = args.reps or (2 if args.quick else 3)
    if min(args.epochs, args.reps, args.floor_reps, args.batch_size, args.cpus) < 1:
        p.error("--epochs, --reps, --floor-reps, --batch-size and --cpus must be >= 1")
    return args


def train_config(args: argparse.Namespace) -> TrainConfig:
    from curation import render

    return TrainConfig(
        method="supervised",
        backbone="test_resnet",
        image_size=32,
        epochs=args.epochs,
        save_epochs=(args.epochs,),
        batch_size=args.batch_size,
        lr=1e-3,
        warmup_epochs=0.5,
        seed=0,
        num_classes=len(render.CONCEPT_NAMES),
    )


def timed_run(fn: Callable[[Path], dict[str, Any]], out: Path) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    summary = fn(out)
    return time.perf_counter() - t0, summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    args = parse_args(argv)
    load_start = os.getloadavg()
    env = C.environment(torch.device("cpu"))
    C.log(
        f"pretrain_overhead: {env['cpu_count']} CPUs, load average {', '.join(f'{x:.2f}' for x in load_start)}, "
        f"torch {env['torch']}"
    )
    view = C.source_view("imagenet", args.world_dir, Path(args.cache_dir), args.world_scale)
    cfg = train_config(args)
    C.log(
        f"run: supervised test_resnet 32 px, batch {args.batch_size}, {args.epochs} epoch(s) on {view} "
        f"({C.view_size(view)} samples); {args.reps} run(s) per Ray path"
    )
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pretrain-overhead-", dir=args.cache_dir))
    counter = iter(range(10_000))

    def fresh(tag: str) -> Path:
        return tmp / f"{tag}-{next(counter)}"

    # (a) the floor: the loop in this process, one torch thread (what the worker and the task get)
    torch.set_num_threads(1)
    cold_s, _ = timed_run(lambda out: train_loop(cfg, view, out, DistInfo()), fresh("floor"))
    C.log(f"(a) in-process loop, first call (imports the model code; not counted): {cold_s:.2f} s")
    floor = []
    for _ in range(args.floor_reps):
        wall, summary = timed_run(lambda out: train_loop(cfg, view, out, DistInfo()), fresh("floor"))
        floor.append(wall)
        C.log(f"(a) in-process loop: {wall:.2f} s (loop's own seconds {summary['seconds']:.2f})")
    floor_s = statistics.fmean(floor)

    import ray

    from harness.train_ray import run_pretrain

    # What `tbench run` sets for its own local Ray (harness.runner.run): the baseline at its best.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    init_s = time.perf_counter() - t0
    C.log(f"ray.init: {init_s:.2f} s (once, not counted)")

    paths = {"ray_train": "(b) Ray Train", "task": "(c) Ray task"}
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            for launcher, label in paths.items():
                wall, summary = timed_run(
                    lambda out, launcher=launcher: run_pretrain(
                        cfg, view, out, num_workers=1, cpus_per_worker=1.0, launcher=launcher, log_level="ERROR"
                    ),
                    fresh(launcher),
                )
                if summary["launcher"] != launcher or summary["epochs_trained"] != args.epochs:
                    raise RuntimeError(
                        f"{label} took path {summary['launcher']!r} and trained {summary['epochs_trained']} "
                        f"epoch(s); expected {launcher!r} and {args.epochs}"
                    )
                run = {
                    "launcher": launcher,
                    "rep": rep,
                    "wall_s": round(wall, 3),
                    "loop_s": round(summary["seconds"], 3),
                    "overhead_s": round(wall - floor_s, 3),
                    "outside_loop_s": round(wall - summary["seconds"], 3),
                }
                runs.append(run)
                C.log(
                    f"{label} run {rep + 1}: wall {wall:.2f} s, loop {summary['seconds']:.2f} s; overhead over the "
                    "floor "
                    f"{run['overhead_s']:.2f} s, outside the loop {run['outside_loop_s']:.2f} s"
                    + (" (first task: a new worker process imports torch)" if launcher == "task" and rep == 0 else "")
                )
    finally:
        ray.shutdown()

    def mean(launcher: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs if r["launcher"] == launcher)

    overhead = {k: mean(k, "overhead_s") for k in paths}
    outside = {k: mean(k, "outside_loop_s") for k in paths}
    ratio = overhead["ray_train"] / max(overhead["task"], 1e-3)
    load_end = os.getloadavg()
    C.log("\nsummary (seconds per run, mean over runs)")
    C.log(f"  floor (in-process loop)       {floor_s:7.2f}")
    for k, label in paths.items():
        C.log(
            f"  {label:<29} wall {mean(k, 'wall_s'):6.2f}  overhead {overhead[k]:6.2f}  outside the loop "
            f"{outside[k]:6.2f}"
        )
    C.log(f"  Ray Train overhead / Ray task overhead: {ratio:.1f}x")
    C.log(f"load average at the end: {', '.join(f'{x:.2f}' for x in load_end)}")
    out = {
        "bench": "pretrain_overhead",
        "ratio": round(ratio, 1),
        "baseline": BASELINE,
        "overhead_s": {k: round(v, 2) for k, v in overhead.items()},
        "outside_loop_s": {k: round(v, 2) for k, v in outside.items()},
        "floor_s": round(floor_s, 2),
        "floor_cold_s": round(cold_s, 2),
        "ray_init_s": round(init_s, 2),
        "epochs": args.epochs,
        "reps": args.reps,
        "batch_size": args.batch_size,
        "view_samples": C.view_size(view),
        "cpus": args.cpus,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
        "runs": runs,
        "quick": bool(args.quick),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if args.json:
        C.write_json(args.json, {**out, "environment": env})
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
