"""The HTML report renders from a small synthetic store and from an empty one."""

from __future__ import annotations

import math
import os
import re
import shutil

import pandas as pd
import pytest
from synthetic_store import LABELLED_SIZES, PLANTED_MULTIPLIER

from results.errors import ReportError
from results.multiplier import MultiplierPair, compute_multiplier
from results.report import final_checkpoints, report_inputs, report_is_current, spread, write_report
from results.sections import missing_section
from results.store import Store

SECTIONS = (
    "overview",
    "scaling",
    "multiplier",
    "fewshot",
    "heatmap",
    "calibration",
    "summary",
    "checkpoints",
    "spectra",
    "convergence",
    "views",
    "missing",
)


@pytest.fixture
def synthetic_report(synthetic_report_dir):
    return synthetic_report_dir / "index.html"


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


def test_report_from_synthetic_store(synthetic_report):
    index = synthetic_report
    assert index.name == "index.html" and index.exists()
    page = index.read_text()
    assert "Synthetic &lt;study&gt;" in page
    assert 'class="error"' not in page  # no section failed
    sections = _sections(page)
    assert tuple(sections) == SECTIONS
    images = re.findall(r'<img src="([^"]+)"', page)
    for name in images:
        assert "/" not in name  # relative, self-contained
        assert (index.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_section = {sid: re.findall(r'<img src="([^"]+)"', body) for sid, body in sections.items()}
    assert by_section["scaling"] == ["scaling_finetune.png", "scaling_linear.png"]
    # scratch rows have no pre-training size: a note instead of an empty figure
    assert "No data yet to plot for scratch: 2 row(s), all from the random-init encoder" in sections["scaling"]
    # every analysis section has its figure: one multiplier per configuration with 3+ sizes against the
    # labelled source, the few-shot picture, heatmaps at the fewest shots and full data, and the rest
    assert len(by_section["multiplier"]) == 4
    assert by_section["fewshot"] == ["fewshot_linear.png"]
    assert by_section["heatmap"] == ["heatmap_linear_1.png", "heatmap_linear_full.png"]
    assert by_section["calibration"] == ["calibration_1.png"]
    for sid in ("checkpoints", "spectra", "convergence", "views"):
        assert len(by_section[sid]) == 1, sid
    # only the missing-runs table needs a plan; every other section has data
    assert "Sections without data yet: Missing and failed runs" not in page
    for sid in SECTIONS:
        if sid not in ("missing", "scaling"):
            assert 'class="empty"' not in sections[sid], sid
    assert "tbench report --spec SPEC" in sections["missing"]
    # summary: one table per shot count, floor row present, both sets as columns
    for heading in ("<h3>1 shot</h3>", "<h3>10 shots</h3>", "<h3>full data</h3>"):
        assert heading in sections["summary"]
    assert "cifar100" in page and "pets" in page and ">none<" in page
    # failed run with its escaped error, and the view funnel
    assert "bad-1" in sections["missing"] and "CUDA &lt;oom&gt;" in sections["missing"]
    assert "clip_score: −340" in sections["views"] and "v-laion-1000" in sections["views"]
    # the planted mid-training peak: linear (FE) peaks at epoch 2 of 4, fine-tuning (FT) at the last
    assert "FE peaks before the last evaluated epoch in 4 of 4" in sections["checkpoints"]
    assert "FT peaks before the last evaluated epoch in 0 of 2" in sections["checkpoints"]
    # the headline sentence of the data multiplier, never an extrapolated power of ten or infinity
    assert "At full data, A needs" in sections["multiplier"]
    assert "∞" not in sections["multiplier"] and not re.search(r"\de\+\d", sections["multiplier"])
    # intervals over pre-training seeds (the synthetic study has two), and the comparisons say so
    assert "over pre-training seeds, then eval seeds" in sections["scaling"]
    assert "95% interval" in sections["summary"] and "2×3" in sections["summary"]
    assert re.search(r"best − worst.*95% interval", sections["fewshot"])
    # the calibration: six sources at one size under SimCLR, whose gain rises with the declared similarity
    assert "simclr · n=4k · 4 epochs · resnet18 (6 sources)" in sections["calibration"]
    assert "measured gains rank with the declared similarity" in sections["calibration"]


def test_report_recovers_the_planted_multiplier(synthetic_store_root):
    """laion/clip needs PLANTED_MULTIPLIER (8) x the samples of imagenet/supervised at every shot count."""
    runs = Store(synthetic_store_root).read("runs")
    runs = runs[runs["status"] == "ok"]
    pair = MultiplierPair.parse("source=laion,method=clip vs source=imagenet,method=supervised")
    results, desc_a, desc_b = compute_multiplier(runs, pair, n_boot=100)
    assert (desc_a, desc_b) == ("laion · clip", "imagenet · supervised")
    assert [r.shot for r in results] == [1, 10, math.inf]
    for r in results:
        assert r.at == max(LABELLED_SIZES) and not r.note
        assert r.estimate == pytest.approx(PLANTED_MULTIPLIER, rel=0.10)
        assert r.lo <= r.estimate <= r.hi
    # at another reference size, and the other way round
    pair = MultiplierPair.parse("source=imagenet,method=supervised vs source=laion,method=clip @ 16000")
    (full,) = [r for r in compute_multiplier(runs, pair, n_boot=20)[0] if r.shot == math.inf]
    assert full.estimate == pytest.approx(1 / PLANTED_MULTIPLIER, rel=0.10)


def test_multiplier_pair_errors(synthetic_store_root):
    runs = Store(synthetic_store_root).read("runs")
    for text, message in [
        ("source=laion", "expected 'A vs B[@N]'"),
        ("source=laion vs method", "is not column=value"),
        ("source=laion vs source=imagenet @ many", "is not a sample count"),
    ]:
        with pytest.raises(ReportError, match=re.escape(message)):
            MultiplierPair.parse(text)
    with pytest.raises(ReportError, match="cannot select on 'colour'"):
        compute_multiplier(runs, MultiplierPair.parse("colour=red vs source=imagenet"))
    with pytest.raises(ReportError, match="selects 2 configurations"):
        compute_multiplier(runs, MultiplierPair.parse("source=laion vs source=imagenet"))
    with pytest.raises(ReportError, match="selects no linear rows"):
        compute_multiplier(runs, MultiplierPair.parse("source=wit,method=clip vs source=imagenet"))


def test_report_from_empty_store(tmp_path):
    index = write_report(tmp_path / "store", tmp_path / "report")
    page = index.read_text()
    sections = _sections(page)
    assert tuple(sections) == SECTIONS
    for sid in SECTIONS:
        if sid not in ("missing",):
            assert 'class="empty"' in sections[sid], sid
            assert "<figure>" not in sections[sid], sid
    assert "No data yet for scaling curves" in page
    assert "No data yet for the data multiplier" in page
    assert "Too few sources for the calibration" in sections["calibration"]
    assert "No failed runs" in page
    assert "No rows yet for views" in page
    assert "Sections without data yet: Overview, Scaling curves" in page
    assert not list((tmp_path / "report").glob("*.png"))


def test_missing_runs_against_a_plan(synthetic_store_root):
    expected = pd.DataFrame(
        [
            {
                "key": "pt-laion-clip-1000-e4-pets-1-0",
                "job_key": "ev-a",
                "label": "linear pets",
                "protocol": "linear",
                "downstream": "pets",
                "shots": 1,
                "eval_seed": 0,
            },
            {
                "key": "bad-1",
                "job_key": "broken",
                "label": "finetune pets",
                "protocol": "finetune",
                "downstream": "pets",
                "shots": None,
                "eval_seed": 0,
            },
            {
                "key": "never-ran",
                "job_key": "ev-b",
                "label": "linear dtd ← clip",
                "protocol": "linear",
                "downstream": "dtd",
                "shots": 5,
                "eval_seed": 2,
            },
        ]
    )
    runs = Store(synthetic_store_root).read("runs")
    missing = missing_section(runs, expected, [("zeroshot on x", "no text tower")])
    assert "3 planned row(s): 1 ok, 1 failed, <b>1 missing</b>" in missing
    assert "linear dtd ← clip" in missing and "1 / 1" in missing
    assert "zeroshot on x: no text tower" in missing


def test_spread_uses_interval_or_range():
    mean, lo, hi = spread([0.1, 0.3])
    assert (mean, lo, hi) == pytest.approx((0.2, 0.1, 0.3))
    mean, lo, hi = spread([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert hi - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert spread([float("nan")])[0] != spread([float("nan")])[0]  # NaN


def test_final_checkpoints_keeps_last_epoch(tmp_path):
    store = Store(tmp_path)
    store.write_part(
        "runs",
        "a",
        [
            {"key": "e1", "pretrain_key": "p", "checkpoint_epoch": 1, "score": 0.1},
            {"key": "e3", "pretrain_key": "p", "checkpoint_epoch": 3, "score": 0.3},
            {"key": "s", "method": "none", "score": 0.05},
        ],
    )
    kept = final_checkpoints(store.read("runs"))
    assert sorted(kept["key"]) == ["e3", "s"]


def test_summary_table_prints_intervals(synthetic_store_root):
    """The table `tbench run` prints: mean x100 over sets and seeds with its 95% interval per shot count."""
    import io

    from rich.console import Console

    from results.summary import results_table, summary_intervals

    buf = io.StringIO()
    Console(file=buf, width=200).print(results_table(synthetic_store_root))
    text = buf.getvalue()
    line = next(ln for ln in text.splitlines() if "clip laion n=16000" in ln and "linear" in ln)
    cells = re.findall(r"(\d+\.\d) \[(\d+\.\d),(\d+\.\d)\]", line)
    assert len(cells) == 3  # 1 shot, 10 shots, full data
    for est, lo, hi in cells:
        assert float(lo) <= float(est) <= float(hi) and float(hi) - float(lo) < 2
    assert "2×3" in line  # pre-training x eval seeds
    assert "bootstrap over pre-training seeds, then eval seeds" in text and "two pre-training seeds" in text
    runs = Store(synthetic_store_root).read("runs")
    long = summary_intervals(runs, n_boot=100)
    row = long[(long["pre-training"] == "clip laion n=16000") & (long["shots"] == "full")].iloc[0]
    rows = runs[
        (runs["source"] == "laion")
        & (runs["method"] == "clip")
        & (runs["pretrain_size"] == 16000)
        & runs["shots"].isna()
        & (runs["protocol"] == "linear")
    ]
    assert row["estimate"] == pytest.approx(rows.groupby("downstream")["score"].mean().mean())
    assert (row["n_pretrain_seeds"], row["n_eval_seeds"], row["sets"]) == (2, 3, 2)


def test_a_report_counts_as_current_only_while_its_inputs_are_unchanged(synthetic_store_root, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(synthetic_store_root, root)
    out = tmp_path / "report"
    digest = report_inputs(root)
    assert not report_is_current(out, digest)  # nothing rendered yet
    write_report(root, out, digest=digest)
    assert report_is_current(out, digest) and report_inputs(root) == digest
    # another option, or a part written again, is another input
    assert report_inputs(root, n_boot=100) != digest and report_inputs(root, "a title") != digest
    part = sorted((root / "runs").glob("*.parquet"))[0]
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 1_000_000))
    assert report_inputs(root) != digest
    # a report missing one of its figures is not whole
    next(out.glob("*.png")).unlink()
    assert not report_is_current(out, digest)


def test_checkpoints_pool_a_configurations_seeds_and_leave_out_runs_seen_at_one_epoch(tmp_path):
    """The FE/FT-by-epoch section draws one figure per configuration, its intervals over the
    pre-training seeds evaluated at several epochs; a run evaluated at its last epoch only stays out
    (it would move that epoch's point and not the others')."""
    from synthetic_store import _row

    from results.sections import checkpoints_section

    # FE at full data: epoch 1 beats epoch 3 by 0.10 (seed 0) and by 0.18 (seed 1); seed 2 has epoch 3 only
    scores = {(0, 1): 0.50, (0, 3): 0.40, (1, 1): 0.60, (1, 3): 0.42, (2, 3): 0.90}
    rows = [
        _row(
            f"pt-s{seed}",
            "laion",
            "clip",
            1000,
            epoch,
            seed,
            key=f"s{seed}-e{epoch}-{ev}",
            downstream="pets",
            protocol="linear",
            shots=None,
            eval_seed=ev,
            score=score,
        )
        for (seed, epoch), score in scores.items()
        for ev in (0, 1)
    ]
    page = checkpoints_section(pd.DataFrame(rows), tmp_path)
    assert page.count("<h3>") == 1 and "pre-training runs pt-s0, pt-s1" in page and "pt-s2" not in page
    # best (epoch 1) − last (epoch 3): the mean of 0.10 and 0.18, its interval spanning the two seeds
    assert "+0.140 [+0.100, +0.180]" in page
    assert "rests on two pre-training seeds" in page
    assert "FE peaks before the last evaluated epoch in 1 of 1 (configuration, set) curve(s)" in page
