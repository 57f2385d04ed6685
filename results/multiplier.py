"""The data multiplier: how many times more pre-training samples one configuration needs to
match another.

Each configuration's transfer score as a function of its pre-training sample count ``n`` is
fitted with a saturating power law

    score(n) = a - b * n ** (-c),        a <= 1,  b > 0,  c > 0

(``a`` is the asymptote as ``n`` grows, ``c`` the rate at which the gap to it closes). The fit is
done in log-n space: ``n`` is rescaled by the geometric mean of the sizes, so ``b`` stays of
the order of the scores whatever the sample counts are, and several starting exponents are
tried with the best least-squares fit kept.

:func:`multiplier` inverts configuration A's fit at the score configuration B reaches with
``at_n_b`` samples: ``n_A / at_n_b`` (``inf`` when A's asymptote never reaches that score).
:func:`bootstrap_multiplier` adds a 95% percentile interval by resampling the seed replicates
of every size with replacement and refitting both curves.

>>> fa = fit_power_law([(1e3, .50), (1e4, .62), (1e5, .70), (1e6, .74)])   # doctest: +SKIP
>>> multiplier(fa, fit_power_law(points_b), at_n_b=1e4)                      # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

Points = Union[Sequence[tuple[float, float]], Mapping[float, Sequence[float]], np.ndarray]
"""(samples, score) points: pairs (one per seed replicate), a mapping samples -> replicate
scores, or an ``(N, 2)`` array."""

_START_EXPONENTS = (0.1, 0.3, 0.7, 1.5)
_MAX_EXPONENT = 5.0


class MultiplierError(ValueError):
    """Points that cannot be fitted, or arguments out of range."""


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted ``score(n) = a - b * n ** (-c)``."""

    a: float
    b: float
    c: float
    rmse: float
    """Root-mean-square residual of the fit over its points."""
    n_points: int

    def __call__(self, n: float | np.ndarray) -> float | np.ndarray:
        """The fitted score at ``n`` samples."""
        n_arr = np.asarray(n, dtype=float)
        out = self.a - self.b * np.power(n_arr, -self.c)
        return float(out) if out.ndim == 0 else out

    def samples_for(self, score: float) -> float:
        """Samples needed to reach ``score``: ``(b / (a - score)) ** (1 / c)``; ``inf`` when
        ``score >= a`` (the asymptote is below the target)."""
        gap = self.a - float(score)
        if not gap > 0:
            return math.inf
        try:
            return float(math.exp(math.log(self.b / gap) / self.c))
        except OverflowError:
            return math.inf


def as_points(points: Points, *, name: str = "points") -> tuple[np.ndarray, np.ndarray]:
    """``points`` as two float arrays (samples, scores), validated: at least 3 distinct
    positive finite sample counts, finite scores. ``name`` is used in error messages."""
    if isinstance(points, Mapping):
        pairs = [(n, s) for n, scores in points.items() for s in _as_list(scores, name, n)]
    else:
        pairs = list(points) if not isinstance(points, np.ndarray) else points.tolist()
    try:
        arr = np.asarray(pairs, dtype=float).reshape(-1, 2) if pairs else np.empty((0, 2))
    except (TypeError, ValueError) as exc:
        raise MultiplierError(
            f"{name}: expected (samples, score) pairs, a mapping samples -> scores, or an (N, 2) array ({exc})"
        ) from None
    n, s = arr[:, 0], arr[:, 1]
    bad_n = ~(np.isfinite(n) & (n > 0))
    if bad_n.any():
        raise MultiplierError(f"{name}: samples must be finite and > 0; got {n[bad_n][:5].tolist()}")
    if not np.isfinite(s).all():
        raise MultiplierError(f"{name}: scores must be finite; got {s[~np.isfinite(s)][:5].tolist()}")
    if len(np.unique(n)) < 3:
        raise MultiplierError(
            f"{name}: a power law has 3 parameters, so it needs at least 3 distinct sample counts; "
            f"got {sorted(set(n.tolist()))}"
        )
    return n, s


def _as_list(scores, name, n) -> list[float]:
    if isinstance(scores, (int, float, np.floating, np.integer)):
        return [float(scores)]
    if isinstance(scores, Iterable):
        return list(scores)
    raise MultiplierError(f"{name}: scores for samples={n!r} must be a number or a list of numbers")


def fit_power_law(points: Points, *, a_max: float = 1.0, name: str = "points") -> PowerLawFit:
    """Fit ``score(n) = a - b * n ** (-c)`` (``a <= a_max``, ``b > 0``, ``0 < c <= 5``) to
    ``points`` by least squares (scipy's ``curve_fit``, trust-region with bounds).

    Raises :class:`MultiplierError` when the points are unusable or no start converges.
    """
    from scipy.optimize import curve_fit

    n, s = as_points(points, name=name)
    if not math.isfinite(a_max):
        raise MultiplierError(f"a_max must be finite, got {a_max!r}")
    log_n0 = float(np.mean(np.log(n)))
    x = np.log(n) - log_n0  # log(n / n0)

    def model(x, a, b0, c):
        return a - b0 * np.exp(-c * x)

    s_max, s_min = float(s.max()), float(s.min())
    spread = max(s_max - s_min, 1e-6)
    a_lo = s_min - 10 * spread  # the asymptote lies above the data; keep it from running away downwards
    if a_lo >= a_max:
        raise MultiplierError(
            f"{name}: scores (min {s_min:.4g}) exceed the asymptote bound a_max={a_max}; "
            "scores must be on a scale where higher is better and at most a_max"
        )
    a0 = min(a_max - 1e-9, s_max + 0.1 * spread)
    best = None
    for c0 in _START_EXPONENTS:
        b00 = max(a0 - float(np.mean(s)), 1e-6)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(
                    model, x, s, p0=(a0, b00, c0),
                    bounds=((a_lo, 1e-12, 1e-6), (a_max, np.inf, _MAX_EXPONENT)),
                    method="trf", maxfev=4000,
                )
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((model(x, *params) - s) ** 2))
        if best is None or sse < best[0]:
            best = (sse, params)
    if best is None:
        raise MultiplierError(f"{name}: the power-law fit did not converge from any start")
    sse, (a, b0, c) = best
    # b0 * (n / n0) ** -c == b * n ** -c  with  b = b0 * n0 ** c
    b = float(b0 * math.exp(c * log_n0))
    return PowerLawFit(a=float(a), b=b, c=float(c), rmse=math.sqrt(sse / len(s)), n_points=len(s))


def multiplier(curve_a: PowerLawFit, curve_b: PowerLawFit, at_n_b: float) -> float:
    """How many times more samples configuration A needs to reach the score that B reaches
    with ``at_n_b`` samples: ``curve_a.samples_for(curve_b(at_n_b)) / at_n_b``.

    ``inf`` when A's asymptote is at or below that score; below 1 when A is the more
    sample-efficient configuration.
    """
    for label, curve in (("curve_a", curve_a), ("curve_b", curve_b)):
        if not isinstance(curve, PowerLawFit):
            raise MultiplierError(f"{label} must be a PowerLawFit (from fit_power_law), got {type(curve).__name__}")
    if not (isinstance(at_n_b, (int, float, np.integer, np.floating)) and math.isfinite(at_n_b) and at_n_b > 0):
        raise MultiplierError(f"at_n_b must be a finite number of samples > 0, got {at_n_b!r}")
    return curve_a.samples_for(curve_b(float(at_n_b))) / float(at_n_b)


def _resample(n: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Resample the replicates of each sample count with replacement (every size is kept)."""
    out = []
    for size in np.unique(n):
        scores = s[n == size]
        picked = rng.choice(scores, size=len(scores), replace=True)
        out.extend((size, v) for v in picked)
    return np.asarray(out, dtype=float)


def bootstrap_multiplier(
    points_a: Points,
    points_b: Points,
    at_n_b: float,
    n_boot: int = 200,
    seed: int = 0,
    *,
    a_max: float = 1.0,
) -> tuple[float, float, float]:
    """(estimate, lo, hi): the multiplier of A over B at ``at_n_b`` (fitted on all points) and
    its 95% bootstrap percentile interval.

    Each bootstrap draw resamples, independently for A and for B and within each sample count,
    that size's seed replicates with replacement, refits both curves and recomputes the
    multiplier (draws whose fit fails are dropped; more than half failing is an error).
    Bounds can be ``inf`` when A's asymptote falls short of the target in some draws.
    """
    if not isinstance(n_boot, int) or n_boot < 10:
        raise MultiplierError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    na, sa = as_points(points_a, name="points_a")
    nb, sb = as_points(points_b, name="points_b")
    estimate = multiplier(
        fit_power_law(np.column_stack([na, sa]), a_max=a_max, name="points_a"),
        fit_power_law(np.column_stack([nb, sb]), a_max=a_max, name="points_b"),
        at_n_b,
    )
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        try:
            fa = fit_power_law(_resample(na, sa, rng), a_max=a_max, name="points_a (bootstrap)")
            fb = fit_power_law(_resample(nb, sb, rng), a_max=a_max, name="points_b (bootstrap)")
        except MultiplierError:
            continue
        draws.append(multiplier(fa, fb, at_n_b))
    if len(draws) < n_boot / 2:
        raise MultiplierError(
            f"only {len(draws)} of {n_boot} bootstrap fits converged; add points or seeds per size"
        )
    ordered = np.sort(np.asarray(draws, dtype=float))  # inf sorts last
    m = len(ordered)
    lo = float(ordered[int(math.floor(0.025 * (m - 1)))])
    hi = float(ordered[int(math.ceil(0.975 * (m - 1)))])
    return float(estimate), lo, hi
