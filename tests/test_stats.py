"""The two-level bootstrap (results/stats.py): coverage on simulated studies, what each level
adds, pairing, and the formatting the report prints."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from results.stats import (
    Interval,
    StatsError,
    difference_text,
    excludes_zero,
    hierarchical_bootstrap,
    interval,
    paired_difference,
    seed_note,
    spearman_draws,
)


def _study(
    rng,
    sims: int,
    pretrain: int,
    evals: int,
    *,
    sets: int = 1,
    sd_pretrain: float = 1.0,
    sd_eval: float = 1.0,
    sd_noise: float = 0.3,
    nested: bool = False,
) -> pd.DataFrame:
    """``sims`` independent studies with true mean 0: score = pre-training seed effect (shared by
    the sets) + eval seed effect + noise. Crossed: eval seed e is one effect for every
    pre-training seed (the harness's design); nested: each pre-training seed has its own eval
    seeds. Seeds are numbered apart per study so that no two studies share a random stream."""
    rows = []
    for k in range(sims):
        a = rng.normal(0, sd_pretrain, pretrain)
        for s in range(sets):
            c = rng.normal(0, sd_eval, evals)
            for p in range(pretrain):
                for e in range(evals):
                    effect = rng.normal(0, sd_eval) if nested else c[e]
                    rows.append(
                        (
                            k,
                            f"set{s}",
                            1000 * k + p,
                            1000 * k + (100 * p if nested else 0) + e,
                            a[p] + effect + rng.normal(0, sd_noise),
                        )
                    )
    return pd.DataFrame(rows, columns=["sim", "downstream", "pretrain_seed", "eval_seed", "score"])


def _coverage(frame: pd.DataFrame) -> float:
    table = hierarchical_bootstrap(frame, ["sim"]).table()
    return float(((table["lo"] <= 0) & (table["hi"] >= 0)).mean())


# Mean coverage over 1,200 studies each (6 x 200, other random seeds): 0.93, 0.92, 0.905; with
# 200 studies the standard error is about 0.02.
@pytest.mark.parametrize(
    "design",
    [
        dict(pretrain=5, evals=3, nested=True),
        dict(pretrain=10, evals=5),  # crossed, as the harness evaluates
        dict(pretrain=5, evals=3, sets=4),  # an aggregate over 4 sets
    ],
)
def test_95_percent_intervals_cover_the_true_mean(design):
    rng = np.random.default_rng(7)
    coverage = _coverage(_study(rng, 200, **design))
    assert 0.86 <= coverage <= 0.98, coverage


def test_pretraining_seed_variance_widens_the_interval():
    """The same scores, once with their pre-training seeds and once flattened into eval seeds of a
    single pre-training seed (what an eval-seed-only interval sees)."""
    rng = np.random.default_rng(3)
    frame = _study(rng, 1, 4, 5, sd_pretrain=1.0, sd_eval=0.1, sd_noise=0.1)
    two_level = interval(frame, strata=None)
    flat = frame.assign(eval_seed=frame["pretrain_seed"] * 100 + frame["eval_seed"], pretrain_seed=0)
    eval_only = interval(flat, strata=None)
    assert two_level.estimate == pytest.approx(eval_only.estimate)
    assert (two_level.hi - two_level.lo) > 2 * (eval_only.hi - eval_only.lo)
    assert two_level.covers_pretrain_seeds and not eval_only.covers_pretrain_seeds
    assert (two_level.n_pretrain_seeds, two_level.n_eval_seeds) == (4, 5)


def test_one_pretraining_seed_still_resamples_eval_seeds():
    rows = pd.DataFrame(
        {"downstream": "a", "pretrain_seed": 0, "eval_seed": [0, 1, 2, 3], "score": [0.50, 0.52, 0.54, 0.56]}
    )
    iv = interval(rows)
    assert iv.estimate == pytest.approx(0.53)
    assert iv.lo < 0.53 < iv.hi and iv.hi - iv.lo > 0.01
    assert not iv.covers_pretrain_seeds
    assert "does not cover the pre-training seed" in seed_note(iv.n_pretrain_seeds)
    assert seed_note([3, 5]) == "" and seed_note([1, 3]).startswith("1 of 2 intervals rest on one pre-training seed")
    assert "2 of 3 rest on two pre-training seeds" in seed_note([2, 2, 4])


def test_sets_weigh_the_same_and_pretraining_draws_are_shared_by_sets():
    # set a has 3 eval seeds per pre-training seed, set b one: the estimate is the mean of the set means
    rows = [{"downstream": "a", "pretrain_seed": p, "eval_seed": e, "score": 0.2} for p in (0, 1) for e in range(3)]
    rows += [{"downstream": "b", "pretrain_seed": p, "eval_seed": 0, "score": 0.6} for p in (0, 1)]
    assert interval(pd.DataFrame(rows)).estimate == pytest.approx(0.4)
    # two sets whose scores move with the pre-training seed in opposite directions: drawing the
    # seed once for both sets cancels it in the aggregate; drawing it per set would not
    rows = [
        {"downstream": s, "pretrain_seed": p, "eval_seed": 0, "score": 0.5 + sign * (0.1 if p else -0.1)}
        for s, sign in (("a", 1), ("b", -1))
        for p in (0, 1)
    ]
    iv = interval(pd.DataFrame(rows))
    assert (iv.lo, iv.estimate, iv.hi) == pytest.approx((0.5, 0.5, 0.5))


def test_differences_are_paired_on_shared_eval_seeds():
    """B = A + 0.01 on the same k-shot draws, whose luck (sd 0.05) dwarfs the difference: the
    paired interval sees the difference, an unpaired one (other eval seeds) cannot."""
    rng = np.random.default_rng(0)
    luck = rng.normal(0, 0.05, 5)
    a = pd.DataFrame({"downstream": "x", "pretrain_seed": 0, "eval_seed": range(5), "score": 0.5 + luck})
    b = a.assign(score=a["score"] + 0.01 + rng.normal(0, 0.001, 5))
    paired = paired_difference(b, a)
    assert paired.estimate == pytest.approx(0.01, abs=0.002)
    assert paired.excludes_zero() and not paired.within_noise
    unpaired = paired_difference(b.assign(eval_seed=b["eval_seed"] + 10), a)
    assert unpaired.within_noise
    assert difference_text(unpaired, 100).endswith(", within noise")
    assert difference_text(paired, 100).startswith("+1.0 [+")
    # only the sets both sides have are compared
    other = a.assign(downstream="y", score=9.0)
    assert paired_difference(pd.concat([b, other]), a).estimate == pytest.approx(paired.estimate)
    assert math.isnan(paired_difference(other, a).estimate)


def test_groups_are_computed_together_and_deterministically():
    rng = np.random.default_rng(1)
    frame = pd.concat(
        [
            _study(rng, 1, 3, 3).assign(config=name, score=lambda d, m=m: d["score"] + m)
            for name, m in (("a", 0.0), ("b", 5.0))
        ]
    )
    draws = hierarchical_bootstrap(frame, ["config"], n_boot=200, seed=4)
    assert draws.draws.shape == (200, 2)
    alone = hierarchical_bootstrap(frame[frame["config"] == "b"], ["config"], n_boot=200, seed=4)
    assert np.array_equal(draws.draws[:, 1], alone.draws[:, 0])  # a group's draws do not depend on the others
    again = hierarchical_bootstrap(frame, ["config"], n_boot=200, seed=4)
    assert np.array_equal(draws.draws, again.draws)
    assert not np.array_equal(draws.draws, hierarchical_bootstrap(frame, ["config"], n_boot=200, seed=5).draws)
    table = draws.table()
    assert list(table["config"]) == ["a", "b"]
    assert (table["lo"] <= table["estimate"]).all() and (table["estimate"] <= table["hi"]).all()
    assert draws.interval("b").estimate == pytest.approx(table["estimate"].iloc[1])


def test_interval_text_and_errors():
    iv = Interval(0.522, 0.509, 0.534, 2, 3, 9)
    assert iv.text(100) == "52.2 [50.9, 53.4]"
    assert Interval(math.nan, math.nan, math.nan).text() == ""
    assert excludes_zero(0.1, 0.3) and excludes_zero(-0.3, -0.1) and not excludes_zero(-0.1, 0.3)
    rows = pd.DataFrame({"downstream": ["a"], "pretrain_seed": [0], "eval_seed": [0], "score": [0.5]})
    with pytest.raises(StatsError, match="lack column.*'config'"):
        hierarchical_bootstrap(rows, ["config"])
    with pytest.raises(StatsError, match="n_boot must be an integer >= 10"):
        interval(rows, n_boot=5)
    with pytest.raises(StatsError, match=r"level must be a number in \(0, 1\)"):
        interval(rows, level=95)


def test_spearman_draws_match_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    x = rng.normal(size=12)
    y = rng.normal(size=(5, 12))
    y[0, 3] = y[0, 4]  # a tie
    got = spearman_draws(x, y)
    for row, value in zip(y, got):
        assert value == pytest.approx(spearmanr(x, row).statistic)
    assert np.isnan(spearman_draws(x, np.ones((1, 12))))[0]
