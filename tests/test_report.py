"""The HTML report renders from a small synthetic store and from an empty one."""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np
import pytest

from results.report import final_checkpoints, shots_label, spread, write_report
from results.store import Store

SOURCES = ("laion", "cc12m")
METHODS = ("clip", "simclr")
SIZES = (1_000, 4_000, 16_000)
SETS = ("cifar100", "pets")
SHOTS = (1, 10, None)
SEEDS = (0, 1, 2)


def _synthetic_store(root) -> Store:
    """2 sources x 2 methods x 3 sizes x 2 sets x 3 shots x 3 seeds, a floor, failures and views."""
    rng = np.random.default_rng(0)
    store = Store(root)
    now = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    for source in SOURCES:
        for method in METHODS:
            for size in SIZES:
                pkey = f"pt-{source}-{method}-{size}"
                rows = []
                for ds_name in SETS:
                    for shots in SHOTS:
                        for seed in SEEDS:
                            base = 0.2 + 0.1 * math.log10(size) + (0.05 if source == "laion" else 0.0)
                            base += 0.0 if shots is None else -0.1 / (shots**0.5)
                            rows.append(
                                {
                                    "key": f"{pkey}-{ds_name}-{shots_label(shots)}-{seed}",
                                    "job_key": f"ev-{pkey}-{ds_name}",
                                    "spec": "synthetic",
                                    "created_at": now,
                                    "status": "ok",
                                    "pretrain_key": pkey,
                                    "source": source,
                                    "curation": "none",
                                    "label_noise": 0.0,
                                    "pretrain_size": size,
                                    "method": method,
                                    "backbone": "resnet18",
                                    "checkpoint_epoch": 3,
                                    "pretrain_epochs": 3,
                                    "pretrain_seed": 0,
                                    "downstream": ds_name,
                                    "num_classes": 10,
                                    "metric": "top1",
                                    "chance": 0.1,
                                    "protocol": "linear",
                                    "shots": shots,
                                    "eval_seed": seed,
                                    "score": base + rng.normal(0, 0.02),
                                    "top1": base,
                                    "hparams": {"lr": 0.1},
                                }
                            )
                store.write_part("runs", f"ev-{pkey}", rows)
    floor = [
        {"key": f"floor-{d}-{shots_label(s)}-{seed}", "status": "ok", "method": "none", "source": "none",
         "protocol": "linear", "downstream": d, "shots": s, "eval_seed": seed, "score": 0.15, "chance": 0.1}
        for d in SETS for s in SHOTS for seed in SEEDS
    ]
    store.write_part("runs", "floor", floor)
    store.write_part("runs", "broken", [
        {"key": "bad-1", "status": "failed", "protocol": "finetune", "downstream": "pets", "source": "laion",
         "method": "clip", "error": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA <oom>"}
    ])
    store.write_part("views", "views-1", [
        {"view_key": "v-laion-1000", "source": "laion", "curation": "clip_score", "requested_size": 1000,
         "size": 1000, "label_noise": 0.0, "funnel": {"resolution": 12, "clip_score": 340}},
    ])
    return store


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    _synthetic_store(root)
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
