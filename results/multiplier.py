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
:func:`multiplier_interval` adds a 95% percentile interval from bootstrap draws of each
size's mean score (the report draws them over pre-training seeds, then eval seeds, with
:func:`results.stats.hierarchical_bootstrap`) by refitting both curves per draw;
:func:`bootstrap_multiplier` does the same from flat (samples, score) replicates.

An existing model (``models:`` in the spec) is one point, not a curve: its score at its declared
size. :func:`matched_samples_interval` inverts a configuration's fit at that score, with draws
paired as above; divided by the model's declared size it is the multiplier of the configuration
over the model, and its inverse the model's over the configuration.

A fit says little far from its points: :func:`bounded` turns a multiplier whose matched size
``n_A`` lies more than :data:`EXTRAPOLATION` times outside A's measured sizes (above ten times
the largest or below a tenth of the smallest, ``inf`` included) into a bound, "more than X"
or "less than X", which is what the report prints instead of the number.

>>> fa = fit_power_law([(1e3, .50), (1e4, .62), (1e5, .70), (1e6, .74)])   # doctest: +SKIP
>>> multiplier(fa, fit_power_law(points_b), at_n_b=1e4)                      # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Points = Sequence[tuple[float, float]] | Mapping[float, Sequence[float]] | np.ndarray
"""(samples, score) points: pairs (one per seed replicate), a mapping samples -> replicate
scores, or an ``(N, 2)`` array."""

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


def _profile(
    z: np.ndarray, s: np.ndarray, a_lo: np.ndarray | float, a_max: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares of ``s ≈ a - b0 * z`` in ``(a, b0)`` for each exponent's ``z = (n/n0) ** -c``,
    under ``a_lo <= a <= a_max`` and ``b0 >= 0``; returns ``(a, b0, sse)``.

    ``z`` has shape ``(..., G, N)`` (G exponents, N points) and ``s`` ``(..., 1, N)``; ``a_lo``
    broadcasts against ``(..., G)``. The model is linear in ``(a, b0)`` once ``c`` is fixed, so
    the constrained optimum is the unconstrained one when feasible, else lies on a bound: ``a``
    clipped to ``[a_lo, a_max]`` with ``b0`` re-solved, or ``b0 = 0`` with ``a`` the mean.
    """
    zm, sm = z.mean(axis=-1), s.mean(axis=-1)
    dz, ds = z - zm[..., None], s - sm[..., None]
    var = (dz * dz).sum(axis=-1)
    cov = (dz * ds).sum(axis=-1)
    zz = (z * z).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.maximum(np.where(var > 0, -cov / var, 0.0), 0.0)
        a = sm + b * zm
        for bound, off in ((a_max, a > a_max), (a_lo, None)):
            if off is None:
                off = a < a_lo
            b_fixed = np.maximum(np.where(zz > 0, ((np.asarray(bound)[..., None] - s) * z).sum(axis=-1) / zz, 0.0), 0.0)
            a = np.where(off, bound, a)
            b = np.where(off, b_fixed, b)
    resid = a[..., None] - b[..., None] * z - s
    return a, b, (resid * resid).sum(axis=-1)


_C_GRID = np.geomspace(1e-3, _MAX_EXPONENT, 120)
_ZOOM = 25


def _fit_many(x: np.ndarray, scores: np.ndarray, a_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``scores[d] ≈ a - b0 * exp(-c * x)`` for every row ``d`` at once; returns
    ``(a, b0, c, sse)``, each of shape ``(D,)``. ``x = log(n / n0)``."""
    d = scores.shape[0]
    s = scores[:, None, :]
    s_min, s_max = scores.min(axis=1), scores.max(axis=1)
    a_lo = (s_min - 10 * np.maximum(s_max - s_min, 1e-6))[:, None]  # keep the asymptote from running away down
    grid = np.broadcast_to(_C_GRID, (d, len(_C_GRID)))
    rows = np.arange(d)
    c = grid[:, 0]
    for _ in range(3):  # the global grid, then two zooms into the bracket around each row's best point
        with np.errstate(over="ignore", invalid="ignore"):
            sse = _profile(np.exp(-grid[:, :, None] * x), s, a_lo, a_max)[2]
        sse = np.where(np.isfinite(sse), sse, np.inf)
        i = np.argmin(sse, axis=1)
        c = grid[rows, i]
        lo = grid[rows, np.maximum(i - 1, 0)]
        hi = grid[rows, np.minimum(i + 1, grid.shape[1] - 1)]
        grid = np.exp(np.linspace(np.log(lo), np.log(hi), _ZOOM, axis=1))
    a, b0, sse = _profile(np.exp(-c[:, None, None] * x), s, a_lo, a_max)
    return a[:, 0], b0[:, 0], c, sse[:, 0]


def fit_power_law(points: Points, *, a_max: float = 1.0, name: str = "points") -> PowerLawFit:
    """Fit ``score(n) = a - b * n ** (-c)`` (``a <= a_max``, ``b > 0``, ``0 < c <= 5``) to
    ``points`` by least squares.

    Variable projection: for a fixed exponent ``c`` the best ``(a, b)`` has a closed form (see
    :func:`_profile`), so the fit is a one-dimensional search over ``c`` — a log-spaced grid
    over ``(0, 5]``, then two finer grids inside the bracket around its best point (``c`` to
    about 0.01%), all vectorised. This finds the global optimum over ``c`` (no start values to
    get stuck from), and :func:`bootstrap_multiplier` fits all its draws in one batch.

    Raises :class:`MultiplierError` when the points are unusable.
    """
    n, s = as_points(points, name=name)
    log_n0, x = _check_scale(n, s, a_max, name)
    a, b0, c, sse = _fit_many(x, s[None, :], a_max)
    return _as_fit(a[0], b0[0], c[0], sse[0], log_n0, len(s), name)


def _check_scale(n: np.ndarray, s: np.ndarray, a_max: float, name: str) -> tuple[float, np.ndarray]:
    """(log n0, log(n / n0)) after checking that the scores fit under ``a_max``."""
    if not math.isfinite(a_max):
        raise MultiplierError(f"a_max must be finite, got {a_max!r}")
    s_min, s_max = float(s.min()), float(s.max())
    if s_min - 10 * max(s_max - s_min, 1e-6) >= a_max:
        raise MultiplierError(
            f"{name}: scores (min {s_min:.4g}) exceed the asymptote bound a_max={a_max}; "
            "scores must be on a scale where higher is better and at most a_max"
        )
    log_n0 = float(np.mean(np.log(n)))
    return log_n0, np.log(n) - log_n0


def _as_fit(a: float, b0: float, c: float, sse: float, log_n0: float, n_points: int, name: str) -> PowerLawFit:
    if not (np.isfinite(sse) and np.isfinite(a) and np.isfinite(c)):
        raise MultiplierError(f"{name}: the power-law fit did not converge")
    # b0 * (n / n0) ** -c == b * n ** -c  with  b = b0 * n0 ** c
    b = float(max(float(b0), 1e-12) * math.exp(float(c) * log_n0))
    return PowerLawFit(a=float(a), b=b, c=float(c), rmse=math.sqrt(float(sse) / n_points), n_points=n_points)


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


def _resample_index(n: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(draws, len(n))`` indices: each draw resamples the replicates of every sample count with
    replacement (every size keeps its number of points, so the fits' ``x`` stays the same)."""
    out = np.empty((draws, len(n)), dtype=np.int64)
    for size in np.unique(n):
        where = np.flatnonzero(n == size)
        out[:, where] = rng.choice(where, size=(draws, len(where)), replace=True)
    return out


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
    multiplier; all draws are fitted in one vectorised batch. Draws whose fit is not finite are
    dropped (more than half dropped is an error). Bounds can be ``inf`` when A's asymptote
    falls short of the target in some draws.
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
    _check_scale(na, sa, a_max, "points_a")
    _check_scale(nb, sb, a_max, "points_b")
    draws = _multipliers(
        na, sa[_resample_index(na, n_boot, rng)], nb, sb[_resample_index(nb, n_boot, rng)], float(at_n_b), a_max
    )
    lo, hi = _percentiles(draws, 0.95)
    return float(estimate), lo, hi


def _multipliers(
    n_a: np.ndarray, scores_a: np.ndarray, n_b: np.ndarray, scores_b: np.ndarray, at_n_b: float, a_max: float
) -> np.ndarray:
    """The multiplier of every row: A's curve fitted to ``scores_a[d]`` (at sample counts
    ``n_a``) inverted at B's curve fitted to ``scores_b[d]``, evaluated at ``at_n_b``; ``inf``
    where A's asymptote falls short, NaN where a fit failed."""
    log_b = float(np.mean(np.log(n_b)))
    ab, bb0, cb, sseb = _fit_many(np.log(n_b) - log_b, scores_b, a_max)
    target = ab - bb0 * np.exp(-cb * (math.log(at_n_b) - log_b))  # B's fitted score at at_n_b
    return np.where(np.isfinite(sseb), _samples_for_many(n_a, scores_a, target, a_max) / at_n_b, np.nan)


def _samples_for_many(n_a: np.ndarray, scores_a: np.ndarray, target: np.ndarray, a_max: float) -> np.ndarray:
    """Per row ``d``: the samples that A's curve fitted to ``scores_a[d]`` needs to reach
    ``target[d]``, ``(b_A / (a_A - target)) ** (1 / c_A)``; ``inf`` where A's asymptote falls
    short, NaN where the fit failed."""
    log_a = float(np.mean(np.log(n_a)))
    aa, ba0, ca, ssea = _fit_many(np.log(n_a) - log_a, scores_a, a_max)
    gap = aa - target
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_n = log_a + np.log(np.maximum(ba0, 1e-12) / gap) / ca
        samples = np.where(gap > 0, np.exp(log_n), np.inf)
    return np.where(np.isfinite(ssea), samples, np.nan)


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    ok = draws[~np.isnan(draws)]
    if len(ok) < len(draws) / 2:
        raise MultiplierError(f"only {len(ok)} of {len(draws)} bootstrap fits converged; add points or seeds per size")
    ordered = np.sort(ok)  # inf sorts last
    m = len(ordered)
    alpha = (1 - level) / 2
    return float(ordered[int(math.floor(alpha * (m - 1)))]), float(ordered[int(math.ceil((1 - alpha) * (m - 1)))])


def multiplier_interval(
    sizes_a: Sequence[float],
    scores_a: Sequence[float],
    draws_a: np.ndarray,
    sizes_b: Sequence[float],
    scores_b: Sequence[float],
    draws_b: np.ndarray,
    at_n_b: float,
    *,
    a_max: float = 1.0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(estimate, lo, hi): the multiplier of A over B at ``at_n_b`` from each side's mean score
    per size (``scores_*``, one per entry of ``sizes_*``) and bootstrap draws of those means
    (``draws_*``, shape ``(D, len(sizes_*))``, row ``d`` of A going with row ``d`` of B, so that
    draws paired by the bootstrap stay paired).

    The estimate fits both curves to the means; the interval is the ``level`` percentile
    interval of the multipliers of the ``D`` refitted draws (a draw with a missing value or a
    failed fit is dropped; more than half dropped is an error). Bounds can be ``inf``."""
    n_a, s_a = as_points(list(zip(sizes_a, scores_a)), name="A")
    n_b, s_b = as_points(list(zip(sizes_b, scores_b)), name="B")
    if len(np.unique(n_a)) != len(n_a) or len(np.unique(n_b)) != len(n_b):
        raise MultiplierError("multiplier_interval takes one mean score per size; sizes repeat")
    if not (isinstance(at_n_b, (int, float, np.integer, np.floating)) and math.isfinite(at_n_b) and at_n_b > 0):
        raise MultiplierError(f"at_n_b must be a finite number of samples > 0, got {at_n_b!r}")
    draws_a, draws_b = np.asarray(draws_a, dtype=float), np.asarray(draws_b, dtype=float)
    if (
        draws_a.ndim != 2
        or draws_a.shape[1] != len(n_a)
        or draws_b.ndim != 2
        or draws_b.shape[1] != len(n_b)
        or draws_a.shape[0] != draws_b.shape[0]
    ):
        raise MultiplierError(
            f"draws must be (D, sizes) arrays with the same D: got A {draws_a.shape} for "
            f"{len(n_a)} sizes, B {draws_b.shape} for {len(n_b)} sizes"
        )
    _check_scale(n_a, s_a, a_max, "A")
    _check_scale(n_b, s_b, a_max, "B")
    estimate = _multipliers(n_a, s_a[None, :], n_b, s_b[None, :], float(at_n_b), a_max)[0]
    if math.isnan(estimate):
        raise MultiplierError("the power-law fit of the mean scores did not converge")
    complete = np.isfinite(draws_a).all(axis=1) & np.isfinite(draws_b).all(axis=1)
    draws = np.full(len(draws_a), np.nan)
    if complete.any():
        draws[complete] = _multipliers(n_a, draws_a[complete], n_b, draws_b[complete], float(at_n_b), a_max)
    lo, hi = _percentiles(draws, level)
    return float(estimate), lo, hi


def matched_samples_interval(
    sizes: Sequence[float],
    scores: Sequence[float],
    draws: np.ndarray,
    target: float,
    target_draws: np.ndarray,
    *,
    a_max: float = 1.0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(estimate, lo, hi): the samples a configuration's fitted curve needs to reach one point's
    score ``target`` (an existing model, evaluated at a single size or none), with the ``level``
    percentile interval.

    ``scores`` holds the configuration's mean score per entry of ``sizes`` and ``draws`` its
    bootstrap draws ``(D, len(sizes))``; ``target_draws`` ``(D,)`` the point's draws, row ``d``
    going with row ``d``. The estimate fits the means and inverts at ``target``; each draw refits
    and inverts at its own target. Divide by the point's declared size for a multiplier. Values
    are ``inf`` where the curve's asymptote falls short of the target; a draw with a missing
    value or a failed fit is dropped (more than half dropped is an error)."""
    n, s = as_points(list(zip(sizes, scores)), name="the curve")
    if len(np.unique(n)) != len(n):
        raise MultiplierError("matched_samples_interval takes one mean score per size; sizes repeat")
    if not (isinstance(target, (int, float, np.integer, np.floating)) and math.isfinite(target)):
        raise MultiplierError(f"target must be a finite score, got {target!r}")
    draws, target_draws = np.asarray(draws, dtype=float), np.asarray(target_draws, dtype=float).ravel()
    if draws.ndim != 2 or draws.shape[1] != len(n) or target_draws.shape != (draws.shape[0],):
        raise MultiplierError(
            f"draws must be a (D, sizes) array and target_draws (D,): got {draws.shape} for "
            f"{len(n)} sizes and {target_draws.shape}"
        )
    _check_scale(n, s, a_max, "the curve")
    estimate = _samples_for_many(n, s[None, :], np.array([float(target)]), a_max)[0]
    if math.isnan(estimate):
        raise MultiplierError("the power-law fit of the mean scores did not converge")
    complete = np.isfinite(draws).all(axis=1) & np.isfinite(target_draws)
    out = np.full(len(draws), np.nan)
    if complete.any():
        out[complete] = _samples_for_many(n, draws[complete], target_draws[complete], a_max)
    lo, hi = _percentiles(out, level)
    return float(estimate), lo, hi


EXTRAPOLATION = 10.0
"""A matched size more than this factor outside A's measured sizes is reported as a bound."""


@dataclass(frozen=True)
class Bounded:
    """A multiplier as the report states it: ``relation`` is ``"="`` for a number, ``">"`` or
    ``"<"`` for a bound (``value`` is then the bound), ``""`` when there is nothing to state."""

    value: float
    relation: str

    @property
    def is_bound(self) -> bool:
        return self.relation in (">", "<")

    def text(self) -> str:
        """``"8.05"``, ``"> 30"``, ``"< 0.05"`` or ``""``."""
        if not self.relation:
            return ""
        number = fmt_factor(self.value)
        return number if self.relation == "=" else f"{self.relation} {number}"


def fmt_factor(value: float) -> str:
    """A multiplier as text: three significant digits, thousands in full (``"1,280"``, not
    ``"1.28e+03"``)."""
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "∞"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def bounded(value: float, at_n_b: float, sizes_a: Sequence[float], factor: float = EXTRAPOLATION) -> Bounded:
    """``value`` (a multiplier of A at B's ``at_n_b`` samples) as a number when A's matched size
    ``value * at_n_b`` lies within ``[min(sizes_a) / factor, factor * max(sizes_a)]``, else the
    bound at the edge of that range (``inf`` is above it); NaN stays nothing to state."""
    if value is None or math.isnan(value):
        return Bounded(math.nan, "")
    upper = factor * float(max(sizes_a)) / float(at_n_b)
    lower = float(min(sizes_a)) / factor / float(at_n_b)
    if value > upper:
        return Bounded(upper, ">")
    if value < lower:
        return Bounded(lower, "<")
    return Bounded(float(value), "=")
