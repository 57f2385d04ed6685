"""The linear probe's solver (downstream/probe.py): the reduced solve is the full solve, both are
scikit-learn's, class weighting, raw-feature weights, and selection on validation only."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from downstream.metrics import balanced_accuracy
from downstream.probe import (
    CLASS_WEIGHTS,
    DEFAULT_L2_GRID,
    fit_probe,
    fit_softmax_regression,
    probe_to_linear,
    sample_weights,
)


def correlated_features(n_per_class, centres, rng, *, noise=1.0, mix=None, offset=3.0):
    """Gaussian blobs pushed through a fixed random mixing (correlated, unevenly scaled features)."""
    counts = np.broadcast_to(np.asarray(n_per_class), (len(centres),))
    y = np.concatenate([np.full(k, c) for c, k in enumerate(counts)]).astype(np.int64)
    X = centres[y] + noise * rng.normal(size=(len(y), centres.shape[1]))
    if mix is not None:
        X = X @ mix
    return (X + offset).astype(np.float32), y


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def few_shot():
    """5 classes x 4 shots against 60 correlated features (n = 20 < D), plus validation and test."""
    rng = np.random.default_rng(0)
    d = 60
    centres = rng.normal(0, 0.4, size=(5, d))  # overlapping: validation scores differ between strengths
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + np.diag(rng.uniform(0.2, 3.0, d))
    train = correlated_features(4, centres, rng, mix=mix)
    val = correlated_features(20, centres, rng, mix=mix)
    test = correlated_features(40, centres, rng, mix=mix)
    return train, val, test


def test_reduced_solve_equals_the_full_solve(few_shot):
    (Xt, yt), (Xv, yv), (Xs, _) = few_shot
    grid = [1e-2, 1e-1, 1.0]
    red = fit_probe(Xt, yt, Xv, yv, num_classes=5, l2_grid=grid, tol=1e-6, max_iter=3000, keep_path=True)
    full = fit_probe(Xt, yt, Xv, yv, num_classes=5, l2_grid=grid, tol=1e-6, max_iter=3000, reduce=False, keep_path=True)
    assert red.rank <= len(yt) < Xt.shape[1] == full.rank
    assert red.l2 == full.l2 and red.val_score == full.val_score
    assert [s["val_score"] for s in red.sweep] == [s["val_score"] for s in full.sweep]
    for (lam_r, W_r, b_r), (lam_f, W_f, b_f) in zip(red.path, full.path):
        assert lam_r == lam_f
        scale = np.abs(W_f).max()
        assert np.abs(W_r - W_f).max() < 1e-3 * scale, lam_r
        assert np.abs((b_r - b_r.mean()) - (b_f - b_f.mean())).max() < 2e-3 * max(1.0, np.abs(b_f).max())
    np.testing.assert_allclose(softmax(red.logits(Xs)), softmax(full.logits(Xs)), atol=2e-3)
    assert np.mean(red.predict(Xs) == full.predict(Xs)) > 0.99
    # the full solve's weights lie in the row space of the standardised training matrix
    Z = (Xt - full.mean) / full.scale
    coef, *_ = np.linalg.lstsq(Z.T, full.weight.T, rcond=None)
    assert np.abs(Z.T @ coef - full.weight.T).max() < 2e-3 * np.abs(full.weight).max()
    # the reduced solve at the default tolerance picks the same strength and predicts alike
    quick = fit_probe(Xt, yt, Xv, yv, num_classes=5, l2_grid=grid)
    assert quick.l2 == red.l2 and np.mean(quick.predict(Xs) == red.predict(Xs)) > 0.97


@pytest.mark.parametrize("n_per_class,dim", [(30, 12), (3, 40)], ids=["n>D", "n<D"])
def test_matches_sklearn_for_a_given_C(n_per_class, dim):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1.2, size=(4, dim))
    (Xt, yt), (Xv, yv), (Xs, _) = (correlated_features(k, centres, rng, noise=1.5) for k in (n_per_class, 20, 30))
    lam = 3e-2
    probe = fit_probe(Xt, yt, Xv, yv, num_classes=4, l2_grid=[lam], tol=1e-7, max_iter=5000)
    Zt, Zs = ((X - probe.mean) / probe.scale for X in (Xt, Xs))
    ref = LogisticRegression(C=1.0 / (lam * len(yt)), tol=1e-10, max_iter=10000).fit(Zt, yt)
    np.testing.assert_allclose(softmax(probe.logits(Xs)), ref.predict_proba(Zs), atol=2e-5)
    assert np.abs(probe.weight - ref.coef_).max() < 1e-4 * np.abs(ref.coef_).max()
    # the float64 full-space helper solves the same problem
    W, b, info = fit_softmax_regression(Zt, yt, 4, lam, tol=1e-9, max_iter=5000)
    assert np.abs(W - ref.coef_).max() < 1e-4 * np.abs(ref.coef_).max() and info["grad_max"] <= 1e-9


def imbalanced(rng, counts, centres):
    X, y = correlated_features(counts, centres, rng, noise=1.6)
    return X, y


def test_balanced_class_weight_helps_balanced_accuracy_and_is_sklearns():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    centres = rng.normal(0, 0.9, size=(3, 8))
    Xt, yt = imbalanced(rng, [300, 30, 12], centres)
    Xv, yv = imbalanced(rng, [100, 10, 5], centres)
    Xs, ys = imbalanced(rng, [200, 200, 200], centres)  # a balanced test set
    w = sample_weights(yt, 3, "balanced")
    assert w.sum() == pytest.approx(len(yt)) and w[yt == 2][0] == pytest.approx(len(yt) / (3 * 12))
    plain = fit_probe(Xt, yt, Xv, yv, num_classes=3, metric="balanced_acc")
    balanced = fit_probe(Xt, yt, Xv, yv, num_classes=3, metric="balanced_acc", class_weight="balanced")
    assert balanced.class_weight == "balanced" and plain.class_weight is None
    assert balanced.evaluate(Xs, ys)["balanced_acc"] > plain.evaluate(Xs, ys)["balanced_acc"] + 0.03
    assert balanced_accuracy(ys, balanced.predict(Xs)) == balanced.evaluate(Xs, ys)["score"]
    # the weighted objective is scikit-learn's class_weight="balanced" at the same C
    lam = 1e-2
    ours = fit_probe(Xt, yt, Xv, yv, num_classes=3, l2_grid=[lam], class_weight="balanced", tol=1e-7, max_iter=5000)
    Zt, Zs = ((X - ours.mean) / ours.scale for X in (Xt, Xs))
    ref = LogisticRegression(C=1.0 / (lam * len(yt)), class_weight="balanced", tol=1e-10, max_iter=10000).fit(Zt, yt)
    np.testing.assert_allclose(softmax(ours.logits(Xs)), ref.predict_proba(Zs), atol=2e-5)


def test_probe_to_linear_reproduces_the_logits_on_raw_features(few_shot):
    (Xt, yt), (Xv, yv), (Xs, _) = few_shot
    Xt, Xv, Xs = Xt.copy(), Xv.copy(), Xs.copy()
    Xt[:, 3] = 7.0  # a constant feature (scale 1, only centred)
    probe = fit_probe(Xt, yt, Xv, yv, num_classes=5)
    W_raw, b_raw = probe_to_linear(probe)
    assert W_raw.shape == probe.weight.shape and b_raw.shape == (5,)
    ref = probe.logits(Xs)
    np.testing.assert_allclose(Xs.astype(np.float64) @ W_raw.T + b_raw, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_bad_class_weight_and_arguments_raise(few_shot):
    (Xt, yt), (Xv, yv), _ = few_shot
    assert CLASS_WEIGHTS == (None, "balanced")
    with pytest.raises(ValueError, match="balanced"):
        fit_probe(Xt, yt, Xv, yv, num_classes=5, class_weight="inverse")
    with pytest.raises(ValueError, match="balanced"):
        fit_probe(Xt, yt, Xv, yv, num_classes=5, class_weight="Balanced")
    with pytest.raises(ValueError, match="num_classes"):
        fit_probe(Xt, yt, Xv, yv, num_classes=1)
    with pytest.raises(ValueError, match="l2_grid"):
        fit_probe(Xt, yt, Xv, yv, num_classes=5, l2_grid=[])


def test_selection_reads_only_train_and_validation(few_shot):
    (Xt, yt), (Xv, yv), (Xs, ys) = few_shot
    params = inspect.signature(fit_probe).parameters
    assert not any("test" in name for name in params)  # there is no way to pass the test split
    a = fit_probe(Xt, yt, Xv, yv, num_classes=5)
    b = fit_probe(Xt, yt, Xv, yv, num_classes=5)
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in a.sweep]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in b.sweep]
    assert a.l2 == b.l2 and np.array_equal(a.weight, b.weight)
    json.dumps(a.sweep)  # the sweep goes into the results as JSON
    # a poisoned test split changes the test score and nothing else
    clean, poisoned = a.evaluate(Xs, ys), a.evaluate(Xs, np.random.default_rng(0).permutation(ys))
    assert clean["top1"] > poisoned["top1"]
    # while the validation split does drive the choice: scores follow its labels
    shuffled = fit_probe(Xt, yt, Xv, np.random.default_rng(1).permutation(yv), num_classes=5)
    assert [s["val_score"] for s in shuffled.sweep] != [s["val_score"] for s in a.sweep]
    assert [s["l2"] for s in a.sweep] == sorted(DEFAULT_L2_GRID, reverse=True)
