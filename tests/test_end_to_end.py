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
    # one size of the curated LAION block is enough here (tests/test_plan.py counts the whole spec):
    # 5 pre-training runs, 10 checkpoints and the random-init floor
    data["pretrain"]["grids"][1]["sizes"] = [300]
    # a set of one's own, declared in the spec: an image folder with train and test only
    _image_folder(tmp_path / "squares")
    data["downstream"]["sets"].append("squares")
    data["downstream"]["custom_sets"] = {"squares": {"format": "imagefolder", "path": str(tmp_path / "squares")}}
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    plan = make_plan(parse_spec(data))
    planned = plan.planned_rows()
    pretrained = 2 * len(plan.of_kind("pretrain"))  # 2 saved epochs each
    checkpoints = pretrained + 1  # and the random-init floor

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
    views = query(
        "SELECT source, curation, requested_size, size, label_noise, achieved_noise, label_accuracy, "
        "funnel, noise_model, details FROM views ORDER BY 1, 3, 5"
    )
    assert len(views) == 4 and all(v["size"] > 0 for v in views)
    curated = [v for v in views if v["curation"] == "clean"]
    assert len(curated) == 2 and {v["label_noise"] for v in curated} == {0.0, 0.2}
    for v in curated:  # the funnel in step order, label accuracy against the world's truth, the noise achieved
        assert list(json.loads(v["funnel"])) == [
            "caption_language",
            "clip_score",
            "dedup",
            "labels_from_captions",
            "size_subset",
        ]
        assert json.loads(v["funnel"])["caption_language"] > 0 and 0 < v["label_accuracy"] < 1
        assert abs(v["achieved_noise"] - v["label_noise"]) <= 0.01
        overlap = json.loads(v["details"])["steps"]["dedup"]["overlap"]
        assert set(overlap) == {"dtd", "digits", "squares"}
    assert {v["noise_model"] for v in curated if v["label_noise"] > 0} == {"class_dependent"}

    # every row carries its coordinates; scores are probabilities; full data is null shots
    rows = query("SELECT * FROM runs")
    assert {r["method"] for r in rows} == {"supervised", "clip", "simclr", "none"}
    assert all(0.0 <= r["score"] <= 1.0 and r["chance"] > 0 for r in rows)
    assert {r["shots"] for r in rows if r["protocol"] == "linear"} == {1, 5, None}
    assert {r["checkpoint_epoch"] for r in rows} == {0, 1, 2}
    assert {r["protocol"] for r in rows} == {"linear", "finetune", "lp_ft", "zeroshot", "scratch"}
    assert {r["method"] for r in rows if r["protocol"] == "zeroshot"} == {"clip"}
    assert {r["method"] for r in rows if r["protocol"] == "scratch"} == {"none"}
    squares = [r for r in rows if r["downstream"] == "squares"]
    assert len(squares) == checkpoints * 3 * 2 and all(r["num_classes"] == 2 for r in squares)
    assert json.loads(squares[0]["hparams"])["num_train"] > 0
    # spectra: every feature cache, every split; convergence against scratch for finetune and lp_ft
    (spec_counts,) = query(
        "SELECT count(DISTINCT job_key) AS caches, count(DISTINCT key) AS spectra, "
        "min(k80) AS k80, min(effective_rank) AS erank FROM spectra"
    )
    assert spec_counts["caches"] == checkpoints * 3 and spec_counts["spectra"] == checkpoints * 3 * 3
    assert spec_counts["k80"] >= 1 and spec_counts["erank"] >= 1
    gaps = query("SELECT protocol, count(*) AS n FROM convergence_gaps GROUP BY protocol ORDER BY protocol")
    assert gaps == [{"protocol": "finetune", "n": pretrained}, {"protocol": "lp_ft", "n": pretrained}]
    # one epoch each; LP-FT's curve starts at its probe (epoch 0), which may already be within 95%
    conv = query("SELECT protocol, epochs_to_95 FROM convergence")
    assert len(conv) == pretrained + pretrained + 1
    assert all(r["epochs_to_95"] == 1 for r in conv if r["protocol"] != "lp_ft")
    assert all(r["epochs_to_95"] in (0, 1) for r in conv if r["protocol"] == "lp_ft")

    report = tmp_path / "report"
    proc = run_tbench("report", "--store", str(tmp_path / "store"), "--out", str(report), "--spec", str(spec_path))
    assert proc.returncode == 0, proc.stderr
    html = (report / "index.html").read_text()
    assert "<img" in html and list(report.glob("*.png"))
    assert 'class="error"' not in html
    # every planned row is in the store; mid-training checkpoints (epochs 1 and 2), spectra and
    # convergence have data; the data multiplier needs 3 sizes (laion has 1 here) and says so
    assert f"{planned} planned row(s): {planned} ok, 0 failed, <b>0 missing</b>" in html
    for figure in ("checkpoints_1.png", "spectra_1.png", "convergence_1.png", "funnel_1.png", "fewshot_linear.png"):
        assert (report / figure).exists(), figure
    assert "No data yet for the data multiplier" in html
    # and in a real browser: every section renders, every figure loads and is not blank
    from report_browser import check_report

    seen = check_report(report, tmp_path / "shots")
    assert len(seen["figures"]) == html.count("<figure>") and not seen["errors"]

    proc = run_tbench("run", str(spec_path), "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(plan.jobs)} already finished, 0 ran" in proc.stdout
    (again,) = query("SELECT count(*) AS n, count(DISTINCT key) AS k FROM runs")
    assert again == {"n": planned, "k": planned}
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "runs").glob("*.parquet")} == mtimes

    # the same store, options and code: the report is left as it is (make demo's second run)
    page_mtime = (report / "index.html").stat().st_mtime_ns
    proc = run_tbench("report", "--store", str(tmp_path / "store"), "--out", str(report), "--spec", str(spec_path))
    assert proc.returncode == 0 and "report unchanged" in proc.stdout, proc.stdout + proc.stderr
    assert (report / "index.html").stat().st_mtime_ns == page_mtime


def _image_folder(root: Path) -> None:
    """Two classes of coloured squares on noise, PNGs of two sizes, in train/ and test/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for c, colour in enumerate(((220, 40, 40), (40, 40, 220))):
            d = root / split / ("red" if c == 0 else "blue")
            d.mkdir(parents=True)
            for i in range(n):
                size = 24 if i % 2 else 40
                img = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
                img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = colour
                Image.fromarray(img).save(d / f"{i:03d}.png")
