"""Compaction of the results store: merged parts, crash windows, re-writes, exactly-once reads."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from results import compaction
from results.store import COMPACT_PREFIX, META_PARTS_KEY, Store, StoreError


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
        "created_at": dt.datetime(2024, 1, 1, 12, 0),
    }
    row.update(extra)
    return row


def _fill(store: Store, n_parts: int = 5, rows_per_part: int = 3) -> None:
    for p in range(n_parts):
        store.write_part("runs", f"job-{p}", [_run(f"r{p}-{i}", score=p + i / 10) for i in range(rows_per_part)])


def _sorted_rows(df):
    return sorted(df[["key", "score"]].itertuples(index=False, name=None))


def _n_sql(store: Store) -> tuple[int, int]:
    q = store.query("SELECT count(*) AS n, count(DISTINCT key) AS d FROM runs")
    return int(q["n"].iloc[0]), int(q["d"].iloc[0])


def test_compaction_keeps_rows_and_content(tmp_path):
    store = Store(tmp_path)
    _fill(store)
    store.write_part("runs", "job-empty", [])
    before = _sorted_rows(store.read("runs"))
    keys_before = store.part_keys("runs")

    report = store.compact("runs")
    assert report["parts_merged"] == 6 and report["rows"] == 15 and report["parts_removed"] == 6
    assert store.part_files("runs") == [] and len(store.compacted_files("runs")) == 1
    name = store.compacted_files("runs")[0].rsplit("/", 1)[1]
    assert name.startswith(COMPACT_PREFIX)
    assert b"job-empty" in pq.read_metadata(store.compacted_files("runs")[0]).metadata[META_PARTS_KEY]

    assert _sorted_rows(store.read("runs")) == before
    assert list(store.read("runs").columns) == list(Store(tmp_path / "x").read("runs").columns)  # no _part
    assert store.part_keys("runs") == keys_before
    assert store.has_part("runs", "job-3") and store.has_part("runs", "job-empty")
    assert not store.has_part("runs", "job-99")
    assert _n_sql(store) == (15, 15)
    q = store.query("SELECT * FROM runs LIMIT 1")
    assert "_part" not in q.columns and "filename" not in q.columns
    # too few loose parts: nothing to do
    assert store.compact("runs")["files_written"] == []


def test_target_rows_splits_into_several_files(tmp_path):
    store = Store(tmp_path)
    _fill(store, n_parts=6, rows_per_part=4)
    report = store.compact("runs", target_rows=8)
    assert len(report["files_written"]) == 3 and report["rows"] == 24
    assert _n_sql(store) == (24, 24)


def test_crash_between_rename_and_delete_shows_no_duplicates(tmp_path):
    store = Store(tmp_path)
    _fill(store, n_parts=4)
    loose = store._part_infos("runs")
    (batch,) = list(compaction.compaction_batches(store, "runs", loose, 10_000))
    compaction.write_compacted(store, "runs", batch)  # ... and "crash" before remove_merged
    assert len(store.part_files("runs")) == 4 and len(store.compacted_files("runs")) == 1
    assert len(store.read("runs")) == 12 and store.read("runs")["key"].is_unique
    assert _n_sql(store) == (12, 12)
    assert store.part_keys("runs") == {f"job-{p}" for p in range(4)}
    # a later compaction absorbs the leftovers; still exactly once
    store.compact("runs")
    assert store.part_files("runs") == []
    assert len(store.read("runs")) == 12 and _n_sql(store) == (12, 12)


def test_rewrite_of_compacted_key_replaces_its_rows(tmp_path):
    store = Store(tmp_path)
    _fill(store, n_parts=3)
    store.compact("runs")
    store.write_part("runs", "job-1", [_run("new", score=9.0)])
    df = store.read("runs")
    assert len(df) == 7 and "new" in set(df["key"]) and not any(df["key"].str.startswith("r1-"))
    assert _n_sql(store) == (7, 7)
    # compact again: the newer compacted copy wins over the older one
    store.write_part("runs", "job-9", [_run("nine")])
    store.compact("runs")
    assert store.part_files("runs") == [] and len(store.compacted_files("runs")) == 2
    df = store.read("runs")
    assert len(df) == 8 and df["key"].is_unique and "new" in set(df["key"])
    assert _n_sql(store) == (8, 8)
    # re-written to zero rows after compaction: the key has no rows, but is still done
    store.write_part("runs", "job-0", [])
    store.write_part("runs", "job-8", [])
    store.compact("runs")
    assert store.has_part("runs", "job-0")
    assert not any(store.read("runs")["key"].str.startswith("r0-"))
    assert _n_sql(store) == (5, 5)


def test_rewrite_during_compaction_is_kept(tmp_path):
    store = Store(tmp_path)
    _fill(store, n_parts=3)
    loose = store._part_infos("runs")
    (batch,) = list(compaction.compaction_batches(store, "runs", loose, 10_000))
    compaction.write_compacted(store, "runs", batch)
    store.write_part("runs", "job-2", [_run("late", score=7.0), _run("late2")])  # concurrent writer
    removed, kept = compaction.remove_merged(store, batch)
    assert removed == 2 and kept == ["job-2"]
    df = store.read("runs")
    assert {"late", "late2"} <= set(df["key"]) and len(df) == 8 and df["key"].is_unique
    assert _n_sql(store) == (8, 8)


def test_compact_argument_errors(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(StoreError, match="min_parts"):
        store.compact("runs", min_parts=0)
    with pytest.raises(StoreError, match="target_rows"):
        store.compact("runs", target_rows=0)
    with pytest.raises(ValueError, match="valid tables"):
        store.compact("rusn")


def test_cli_ls_and_compact(tmp_path):
    from harness.cli import app

    store = Store(tmp_path)
    _fill(store, n_parts=3)
    store.write_part(
        "runs", "job-f", [_run("bad", status="failed", spec="s2", created_at=dt.datetime(2024, 2, 3, 4, 5))]
    )
    store.write_part("curves", "job-0", [{"key": "r0-0", "epoch": e} for e in range(4)])
    runner = CliRunner()
    res = runner.invoke(app, ["results", "ls", "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "runs" in res.output and "curves" in res.output
    assert "s1" in res.output and "s2" in res.output and "2024-02-03" in res.output

    res = runner.invoke(app, ["results", "compact", "--store", str(tmp_path), "--table", "runs"])
    assert res.exit_code == 0, res.output
    assert "4 part" in res.output
    assert store.part_files("runs") == [] and len(store.part_files("curves")) == 1
    assert _n_sql(store) == (10, 10)

    res = runner.invoke(app, ["results", "compact", "--store", str(tmp_path), "--table", "rusn"])
    assert res.exit_code == 2 and "valid tables" in res.output


def test_concurrent_readers_never_see_duplicates_or_losses(tmp_path):
    """Writers, a compactor and a reader at once: every read sees each row once and nothing
    written before it started goes missing."""
    import threading
    import time

    store = Store(tmp_path)
    written: list[str] = []
    stop = threading.Event()
    failures: list[str] = []

    def writer():
        i = 0
        while not stop.is_set():
            store.write_part("runs", f"w-{i % 40}", [_run(f"w{i % 40}-{j}", score=float(i)) for j in range(2)])
            written.append(f"w-{i % 40}")
            i += 1

    def compactor():
        while not stop.is_set():
            store.compact("runs", min_parts=2, target_rows=30)
            time.sleep(0.02)

    threads = [threading.Thread(target=writer), threading.Thread(target=compactor)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 1.0
        reads = 0
        while time.monotonic() < deadline:
            expected = set(written)
            df = store.read("runs")
            n, d = _n_sql(store)
            keys = {k.split("-")[0].replace("w", "w-") for k in df["key"]}
            if not df["key"].is_unique or n != d:
                failures.append(f"duplicates: read {len(df)} rows / {df['key'].nunique()} keys, sql {n}/{d}")
            if not expected <= keys:
                failures.append(f"missing keys {sorted(expected - keys)[:5]}")
            reads += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert reads >= 1 and store.compacted_files("runs")
    assert len(store.read("runs")) == 2 * len(set(written)) == _n_sql(store)[0]
