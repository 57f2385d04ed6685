"""The data-multiplier estimator: power-law fits, inversion, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from results.multiplier import (
    MultiplierError,
    PowerLawFit,
    bootstrap_multiplier,
    fit_power_law,
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
    assert bootstrap_multiplier(points_a, points_b, 1e4, n_boot=10, seed=3) == \
        bootstrap_multiplier(points_a, points_b, 1e4, n_boot=10, seed=3)  # seeded


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
