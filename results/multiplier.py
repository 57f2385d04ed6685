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

The second half applies this to the store's rows. :class:`MultiplierPair` names two
configurations (column selectors, or ``model=NAME`` for an existing model) and parses the
report's ``--multiplier 'A vs B[@N]'``; :func:`default_pairs` lists every configuration with
:data:`MIN_SIZES` sizes against the labelled source under supervised training; and
:func:`compute_multiplier` gives, per shot count, a :class:`MultiplierResult`: both curves fitted
to the mean score over the common sets, the multiplier with its two-level bootstrap interval,
and a note when it is a bound or not meaningful. :mod:`results.sections` renders them.

>>> fa = fit_power_law([(1e3, .50), (1e4, .62), (1e5, .70), (1e6, .74)])   # doctest: +SKIP
>>> multiplier(fa, fit_power_law(points_b), at_n_b=1e4)                      # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from results.errors import ReportError
from results.plotting import FLOOR_METHOD, SUMMARY_PROTOCOL, Line, annotate, final_checkpoints, fmt_size, shots_order
from results.stats import hierarchical_bootstrap

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


# --------------------------------------------------------------------------- pairs of configurations

LABELLED_SOURCES = ("imagenet", "real.imagenet")
"""Sources taken as the labelled reference of the default multiplier pairs (under ``supervised``)."""
MIN_SIZES = 3
"""A saturating power law has three parameters: a curve needs at least this many sizes."""


@dataclass(frozen=True)
class MultiplierPair:
    """Configuration A against reference B: how many times B's samples A needs for B's score.

    ``a`` and ``b`` select rows of ``runs`` by column value (e.g. ``{"source": "laion",
    "method": "clip"}``); ``at`` is B's sample count the comparison is made at (default: B's
    largest size); ``protocol`` the evaluation protocol. Either side (not both) may instead be
    an existing model, ``{"model": NAME}`` (the spec's ``models:``): one point at its declared
    size, compared where the other side's fitted curve reaches the model's score (no ``at``).
    """

    a: Mapping[str, str]
    b: Mapping[str, str]
    at: float | None = None
    protocol: str = SUMMARY_PROTOCOL
    label: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str, protocol: str = SUMMARY_PROTOCOL) -> MultiplierPair:
        """``"source=laion,method=clip vs source=imagenet,method=supervised[@8000]"``."""
        body, at = text, None
        if "@" in text:
            body, at_text = text.rsplit("@", 1)
            try:
                at = float(at_text.strip().replace("_", ""))
            except ValueError:
                raise ReportError(
                    f"--multiplier {text!r}: {at_text.strip()!r} after '@' is not a sample count"
                ) from None
            if not (math.isfinite(at) and at > 0):
                raise ReportError(f"--multiplier {text!r}: the sample count after '@' must be > 0")
        halves = body.split(" vs ")
        if len(halves) != 2:
            raise ReportError(
                f"--multiplier {text!r}: expected 'A vs B[@N]', e.g. "
                "'source=laion,method=clip vs source=imagenet,method=supervised@3000'"
            )
        pair = cls(_parse_selector(halves[0], text), _parse_selector(halves[1], text), at, protocol, text.strip())
        pair.check()
        return pair

    @property
    def model_side(self) -> str:
        """``"A"`` or ``"B"`` when that side is an existing model (``model=NAME``), else ``""``."""
        return "A" if "model" in self.a else "B" if "model" in self.b else ""

    def check(self) -> None:
        """:class:`ReportError` for a model side with other columns, two model sides, or ``@N`` with a model."""
        what = f"--multiplier {self.label!r}" if self.label else "multiplier"
        for name, side in (("A", self.a), ("B", self.b)):
            if "model" in side and len(side) > 1:
                raise ReportError(
                    f"{what}: side {name} names a model, so it takes model=NAME alone "
                    f"(got {', '.join(sorted(side))}); a model's rows are already one configuration"
                )
        if "model" in self.a and "model" in self.b:
            raise ReportError(
                f"{what}: both sides are existing models; a multiplier needs a fitted curve "
                "(a grid configuration with >= 3 sizes) on one side"
            )
        if self.model_side and self.at is not None:
            raise ReportError(
                f"{what}: '@N' chooses the reference's size on a curve, but a model is one point at "
                "its declared size; drop '@N'"
            )


def _parse_selector(text: str, whole: str) -> dict[str, str]:
    """One side of ``--multiplier`` (``"source=laion,method=clip"``) as column -> value."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise ReportError(f"--multiplier {whole!r}: {item!r} is not column=value")
        k, v = (x.strip() for x in item.split("=", 1))
        out[k] = v
    if not out:
        raise ReportError(f"--multiplier {whole!r}: an empty side; give column=value pairs such as source=laion")
    return out


_SELECTABLE = ("source", "method", "curation", "label_noise", "backbone", "pretrain_seed", "view_key")


def _is_model(runs: pd.DataFrame) -> pd.Series:
    """Rows of existing models (the ``model`` column, pretrain/existing.py): points, never part of a curve."""
    if "model" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs["model"].notna().astype(bool)


def _select(runs: pd.DataFrame, selector: Mapping[str, str], what: str) -> pd.DataFrame:
    """The rows of ``runs`` matching every column = value of ``selector`` (numbers compared as
    numbers); :class:`ReportError` for a column outside :data:`_SELECTABLE`."""
    mask = pd.Series(True, index=runs.index)
    for col, value in selector.items():
        if col not in _SELECTABLE:
            raise ReportError(f"{what}: cannot select on {col!r}; valid columns: {', '.join(_SELECTABLE)}")
        column = runs[col]
        if pd.api.types.is_numeric_dtype(column.dtype):
            try:
                number = float(value)
            except ValueError:
                raise ReportError(f"{what}: {col} is numeric, got {value!r}") from None
            mask &= column.astype(float).sub(number).abs().lt(1e-9).fillna(False).astype(bool)
        else:
            mask &= column.astype(object).astype(str).eq(value)
    return runs[mask]


def default_pairs(runs_ok: pd.DataFrame, protocol: str = SUMMARY_PROTOCOL) -> list[MultiplierPair]:
    """Every configuration with >= 3 sizes against the labelled source under supervised training."""
    df = final_checkpoints(runs_ok)
    models = sorted(set(df.loc[_is_model(df) & (df["protocol"] == protocol) & df["score"].notna(), "model"]))
    df = annotate(df[~_is_model(df)])  # a model's backbone or source must not split the grid's lines
    df = df[(df["protocol"] == protocol) & df["pretrain_size"].notna() & (df["method"].astype(object) != FLOOR_METHOD)]
    if df.empty:
        return []
    sizes = df.groupby("_line")["pretrain_size"].nunique()
    curves = [ln for ln, n in sizes.items() if n >= MIN_SIZES]
    refs = [ln for ln in curves if ln.method == "supervised" and ln.source in LABELLED_SOURCES]
    if not refs:
        return []
    ref = sorted(refs, key=lambda ln: ln.label)[0]

    def selector(line: Line) -> dict[str, str]:
        return {"source": line.source, "method": line.method, **{k: str(v) for k, v in line.variant if v is not None}}

    return [
        MultiplierPair(selector(ln), selector(ref), None, protocol, f"{ln.label} vs {ref.label}")
        for ln in sorted(curves, key=lambda ln: ln.label)
        if ln != ref
    ] + [
        MultiplierPair({"model": name}, selector(ref), None, protocol, f"model={name} vs {ref.label}")
        for name in models
    ]


@dataclass
class MultiplierResult:
    """One pair at one shot count: the multiplier of A over B (``estimate``, ``lo``, ``hi``) at B's
    ``at`` samples and score ``target``, the fits and points it came from, and a ``note`` when
    it could not be estimated or is a bound. Filled by :func:`compute_multiplier`."""

    shot: float
    estimate: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    target: float = math.nan
    at: float = math.nan
    note: str = ""
    fits: tuple = ()
    points: tuple = ()
    """(A, B): size -> :class:`results.stats.Interval` of the mean score over the sets."""
    sizes_a: tuple[float, float] = (math.nan, math.nan)
    """A's smallest and largest measured size: outside 10x of them the multiplier is a bound."""
    model_side: str = ""
    """``"A"`` or ``"B"`` when that side is an existing model: the other side's curve is
    inverted at the model's score (``target``) and the multiplier divides by the model's size."""
    declared: float = math.nan
    """The model's declared pre-training size (NaN: none declared, so no multiplier)."""
    matched: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    """Model pairs: the samples the fitted side needs to reach the model's score, with its interval."""
    sizes_fit: tuple[float, float] = (math.nan, math.nan)
    """Model pairs: the fitted side's smallest and largest measured size."""

    def shown(self) -> tuple[Bounded, Bounded, Bounded]:
        """(estimate, lo, hi) as the report states them: numbers, or bounds beyond
        :data:`results.multiplier.EXTRAPOLATION` times A's measured sizes (for a model pair, the
        fitted side's matched size bounded so, as a factor; nothing when the model declares no size)."""
        nothing = Bounded(math.nan, "")
        if self.model_side:
            if not math.isfinite(self.declared):
                return nothing, nothing, nothing
            est, lo, hi = self.shown_matched()
            if self.model_side == "B":  # A's samples over the model's
                return tuple(Bounded(b.value / self.declared, b.relation) for b in (est, lo, hi))  # type: ignore[return-value]
            return _per_size(est, self.declared), _per_size(hi, self.declared), _per_size(lo, self.declared)
        if not math.isfinite(self.at) or math.isnan(self.sizes_a[0]):
            return nothing, nothing, nothing
        return tuple(bounded(v, self.at, self.sizes_a) for v in (self.estimate, self.lo, self.hi))  # type: ignore[return-value]

    def shown_matched(self) -> tuple[Bounded, Bounded, Bounded]:
        """Model pairs: the fitted side's matched samples (estimate, lo, hi), bounds beyond
        :data:`results.multiplier.EXTRAPOLATION` times its measured sizes."""
        if math.isnan(self.sizes_fit[0]):
            return Bounded(math.nan, ""), Bounded(math.nan, ""), Bounded(math.nan, "")
        return tuple(bounded(v, 1.0, self.sizes_fit) for v in self.matched)  # type: ignore[return-value]


_FLIP = {"=": "=", ">": "<", "<": ">", "": ""}


def _per_size(samples: Bounded, declared: float) -> Bounded:
    """The model's declared size over the other side's matched samples: a bound flips direction."""
    if not samples.relation:
        return samples
    return Bounded(declared / samples.value if samples.value > 0 else math.inf, _FLIP[samples.relation])


def _mean_draws(a: pd.DataFrame, b: pd.DataFrame, sets: frozenset, n_boot: int):
    """Each side's mean score over ``sets`` per size with its two-level bootstrap draws, drawn
    together so that draws sharing eval seeds (and pre-training seeds) are paired."""
    both = pd.concat([a.assign(_side="A"), b.assign(_side="B")])
    # a model that declares no size is one group at size 0 (only grid curves need sizes)
    both = both[both["downstream"].isin(sets)].assign(_size=lambda d: d["pretrain_size"].astype(float).fillna(0.0))
    draws = hierarchical_bootstrap(both, ["_side", "_size"], strata="downstream", n_boot=n_boot, seed=0)
    out = {}
    for side in ("A", "B"):
        cols = np.flatnonzero(draws.keys["_side"].to_numpy() == side)
        sizes = draws.keys["_size"].to_numpy(dtype=float)[cols]
        ivs = {float(size): draws.interval((side, size)) for size in sizes}
        out[side] = (sizes, draws.estimate[cols], draws.draws[:, cols], ivs)
    return out


def compute_multiplier(
    runs_ok: pd.DataFrame, pair: MultiplierPair, n_boot: int = 200
) -> tuple[list[MultiplierResult], str, str]:
    """Per shot count of ``pair.protocol``: the multiplier of A over B with its 95% interval (a
    two-level bootstrap of each size's mean score over the common sets, curves refitted per
    draw). Returns (results, A's description, B's description)."""
    pair.check()
    df = final_checkpoints(runs_ok)
    df = df[(df["protocol"] == pair.protocol) & df["score"].notna()]
    if pair.model_side:
        return _compute_model_multiplier(df, pair, n_boot)
    df = df[df["pretrain_size"].notna() & ~_is_model(df)]
    rows_a = _select(df, pair.a, f"--multiplier {pair.label or 'A'} (A)")
    rows_b = _select(df, pair.b, f"--multiplier {pair.label or 'B'} (B)")
    desc = [_describe_side(rows, name, pair) for name, rows in (("A", rows_a), ("B", rows_b))]
    if len(set(pd.concat([rows_a["backbone"], rows_b["backbone"]]).astype(object).dropna())) > 1:
        desc = [f"{d} · {rows['backbone'].iloc[0]}" for d, rows in zip(desc, (rows_a, rows_b))]
    results = []
    for shot in sorted(set(rows_a["shots"].map(shots_order)) & set(rows_b["shots"].map(shots_order))):
        a = rows_a[rows_a["shots"].map(shots_order) == shot]
        b = rows_b[rows_b["shots"].map(shots_order) == shot]
        sets = frozenset(a["downstream"]) & frozenset(b["downstream"])
        for rows in (a, b):
            for _, g in rows.groupby("pretrain_size"):
                sets &= frozenset(g["downstream"])
        res = MultiplierResult(shot=shot)
        results.append(res)
        if not sets:
            res.note = "no downstream set is evaluated at every size of both"
            continue
        sides = _mean_draws(a, b, sets, n_boot)
        (na, ma, da, iva), (nb, mb, db, ivb) = sides["A"], sides["B"]
        res.points = (iva, ivb)
        res.sizes_a = (float(na.min()), float(na.max()))
        res.at = float(pair.at) if pair.at else float(nb.max())
        if len(na) < MIN_SIZES or len(nb) < MIN_SIZES:
            res.note = (
                f"needs >= {MIN_SIZES} pre-training sizes on both sides; A has "
                f"{', '.join(fmt_size(s) for s in sorted(na)) or 'none'}, B has "
                f"{', '.join(fmt_size(s) for s in sorted(nb)) or 'none'}"
            )
            continue
        try:
            fa = fit_power_law(list(zip(na, ma)), name="A")
            fb = fit_power_law(list(zip(nb, mb)), name="B")
            res.fits = (fa, fb)
            res.target = float(fb(res.at))
            res.estimate, res.lo, res.hi = multiplier_interval(na, ma, da, nb, mb, db, res.at)
        except MultiplierError as exc:
            res.note = str(exc)
            continue
        n_a = res.estimate * res.at
        res.note = _fit_note(fa, na, n_a, res.shown()[0], "A", "B's score", "matches", "multiplier")
        if _is_flat(fa, na):
            res.estimate, res.lo, res.hi = math.nan, math.nan, math.nan
        elif not res.note and (n_a > 2 * na.max() or n_a < na.min() / 2):
            res.note = (
                f"extrapolated: A would need n={fmt_size(round(n_a))}, outside its measured sizes "
                f"{fmt_size(na.min())}-{fmt_size(na.max())}"
            )
        if math.isfinite(res.lo) and res.lo <= 1 <= res.hi:
            res.note = _join_notes(res.note, WITHIN_NOISE)
    return results, desc[0], desc[1]


WITHIN_NOISE = "the interval includes 1×: A and B are equally data-efficient within noise"
"""The note of a result whose interval includes 1×."""


def _is_flat(fit: PowerLawFit, sizes: np.ndarray) -> bool:
    """Whether ``fit`` barely rises over ``sizes`` (its gap to the asymptote is below 1e-6 at the
    smallest): then no matched size, and so no multiplier, is meaningful."""
    return fit.b * float(sizes.min()) ** -fit.c < 1e-6


def _fit_note(
    fit: PowerLawFit, sizes: np.ndarray, matched: float, shown: Bounded, side: str, target: str, verb: str, what: str
) -> str:
    """Why a fitted side's matched size is not stated as a number (``""`` when it is): its curve
    is flat, its asymptote never reaches ``target``, or it reaches it only beyond
    :data:`EXTRAPOLATION` times its measured ``sizes``. One text for grid and model pairs."""
    span = f"{fmt_size(sizes.min())}-{fmt_size(sizes.max())}"
    if _is_flat(fit, sizes):
        return (
            f"{side}'s fitted curve is flat: its score does not grow with its size over {span}, "
            f"so no {what} is meaningful"
        )
    if not math.isfinite(matched):
        return (
            f"{side}'s fitted asymptote stays below {target}: no amount of {side}'s data matches it; "
            f"reported as more than {EXTRAPOLATION:g}× {side}'s largest measured size"
        )
    if shown.is_bound:
        where = "above 10× its largest" if shown.relation == ">" else "below a tenth of its smallest"
        return (
            f"{side}'s fit {verb} {target} only {where} measured size ({span}): reported as a bound, not extrapolated"
        )
    return ""


def _join_notes(*notes: str) -> str:
    """The non-empty notes joined by ``"; "``."""
    return "; ".join(filter(None, notes))


def _describe_side(rows: pd.DataFrame, name: str, pair: MultiplierPair) -> str:
    """A grid side's description (``laion · clip · curation=...``); :class:`ReportError` when it
    selects no rows or several configurations."""
    if rows.empty:
        raise ReportError(f"multiplier {pair.label!r}: side {name} selects no {pair.protocol} rows")
    idents = rows[["source", "method", "curation", "label_noise", "backbone"]].astype(object).drop_duplicates()
    if len(idents) > 1:
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in idents.to_dict("records")[:4])
        raise ReportError(
            f"multiplier {pair.label!r}: side {name} selects {len(idents)} configurations "
            f"({shown}); add curation=, label_noise= or backbone= to pick one"
        )
    ident = idents.iloc[0]
    parts = [str(ident["source"]), str(ident["method"])]
    if ident["curation"] not in (None, "none") and not pd.isna(ident["curation"]):
        parts.append(f"curation={ident['curation']}")
    if ident["label_noise"] is not None and not pd.isna(ident["label_noise"]) and float(ident["label_noise"]) > 0:
        parts.append(f"noise={float(ident['label_noise']):g}")
    return " · ".join(parts)


def _model_rows(df: pd.DataFrame, name: str, side: str, pair: MultiplierPair) -> tuple[pd.DataFrame, float, str]:
    """A model side's rows, declared size (NaN if none) and description; :class:`ReportError` when
    the store has no such model, or two different weights under its name."""
    is_model = _is_model(df)
    rows = df[is_model & (df["model"].astype(object) == name)] if "model" in df.columns else df.iloc[:0]
    if rows.empty:
        known = sorted(set(df.loc[is_model, "model"].astype(str)))
        raise ReportError(
            f"multiplier {pair.label!r}: side {side} names model {name!r}, which has no "
            f"{pair.protocol} rows; models with {pair.protocol} rows: {', '.join(known) or 'none'}"
        )
    hashes = set(rows["weights_sha256"].dropna()) if "weights_sha256" in rows.columns else set()
    sizes = set(rows["pretrain_size"].dropna().astype(float))
    if len(hashes) > 1 or len(sizes) > 1:
        raise ReportError(
            f"multiplier {pair.label!r}: model {name!r} names {len(hashes)} different weight files "
            f"(sha256 {', '.join(sorted(h[:12] for h in hashes))}) or declared sizes "
            f"({', '.join(fmt_size(x) for x in sorted(sizes))}) in this store; give them distinct names"
        )
    declared = sizes.pop() if sizes else math.nan
    what = f"declared n={fmt_size(declared)}" if math.isfinite(declared) else "no declared size"
    return rows, declared, f"model {name} ({what})"


def _compute_model_multiplier(
    df: pd.DataFrame, pair: MultiplierPair, n_boot: int
) -> tuple[list[MultiplierResult], str, str]:
    """:func:`compute_multiplier` when one side is an existing model: per shot count, the samples
    the other side's fitted curve needs to reach the model's score, over the model's declared size."""
    side = pair.model_side
    fitted = "B" if side == "A" else "A"
    rows_m, declared, desc_m = _model_rows(df, (pair.a if side == "A" else pair.b)["model"], side, pair)
    grid = df[df["pretrain_size"].notna() & ~_is_model(df)]
    rows_f = _select(grid, pair.b if side == "A" else pair.a, f"--multiplier {pair.label or fitted} ({fitted})")
    desc_f = _describe_side(rows_f, fitted, pair)
    results = []
    for shot in sorted(set(rows_f["shots"].map(shots_order)) & set(rows_m["shots"].map(shots_order))):
        f = rows_f[rows_f["shots"].map(shots_order) == shot]
        m = rows_m[rows_m["shots"].map(shots_order) == shot]
        sets = frozenset(m["downstream"])
        for _, g in f.groupby("pretrain_size"):
            sets &= frozenset(g["downstream"])
        res = MultiplierResult(shot=shot, model_side=side, declared=declared)
        results.append(res)
        if not sets:
            res.note = f"no downstream set is evaluated at every size of {fitted} and by the model"
            continue
        sides = _mean_draws(m, f, sets, n_boot) if side == "A" else _mean_draws(f, m, sets, n_boot)
        _fit_model_pair(res, sides[fitted], sides[side], fitted)
    return results, *((desc_m, desc_f) if side == "A" else (desc_f, desc_m))


def _fit_model_pair(res: MultiplierResult, curve, point, fitted: str) -> None:
    """Fill ``res`` from the fitted side's (sizes, means, draws, intervals) and the model's."""
    (nf, mf, dfit, ivf), (_, mm, dm, ivm) = curve, point
    res.points = (ivf, ivm) if fitted == "A" else (ivm, ivf)
    res.sizes_fit = (float(nf.min()), float(nf.max()))
    res.target = float(mm[0])
    if len(nf) < MIN_SIZES:
        res.note = (
            f"needs >= {MIN_SIZES} pre-training sizes for {fitted}'s curve; it has "
            f"{', '.join(fmt_size(s) for s in sorted(nf))}"
        )
        return
    try:
        fit = fit_power_law(list(zip(nf, mf)), name=fitted)
        res.fits = (fit, None) if fitted == "A" else (None, fit)
        res.matched = matched_samples_interval(nf, mf, dfit, res.target, dm[:, 0])
    except MultiplierError as exc:
        res.note = str(exc)
        return
    model = "B" if fitted == "A" else "A"
    res.note = _fit_note(
        fit, nf, res.matched[0], res.shown_matched()[0], fitted, "the model's score", "reaches", "matched size"
    )
    if _is_flat(fit, nf):
        res.matched = (math.nan, math.nan, math.nan)
    if math.isfinite(res.declared) and not math.isnan(res.matched[0]):
        ratios = [_ratio(v, res.declared) if fitted == "A" else _ratio(res.declared, v) for v in res.matched]
        res.estimate, res.lo, res.hi = ratios[0], min(ratios[1:]), max(ratios[1:])
        if res.lo <= 1 <= res.hi and math.isfinite(res.hi):
            res.note = _join_notes(res.note, WITHIN_NOISE)
    elif not math.isfinite(res.declared):
        res.note = _join_notes(
            res.note,
            f"model {model} declares no pre-training size (describes: pretrain_size), so there is no factor, "
            "only the matched size",
        )


def _ratio(x: float, y: float) -> float:
    """``x / y``, ``inf`` for ``y == 0`` (a matched size over a model's declared size of 0)."""
    return math.inf if y == 0 else x / y
