"""The results store on object storage: moto's S3-compatible server on 127.0.0.1, reached by
pyarrow's own S3 filesystem (``s3://bucket/prefix?endpoint_override=...&scheme=http``)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from s3_server import moto_s3

from results import schema as S
from results.store import COMPACT_PREFIX, Store

pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parent.parent
BUCKET = "tbench-results"


@pytest.fixture(scope="module")
def s3():
    """(endpoint "host:port", boto3 client) of a moto S3 server running for this module."""
    with moto_s3(BUCKET) as server:
        yield server


@pytest.fixture()
def root(s3):
    """A fresh store URI (its own prefix in the bucket)."""
    endpoint, _ = s3
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/store?endpoint_override={endpoint}&scheme=http"


def _objects(s3, root: str) -> list[str]:
    """Object keys under the store's prefix, relative to it, less folder markers (pyarrow puts
    ``runs/`` when it deletes the last object below it, so that the "folder" stays)."""
    prefix = root.split("?")[0][len(f"s3://{BUCKET}/") :] + "/"
    listing = s3[1].list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"][len(prefix) :] for o in listing.get("Contents", []) if not o["Key"].endswith("/"))


def _run(key: str, **extra) -> dict:
    row = {
        "key": key,
        "spec": "s1",
        "status": "ok",
        "source": "laion",
        "method": "clip",
        "downstream": "pets",
        "protocol": "linear",
        "shots": 5,
        "eval_seed": 0,
        "score": 0.5,
        "pretrain_size": 1000,
    }
    row.update(extra)
    return row


def _counts(store: Store) -> tuple[int, int]:
    q = store.query("SELECT count(*) AS n, count(DISTINCT key) AS d FROM runs")
    return int(q["n"].iloc[0]), int(q["d"].iloc[0])


def test_write_rewrite_read_query_compact_on_s3(s3, root):
    store = Store(root)
    assert store.is_object_store and not store.is_local
    uri = store.write_part("runs", "j1", [_run("a", score=0.1), _run("b", score=0.2)])
    assert uri == root.replace("/store?", "/store/runs/j1.parquet?")  # the query string stays at the end
    store.write_part("runs", "j1", [_run("a", score=0.9), _run("b", score=0.2)])  # re-run: replaces
    store.write_part("runs", "j2", [_run("c", shots=None, method="simclr", score=0.4)])
    store.write_part("runs", "j3", [])
    store.write_part("curves", "j1", [{"key": "a", "epoch": e, "val_score": e / 10} for e in range(3)])
    # one object per part; no temporary objects, no folder markers
    assert _objects(s3, root) == ["curves/j1.parquet", "runs/j1.parquet", "runs/j2.parquet", "runs/j3.parquet"]
    with store.fs.open_input_file(store.part_path("runs", "j1")) as f:
        assert S.version_of(pq.read_metadata(f).metadata) == S.SCHEMA_VERSION

    assert store.part_keys("runs") == {"j1", "j2", "j3"} and store.has_part("runs", "j3")
    df = store.read("runs").set_index("key")
    assert sorted(df.index) == ["a", "b", "c"] and df.loc["a", "score"] == 0.9
    assert str(df["shots"].dtype) == "Int64" and df["shots"].isna().sum() == 1
    q = store.query("SELECT method, count(*) AS n, sum(score) AS s FROM runs GROUP BY method ORDER BY method")
    assert q.to_dict("records") == [
        {"method": "clip", "n": 2, "s": pytest.approx(1.1)},
        {"method": "simclr", "n": 1, "s": pytest.approx(0.4)},
    ]
    joined = store.query("SELECT r.key, count(*) AS n FROM runs r JOIN curves c USING (key) GROUP BY 1")
    assert joined.to_dict("records") == [{"key": "a", "n": 3}]

    report = store.compact("runs")
    assert report["parts_merged"] == 3 and report["rows"] == 3 and report["parts_removed"] == 3
    objects = _objects(s3, root)
    assert [o for o in objects if o.startswith("runs/")] == [
        o for o in objects if o.startswith(f"runs/{COMPACT_PREFIX}")
    ]
    assert store.part_files("runs") == [] and len(store.compacted_files("runs")) == 1
    assert _counts(store) == (3, 3) and store.has_part("runs", "j3")
    assert sorted(store.read("runs")["key"]) == ["a", "b", "c"]

    store.write_part("runs", "j2", [_run("c2", score=0.7)])  # re-write of a compacted key replaces it
    assert _counts(store) == (3, 3)
    assert set(store.query("SELECT key FROM runs")["key"]) == {"a", "b", "c2"}
    store.compact("runs", min_parts=1)
    assert _counts(store) == (3, 3) and store.part_files("runs") == []
    assert store.query("SELECT sum(score) AS s FROM runs")["s"].iloc[0] == pytest.approx(1.8)


def test_upgrade_steps_and_newer_parts_on_s3(s3, root, monkeypatch):
    from results.store import StoreError

    store = Store(root)
    store.write_part("runs", "j1", [_run("a", score=0.25)])
    store.write_part("runs", "j2", [_run("b", score=0.5)])
    monkeypatch.setattr(S, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(
        S.UPGRADES,
        ("runs", 1),
        lambda t: t.set_column(t.schema.get_field_index("score"), "score", pc.multiply(t["score"], 100.0)),
    )
    assert sorted(store.read("runs")["score"]) == [25.0, 50.0]
    assert sorted(store.query("SELECT score FROM runs")["score"]) == [25.0, 50.0]
    store.compact("runs")
    with store.fs.open_input_file(store.compacted_files("runs")[0]) as f:
        assert S.version_of(pq.read_metadata(f).metadata) == 2
    assert sorted(store.query("SELECT score FROM runs")["score"]) == [25.0, 50.0]

    with store.fs.open_output_stream(f"{store.table_dir('runs')}/future.parquet") as out:
        pq.write_table(pa.table({"key": ["f"]}).replace_schema_metadata({S.META_VERSION_KEY: b"3"}), out)
    with pytest.raises(StoreError, match=r"runs/future\.parquet.*version 3.*upgrade transfer-bench"):
        store.query("SELECT count(*) FROM runs")


def test_failed_write_publishes_nothing_on_s3(s3, root, monkeypatch):
    store = Store(root)
    store.write_part("runs", "j1", [_run("old")])
    real_write = pq.write_table

    def crashing_write(table, where, **kwargs):
        real_write(table.slice(0, 0), where, **kwargs)  # something is serialised, then we "crash"
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(pq, "write_table", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        store.write_part("runs", "j1", [_run("new")])
    with pytest.raises(KeyboardInterrupt):
        store.write_part("runs", "j2", [_run("new2")])
    monkeypatch.undo()
    assert _objects(s3, root) == ["runs/j1.parquet"]
    assert store.read("runs")["key"].tolist() == ["old"]


def test_cli_query_ls_compact_on_s3(s3, root):
    store = Store(root)
    for p in range(3):
        store.write_part("runs", f"job-{p}", [_run(f"r{p}-{i}", score=p + i / 10) for i in range(2)])
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "results", *args, "--store", root],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def done(proc: subprocess.Popen) -> str:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{proc.args}: {out}\n{err}"
        return out

    # ls and query read at the same time; compact after both
    ls, query = cli("ls"), cli("query", "SELECT count(*) AS n, round(sum(score), 2) AS s FROM runs", "--format", "csv")
    ls_out, query_out = done(ls), done(query)
    assert "runs" in ls_out and "s1" in ls_out
    assert query_out.split() == ["n,s", "6,6.3"]
    compact_out = done(cli("compact", "--table", "runs"))
    assert "3 part(s) with 6 row(s) merged into 1 file(s), 3 part(s) removed" in compact_out
    assert store.part_files("runs") == [] and len(store.compacted_files("runs")) == 1
    assert _counts(store) == (6, 6)
