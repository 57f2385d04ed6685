"""Intervals over pre-training seeds, then eval seeds: the two-level bootstrap behind every
interval the report and the summary table show.

Three things change between two runs of the same study: the pre-training seed (which model
was trained), the eval seed (which k-shot examples and which probe initialisation) and, for an
aggregate, the downstream sets. An interval that resamples eval seeds only misses the first,
usually the largest (Bouthillier et al., 2021). Here every interval resamples both levels.

The design
----------
A *cell* holds the scores of one group (a configuration at one shot count, say) on one
downstream set, indexed by pre-training seed ``p`` and eval seed ``e``. Its estimate is the
mean over pre-training seeds of the mean over eval seeds; a group's estimate is the mean over
its sets (the *strata*), so every set weighs the same whatever its number of rows.

One bootstrap replicate

1. draws the group's pre-training seeds with replacement (how many: see "Small numbers of
   seeds"), once for the whole group: the same model is evaluated on every set, so its luck is
   shared by the sets (drawing it again per set would average the pre-training variance of an
   aggregate away);
2. on each set, draws eval seeds with replacement within the drawn pre-training seeds. When all
   pre-training seeds of a cell were evaluated with the same eval seeds (the harness's design:
   eval seed ``e`` picks the same k-shot examples whatever the checkpoint,
   :func:`downstream.fewshot.sample_shots`), one draw of eval seeds serves every drawn
   pre-training seed: the eval seeds are *crossed* with the pre-training seeds, and a lucky
   k-shot draw lifts every checkpoint alike, so it must not average out over pre-training seeds.
   Otherwise (*nested* eval seeds) each drawn pre-training seed gets its own draw;
3. averages as the estimate does: over eval seeds, pre-training seeds, then sets.

The sets themselves are not resampled (stratified by set, as rliable's stratified bootstrap).

Pairing by common random numbers
--------------------------------
Draws come from random streams named by what is drawn: the pre-training draw of a group from
a stream named by its list of pre-training seeds, the eval draw of a crossed cell from one
named by its set and its list of eval seeds. Two groups with the same pre-training seeds (the
same run at several sizes, or the same group on several sets) therefore get the same
pre-training draw, and two configurations evaluated on the same set with the same eval seeds
the same eval draw: a difference ``A - B`` computed replicate by replicate is paired where the
design pairs it (same k-shot examples; same seeds) and independent elsewhere (a random-init
floor with one pre-training seed against a configuration with three). Pairing two runs whose
seeds are unrelated leaves the variance of the difference unchanged in expectation, so the
rule needs no knowledge of the study. It also makes a group's draws independent of which
other groups are computed with it.

With one pre-training seed the interval still resamples eval seeds, but it does not cover the
pre-training seed's variance: :attr:`Interval.covers_pretrain_seeds` says so and
:func:`seed_note` writes the sentence a report shows.

Why not rliable
---------------
rliable's stratified bootstrap resamples runs within each task independently: one level, no
draws shared between tasks or between configurations. It also pins ``arch==5.3.0`` and pulls
seaborn and absl. The scheme above is a few vectorised numpy contractions.

Small numbers of seeds
----------------------
Each level draws ``n - 1`` of its ``n`` seeds (with replacement; one when ``n`` is 1): the
bootstrap variance of a mean of ``n`` values is then ``s**2 / n``, not ``(n - 1) / n`` of it,
which matters at two or three seeds. Percentile intervals still miss Student's ``t`` factor,
so with very few seeds they cover less than their level. Measured on simulated studies (1,200
each: a pre-training effect and an eval-seed effect of equal size, crossed as in the harness
unless said, plus residual noise; ``tests/test_stats.py`` checks the last three designs):

======================  ==========  ===========  =========
pre-training seeds      eval seeds  sets         coverage
======================  ==========  ===========  =========
2                       3           1            about 82%
3                       3           1            about 88%
5                       3           4            about 90%
10                      5           1            about 92%
5 (nested eval seeds)   3           1            about 93%
======================  ==========  ===========  =========

Read an interval from two or three seeds as a rough guide, and a difference "within noise"
as exactly that.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

N_BOOT = 1000
"""Bootstrap replicates of an interval (the report's means; the multiplier has its own)."""
LEVEL = 0.95
"""Coverage of the intervals."""
_CHUNK = 1_000_000
"""Largest number of elements of one working array (replicates x groups x sets x seeds)."""
_NO_SEED = -1
"""The seed of rows whose seed column is null (e.g. rows from before seeds were recorded)."""


class StatsError(ValueError):
    """Rows or arguments the bootstrap cannot use (a missing column, a bad level or count)."""


def excludes_zero(lo: float, hi: float) -> bool:
    """Whether the interval ``[lo, hi]`` lies strictly on one side of zero."""
    return bool((lo > 0 and hi > 0) or (lo < 0 and hi < 0))


@dataclass(frozen=True)
class Interval:
    """A bootstrap estimate with its interval, and how many replicates it rests on."""

    estimate: float
    lo: float
    hi: float
    n_pretrain_seeds: int = 0
    """The fewest pre-training seeds of any set of the group (of either side for a difference)."""
    n_eval_seeds: int = 0
    """The fewest eval seeds of any (set, pre-training seed)."""
    n_sets: int = 0
    level: float = LEVEL

    @property
    def covers_pretrain_seeds(self) -> bool:
        """Whether pre-training seed variance is part of the interval (two or more seeds)."""
        return self.n_pretrain_seeds >= 2

    @property
    def replicated(self) -> bool:
        """Whether the interval rests on any replicate (two pre-training or two eval seeds); one
        value has a zero-width interval that says nothing about noise."""
        return self.n_pretrain_seeds >= 2 or self.n_eval_seeds >= 2

    def excludes_zero(self) -> bool:
        """The interval lies on one side of zero and rests on replicates."""
        return self.replicated and excludes_zero(self.lo, self.hi)

    @property
    def within_noise(self) -> bool:
        """No difference from zero can be claimed: the interval covers zero, or there are no
        replicates to tell."""
        return not self.excludes_zero()

    def text(self, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
        """``"52.2 [50.9, 53.4]"`` (values times ``scale``); empty for a missing estimate."""
        if not math.isfinite(self.estimate):
            return ""
        fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
        est = fmt.format(scale * self.estimate)
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return est
        return f"{est} [{fmt.format(scale * self.lo)}, {fmt.format(scale * self.hi)}]"


def seed_note(n_pretrain_seeds: int | Sequence[int]) -> str:
    """The sentence a table or figure shows when intervals rest on one pre-training seed, or on
    two (empty when every interval has three or more), e.g. ``"3 of 8 intervals rest on one
    pre-training seed: they resample eval seeds only and do not cover the pre-training seed's
    variance"``."""
    counts = [int(n_pretrain_seeds)] if np.isscalar(n_pretrain_seeds) else [int(n) for n in n_pretrain_seeds]
    single = sum(1 for n in counts if n < 2)
    two = sum(1 for n in counts if n == 2)
    notes = []
    if single:
        notes.append(
            "this interval rests on one pre-training seed: it resamples eval seeds only and does not cover "
            "the pre-training seed's variance"
            if len(counts) == 1
            else f"{single} of {len(counts)} intervals rest on one pre-training seed: they resample eval seeds "
            "only and do not cover the pre-training seed's variance"
        )
    if two:
        notes.append(
            ("this interval rests on" if len(counts) == 1 else f"{two} of {len(counts)} rest on")
            + " two pre-training seeds, from which a 95% interval covers the truth only about 80% of the "
            "time (simulation in results/stats.py): read it as a rough guide"
        )
    return "; ".join(notes)


def difference_text(iv: Interval, scale: float = 1.0, digits: int = 1) -> str:
    """``"+1.4 [+0.3, +2.5]"``, followed by ``", within noise"`` when the interval covers zero
    (``"+1.4, no replicates: noise unknown"`` for a difference of single values)."""
    if not iv.replicated and math.isfinite(iv.estimate):
        return f"{scale * iv.estimate:+.{digits}f}, no replicates: noise unknown"
    body = iv.text(scale, digits, signed=True)
    if not body:
        return ""
    return body + (", within noise" if iv.within_noise else "")


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class Draws:
    """Bootstrap replicates of many groups at once (see :func:`hierarchical_bootstrap`)."""

    keys: pd.DataFrame
    """One row per group: the ``by`` columns, in the order of the arrays below."""
    estimate: np.ndarray
    """``(G,)`` the groups' estimates (NaN for a group without a finite score)."""
    draws: np.ndarray
    """``(n_boot, G)`` replicates of the estimates."""
    n_pretrain: np.ndarray
    n_eval: np.ndarray
    n_sets: np.ndarray
    level: float = LEVEL

    def position(self, key: Hashable | tuple = ()) -> int:
        """The column of group ``key`` (a value, or a tuple with one value per ``by`` column)."""
        want = key if isinstance(key, tuple) else (key,)
        if not len(self.keys.columns) and want == ():
            return 0
        for i, row in enumerate(self.keys.itertuples(index=False, name=None)):
            if len(row) == len(want) and all(_same(a, b) for a, b in zip(row, want)):
                return i
        raise StatsError(f"no group {key!r}; groups: {list(self.keys.itertuples(index=False, name=None))[:10]}")

    def interval(self, key: Hashable | tuple = ()) -> Interval:
        """The interval of group ``key``."""
        i = self.position(key)
        lo, hi = percentile_interval(self.draws[:, i], self.level)
        return Interval(
            float(self.estimate[i]),
            lo,
            hi,
            int(self.n_pretrain[i]),
            int(self.n_eval[i]),
            int(self.n_sets[i]),
            self.level,
        )

    def table(self) -> pd.DataFrame:
        """The ``by`` columns plus ``estimate, lo, hi, n_pretrain_seeds, n_eval_seeds, n_sets``."""
        lo, hi = percentile_interval(self.draws, self.level)
        return self.keys.assign(
            estimate=self.estimate,
            lo=lo,
            hi=hi,
            n_pretrain_seeds=self.n_pretrain,
            n_eval_seeds=self.n_eval,
            n_sets=self.n_sets,
        )

    def intervals(self) -> dict[tuple, Interval]:
        """Group key (a tuple, one value per ``by`` column) -> its :class:`Interval`."""
        lo, hi = percentile_interval(self.draws, self.level)
        return {
            key: Interval(
                float(self.estimate[i]),
                float(lo[i]),
                float(hi[i]),
                int(self.n_pretrain[i]),
                int(self.n_eval[i]),
                int(self.n_sets[i]),
                self.level,
            )
            for i, key in enumerate(self.keys.itertuples(index=False, name=None))
        }


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None or a is pd.NA or b is pd.NA:
        return (a is None or a is pd.NA or (isinstance(a, float) and math.isnan(a))) and (
            b is None or b is pd.NA or (isinstance(b, float) and math.isnan(b))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[Any, Any]:
    """The central ``level`` percentile interval of ``draws`` along axis 0 (NaN draws ignored;
    linear interpolation between order statistics, as :func:`numpy.quantile`)."""
    arr = np.asarray(draws, dtype=float)
    scalar = arr.ndim == 1
    arr = np.sort(arr.reshape(len(arr), -1), axis=0)  # NaN sorts last
    n = (~np.isnan(arr)).sum(axis=0)
    alpha = (1.0 - level) / 2
    bounds = []
    for q in (alpha, 1 - alpha):
        pos = q * np.maximum(n - 1, 0)
        below = np.floor(pos).astype(int)
        above = np.minimum(below + 1, np.maximum(n - 1, 0))
        lo_v = np.take_along_axis(arr, below[None], axis=0)[0]
        hi_v = np.take_along_axis(arr, above[None], axis=0)[0]
        with np.errstate(invalid="ignore"):
            value = lo_v + (pos - below) * (hi_v - lo_v)
        bounds.append(np.where(n > 0, np.where(hi_v == lo_v, lo_v, value), np.nan))
    if scalar:
        return float(bounds[0][0]), float(bounds[1][0])
    return bounds[0], bounds[1]


def _check(rows: pd.DataFrame, need: Sequence[str], n_boot: int, level: float) -> None:
    if not isinstance(rows, pd.DataFrame):
        raise StatsError(f"rows must be a pandas DataFrame, got {type(rows).__name__}")
    missing = [c for c in need if c not in rows.columns]
    if missing:
        raise StatsError(
            f"rows lack column(s) {', '.join(map(repr, missing))}; they have {', '.join(map(str, rows.columns))}"
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise StatsError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise StatsError(f"level must be a number in (0, 1), got {level!r}")


def _seeds(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").astype(float).fillna(_NO_SEED).to_numpy().astype(np.int64)


def _stream(seed: int, key: tuple) -> np.random.Generator:
    """A random stream named by ``key`` (the same key gives the same draws in every call)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest, "little")])


@dataclass
class _Layout:
    """Scores as a ``(G, S, P, E)`` array (group, set, pre-training seed, eval seed), NaN where
    absent; seeds left-aligned in ascending order."""

    keys: pd.DataFrame
    set_names: list[str]
    values: np.ndarray
    p_seeds: np.ndarray  # (G, P) seed values, _NO_SEED-1 where absent
    e_seeds: np.ndarray  # (G, S, P, E) seed values, _NO_SEED-1 where absent

    @property
    def n_eval(self) -> np.ndarray:  # (G, S, P)
        return np.isfinite(self.values).sum(axis=-1)


def _layout(rows: pd.DataFrame, by: Sequence[str], strata: str | None, value: str) -> _Layout:
    by = list(by)
    if by:
        grouped = rows.groupby(by, sort=True, dropna=False, observed=True)
        gid = grouped.ngroup().to_numpy(dtype=np.int64)
        keys = grouped.size().index.to_frame(index=False)
        keys.columns = by
    else:
        gid = np.zeros(len(rows), dtype=np.int64)
        keys = pd.DataFrame(index=range(1))
    if strata is None:
        sid, set_names = np.zeros(len(rows), dtype=np.int64), [""]
    else:
        labels = rows[strata].astype(object).where(rows[strata].notna(), "").astype(str)
        codes, uniques = pd.factorize(labels, sort=True)
        sid, set_names = codes.astype(np.int64), [str(u) for u in uniques] or [""]
    p, e = _seeds(rows["pretrain_seed"]), _seeds(rows["eval_seed"])
    v = pd.to_numeric(rows[value], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    ok = np.isfinite(v)
    g, s, p, e, v = gid[ok], sid[ok], p[ok], e[ok], v[ok]
    G, S = len(keys), len(set_names)
    if not len(v):
        return _Layout(
            keys,
            set_names,
            np.full((G, S, 1, 1), np.nan),
            np.full((G, 1), _NO_SEED - 1),
            np.full((G, S, 1, 1), _NO_SEED - 1),
        )
    order = np.lexsort((e, p, s, g))
    g, s, p, e, v = g[order], s[order], p[order], e[order], v[order]
    # rows sharing (group, set, both seeds) are averaged
    new = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1]) | (p[1:] != p[:-1]) | (e[1:] != e[:-1])]
    starts = np.flatnonzero(new)
    v = np.add.reduceat(v, starts) / np.diff(np.r_[starts, len(new)])
    g, s, p, e = g[starts], s[starts], p[starts], e[starts]
    # pre-training seed slot: the seed's rank among its group's seeds
    p_codes, p_inv = np.unique(p, return_inverse=True)
    gp, gp_inv = np.unique(g * len(p_codes) + p_inv, return_inverse=True)
    gp_group = gp // len(p_codes)
    pi = (np.arange(len(gp)) - np.searchsorted(gp_group, gp_group, side="left"))[gp_inv]
    # eval seed slot: the seed's rank within its (group, set, pre-training seed)
    run = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1]) | (p[1:] != p[:-1])]
    run_start = np.flatnonzero(run)
    ei = np.arange(len(v)) - np.repeat(run_start, np.diff(np.r_[run_start, len(v)]))
    P, E = int(pi.max()) + 1, int(ei.max()) + 1
    values = np.full((G, S, P, E), np.nan)
    values[g, s, pi, ei] = v
    e_seeds = np.full((G, S, P, E), _NO_SEED - 1, dtype=np.int64)
    e_seeds[g, s, pi, ei] = e
    p_seeds = np.full((G, P), _NO_SEED - 1, dtype=np.int64)
    p_seeds[g, pi] = p
    return _Layout(keys, set_names, values, p_seeds, e_seeds)


def _point(values: np.ndarray) -> np.ndarray:
    """The estimate of every group: mean over eval seeds, then pre-training seeds, then sets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmean(np.nanmean(values, axis=-1), axis=-1), axis=-1)


def _size(n: int) -> int:
    """The resample size for ``n`` items: ``n - 1`` (at least 1), which makes the bootstrap
    variance of a mean unbiased (``s**2 / n``) instead of ``(n - 1) / n`` of it."""
    return max(int(n) - 1, 1)


def _counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``(n_boot, n)``: how often each of ``n`` items is drawn in each of ``n_boot`` resamples
    of :func:`_size` ``(n)`` items with replacement."""
    return rng.multinomial(_size(n), np.full(n, 1.0 / n), size=n_boot).astype(float)


def hierarchical_bootstrap(
    rows: pd.DataFrame,
    by: Sequence[str] = (),
    *,
    strata: str | None = "downstream",
    value: str = "score",
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Draws:
    """Two-level bootstrap replicates of the mean ``value`` of every group of ``rows`` by ``by``.

    ``rows`` need the columns ``by``, ``strata`` (the sets an aggregate is stratified by;
    ``None`` when each group is one cell), ``pretrain_seed``, ``eval_seed`` and ``value``
    (rows with a null value are ignored; a null seed counts as one seed; rows sharing a group,
    set and both seeds are averaged first). See the module docstring for what is resampled
    and how comparisons are paired. Deterministic for a given ``seed``.
    """
    _check(rows, [*by, *([strata] if strata else []), "pretrain_seed", "eval_seed", value], n_boot, level)
    lay = _layout(rows, by, strata, value)
    values = lay.values
    present = lay.n_eval > 0  # (G, S, P)
    has_set = present.any(axis=2)
    n_pretrain, n_evals, n_sets = _seed_counts(lay.n_eval, present, has_set)

    # crossed cells: every present pre-training seed has the same list of eval seeds
    first = np.argmax(present, axis=2)  # (G, S)
    ref = np.take_along_axis(lay.e_seeds, first[:, :, None, None], axis=2)  # (G, S, 1, E)
    crossed = ((lay.e_seeds == ref).all(axis=-1) | ~present).all(axis=-1)  # (G, S)
    key_values = (
        list(lay.keys.itertuples(index=False, name=None)) if (~crossed & has_set).any() else []
    )  # nested streams
    # one draw per distinct list of pre-training seeds, and per (set, list of eval seeds) of crossed cells
    p_draws, p_of = _pretrain_draws(lay.p_seeds, seed, n_boot)
    shared, nested = crossed & has_set, ~crossed & has_set  # (G, S)
    e_draws, e_of = _eval_draws(lay, shared, first, seed, n_boot)
    out = np.full((n_boot, values.shape[0]), np.nan)
    draws = _SeedDraws(p_draws, p_of.ravel(), e_draws, e_of)
    for start, stop in _chunks(values.shape, n_boot):
        out[:, start:stop] = _chunk_means(lay, draws, present, has_set, nested, key_values, seed, start, stop)
    return Draws(lay.keys, _point(values), out, n_pretrain.astype(int), n_evals.astype(int), n_sets.astype(int), level)


def _seed_counts(n_eval: np.ndarray, present: np.ndarray, has_set: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per group: the fewest pre-training seeds of a set, the fewest eval seeds of a cell, the sets (0 if empty)."""
    with np.errstate(invalid="ignore"):
        n_pretrain = np.where(has_set, present.sum(axis=2), np.iinfo(np.int64).max).min(axis=1)
        n_evals = np.where(present, n_eval, np.iinfo(np.int64).max).min(axis=(1, 2))
    n_sets = has_set.sum(axis=1)
    empty = n_sets == 0
    return np.where(empty, 0, n_pretrain), np.where(empty, 0, n_evals), n_sets


def _pretrain_draws(p_seeds: np.ndarray, seed: int, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n_boot, lists, P)`` counts, one stream per distinct list of pre-training seeds, and each group's list."""
    P = p_seeds.shape[1]
    p_lists, p_of = np.unique(p_seeds, axis=0, return_inverse=True)
    p_draws = np.zeros((n_boot, len(p_lists), P))
    for k, row in enumerate(p_lists):
        seeds = row[row >= _NO_SEED]
        if len(seeds):
            p_draws[:, k, : len(seeds)] = _counts(
                _stream(seed, ("pretrain", tuple(seeds.tolist()))), len(seeds), n_boot
            )
    return p_draws, p_of


def _eval_draws(
    lay: _Layout, shared: np.ndarray, first: np.ndarray, seed: int, n_boot: int
) -> tuple[np.ndarray, np.ndarray]:
    """Eval-seed counts ``(n_boot, lists, E)``, one stream per (set, list of eval seeds) of the crossed
    cells, and each ``(G, S)`` cell's list (-1: not crossed or empty)."""
    G, S, _, E = lay.values.shape
    g_idx, s_idx = np.nonzero(shared)
    e_of = np.full((G, S), -1)
    e_draws = np.zeros((n_boot, 1, E))
    if len(g_idx):
        lists = np.column_stack([s_idx, lay.e_seeds[g_idx, s_idx, first[g_idx, s_idx]]])
        e_lists, e_inv = np.unique(lists, axis=0, return_inverse=True)
        e_of[g_idx, s_idx] = e_inv.ravel()
        e_draws = np.zeros((n_boot, len(e_lists), E))
        for k, row in enumerate(e_lists):
            seeds = row[1:][row[1:] >= _NO_SEED]
            e_draws[:, k, : len(seeds)] = _counts(
                _stream(seed, ("eval", lay.set_names[int(row[0])], tuple(seeds.tolist()))), len(seeds), n_boot
            )
    return e_draws, e_of


@dataclass
class _SeedDraws:
    """The shared draws: pre-training seed counts and each group's list, eval counts and each cell's list."""

    p_draws: np.ndarray
    p_of: np.ndarray  # (G,)
    e_draws: np.ndarray
    e_of: np.ndarray  # (G, S)


def _chunks(shape: tuple[int, ...], n_boot: int) -> list[tuple[int, int]]:
    """Group ranges small enough that a chunk's arrays stay near ``_CHUNK`` values."""
    G, S, P, E = shape
    per_group = n_boot * S * max(P, E)
    step = max(1, _CHUNK // max(per_group, 1))
    return [(start, min(G, start + step)) for start in range(0, G, step)]


def _chunk_means(
    lay: _Layout,
    draws: _SeedDraws,
    present: np.ndarray,
    has_set: np.ndarray,
    nested: np.ndarray,
    key_values: list,
    seed: int,
    start: int,
    stop: int,
) -> np.ndarray:
    """``(n_boot, stop - start)``: the replicate means of groups ``start:stop``."""
    values, n_eval = lay.values, lay.n_eval
    cp = draws.p_draws[:, draws.p_of[start:stop]]  # (B, g, P) pre-training seed counts
    idx = draws.e_of[start:stop]  # (g, S)
    ce = np.where((idx >= 0)[None, :, :, None], draws.e_draws[:, np.maximum(idx, 0)], 0.0)  # (B, g, S, E)
    # mean over the drawn eval seeds of each (replicate, group, set, pre-training seed)
    xs = np.nan_to_num(values[start:stop])  # (g, S, P, E)
    sums = np.matmul(ce.transpose(1, 2, 0, 3), xs.transpose(0, 1, 3, 2)).transpose(2, 0, 1, 3)  # (B, g, S, P)
    totals = np.broadcast_to(ce.sum(axis=-1)[..., None], sums.shape).copy()
    for j, s in np.argwhere(nested[start:stop]):  # cells whose eval seeds differ by pre-training seed
        g = start + j
        rng = _stream(seed, ("nested", key_values[g], lay.set_names[s]))
        for p in np.flatnonzero(present[g, s]):
            ne = int(n_eval[g, s, p])
            # the eval draws of every drawn copy of seed p, pooled: Multinomial(copies * ne)
            c = rng.multinomial(cp[:, j, p].astype(np.int64) * _size(ne), np.full(ne, 1.0 / ne)).astype(float)
            sums[:, j, s, p] = c @ values[g, s, p, :ne]
            totals[:, j, s, p] = c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cell = sums / totals  # (B, g, S, P)
        weight = cp[:, :, None, :] * present[None, start:stop]
        set_mean = np.where(weight > 0, weight * cell, 0.0).sum(axis=-1) / weight.sum(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        set_mean = np.where(has_set[None, start:stop], set_mean, np.nan)
        return np.nanmean(set_mean, axis=-1)


def interval(
    rows: pd.DataFrame,
    *,
    strata: str | None = "downstream",
    value: str = "score",
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """The two-level bootstrap interval of the mean ``value`` of ``rows`` (one group; over
    ``strata`` when given, each set weighing the same)."""
    return hierarchical_bootstrap(
        rows, (), strata=strata, value=value, n_boot=n_boot, seed=seed, level=level
    ).interval()


def intervals(rows: pd.DataFrame, by: Sequence[str], **kwargs: Any) -> dict[tuple, Interval]:
    """Group key -> :class:`Interval` for every group of ``rows`` by ``by`` (arguments as
    :func:`hierarchical_bootstrap`)."""
    return hierarchical_bootstrap(rows, by, **kwargs).intervals()


def paired_difference(
    rows_a: pd.DataFrame,
    rows_b: pd.DataFrame,
    *,
    strata: str | None = "downstream",
    value: str = "score",
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """The interval of ``mean(A) - mean(B)`` over the sets both sides have (each set weighing
    the same), paired where the design pairs the two sides (same eval seeds on a set: the same
    k-shot examples; same pre-training seeds) and resampled independently elsewhere.

    An empty interval (NaN) when the sides share no set."""
    cols = [*([strata] if strata else []), "pretrain_seed", "eval_seed", value]
    _check(rows_a, cols, n_boot, level)
    _check(rows_b, cols, n_boot, level)
    a = rows_a[cols].assign(_side=0)
    b = rows_b[cols].assign(_side=1)
    if strata:
        have = [set(r.loc[pd.to_numeric(r[value], errors="coerce").notna(), strata].astype(str)) for r in (a, b)]
        common = have[0] & have[1]
        a, b = a[a[strata].astype(str).isin(common)], b[b[strata].astype(str).isin(common)]
    both = pd.concat([a, b], ignore_index=True)
    if a.empty or b.empty:
        return Interval(math.nan, math.nan, math.nan, level=level)
    d = hierarchical_bootstrap(both, ["_side"], strata=strata, value=value, n_boot=n_boot, seed=seed, level=level)
    ia, ib = d.position(0), d.position(1)
    lo, hi = percentile_interval(d.draws[:, ia] - d.draws[:, ib], level)
    return Interval(
        float(d.estimate[ia] - d.estimate[ib]),
        lo,
        hi,
        int(min(d.n_pretrain[ia], d.n_pretrain[ib])),
        int(min(d.n_eval[ia], d.n_eval[ib])),
        int(min(d.n_sets[ia], d.n_sets[ib])),
        level,
    )


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties given their average rank (as
    :func:`scipy.stats.rankdata`; here to keep scipy.stats' import time out of the report)."""
    a = np.asarray(values, dtype=float)
    less = (a[..., None, :] < a[..., :, None]).sum(axis=-1)
    equal = (a[..., None, :] == a[..., :, None]).sum(axis=-1)
    return less + (equal + 1) / 2.0


def spearman_draws(x: np.ndarray, y_draws: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation between fixed ``x`` (N,) and every row of ``y_draws``
    (D, N), ties given their average rank (as :func:`scipy.stats.spearmanr`); NaN for a row
    with a constant rank or a missing value."""
    y = np.atleast_2d(np.asarray(y_draws, dtype=float))
    rx = average_ranks(np.asarray(x, dtype=float))
    ry = average_ranks(y)
    ry = np.where(np.isnan(y).any(axis=1, keepdims=True), np.nan, ry)
    rx, ry = rx - rx.mean(), ry - ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ry @ rx) / np.sqrt((ry * ry).sum(axis=1) * (rx @ rx))
