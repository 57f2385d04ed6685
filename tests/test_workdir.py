"""The job workdir (harness.workdir): local directories unchanged, and object storage through
moto's S3-compatible server on 127.0.0.1 (``s3://bucket/prefix?endpoint_override=...``) with a
local cache per process."""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from s3_server import moto_s3

from harness.core import artifacts
from harness.core.artifacts import DONE
from harness.workdir import CACHE_ENV, UnfinishedError, Workdir, default_cache

pytest.importorskip("moto.server")

BUCKET = "tbench-workdir"
FILES = {  # a pre-training folder: relative path -> content
    "metrics.json": b'{"loss": 0.5}',
    "checkpoints/epoch_001.pt": os.urandom(300_000),
    "checkpoints/epoch_002.pt": os.urandom(200_001),
    "empty.txt": b"",
    "notes.gz": b"not gzip at all",  # stored as is: no compression guessed from the name
    "ray/state.pkl": b"ray train state",
}


class _Requests(logging.Handler):
    """Collects the HTTP request lines moto's server logs (through werkzeug)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def s3():
    """(endpoint "host:port", boto3 client) of a moto S3 server running for this module."""
    with moto_s3(BUCKET) as server:
        yield server


@pytest.fixture()
def root(s3):
    """A fresh workdir URI (its own prefix in the bucket)."""
    endpoint, _ = s3
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/wd?endpoint_override={endpoint}&scheme=http"


@pytest.fixture()
def requests():
    """The HTTP requests moto serves while the test runs."""
    logger = logging.getLogger("werkzeug")
    handler, level = _Requests(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _prefix(root: str) -> str:
    return root.split("?")[0][len(f"s3://{BUCKET}/") :] + "/"


def _objects(s3, root: str) -> dict[str, bytes]:
    """{key relative to the root: content} of the objects below the root, less folder markers."""
    prefix, client = _prefix(root), s3[1]
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        for o in listing
        if not o["Key"].endswith("/")
    }


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _fill(d: Path, files: dict[str, bytes] = FILES) -> None:
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)


def _record(monkeypatch, name: str) -> list[str]:
    """Remote paths passed to ``Workdir.<name>`` (``_put``: uploads, ``_get``: downloads), in order."""
    calls, real = [], getattr(Workdir, name)
    lock = threading.Lock()

    def recording(self, a, b):
        with lock:
            calls.append(b if name == "_put" else a)
        return real(self, a, b)

    monkeypatch.setattr(Workdir, name, recording)
    return calls


def test_push_then_pull_into_an_empty_cache(s3, root, tmp_path, monkeypatch):
    wd = Workdir(root, cache=tmp_path / "node-a")
    assert wd.is_remote and wd.is_object_store and wd.uri == root and wd.local == tmp_path / "node-a"
    d = wd.dir("pretrain", "k1")
    assert d == tmp_path / "node-a" / "pretrain" / "k1" and not d.exists()
    _fill(d)
    (d / ".metrics.json.x1y2.tmp").write_bytes(b"half-written")  # temporary files never go up
    artifacts.mark_done(d, {"epochs": 2})

    puts = _record(monkeypatch, "_put")
    assert wd.push("pretrain", "k1") == d
    assert puts[-1].endswith(f"/pretrain/k1/{DONE}") and len(puts) == len(FILES) + 1  # the marker last
    expected = {f"pretrain/k1/{rel}": data for rel, data in FILES.items()}
    expected[f"pretrain/k1/{DONE}"] = (d / DONE).read_bytes()
    assert _objects(s3, root) == expected  # byte for byte, no temporary objects
    assert wd.is_done("pretrain", "k1") and wd.read_done("pretrain", "k1") == {"epochs": 2}
    puts.clear()
    wd.push("pretrain", "k1")  # everything is there already, marker included
    assert puts == []

    other = Workdir(root, cache=tmp_path / "node-b")
    gets = _record(monkeypatch, "_get")
    local = other.pull("pretrain", "k1")
    assert local == tmp_path / "node-b" / "pretrain" / "k1"
    assert _tree(local) == {k[len("pretrain/k1/") :]: v for k, v in expected.items()}
    assert gets[-1].endswith(f"/pretrain/k1/{DONE}") and len(gets) == len(FILES) + 1  # the marker last
    assert artifacts.is_done(local) and artifacts.read_done(local) == {"epochs": 2}
    gets.clear()
    other.pull("pretrain", "k1")  # files of the right size are kept; the marker is fetched again
    assert [g.rsplit("/", 1)[1] for g in gets] == [DONE]

    third = Workdir(root, cache=tmp_path / "node-c").pull("pretrain", "k1", exclude=["ray"])
    assert sorted(_tree(third)) == sorted(rel for rel in [*FILES, DONE] if not rel.startswith("ray/"))


def test_interrupted_push_leaves_no_marker(s3, root, tmp_path, monkeypatch):
    wd = Workdir(root, cache=tmp_path / "a")
    d = wd.dir("pretrain", "k2")
    _fill(d)
    artifacts.mark_done(d, {"epochs": 2})
    real_put = Workdir._put

    def failing_put(self, local, remote):
        if local.name == "epoch_002.pt":
            raise ConnectionError("simulated failure")
        return real_put(self, local, remote)

    monkeypatch.setattr(Workdir, "_put", failing_put)
    with pytest.raises(ConnectionError):
        wd.push("pretrain", "k2")
    monkeypatch.undo()
    uploaded = _objects(s3, root)
    assert f"pretrain/k2/{DONE}" not in uploaded and "pretrain/k2/checkpoints/epoch_001.pt" in uploaded
    assert not wd.is_done("pretrain", "k2") and wd.done_keys("pretrain") == set()
    with pytest.raises(FileNotFoundError, match="not finished"):
        wd.read_done("pretrain", "k2")

    other = Workdir(root, cache=tmp_path / "b")
    with pytest.raises(
        UnfinishedError, match=r"s3://.*/wd/pretrain/k2\?endpoint_override=.* has no _DONE\.json.*allow_partial"
    ):
        other.pull("pretrain", "k2")
    assert not other.dir("pretrain", "k2").exists()  # nothing was fetched
    partial = other.pull("pretrain", "k2", allow_partial=True)  # resuming from what made it up
    got = _tree(partial)
    assert DONE not in got and got["checkpoints/epoch_001.pt"] == FILES["checkpoints/epoch_001.pt"]
    assert "checkpoints/epoch_002.pt" not in got

    wd.push("pretrain", "k2")  # the retry sends the rest, then the marker
    assert (
        wd.is_done("pretrain", "k2")
        and _objects(s3, root)["pretrain/k2/checkpoints/epoch_002.pt"] == FILES["checkpoints/epoch_002.pt"]
    )
    assert _tree(other.pull("pretrain", "k2")) == _tree(d)


def test_pull_of_missing_folder(s3, root, tmp_path):
    wd = Workdir(root, cache=tmp_path)
    with pytest.raises(UnfinishedError, match=r"pretrain/nope\?endpoint_override=.*has no files"):
        wd.pull("pretrain", "nope")
    empty = wd.pull("pretrain", "nope", allow_partial=True)
    assert empty.is_dir() and list(empty.iterdir()) == []
    with pytest.raises(ValueError, match="invalid key"):
        wd.dir("pretrain", "../escape")


def test_pull_only_one_file(s3, root, tmp_path):
    wd = Workdir(root, cache=tmp_path / "a")
    _fill(wd.dir("pretrain", "k3"))
    wd.mark_done("pretrain", "k3", {"epochs": 2})  # uploads the marker only: push the outputs first
    assert _objects(s3, root) == {f"pretrain/k3/{DONE}": (wd.dir("pretrain", "k3") / DONE).read_bytes()}
    wd.push("pretrain", "k3")

    other = Workdir(root, cache=tmp_path / "b")
    d = other.pull("pretrain", "k3", only=["checkpoints/epoch_002.pt"])
    assert _tree(d) == {
        "checkpoints/epoch_002.pt": FILES["checkpoints/epoch_002.pt"],
        DONE: (wd.dir("pretrain", "k3") / DONE).read_bytes(),
    }
    with pytest.raises(FileNotFoundError, match=r"pretrain/k3/checkpoints/epoch_009\.pt\?endpoint_override="):
        other.pull("pretrain", "k3", only=["checkpoints/epoch_009.pt"])
    assert _tree(other.pull("pretrain", "k3")) == _tree(wd.dir("pretrain", "k3"))


def test_push_given_files(s3, root, tmp_path):
    """Pre-training uploads each checkpoint as it is written; the marker goes up once it exists."""
    wd = Workdir(root, cache=tmp_path)
    d = wd.dir("pretrain", "k4")
    _fill(d)
    wd.push("pretrain", "k4", files=["checkpoints/epoch_001.pt", d / "metrics.json"])
    assert sorted(_objects(s3, root)) == ["pretrain/k4/checkpoints/epoch_001.pt", "pretrain/k4/metrics.json"]
    with pytest.raises(FileNotFoundError, match="epoch_007"):
        wd.push("pretrain", "k4", files=["checkpoints/epoch_007.pt"])
    with pytest.raises(ValueError, match="not inside"):
        wd.push("pretrain", "k4", files=[tmp_path / "elsewhere.pt"])
    artifacts.mark_done(d, {"epochs": 2})
    wd.push("pretrain", "k4", files=["checkpoints/epoch_002.pt"], exclude=["ray"])
    assert sorted(_objects(s3, root)) == [
        f"pretrain/k4/{DONE}",
        "pretrain/k4/checkpoints/epoch_001.pt",
        "pretrain/k4/checkpoints/epoch_002.pt",
        "pretrain/k4/metrics.json",
    ]


def test_done_keys_with_one_listing(s3, root, tmp_path, requests):
    client, prefix = s3[1], _prefix(root)
    done = {f"key{i:02d}" for i in range(0, 50, 3)}
    keys = [f"eval/{k}/{DONE}" if k in done else f"eval/{k}/rows.json" for k in (f"key{i:02d}" for i in range(50))]
    keys += [
        "eval/key00/rows.json",
        f"eval/key01/sub/{DONE}",  # the latter is not a job's marker
        f"pretrain/other/{DONE}",
    ]  # another kind
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=prefix + k, Body=b"{}"), keys))
    wd = Workdir(root, cache=tmp_path)
    requests.clear()
    assert wd.done_keys("eval") == done
    assert len(requests) == 1 and "list-type=2" in requests[0]  # one listing, not one request per job
    assert wd.done_keys("features") == set()
    assert wd.is_done("eval", "key03") and not wd.is_done("eval", "key01")


def test_remove(s3, root, tmp_path):
    wd = Workdir(root, cache=tmp_path)
    for key in ("gone", "kept"):
        _fill(wd.dir("view", key), {"part.bin": b"x" * 10})
        wd.mark_done("view", key, {})
        wd.push("view", key)
    wd.remove("view", "gone")
    assert not wd.dir("view", "gone").exists() and not wd.is_done("view", "gone")
    assert sorted(_objects(s3, root)) == [f"view/kept/{DONE}", "view/kept/part.bin"]
    wd.remove("view", "never-there")  # nothing to delete: fine
    assert wd.done_keys("view") == {"kept"}


def test_pickles_and_default_cache(s3, root, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "caches"))
    wd = Workdir(root)
    assert wd.local == default_cache(root) and wd.local.parent == tmp_path / "caches"
    _fill(wd.dir("eval", "e1"), {"rows.json": b"[1, 2]"})
    wd.mark_done("eval", "e1", {"rows": 2})
    wd.push("eval", "e1")

    copy = pickle.loads(pickle.dumps(wd))
    assert (copy.uri, copy.local, copy.is_remote) == (wd.uri, wd.local, True)
    assert copy.is_done("eval", "e1") and copy.read_done("eval", "e1") == {"rows": 2}
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))  # another node: its own default cache
    moved = pickle.loads(pickle.dumps(wd))
    assert moved.local.parent == tmp_path / "elsewhere"
    assert _tree(moved.pull("eval", "e1")) == _tree(wd.dir("eval", "e1"))
    pinned = pickle.loads(pickle.dumps(Workdir(root, cache=tmp_path / "pinned")))
    assert pinned.local == tmp_path / "pinned"


def test_concurrent_pulls_share_a_cache(s3, root, tmp_path):
    wd = Workdir(root, cache=tmp_path / "a")
    _fill(wd.dir("features", "f1"))
    wd.mark_done("features", "f1", {})
    wd.push("features", "f1")
    with ThreadPoolExecutor(4) as pool:  # four pullers of the same files into one cache
        pulls = [pool.submit(Workdir(root, cache=tmp_path / "shared").pull, "features", "f1") for _ in range(4)]
        for pulled in pulls:
            pulled.result()
    assert _tree(tmp_path / "shared" / "features" / "f1") == _tree(wd.dir("features", "f1"))  # and no temporary files


def test_other_remote_filesystems_rename_into_place(tmp_path, monkeypatch):
    """A remote filesystem that is not an object store gets a temporary file and a rename."""
    wd = Workdir(tmp_path / "unused")
    wd.fs, wd.base, wd.is_remote, wd.is_object_store = (
        pafs.SubTreeFileSystem(str(tmp_path / "remote"), pafs.LocalFileSystem()),
        "wd",
        True,
        False,
    )
    wd.local = tmp_path / "cache"
    _fill(wd.dir("view", "v1"), {"a/b.bin": b"abc"})
    wd.mark_done("view", "v1", {"n": 1})
    wd.push("view", "v1")
    assert _tree(tmp_path / "remote" / "wd") == {
        "view/v1/a/b.bin": b"abc",
        f"view/v1/{DONE}": (wd.dir("view", "v1") / DONE).read_bytes(),
    }
    assert wd.done_keys("view") == {"v1"} and wd.read_done("view", "v1") == {"n": 1}


def test_local_workdir_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wd = Workdir("wd")  # relative: resolved once, so a pickled copy works from any directory
    assert not wd.is_remote and wd.local == tmp_path / "wd" and wd.uri == str(tmp_path / "wd")
    assert Workdir(f"file://{tmp_path}/wd").local == tmp_path / "wd"
    d = wd.dir("eval", "e1")
    assert d == tmp_path / "wd" / "eval" / "e1"
    assert wd.pull("eval", "e1") == d and not d.exists()  # no-ops
    assert wd.done_keys("eval") == set() and not wd.is_done("eval", "e1")
    _fill(d, {"rows.json": b"[]"})
    assert wd.push("eval", "e1") == d
    wd.mark_done("eval", "e1", {"rows": 0})
    _fill(wd.dir("eval", "e2"), {"rows.json": b"[]"})
    assert wd.is_done("eval", "e1") and wd.done_keys("eval") == {"e1"} and wd.read_done("eval", "e1") == {"rows": 0}
    assert json.loads((d / DONE).read_text()) == {"rows": 0}
    assert wd.uri_of("eval", "e1", DONE) == str(d / DONE)

    copy = pickle.loads(pickle.dumps(wd))
    monkeypatch.chdir("/")
    assert copy.local == wd.local and copy.done_keys("eval") == {"e1"}
    copy.remove("eval", "e1")
    assert not d.exists() and wd.done_keys("eval") == set() and wd.dir("eval", "e2").exists()


# ------------------------------------------------------------------ a whole run on object storage


def _image_folder(root: Path) -> None:
    """A two-class image folder (train/ and test/) of random 24-px PNGs."""
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
def test_a_run_on_object_storage_survives_failures_and_moves_machines(s3, tmp_path, run_tbench, monkeypatch):
    """`tbench run --workdir s3://... --store s3://...` of a spec written for a GPU cluster, on
    this machine without a GPU (the asks fall back to CPU), with a downstream set whose folder is
    missing: its feature extraction (for `linear`) and its `scratch` training raise.

    1. Each failing job is tried 1 + max_retries times (every attempt kept in the bucket), then
       recorded as `failed` rows with its error; everything else finishes and lands in the
       bucket, markers last; the exit code says that jobs failed.
    2. The folder restored and a finished feature cache lost, a run from an empty cache (another
       machine) redoes exactly those jobs from their inputs in the bucket (a checkpoint of the
       finished pre-training run, nothing else of it); failed rows are replaced, never added to.
    3. A third machine finds everything finished.
    """
    import yaml

    from harness.plan import make_plan
    from harness.spec import parse_spec

    endpoint, client = s3
    prefix = uuid.uuid4().hex[:10]
    query = f"?endpoint_override={endpoint}&scheme=http&allow_delayed_open=true"
    work, store = f"s3://{BUCKET}/{prefix}/work{query}", f"s3://{BUCKET}/{prefix}/store{query}"
    ghost = tmp_path / "ghost"
    data = {
        "name": "on-s3",
        "world": {"seed": 0, "scale": 0.05},  # built by the run, kept in the bucket with the rest
        "pretrain": {
            "backbone": "test_resnet",
            "epochs": 2,
            "checkpoint_epochs": "all",
            "batch_size": 32,
            "grids": [{"sources": ["imagenet"], "sizes": [100], "methods": ["supervised"]}],
        },
        "downstream": {
            "sets": ["digits", "ghost"],
            "eval_seeds": [0],
            "checkpoint_epochs": "all",
            "custom_sets": {"ghost": {"format": "imagefolder", "path": str(ghost)}},
            "protocols": [
                {"name": "linear", "shots": [1, "full"]},
                {"name": "scratch", "shots": ["full"], "sets": ["ghost"], "epochs": 1, "lrs": [0.003]},
            ],
        },
        "resources": {
            "view": {"engine": "local"},
            "max_retries": 2,
            "pretrain": {"gpus_per_worker": 1},
            "eval": {"num_cpus": 1, "num_gpus": 0.5},
        },
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    plan = make_plan(parse_spec(data))
    expected = sorted(r["key"] for r in plan.expected_rows())

    def run(cache: str, code: int = 0):
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / cache))
        proc = run_tbench("run", str(spec), "--workdir", work, "--store", store, "--no-progress")
        assert proc.returncode == code, proc.stdout + proc.stderr
        return proc

    def objects(sub: str) -> set[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/{sub}")
        return {o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", [])}

    def rows() -> list[dict]:
        p = run_tbench(
            "results",
            "query",
            "SELECT key, status, protocol, downstream, error FROM runs",
            "--store",
            store,
            "--format",
            "json",
        )
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    # 1. failures retried, recorded; the rest finished, in the bucket
    proc = run("cache-a", code=1)
    assert "job(s) failed" in proc.stderr and "no GPU on this machine" in proc.stderr
    got = rows()
    assert sorted(r["key"] for r in got) == expected  # every row once, failed ones included
    assert {r["downstream"] for r in got if r["status"] == "failed"} == {"ghost"}
    assert all(r["status"] == "ok" for r in got if r["downstream"] != "ghost")
    scratch = [r for r in got if r["protocol"] == "scratch"]
    assert scratch and all("[failed 3 attempt(s)]" in r["error"] and "ghost" in r["error"] for r in scratch)
    linear = [r for r in got if r["downstream"] == "ghost" and r["protocol"] == "linear"]
    assert linear and all(r["error"].startswith("input failed") for r in linear)  # its features job failed
    failing = {
        j.key
        for j in plan.jobs.values()
        if j.coords.get("downstream") == "ghost" and (j.kind == "features" or j.config.get("protocol") == "scratch")
    }
    attempts = objects("work/attempts/")
    assert {k.split("/")[2] for k in attempts} == failing
    assert all(sum(k.split("/")[2] == key for k in attempts) == 3 for key in failing)
    done = objects("work/")
    ghostly = {j.key for j in plan.jobs.values() if j.coords.get("downstream") == "ghost"}
    for job in plan.jobs.values():
        assert (f"work/{job.kind}/{job.key}/{DONE}" in done) == (job.key not in ghostly), job.label
    (pre,) = plan.of_kind("pretrain")
    for name in ("checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt", "state/last.pt", "train_log.jsonl"):
        assert f"work/pretrain/{pre.key}/{name}" in done

    # 2. the set restored, a feature cache lost: another machine redoes just those jobs
    _image_folder(ghost)
    feats = next(j for j in plan.of_kind("features") if j.config["epoch"] == 1 and j.coords["downstream"] == "digits")
    evals = [j for j in plan.of_kind("eval") if feats.key in j.deps]
    lost = sorted(k for k in done if k.startswith(f"work/features/{feats.key}/"))
    lost += [f"work/eval/{j.key}/{DONE}" for j in evals]
    client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"{prefix}/{k}"} for k in lost]})
    redo = [j for j in plan.jobs.values() if j.key in ghostly or j.key == feats.key or j in evals]
    proc = run("cache-b")
    counts = {k: sum(j.kind == k for j in redo) for k in ("features", "eval")}
    assert f"{len(redo)} ran (features {counts['features']}, eval {counts['eval']})" in proc.stdout
    got = rows()
    assert sorted(r["key"] for r in got) == expected and all(r["status"] == "ok" for r in got)
    (cache,) = (tmp_path / "cache-b").iterdir()
    assert not (cache / "pretrain" / pre.key / "state").exists()  # only the checkpoints it reads came down
    assert (cache / "pretrain" / pre.key / "checkpoints" / "epoch_001.pt").is_file()

    # 3. a third machine: nothing to do
    proc = run("cache-c")
    assert f"{len(plan.jobs)} already finished, 0 ran" in proc.stdout
