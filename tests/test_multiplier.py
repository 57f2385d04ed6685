"""The data-multiplier estimator: power-law fits, inversion, bootstrap intervals, and the bounds the
report states beyond ten times the measured sizes."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from results.multiplier import (
    Bounded,
    MultiplierError,
    PowerLawFit,
    bootstrap_multiplier,
    bounded,
    fit_power_law,
    fmt_factor,
    multiplier,
)

A, B, C = 0.85, 1.5, 0.25
SIZES = np.logspace(3, 6, 8)  # 1e3 .. 1e6, 8 sizes
FACTOR = 20.0


def _truth(n):
    return A - B * np.power(n, -C)


def _points(shift: float, seeds: int = 4, noise: float = 0.0015, rng_seed: int = 1):
    """Configuration points: score(n) = truth(n * shift) plus noise, several seeds per size."""
    rng = np.random.default_rng(rng_seed)
    return [(n, float(_truth(n * shift) + rng.normal(0, noise))) for n in SIZES for _ in range(seeds)]


def test_fit_recovers_parameters():
    fit = fit_power_law(_points(1.0, noise=0.0005))
    assert fit.a == pytest.approx(A, abs=0.01)
    assert fit.c == pytest.approx(C, rel=0.1)
    assert fit.rmse < 0.002 and fit.n_points == 32
    assert fit.samples_for(fit(12345.0)) == pytest.approx(12345.0, rel=1e-6)
    assert fit.samples_for(fit.a + 0.01) == math.inf


def test_planted_multiplier_is_recovered():
    # B is A shifted by a factor 20 in n: A needs 20x B's samples for the same score.
    # (With this noise, 30 of 30 noise draws recover 20 within 10% at both targets.)
    points_a, points_b = _points(1.0, rng_seed=1), _points(FACTOR, rng_seed=2)
    fa, fb = fit_power_law(points_a), fit_power_law(points_b)
    for at in (2e3, 1e4):
        assert multiplier(fa, fb, at) == pytest.approx(FACTOR, rel=0.10)
        assert multiplier(fb, fa, at * FACTOR) == pytest.approx(1 / FACTOR, rel=0.10)
    est, lo, hi = bootstrap_multiplier(points_a, points_b, 1e4, n_boot=40, seed=0)
    assert est == pytest.approx(FACTOR, rel=0.10)
    assert lo <= est <= hi and lo < FACTOR * 1.1 and hi > FACTOR / 1.1
    assert hi / lo < 3  # a meaningful interval, not everything
    assert bootstrap_multiplier(points_a, points_b, 1e4, n_boot=10, seed=3) == bootstrap_multiplier(
        points_a, points_b, 1e4, n_boot=10, seed=3
    )  # seeded


def test_asymptote_below_target_is_inf():
    weak = PowerLawFit(a=0.5, b=1.0, c=0.5, rmse=0.0, n_points=0)
    strong = PowerLawFit(a=0.9, b=1.0, c=0.5, rmse=0.0, n_points=0)
    assert multiplier(weak, strong, 1e4) == math.inf
    assert multiplier(strong, strong, 1e4) == pytest.approx(1.0)


def test_mapping_points_and_errors():
    mapping = {n: [float(_truth(n))] * 2 for n in SIZES}
    assert fit_power_law(mapping).a == pytest.approx(A, abs=0.01)
    with pytest.raises(MultiplierError, match="at least 3 distinct sample counts"):
        fit_power_law([(10, 0.1), (100, 0.2), (100, 0.25)])
    with pytest.raises(MultiplierError, match="samples must be finite and > 0"):
        fit_power_law([(0, 0.1), (10, 0.2), (100, 0.3)])
    with pytest.raises(MultiplierError, match="points_b: scores must be finite"):
        bootstrap_multiplier(_points(1.0), [(10, 0.1), (100, float("nan")), (1000, 0.3)], 100)
    with pytest.raises(MultiplierError, match="at_n_b"):
        multiplier(fit_power_law(_points(1.0)), fit_power_law(_points(1.0)), -5)
    with pytest.raises(MultiplierError, match="curve_a must be a PowerLawFit"):
        multiplier((1, 2, 3), fit_power_law(_points(1.0)), 10)


# --------------------------------------------------------------------------- bounds beyond the measured sizes


def test_bounded_reports_a_bound_beyond_ten_times_the_measured_sizes():
    sizes, at = [1e3, 4e3, 16e3], 8e3  # A measured up to 16k: numbers up to n_A = 160k (x20), down to 100 (x0.0125)
    assert bounded(2.0, at, sizes) == Bounded(2.0, "=")
    assert bounded(19.9, at, sizes).relation == "="
    for far in (20.1, 3.83e7, math.inf):
        shown = bounded(far, at, sizes)
        assert (shown.relation, shown.text()) == (">", "> 20") and shown.is_bound
    small = bounded(1e-4, at, sizes)
    assert small.relation == "<" and small.value == pytest.approx(0.0125) and small.text() == "< 0.0125"
    assert bounded(math.nan, at, sizes).text() == ""
    assert fmt_factor(1280.4) == "1,280" and fmt_factor(8.046) == "8.05" and fmt_factor(math.inf) == "∞"


def _runs(curves: dict[tuple[str, str], tuple[list[int], float]], seeds=(0, 1), evals=(0, 1, 2)) -> pd.DataFrame:
    """Linear full-data rows of each (source, method): sizes and an efficiency on truth(n * efficiency),
    with a small pre-training-seed shift and eval-seed noise."""
    rng = np.random.default_rng(5)
    rows = []
    for (source, method), (sizes, eff) in curves.items():
        for n in sizes:
            for p in seeds:
                shift = rng.normal(0, 0.001)
                for e in evals:
                    rows.append(
                        {
                            "status": "ok",
                            "source": source,
                            "method": method,
                            "curation": "none",
                            "label_noise": 0.0,
                            "backbone": "resnet18",
                            "pretrain_size": n,
                            "pretrain_seed": p,
                            "pretrain_key": f"{source}-{method}-{n}-{p}",
                            "checkpoint_epoch": 4,
                            "protocol": "linear",
                            "downstream": "pets",
                            "shots": None,
                            "eval_seed": e,
                            "score": float(_truth(n * eff)) + shift + rng.normal(0, 0.001),
                        }
                    )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("efficiency_b, relation", [(4.0, "="), (100.0, ">")])
def test_multiplier_section_states_a_bound_instead_of_extrapolating(tmp_path, efficiency_b, relation):
    from results.multiplier import MultiplierPair, compute_multiplier
    from results.sections import multiplier_section

    runs = _runs(
        {
            ("laion", "clip"): ([1_000, 4_000, 16_000], 1.0),
            ("imagenet", "supervised"): ([500, 2_000, 8_000], efficiency_b),
        }
    )
    pair = MultiplierPair.parse("source=laion,method=clip vs source=imagenet,method=supervised")
    (result,), _, _ = compute_multiplier(runs, pair, n_boot=50)
    est, lo, hi = result.shown()
    assert result.sizes_a == (1_000, 16_000) and est.relation == relation
    if relation == "=":  # A needs 4x: n_A = 32k, inside 10x of its largest size
        assert est.value == pytest.approx(4.0, rel=0.1) and lo.relation == hi.relation == "="
    else:  # A would need 100x = 800k samples, five times beyond the 160k that 10x its largest size allows
        assert result.estimate > 20 and est.value == pytest.approx(20.0) and hi.text() == "> 20"
        assert "reported as a bound" in result.note
    page = multiplier_section(runs, tmp_path, [pair], n_boot=50)
    assert "∞" not in page and not re.search(r"\binf\b|\de\+\d", page)
    if relation == ">":
        assert "A needs more than 20× the samples of B" in page and "&gt; 160k" in page
    assert (tmp_path / "multiplier_1_linear.png").read_bytes()[:4] == b"\x89PNG"


def test_an_asymptote_below_the_target_is_a_bound_too(tmp_path):
    from results.multiplier import MultiplierPair, compute_multiplier
    from results.sections import multiplier_section

    runs = _runs(
        {("laion", "clip"): ([1_000, 4_000, 16_000], 1.0), ("imagenet", "supervised"): ([500, 2_000, 8_000], 10.0)}
    )
    weak = runs["source"] == "laion"
    runs.loc[weak, "score"] = runs.loc[weak, "score"] - 0.3  # A's curve saturates below B's score
    pair = MultiplierPair.parse("source=laion,method=clip vs source=imagenet,method=supervised")
    (result,), _, _ = compute_multiplier(runs, pair, n_boot=50)
    assert result.estimate == math.inf and result.shown()[0].text() == "> 20"
    assert "no amount of A's data matches it" in result.note
    page = multiplier_section(runs, tmp_path, [pair], n_boot=50)
    assert "∞" not in page and "more than 20×" in page
