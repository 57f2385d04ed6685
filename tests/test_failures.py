"""Runs that survive what clusters do to them, through the real command line.

- an evaluation (and a feature extraction) that raises is retried ``resources.max_retries``
  times, then recorded as `failed` rows with its error while the rest of the run goes on, and
  the exit code says so; a later run with the cause fixed replaces those rows, never adds to them;
- the driver killed (with every process it started) at random points of a run, ten times, then
  run again: every planned row exists exactly once and pre-training resumed from its last
  checkpoint each time instead of starting over;
- evaluations of a mid-training checkpoint start while the run that wrote it is still training.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.plan import make_plan
from harness.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent


def _spec(tmp_path: Path, world: Path, **downstream) -> dict:
    """One pre-training run (supervised on the labelled world source, 6 epochs, checkpoints at 2
    and 4), linear probes on two sets at 1 shot and full data, the session's world."""
    return {
        "name": "survive",
        "world": {"seed": 0, "scale": 0.1, "dir": str(world)},
        "workdir": str(tmp_path / "work"),
        "store": str(tmp_path / "store"),
        "pretrain": {"backbone": "test_resnet", "epochs": 6, "checkpoint_epochs": [2, 4], "batch_size": 64,
                     "grids": [{"sources": ["imagenet"], "sizes": [600], "methods": ["supervised"]}]},
        "downstream": {"sets": ["dtd", "digits"], "eval_seeds": [0], "checkpoint_epochs": "all",
                       "random_init_floor": False, "protocols": [{"name": "linear", "shots": [1, "full"]}],
                       **downstream},
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


def _image_folder(root: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        for name in ("a", "b"):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.mark.slow
def test_failing_jobs_are_retried_recorded_and_replaced_on_rerun(tmp_path, world, run_tbench):
    """A set whose folder is missing at run time: its feature extraction (for `linear`) and its
    `scratch` training both raise; one short pre-training run and the other set go on. The
    spec's GPU asks fall back to CPU on this machine without a GPU."""
    ghost = tmp_path / "ghost"
    data = _spec(tmp_path, world, random_init_floor=True)
    data["pretrain"].update(epochs=1, checkpoint_epochs="last")
    data["pretrain"]["grids"][0]["sizes"] = [100]
    data["downstream"].update(
        sets=["digits", "ghost"], checkpoint_epochs="last",
        custom_sets={"ghost": {"format": "imagefolder", "path": str(ghost)}},
        protocols=[{"name": "linear", "shots": [1, "full"]},
                   {"name": "scratch", "shots": ["full"], "sets": ["ghost"], "epochs": 1, "lrs": [0.003]}],
    )
    # asks written for a GPU cluster: on this machine without one, everything falls back to CPU
    data["resources"].update(max_retries=2, pretrain={"gpus_per_worker": 1}, eval={"num_cpus": 1, "num_gpus": 0.5})
    plan = make_plan(parse_spec(data))
    path = _write(tmp_path, data)
    planned = plan.planned_rows()

    proc = run_tbench("run", str(path), "--no-progress")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "job(s) failed" in proc.stderr
    assert "no GPU on this machine" in proc.stderr

    rows = _query(run_tbench, tmp_path / "store", "SELECT * FROM runs")
    assert len(rows) == planned == len({r["key"] for r in rows})  # the run went on: every row, once
    bad = [r for r in rows if r["status"] == "failed"]
    assert bad and {r["downstream"] for r in bad} == {"ghost"}
    assert all(r["status"] == "ok" for r in rows if r["downstream"] != "ghost")
    scratch = [r for r in bad if r["protocol"] == "scratch"]
    assert scratch and all("[failed 3 attempt(s)]" in r["error"] and "ghost" in r["error"] for r in scratch)
    linear = [r for r in bad if r["protocol"] == "linear"]
    assert linear and all(r["error"].startswith("input failed") for r in linear)  # its features job failed
    # every attempt of the failing jobs is on record: 1 + max_retries each, with its error
    attempts = {p.stem: p.read_text().splitlines() for p in (tmp_path / "work" / "attempts").glob("*.jsonl")}
    failing = {j.key for j in plan.jobs.values() if j.coords.get("downstream") == "ghost"
               and (j.kind == "features" or j.config.get("protocol") == "scratch")}
    assert set(attempts) == failing and all(len(lines) == 3 for lines in attempts.values())
    assert all(json.loads(line)["error"] for lines in attempts.values() for line in lines)

    # the cause fixed, a re-run replaces the failed rows: still every row exactly once, all ok
    _image_folder(ghost)
    proc = run_tbench("run", str(path), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (counts,) = _query(run_tbench, tmp_path / "store",
                       "SELECT count(*) AS n, count(DISTINCT key) AS k, sum(status = 'ok') AS ok FROM runs")
    assert counts == {"n": planned, "k": planned, "ok": planned}


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (its local Ray instance included), as a
    crash of the machine it runs on would, and wait until they are gone."""
    pids = [proc.pid] + _descendants(proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in pids[1:]):
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _progress(work: Path, store: Path) -> tuple[int, list[str]]:
    """(count of progress events so far, what they are): finished jobs and pre-training epochs."""
    from pretrain.loop import read_train_log

    done = sorted(str(p.parent.relative_to(work)) for p in work.glob("*/*/_DONE.json"))
    epochs = [f"epoch {e['epoch']}" for d in work.glob("pretrain/*") for e in read_train_log(d) if e["event"] == "epoch"]
    return len(done) + len(epochs), done + epochs


@pytest.mark.slow
def test_driver_killed_at_random_points_then_rerun_completes_exactly_once(tmp_path, world, run_tbench):
    data = _spec(tmp_path, world)
    path = _write(tmp_path, data)
    plan = make_plan(parse_spec(data))
    work, store = tmp_path / "work", tmp_path / "store"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rng = random.Random(7)
    trials = []
    for trial in range(10):
        # a random point: after 1 or 2 more events (a job finished, an epoch trained) and then a
        # random fraction of a second more (so some kills land mid-job): points spread over the
        # whole run whatever the machine's speed; a deadline only guards against a hang
        before, _ = _progress(work, store)
        target, extra, deadline = before + rng.randint(1, 2), rng.uniform(0, 1.5), 300
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--no-progress"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while proc.poll() is None and _progress(work, store)[0] < target and time.monotonic() - t0 < deadline:
            time.sleep(0.2)
        time.sleep(extra)
        finished = proc.poll() is not None
        if not finished:
            _kill_tree(proc)
        after, what = _progress(work, store)
        trials.append({"trial": trial, "seconds": round(time.monotonic() - t0, 1), "events_before": before,
                       "events_after": after, "killed": not finished, "last": what[-1] if what else None})
    print(json.dumps(trials, indent=1))
    assert sum(t["killed"] for t in trials) >= 8, trials  # the run is long enough to be killed ten times

    proc = run_tbench("run", str(path), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # every planned row exactly once, all ok
    rows = _query(run_tbench, store, "SELECT key, status FROM runs")
    assert sorted(r["key"] for r in rows) == sorted(r["key"] for r in plan.expected_rows())
    assert all(r["status"] == "ok" for r in rows)

    # pre-training resumed from its last finished epoch after every kill, never from scratch
    from pretrain.loop import read_train_log

    (pjob,) = plan.of_kind("pretrain")
    events = read_train_log(work / "pretrain" / pjob.key)
    starts, last_epoch = [], 0
    for e in events:
        if e["event"] == "start":
            assert e["from_epoch"] >= last_epoch, events  # no finished epoch was trained again
            starts.append(e["from_epoch"])
        elif e["event"] == "epoch":
            last_epoch = e["epoch"]
    print("pre-training starts, from epoch:", starts)
    assert last_epoch == 6
    assert len(starts) >= 2 and any(s > 0 for s in starts[1:]), starts
    trained = [e["epoch"] for e in events if e["event"] == "epoch"]
    assert len(trained) <= 6 + len(starts) - 1  # at most the epoch in flight at each kill is redone
