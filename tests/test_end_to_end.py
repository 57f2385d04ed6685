"""The whole path through the real command line: plan -> run -> store -> query -> report -> re-run."""

import json
from pathlib import Path

import pytest
import yaml

from harness.plan import make_plan
from harness.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_tiny_spec_end_to_end_and_rerun_is_a_no_op(tmp_path, run_tbench):
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data["workdir"] = str(tmp_path / "work")
    data["store"] = str(tmp_path / "store")
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    planned = make_plan(parse_spec(data)).planned_rows()

    proc = run_tbench("plan", str(spec_path))
    assert proc.returncode == 0, proc.stderr
    assert f"{planned} result rows" in proc.stdout

    proc = run_tbench("run", str(spec_path), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout

    def query(sql: str) -> list[dict]:
        p = run_tbench("results", "query", sql, "--store", str(tmp_path / "store"), "--format", "json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    (counts,) = query("SELECT count(*) AS n, count(DISTINCT key) AS k, sum(status = 'ok') AS ok FROM runs")
    assert counts == {"n": planned, "k": planned, "ok": planned}
    parts = sorted((tmp_path / "store" / "runs").glob("*.parquet"))
    mtimes = {p: p.stat().st_mtime_ns for p in parts}
    views = query("SELECT source, requested_size, size, label_noise, achieved_noise FROM views ORDER BY 1, 2, 4")
    assert len(views) == 6 and all(v["size"] > 0 for v in views)

    # every row carries its coordinates; scores are probabilities; full data is null shots
    rows = query("SELECT * FROM runs")
    assert {r["method"] for r in rows} == {"supervised", "clip", "simclr", "none"}
    assert all(0.0 <= r["score"] <= 1.0 and r["chance"] > 0 for r in rows)
    assert {r["shots"] for r in rows if r["protocol"] == "linear"} == {1, 5, None}
    assert {r["checkpoint_epoch"] for r in rows} == {0, 1, 2}

    report = tmp_path / "report"
    proc = run_tbench("report", "--store", str(tmp_path / "store"), "--out", str(report))
    assert proc.returncode == 0, proc.stderr
    html = (report / "index.html").read_text()
    assert "<img" in html and list(report.glob("*.png"))

    proc = run_tbench("run", str(spec_path), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(make_plan(parse_spec(data)).jobs)} already finished, 0 ran" in proc.stdout
    (again,) = query("SELECT count(*) AS n, count(DISTINCT key) AS k FROM runs")
    assert again == {"n": planned, "k": planned}
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "runs").glob("*.parquet")} == mtimes
