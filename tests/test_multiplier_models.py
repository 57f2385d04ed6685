"""The data multiplier with an existing model on either side: the synthetic store's grid curves
plus model rows planted on (or above) those curves at a known size."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from synthetic_store import EPOCHS, SEEDS, SETS, SHOTS, SIZES, truth

from results.errors import ReportError
from results.multiplier import MultiplierPair, compute_multiplier, default_pairs, fit_power_law, fmt_factor
from results.plotting import shots_order
from results.report import shots_label
from results.sections import multiplier_section
from results.store import Store

ON_CURVE = 8_000
"""The laion/clip size whose planted score the model reaches (inside the measured 1k-64k)."""


def _model_rows(
    name: str, score_at, declared: float | None, *, source: str | None = None, method: str = "existing"
) -> pd.DataFrame:
    """A model's linear rows scoring ``score_at(set, shots)`` on every set and shot count (eval-seed
    noise of mean zero), declaring ``declared`` samples (None: no size)."""
    rows = []
    for ds_name in SETS:
        for shots in SHOTS:
            for seed, noise in zip(SEEDS, (-0.0015, 0.0, 0.0015)):
                rows.append(
                    {
                        "status": "ok",
                        "protocol": "linear",
                        "shots": shots,
                        "downstream": ds_name,
                        "eval_seed": seed,
                        "score": score_at(ds_name, shots) + noise,
                        "pretrain_size": declared,
                        "model": name,
                        "method": method,
                        "source": source or name,
                        "pretrain_seed": 0,
                        "curation": "none",
                        "label_noise": 0.0,
                        "backbone": "test_resnet",
                        "chance": 0.1,
                        "metric": "top1",
                        "pretrain_key": f"model-{name}",
                        "weights_sha256": f"{name:0<64}"[:64],
                        "key": f"{name}-{ds_name}-{shots_label(shots)}-{seed}",
                    }
                )
    return pd.DataFrame(rows)


def _planted(at_size: float):
    """laion/clip's planted truth at ``at_size``."""
    return lambda ds_name, shots: truth(at_size, "laion", "clip", ds_name, shots)


def _on_fitted_curve(grid: pd.DataFrame, at_size: float):
    """laion/clip's fitted curve (over its mean score per size, as the report fits it) at ``at_size``,
    spread over the sets by their planted offsets from the mean."""
    rows = grid[
        (grid["source"] == "laion")
        & (grid["method"] == "clip")
        & (grid["checkpoint_epoch"] == EPOCHS)
        & (grid["protocol"] == "linear")
    ]
    fitted = {}
    for shots, g in rows.groupby(rows["shots"].map(shots_order)):
        means = g.groupby("pretrain_size")["score"].mean()
        fitted[shots] = fit_power_law(list(zip(means.index.astype(float), means.to_numpy())))(at_size)

    def score(ds_name, shots):
        spread = truth(at_size, "laion", "clip", ds_name, shots) - np.mean(
            [truth(at_size, "laion", "clip", d, shots) for d in SETS]
        )
        return fitted[shots_order(shots)] + spread

    return score


@pytest.fixture(scope="module")
def grid(synthetic_store_root) -> pd.DataFrame:
    runs = Store(synthetic_store_root).read("runs")
    return runs[runs["status"] == "ok"]


def _with(grid: pd.DataFrame, *models: pd.DataFrame) -> pd.DataFrame:
    frame = pd.concat([grid, *models], ignore_index=True)
    frame["pretrain_size"] = frame["pretrain_size"].astype("Float64")
    return frame


def test_a_model_on_the_curve_gives_its_size_over_the_declared_size(grid, tmp_path):
    """A model scoring laion/clip's fitted curve at 8k while declaring 2k: laion/clip needs 4x its
    samples, and the model 1/4 of laion/clip's, each within its bootstrap interval, at every shot count."""
    runs = _with(grid, _model_rows("mine", _on_fitted_curve(grid, ON_CURVE), 2_000))
    results, desc_a, desc_b = compute_multiplier(
        runs, MultiplierPair.parse("source=laion,method=clip vs model=mine"), n_boot=100
    )
    assert (desc_a, desc_b) == ("laion · clip", "model mine (declared n=2k)")
    assert [r.shot for r in results] == [1, 10, math.inf]
    for r in results:
        assert r.estimate == pytest.approx(ON_CURVE / 2_000, rel=0.01) and r.lo <= ON_CURVE / 2_000 <= r.hi, r
        assert r.lo < r.estimate < r.hi and r.matched[0] == pytest.approx(ON_CURVE, rel=0.01)
        assert r.shown()[0].relation == "=" and not r.note
    flipped, desc_a, _ = compute_multiplier(
        runs, MultiplierPair.parse("model=mine vs source=laion,method=clip"), n_boot=100
    )
    assert desc_a == "model mine (declared n=2k)"
    for r, back in zip(results, flipped):
        assert back.estimate == pytest.approx(1 / r.estimate) and back.lo == pytest.approx(1 / r.hi)
        assert back.lo <= 2_000 / ON_CURVE <= back.hi
    # planted on the true curve instead, the estimate recovers the factor within the fit's error
    truth_runs = _with(grid, _model_rows("mine", _planted(ON_CURVE), 2_000))
    for r in compute_multiplier(truth_runs, MultiplierPair.parse("source=laion,method=clip vs model=mine"), n_boot=20)[
        0
    ]:
        assert r.estimate == pytest.approx(ON_CURVE / 2_000, rel=0.1)
    page = multiplier_section(
        runs, tmp_path, [MultiplierPair.parse("model=mine vs source=laion,method=clip")], n_boot=50
    )
    assert re.search(
        r"A needs 0\.2\d× the samples of B</b>.*model A declares n=2k\): B needs [78](\.\d+)?k samples to reach "
        r"model A's score 0\.\d+ "
        r"\(95% interval [78]",
        page,
    ), page
    assert (tmp_path / "multiplier_1_linear.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "text, relation", [("source=laion,method=clip vs model=big", ">"), ("model=big vs source=laion,method=clip", "<")]
)
def test_a_model_above_every_measured_point_is_a_bound(grid, tmp_path, text, relation):
    """laion/clip's curve reaches the model's score only at 50x its largest size: a bound, never a number."""
    runs = _with(grid, _model_rows("big", _planted(50 * max(SIZES)), 1_000_000))
    results, _, _ = compute_multiplier(runs, MultiplierPair.parse(text), n_boot=50)
    limit = 10 * max(SIZES) / 1_000_000  # laion/clip matched beyond 10x its largest size, over the declared size
    for r in results:
        est, lo, hi = r.shown()
        assert est.relation == relation and est.is_bound, r
        assert est.value == pytest.approx(limit if relation == ">" else 1 / limit)
        assert r.shown_matched()[0].value == 10 * max(SIZES) and "reported as a bound" in r.note
    page = multiplier_section(runs, tmp_path, [MultiplierPair.parse(text)], n_boot=50)
    word, factor = ("more", limit) if relation == ">" else ("less", 1 / limit)
    assert f"A needs {word} than {fmt_factor(factor)}× the samples of B</b>" in page
    assert "needs more than 640k samples to reach model" in page and "&gt; 640k (whole interval)" in page
    assert "∞" not in page and not re.search(r"\binf\b|\de\+\d", page)


def test_a_model_without_a_declared_size_gets_the_matched_size_only(grid, tmp_path):
    runs = _with(grid, _model_rows("nosize", _on_fitted_curve(grid, ON_CURVE), None))
    for text, fitted in (
        ("source=laion,method=clip vs model=nosize", "A"),
        ("model=nosize vs source=laion,method=clip", "B"),
    ):
        results, desc_a, desc_b = compute_multiplier(runs, MultiplierPair.parse(text), n_boot=50)
        assert "model nosize (no declared size)" in (desc_a, desc_b)
        for r in results:
            assert math.isnan(r.estimate) and not r.shown()[0].relation
            assert r.matched[0] == pytest.approx(ON_CURVE, rel=0.15) and r.matched[1] <= ON_CURVE <= r.matched[2]
            assert "declares no pre-training size" in r.note
        page = multiplier_section(runs, tmp_path, [MultiplierPair.parse(text)], n_boot=50)
        assert "model nosize (no declared size)" in page
        assert re.search(rf"<b>{fitted} needs [78](\.\d+)?k samples to reach model [AB]'s score", page), page
        assert "so there is no factor" in page


def test_model_rows_never_join_a_grid_curve(grid, tmp_path):
    """A model describing itself as laion/clip stays a point: laion/clip's multiplier is unchanged, and
    the default pairs add the model against the labelled reference."""
    pair = MultiplierPair.parse("source=laion,method=clip vs source=imagenet,method=supervised")
    before = compute_multiplier(grid, pair, n_boot=20)[0]
    runs = _with(grid, _model_rows("alike", _planted(ON_CURVE), 2_000, source="laion", method="clip"))
    after = compute_multiplier(runs, pair, n_boot=20)[0]
    assert [r.estimate for r in after] == pytest.approx([r.estimate for r in before])
    pairs = default_pairs(runs)
    assert [p.label for p in pairs if p.model_side] == ["model=alike vs imagenet · supervised"]
    assert len(pairs) == len(default_pairs(grid)) + 1
    (r,) = [r for r in compute_multiplier(runs, pairs[-1], n_boot=20)[0] if r.shot == math.inf]
    assert r.model_side == "A" and r.shown()[0].relation == "="


def test_model_pair_errors(grid):
    runs = _with(grid, _model_rows("mine", _planted(ON_CURVE), 2_000))
    cases = [
        ("model=mine,source=x vs source=imagenet,method=supervised", "takes model=NAME alone"),
        ("model=mine vs model=other", "both sides are existing models"),
        ("model=mine vs source=imagenet,method=supervised@3000", "drop '@N'"),
    ]
    for text, message in cases:
        with pytest.raises(ReportError, match=re.escape(message)):
            MultiplierPair.parse(text)
    with pytest.raises(ReportError, match=r"model 'nope', which has no linear rows; models with linear rows: mine"):
        compute_multiplier(runs, MultiplierPair.parse("model=nope vs source=laion,method=clip"))
    two = _model_rows("mine", _planted(ON_CURVE), 2_000).assign(weights_sha256="f" * 64, pretrain_key="other")
    with pytest.raises(ReportError, match="names 2 different weight files"):
        compute_multiplier(_with(runs, two), MultiplierPair.parse("model=mine vs source=laion,method=clip"))
