"""A run that survives its driver's death, through the real command line (failing jobs,
retries and another machine picking a run up: tests/test_workdir.py, on object storage).

The driver killed at random points of a run, ten times, then run again: every planned row
exists exactly once and pre-training resumed from its last checkpoint each time instead of
starting over.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_head import head_env

from harness.plan import make_plan
from harness.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent


def _spec(tmp_path: Path, world: Path, **downstream) -> dict:
    """One pre-training run (supervised on the labelled world source, 3 epochs, a checkpoint at
    2), linear probes on two sets at 1 shot and full data, the session's world: 13 events (a
    view, 3 epochs, the run, 4 feature caches, 4 evaluations) to kill it between."""
    return {
        "name": "survive",
        "world": {"seed": 0, "scale": 0.1, "dir": str(world)},
        "workdir": str(tmp_path / "work"),
        "store": str(tmp_path / "store"),
        "pretrain": {
            "backbone": "test_resnet",
            "epochs": 3,
            "checkpoint_epochs": [2],
            "batch_size": 64,
            "grids": [{"sources": ["imagenet"], "sizes": [600], "methods": ["supervised"]}],
        },
        "downstream": {
            "sets": ["dtd", "digits"],
            "eval_seeds": [0],
            "checkpoint_epochs": "all",
            "random_init_floor": False,
            "protocols": [{"name": "linear", "shots": [1, "full"]}],
            **downstream,
        },
        "resources": {"view": {"engine": "local"}, "max_retries": 1},
    }


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _query(run_tbench, store: Path, sql: str) -> list[dict]:
    p = run_tbench("results", "query", sql, "--store", str(store), "--format", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _progress(work: Path, store: Path) -> tuple[int, list[str]]:
    """(count of progress events so far, what they are): finished jobs and pre-training epochs."""
    from pretrain.loop import read_train_log

    done = sorted(str(p.parent.relative_to(work)) for p in work.glob("*/*/_DONE.json"))
    epochs = [
        f"epoch {e['epoch']}" for d in work.glob("pretrain/*") for e in read_train_log(d) if e["event"] == "epoch"
    ]
    return len(done) + len(epochs), done + epochs


@pytest.mark.slow
def test_driver_killed_at_random_points_then_rerun_completes_exactly_once(tmp_path, ray_head, run_tbench):
    """On a Ray cluster (the loopback head), the driver — `tbench run --address` — is SIGKILLed
    at ten random points of a run and started again each time, as a lost head-node process or a
    killed job would be; the cluster cleans up the dead driver's tasks and Train workers."""
    data = _spec(tmp_path, ray_head.world)
    path = _write(tmp_path, data)
    plan = make_plan(parse_spec(data))
    work, store = tmp_path / "work", tmp_path / "store"
    # Ray Train reads these in the driver (a local Ray gets them from harness.runner)
    env = dict(
        head_env(),
        RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
        RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION="0",
        RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="600",
    )
    command = [sys.executable, "-m", "harness.cli", "run", str(path), "--address", ray_head.gcs, "--no-progress"]
    # Ten random points of the run: after a random one of its events (a job finished, an epoch
    # trained; 13 in all) and a random fraction of a second more, so kills land mid-job too;
    # points drawn over events, not seconds, spread over the whole run whatever the machine's speed.
    rng = random.Random(7)
    (pjob,) = plan.of_kind("pretrain")
    events = len(plan.jobs) - 1 + pjob.config["epochs"]  # every job but the world (the session's), every epoch
    points = sorted(rng.sample(range(1, events), 10))
    trials = []
    for trial, target in enumerate(points):
        before, _ = _progress(work, store)
        extra, deadline = rng.uniform(0, 1.0), 300  # the deadline only guards against a hang
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while proc.poll() is None and _progress(work, store)[0] < target and time.monotonic() - t0 < deadline:
            time.sleep(0.2)
        time.sleep(extra)
        finished = proc.poll() is not None
        if not finished:
            proc.kill()
            proc.wait(timeout=60)
        after, what = _progress(work, store)
        trials.append(
            {
                "trial": trial,
                "point": target,
                "seconds": round(time.monotonic() - t0, 1),
                "events_before": before,
                "events_after": after,
                "killed": not finished,
                "last": what[-1] if what else None,
            }
        )
    print(json.dumps(trials, indent=1))
    assert sum(t["killed"] for t in trials) >= 9, trials  # the run was still going at (almost) every point

    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # every planned row exactly once, all ok
    rows = _query(run_tbench, store, "SELECT key, status FROM runs")
    assert sorted(r["key"] for r in rows) == sorted(r["key"] for r in plan.expected_rows())
    assert all(r["status"] == "ok" for r in rows)

    # pre-training resumed from its last finished epoch after every kill, never from scratch
    from pretrain.loop import read_train_log

    events = read_train_log(work / "pretrain" / pjob.key)
    starts, last_epoch = [], 0
    for e in events:
        if e["event"] == "start":
            assert e["from_epoch"] >= last_epoch, events  # no finished epoch was trained again
            starts.append(e["from_epoch"])
        elif e["event"] == "epoch":
            last_epoch = e["epoch"]
    print("pre-training starts, from epoch:", starts)
    assert last_epoch == pjob.config["epochs"]
    assert len(starts) >= 2 and any(s > 0 for s in starts[1:]), starts
    trained = [e["epoch"] for e in events if e["event"] == "epoch"]
    assert len(trained) <= pjob.config["epochs"] + len(starts) - 1  # at most the epoch in flight at each kill is redone
