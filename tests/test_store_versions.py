"""Schema versions of the results store: old parts upgraded on read, in SQL and by compaction;
parts from a newer version refused; the footer search that reads versions cheaply."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from results import compaction
from results import schema as S
from results import store as store_mod
from results.store import META_WRITE_ID_KEY, Store, StoreError


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


def _write_raw(store: Store, table: str, key: str, data: pa.Table) -> str:
    """A part written behind the store's back (another version's writer)."""
    folder = store.table_dir(table)
    os.makedirs(folder, exist_ok=True)
    path = f"{folder}/{key}.parquet"
    pq.write_table(data, path)
    return path


def _file_version(path: str) -> int:
    return S.version_of(pq.read_metadata(path).metadata)


def _view_sql(store: Store, table: str) -> str:
    con = store.connect()
    try:
        return con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [table]).fetchone()[0]
    finally:
        con.close()


def _sql_scores(store: Store) -> dict[str, float]:
    q = store.query("SELECT key, score FROM runs")
    assert q["key"].is_unique
    return dict(zip(q["key"], q["score"]))


def _percent(data: pa.Table) -> pa.Table:
    """A fake 1 -> 2 step: ``score`` changes meaning from a fraction to a percentage."""
    i = data.schema.get_field_index("score")
    if i < 0:
        return data
    return data.set_column(i, "score", pc.multiply(data["score"].cast(pa.float64()), 100.0))


@pytest.fixture()
def v2(monkeypatch):
    """The code at a (fake) schema version 2 whose step rescales runs' scores to percent."""

    def bump():
        monkeypatch.setattr(S, "SCHEMA_VERSION", 2)
        monkeypatch.setitem(S.UPGRADES, ("runs", 1), _percent)

    return bump


# ----------------------------------------------------------------------------- version 0


def test_v0_part_reads_back_through_read_query_and_compact(tmp_path):
    store = Store(tmp_path)
    legacy = pa.table(
        {
            "key": ["old-a", "old-b"],
            "source": ["laion", "yfcc"],
            "score": [0.25, 0.75],
            "shots": pa.array([None, 10], pa.int64()),
        }
    )
    path = _write_raw(store, "runs", "legacy", legacy)
    assert pq.read_metadata(path).metadata is None or S.META_VERSION_KEY not in pq.read_metadata(path).metadata
    store.write_part("runs", "new", [_run("new-a", score=0.5, hparams={"C": 1.0})])
    assert store._part_facts(store.fs.get_file_info(path))[0] == 0
    assert not S.upgrade_steps("runs", 0)  # 0 -> 1 only added columns: read in place
    assert "read_parquet" in _view_sql(store, "runs")

    df = store.read("runs").set_index("key")
    assert list(store.read("runs").columns) == S.columns("runs")
    assert df.loc["old-a", "score"] == 0.25 and df.loc["old-b", "source"] == "yfcc"
    assert df["hparams"].isna().sum() == 2 and df.loc["old-b", "shots"] == 10 and df["shots"].isna().sum() == 1
    q = store.query("SELECT key, score, shots, spec FROM runs ORDER BY key")
    assert q["key"].tolist() == ["new-a", "old-a", "old-b"]
    assert q["score"].tolist() == [0.5, 0.25, 0.75] and q["spec"].isna().tolist() == [False, True, True]

    report = store.compact("runs")
    assert report["parts_merged"] == 2 and report["rows"] == 3
    (compacted,) = store.compacted_files("runs")
    assert _file_version(compacted) == S.SCHEMA_VERSION  # written at the current version
    assert pq.read_schema(compacted).names[: len(S.columns("runs"))] == S.columns("runs")
    assert sorted(store.read("runs")["key"]) == ["new-a", "old-a", "old-b"]
    assert _sql_scores(store) == {"new-a": 0.5, "old-a": 0.25, "old-b": 0.75}


# ----------------------------------------------------------------------------- upgrade steps


def test_future_step_is_applied_by_read_sql_and_compaction(tmp_path, v2):
    store = Store(tmp_path)
    store.write_part("runs", "j1", [_run("a", score=0.25), _run("b", score=0.5)])
    store.write_part("curves", "j1", [{"key": "a", "epoch": 0, "val_score": 0.3}])
    v2()  # the code moves on: scores are percentages from version 2
    store.write_part("runs", "j2", [_run("c", score=75.0)])
    assert _file_version(store.part_path("runs", "j2")) == 2 and _file_version(store.part_path("runs", "j1")) == 1

    assert dict(zip(store.read("runs")["key"], store.read("runs")["score"])) == {"a": 25.0, "b": 50.0, "c": 75.0}
    assert _sql_scores(Store(tmp_path)) == {"a": 25.0, "b": 50.0, "c": 75.0}
    assert "__rows_runs" in _view_sql(store, "runs")  # served upgraded through Arrow
    assert "read_parquet" in _view_sql(store, "curves")  # no step for curves: in place
    q = store.query("SELECT r.key, r.score, c.val_score FROM runs r JOIN curves c USING (key)")
    assert q.to_dict("records") == [{"key": "a", "score": 25.0, "val_score": 0.3}]

    report = store.compact("runs")
    assert report["parts_merged"] == 2 and report["files_upgraded"] == []
    (compacted,) = store.compacted_files("runs")
    assert _file_version(compacted) == 2
    assert sorted(pq.read_table(compacted, columns=["score"])["score"].to_pylist()) == [25.0, 50.0, 75.0]
    assert "__rows_runs" not in _view_sql(store, "runs")  # back to reading in place
    assert _sql_scores(store) == {"a": 25.0, "b": 50.0, "c": 75.0}
    assert dict(zip(store.read("runs")["key"], store.read("runs")["score"])) == {"a": 25.0, "b": 50.0, "c": 75.0}


def test_compaction_rewrites_older_compacted_files_that_need_a_step(tmp_path, v2):
    store = Store(tmp_path)
    store.write_part("runs", "j1", [_run("a", score=0.25)])
    store.write_part("runs", "j2", [_run("b", score=0.5)])
    store.write_part("runs", "j3", [_run("c", score=0.125)])
    store.compact("runs")
    (old,) = store.compacted_files("runs")
    store.write_part("runs", "j3", [_run("c2", score=0.75)])  # a loose re-write overrides j3's compacted rows
    v2()
    assert _sql_scores(store) == {"a": 25.0, "b": 50.0, "c2": 75.0}
    assert "__rows_runs" in _view_sql(store, "runs")

    report = store.compact("runs", min_parts=5)  # too few loose parts to merge; the upgrade still runs
    assert report["parts_merged"] == 0 and report["files_upgraded"] == [old] and report["rows"] == 2
    new = [p for p in store.compacted_files("runs") if p != old]
    assert len(new) == 1 and _file_version(new[0]) == 2
    assert sorted(store._compacted_keys(new[0])) == ["j1", "j2"]  # the keys the old file still served
    assert [src.path for src in store._resolve_sources("runs")[1]] == new  # the old file serves nothing now
    assert _sql_scores(store) == {"a": 25.0, "b": 50.0, "c2": 75.0}
    assert sorted(store.read("runs")["score"]) == [25.0, 50.0, 75.0]
    assert store.compact("runs", min_parts=5)["files_upgraded"] == []  # nothing left to upgrade

    store.compact("runs", min_parts=1)  # absorb j3's loose re-write (version 1) as well
    assert store.part_files("runs") == [] and _sql_scores(store) == {"a": 25.0, "b": 50.0, "c2": 75.0}
    assert "__rows_runs" not in _view_sql(store, "runs")  # every serving file at version 2: in place


def test_step_that_retypes_a_column(tmp_path, monkeypatch):
    """A (fake) pre-versioning layout stored shots as text ('full' or a number)."""
    store = Store(tmp_path)
    _write_raw(store, "runs", "legacy", pa.table({"key": ["x", "y"], "shots": ["full", "5"], "score": [0.1, 0.2]}))
    store.write_part("runs", "new", [_run("z", shots=10)])
    with pytest.raises(StoreError, match="do not fit the current schema"):
        store.read("runs")  # without a step the text cannot be read as int64

    def shots_to_int(data: pa.Table) -> pa.Table:
        i = data.schema.get_field_index("shots")
        if i < 0 or data.schema.field(i).type != pa.string():
            return data
        shots = pc.if_else(pc.equal(data["shots"], "full"), None, data["shots"]).cast(pa.int64())
        return data.set_column(i, "shots", shots)

    monkeypatch.setitem(S.UPGRADES, ("runs", 0), shots_to_int)
    df = store.read("runs").set_index("key")
    assert str(df["shots"].dtype) == "Int64" and df["shots"].isna().tolist() == [True, False, False]
    q = store.query("SELECT key, shots, typeof(shots) AS t FROM runs ORDER BY key")
    assert q["t"].unique().tolist() == ["BIGINT"] and q["shots"].isna().tolist() == [True, False, False]
    assert q["shots"].iloc[1:].tolist() == [5, 10]
    store.compact("runs")
    assert store.query("SELECT sum(shots) AS s FROM runs")["s"].iloc[0] == 15


def test_bad_steps_are_reported(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.write_part("runs", "j1", [_run("a"), _run("b")])
    monkeypatch.setattr(S, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(S.UPGRADES, ("runs", 1), lambda data: data.slice(0, 1))
    with pytest.raises(StoreError, match=r"j1\.parquet.*from schema version 1 to 2.*same rows \(2\)"):
        store.read("runs")
    with pytest.raises(S.SchemaError, match="already registered"):
        S.upgrade_step(1, "runs")(lambda data: data)
    with pytest.raises(S.SchemaError, match="valid tables"):
        S.upgrade_step(1, "rusn")


# ----------------------------------------------------------------------------- newer and malformed versions


def test_part_from_a_newer_version_is_refused_clearly(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    store = Store(tmp_path)
    store.write_part("runs", "ok", [_run("a")])
    future = pa.table({"key": ["f"], "score": [1.0]}).replace_schema_metadata({S.META_VERSION_KEY: b"7"})
    path = _write_raw(store, "runs", "zz-future", future)  # sorts after "ok": in the second batch
    pattern = rf"{path}.*version 7, newer than this code's version {S.SCHEMA_VERSION}: upgrade transfer-bench"
    with pytest.raises(StoreError, match=pattern):
        store.read("runs")
    with pytest.raises(StoreError, match=pattern):
        store.query("SELECT count(*) FROM runs")
    with pytest.raises(StoreError, match=pattern):
        store.compact("runs", target_rows=1)
    assert store.compacted_files("runs") == [] and len(store.part_files("runs")) == 2  # checked before any write
    res = CliRunner().invoke(app, ["results", "query", "SELECT 1", "--store", str(tmp_path)])
    assert res.exit_code == 2 and "upgrade transfer-bench" in res.output


def test_malformed_version_is_an_error(tmp_path):
    store = Store(tmp_path)
    _write_raw(store, "runs", "bad", pa.table({"key": ["x"]}).replace_schema_metadata({S.META_VERSION_KEY: b"v1"}))
    with pytest.raises(StoreError, match=r"bad\.parquet.*malformed"):
        store.read("runs")
    with pytest.raises(StoreError, match=r"bad\.parquet.*malformed"):
        store.query("SELECT * FROM runs")


# ----------------------------------------------------------------------------- reading versions cheaply


def test_footer_search_agrees_with_parquet_metadata(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.write_part("runs", "plain", [_run("a")])
    store.write_part("runs", "empty", [])
    # the key's text as a value: its bytes appear in the statistics too, so the search defers to pyarrow
    store.write_part("runs", "tricky", [_run("transfer_bench.schema_version", spec="transfer_bench.write_id")])
    _write_raw(store, "runs", "legacy", pa.table({"key": ["x"]}))
    store.write_part("runs", "wide", [_run(f"k{i}", hparams={"notes": "x" * 3000, "i": i}) for i in range(20)])
    infos = store._part_infos("runs")
    assert len(infos) == 5
    for tail in (store_mod._FOOTER_TAIL, 64):  # 64 bytes: the footer is read in a second request
        monkeypatch.setattr(store_mod, "_FOOTER_TAIL", tail)
        fresh = Store(tmp_path)
        for info in infos:
            meta = pq.read_metadata(info.path).metadata or {}
            want = (S.version_of(meta), meta.get(META_WRITE_ID_KEY))
            assert fresh._part_facts(info) == want, info.path
    with pytest.raises(store_mod._Ambiguous):
        store_mod._footer_value(store._footer(store.part_path("runs", "tricky")), S.META_VERSION_KEY)


def test_version_cache_follows_rewrites(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.write_part("runs", "j1", [_run("a")])
    info = store.fs.get_file_info(store.part_path("runs", "j1"))
    assert store._part_facts(info)[0] == 1
    monkeypatch.setattr(S, "SCHEMA_VERSION", 2)
    store.write_part("runs", "j1", [_run("a"), _run("b")])  # re-written (other size) at version 2
    assert store._part_facts(store.fs.get_file_info(store.part_path("runs", "j1")))[0] == 2


def test_same_size_rewrite_with_the_same_mtime_is_kept_by_compaction(tmp_path):
    """Object stores keep modification times to the second: a quick re-write of the same size
    looks unchanged by size and time, and only the write id tells it apart."""
    store = Store(tmp_path)
    for p in range(3):
        store.write_part("runs", f"job-{p}", [_run(f"r{p}", score=0.5)])
    loose = store._part_infos("runs")
    (batch,) = list(compaction.compaction_batches(store, "runs", loose, 10_000))
    compaction.write_compacted(store, "runs", batch)
    store.write_part("runs", "job-1", [_run("r1", score=0.5)])  # same rows: same size, new write id
    old = loose[1]
    os.utime(old.path, ns=(old.mtime_ns, old.mtime_ns))
    now = store.fs.get_file_info(old.path)
    assert (now.size, now.mtime_ns) == (old.size, old.mtime_ns)
    removed, kept = compaction.remove_merged(store, batch)
    assert removed == 2 and kept == ["job-1"]
    assert store.part_files("runs") == [old.path]
    assert len(store.read("runs")) == 3 and store.query("SELECT count(*) AS n FROM runs")["n"].iloc[0] == 3
