"""The HTML report renders from a small synthetic store and from an empty one."""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np
import pytest

from results.report import final_checkpoints, shots_label, spread, write_report
from results.store import Store
from synthetic_store import SETS, SHOTS, SIZES, SOURCES, METHODS, SEEDS, build_synthetic_store

@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    build_synthetic_store(root)
    out = tmp_path_factory.mktemp("report")
    return write_report(root, out, title="Synthetic <study>")


def test_report_from_synthetic_store(synthetic_report):
    index = synthetic_report
    assert index.name == "index.html" and index.exists()
    page = index.read_text()
    assert "Synthetic &lt;study&gt;" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images == ["scaling_linear.png"]
    for name in images:
        assert "/" not in name  # relative, self-contained
        png = index.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # summary: one table per shot count, floor row present, both sets as columns
    for heading in ("<h3>1 shot</h3>", "<h3>10 shots</h3>", "<h3>full data</h3>"):
        assert heading in page
    assert "cifar100" in page and "pets" in page and ">none<" in page
    # failed run with its escaped error, and the view funnel
    assert "bad-1" in page and "CUDA &lt;oom&gt;" in page
    assert "clip_score: −340" in page and "v-laion-1000" in page
    assert "No rows yet" not in page


def test_report_from_empty_store(tmp_path):
    index = write_report(tmp_path / "store", tmp_path / "report")
    page = index.read_text()
    assert "No rows yet for scaling curves" in page
    assert "No rows yet for the linear protocol" in page
    assert "No failed runs" in page
    assert "No rows yet for views" in page
    assert not list((tmp_path / "report").glob("*.png"))


def test_spread_uses_interval_or_range():
    mean, lo, hi = spread([0.1, 0.3])
    assert (mean, lo, hi) == pytest.approx((0.2, 0.1, 0.3))
    mean, lo, hi = spread([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert hi - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert spread([float("nan")])[0] != spread([float("nan")])[0]  # NaN


def test_final_checkpoints_keeps_last_epoch(tmp_path):
    store = Store(tmp_path)
    store.write_part("runs", "a", [
        {"key": "e1", "pretrain_key": "p", "checkpoint_epoch": 1, "score": 0.1},
        {"key": "e3", "pretrain_key": "p", "checkpoint_epoch": 3, "score": 0.3},
        {"key": "s", "method": "none", "score": 0.05},
    ])
    kept = final_checkpoints(store.read("runs"))
    assert sorted(kept["key"]) == ["e3", "s"]
