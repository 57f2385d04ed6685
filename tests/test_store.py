"""The Parquet results store: schemas, atomic parts, DuckDB queries and output formats."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import results
from results import query as rq
from results.schema import SCHEMA_VERSION, TABLES, SchemaError, conform
from results.store import Store, StoreError, StoreQueryError

RUN_COLUMNS = (
    "key, spec, created_at, code_version, status, error, pretrain_key, source, curation, label_noise, "
    "pretrain_size, method, backbone, pretrain_epochs, checkpoint_epoch, pretrain_seed, samples_seen, "
    "downstream, num_classes, metric, chance, protocol, shots, eval_seed, top1, balanced_acc, score, loss, "
    "train_seconds, eval_seconds, device"
).split(", ")


def _run(key: str, **extra) -> dict:
    row = {
        "key": key,
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


# ----------------------------------------------------------------------------- schema


def test_runs_schema_keeps_design_columns_in_order():
    names = TABLES["runs"].names
    assert names[: len(RUN_COLUMNS)] == RUN_COLUMNS
    assert {"job_key", "view_key", "image_size", "val_score", "hparams"} <= set(names)
    assert TABLES["runs"].field("created_at").type == pa.timestamp("us", tz="UTC")
    assert TABLES["runs"].field("shots").type == pa.int64()
    assert set(TABLES) == {"runs", "curves", "spectra", "views"}


def test_conform_fills_casts_and_serialises():
    table = conform(
        "runs",
        [
            {
                "key": "a",
                "pretrain_size": 3.0,
                "label_noise": 0,
                "hparams": {"lr": 0.1},
                "created_at": dt.datetime(2024, 1, 1),
            }
        ],
    )
    assert table.schema.equals(TABLES["runs"], check_metadata=False)
    row = table.to_pylist()[0]
    assert row["pretrain_size"] == 3 and row["label_noise"] == 0.0 and row["shots"] is None
    assert json.loads(row["hparams"]) == {"lr": 0.1}
    assert row["created_at"].tzinfo is not None


def test_unknown_column_error_names_column_and_valid_ones():
    with pytest.raises(SchemaError) as err:
        conform("runs", [{"key": "a", "scroe": 0.3}])
    msg = str(err.value)
    assert "'scroe'" in msg and "runs" in msg and "score" in msg and "valid columns" in msg


def test_bad_value_and_bad_table_errors():
    with pytest.raises(SchemaError, match="column 'shots', row 1"):
        conform("runs", [{"shots": 1}, {"shots": "many"}])
    with pytest.raises(SchemaError, match="valid tables: runs, curves, spectra, views"):
        conform("rusn", [])


# ----------------------------------------------------------------------------- writing


def test_write_part_is_one_file_with_version_metadata(tmp_path):
    store = Store(tmp_path)
    path = store.write_part("runs", "job-1", [_run("a"), _run("b")])
    assert path.endswith("runs/job-1.parquet")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["job-1.parquet"]
    meta = pq.read_metadata(path).metadata
    assert meta[b"transfer_bench.schema_version"] == str(SCHEMA_VERSION).encode()
    assert store.has_part("runs", "job-1") and not store.has_part("runs", "job-2")
    assert store.part_keys("runs") == {"job-1"}


def test_rewriting_a_key_replaces_rows(tmp_path):
    store = Store(tmp_path)
    store.write_part("runs", "job-1", [_run("a", score=0.1), _run("b")])
    store.write_part("runs", "job-1", [_run("a", score=0.9), _run("b")])
    df = store.read("runs")
    assert len(df) == 2
    assert df.set_index("key").loc["a", "score"] == 0.9
    assert store.query("SELECT count(*) AS n FROM runs")["n"].iloc[0] == 2


def test_zero_rows_still_marks_done(tmp_path):
    store = Store(tmp_path)
    store.write_part("curves", "job-1", [])
    assert store.has_part("curves", "job-1")
    assert store.read("curves").empty


def test_crash_mid_write_leaves_no_visible_part(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.write_part("runs", "job-1", [_run("old")])
    real_write = pq.write_table

    def crashing_write(table, where, **kwargs):
        real_write(table.slice(0, 0), where, **kwargs)  # something lands on disk, then we "crash"
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(pq, "write_table", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        store.write_part("runs", "job-1", [_run("new")])
    with pytest.raises(KeyboardInterrupt):
        store.write_part("runs", "job-2", [_run("new2")])
    monkeypatch.undo()

    assert store.part_keys("runs") == {"job-1"}
    assert store.read("runs")["key"].tolist() == ["old"]  # the old part survived intact
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["job-1.parquet"]  # temp cleaned up


def test_leftover_temporary_files_are_ignored(tmp_path):
    """A hard kill (no cleanup) can leave a temporary file; readers must not see it."""
    store = Store(tmp_path)
    store.write_part("runs", "job-1", [_run("a")])
    (tmp_path / "runs" / ".job-2.parquet.tmp-abc").write_bytes(b"PAR1 half written")
    (tmp_path / "runs" / ".job-3.parquet").write_bytes(b"junk")
    assert store.part_keys("runs") == {"job-1"}
    assert len(store.read("runs")) == 1
    assert len(store.query("SELECT * FROM runs")) == 1


def test_invalid_keys_are_rejected(tmp_path):
    store = Store(tmp_path)
    for key in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(StoreError, match="invalid part key"):
            store.write_part("runs", key, [])


# ----------------------------------------------------------------------------- reading and SQL


def test_empty_store_returns_typed_empty_frames(tmp_path):
    store = Store(tmp_path / "nothing-here")
    for table, schema in TABLES.items():
        df = store.read(table)
        assert df.empty and list(df.columns) == schema.names
        q = store.query(f"SELECT * FROM {table}")
        assert q.empty and list(q.columns) == schema.names
    assert store.part_keys("runs") == set()
    frames = results.load(tmp_path / "nothing-here")
    assert set(frames) == set(TABLES)
    # typed: aggregates over the empty view still bind
    assert store.query("SELECT avg(score) AS s, max(shots) AS m FROM runs")["s"].isna().all()


def test_query_over_parts_and_nullable_shots(tmp_path):
    store = Store(tmp_path)
    store.write_part("runs", "j1", [_run("a", shots=None, score=0.8), _run("b", shots=5, score=0.4)])
    store.write_part("runs", "j2", [_run("c", shots=5, score=0.6, method="simclr")])
    store.write_part("curves", "j1", [{"key": "a", "epoch": e, "train_loss": 1.0 / (e + 1)} for e in range(3)])
    df = store.query(
        "SELECT method, coalesce(CAST(shots AS VARCHAR), 'full') AS shots, avg(score) AS score "
        "FROM runs GROUP BY ALL ORDER BY method, shots"
    )
    assert df.to_dict("records") == [
        {"method": "clip", "shots": "5", "score": 0.4},
        {"method": "clip", "shots": "full", "score": 0.8},
        {"method": "simclr", "shots": "5", "score": 0.6},
    ]
    joined = store.query("SELECT r.key, count(*) AS n FROM runs r JOIN curves c USING (key) GROUP BY 1")
    assert joined.to_dict("records") == [{"key": "a", "n": 3}]
    runs = store.read("runs")
    assert str(runs["shots"].dtype) == "Int64" and runs["shots"].isna().sum() == 1


def test_old_parts_missing_new_columns_read_back_with_nulls(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "runs").mkdir()
    old = pa.table({"key": ["x"], "score": [0.3]})  # a part from an older layout
    pq.write_table(old, tmp_path / "runs" / "legacy.parquet")
    store.write_part("runs", "new", [_run("y", hparams={"C": 1.0})])
    q = store.query("SELECT key, score, hparams FROM runs ORDER BY key")
    assert q["key"].tolist() == ["x", "y"] and pd.isna(q["hparams"].iloc[0])
    assert store.read("runs").set_index("key").loc["x", "score"] == 0.3


def test_query_error_keeps_duckdb_message_and_lists_tables(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(StoreQueryError) as err:
        store.query("SELECT no_such_column FROM runs")
    msg = str(err.value)
    assert "no_such_column" in msg and "Binder Error" in msg
    for table in TABLES:
        assert f"  {table} (0 parts): " in msg
    assert "pretrain_size" in msg


# ----------------------------------------------------------------------------- formats


@pytest.fixture()
def frame(tmp_path):
    store = Store(tmp_path / "s")
    store.write_part(
        "runs",
        "j1",
        [_run("a", shots=None, created_at=dt.datetime(2024, 1, 2, tzinfo=dt.UTC)), _run("b[x]", score=None)],
    )
    return store.query("SELECT key, shots, score, created_at FROM runs ORDER BY key")


def test_format_json_csv_table_parquet(frame, tmp_path):
    records = json.loads(rq.format_frame(frame, "json"))
    assert records[0] == {"key": "a", "shots": None, "score": 0.5, "created_at": "2024-01-02T00:00:00+00:00"}
    assert records[1]["score"] is None and records[1]["shots"] == 5

    csv = rq.format_frame(frame, "csv")
    assert csv.splitlines()[0] == "key,shots,score,created_at"
    assert len(csv.splitlines()) == 3

    table = rq.format_frame(frame, "table")
    assert table.row_count == 2 and [c.header for c in table.columns] == ["key", "shots", "score", "created_at"]
    out = tmp_path / "out" / "q.parquet"
    assert rq.format_frame(frame, "parquet", out=out) == out  # harness.cli passes out=
    assert pq.read_table(out).num_rows == 2


def test_print_frame_plain_text_and_errors(frame, tmp_path):
    import io

    buf = io.StringIO()
    rq.print_frame(frame, "table", file=buf)
    text = buf.getvalue()
    assert "b[x]" in text and "2 rows" in text and "\x1b[" not in text  # no colour codes off a TTY
    with pytest.raises(rq.FormatError, match="valid formats: table, csv, json, parquet"):
        rq.format_frame(frame, "xlsx")
    with pytest.raises(rq.FormatError, match="output path"):
        rq.format_frame(frame, "parquet")


def test_json_format_handles_duckdb_decimals(tmp_path):
    from results.query import format_frame
    from results.store import Store

    store = Store(tmp_path / "store")
    frame = store.query("SELECT sum(x) AS s, sum(x) / 3 AS f FROM (SELECT 1 AS x UNION ALL SELECT 2)")
    import json

    assert json.loads(format_frame(frame, "json")) == [{"s": 3, "f": 1.0}]
