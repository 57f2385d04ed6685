"""Linear probe: multinomial logistic regression on cached features, in torch.

The recipe, with every choice made on the validation split and never on test:

1. Standardise each feature with the *training* mean and standard deviation (a feature that is
   constant on the training set is only centred).
2. For each L2 strength ``lam`` of a log grid, from the strongest to the weakest, minimise

       mean cross-entropy(X W^T + b, y) + lam / 2 * ||W||_F^2        (the bias is not penalised)

   full-batch with L-BFGS (SciPy's L-BFGS-B), starting from the previous strength's
   solution (a warm start: the path from strong to weak regularisation is smooth, so each fit
   needs few iterations). In scikit-learn's terms ``lam = 1 / (C * n_train)``.
3. Keep the strength with the best validation headline metric; ties go to the stronger
   regularisation (the simpler model).

The test split is scored afterwards, once, through :meth:`LinearProbe.evaluate`; :func:`fit_probe`
never receives it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F

from downstream.metrics import all_metrics, check_metric, headline

log = logging.getLogger(__name__)

DEFAULT_L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class LinearProbe:
    """A fitted probe: standardisation, weights and how it was chosen."""

    mean: np.ndarray  # [D] training mean
    scale: np.ndarray  # [D] training standard deviation (1 where the feature is constant)
    weight: np.ndarray  # [C, D] on standardised features
    bias: np.ndarray  # [C]
    l2: float  # the selected strength
    val_score: float  # its validation headline metric
    metric: str
    sweep: list[dict[str, Any]] = field(default_factory=list)  # per strength: l2, val_score, train_loss, iterations
    fit_seconds: float = 0.0

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, X: np.ndarray) -> np.ndarray:
        X = _as_features(X, "X", self.weight.shape[1])
        Z = (X.astype(np.float64) - self.mean) / self.scale
        return Z @ self.weight.T.astype(np.float64) + self.bias

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).argmax(axis=1).astype(np.int64)

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``top1``, ``balanced_acc``, ``score`` (the headline metric) and ``loss`` (mean cross-entropy)."""
        y = _as_labels(y, "y", len(X), self.num_classes)
        logits = torch.from_numpy(self.logits(X))
        pred = logits.argmax(dim=1).numpy()
        out = all_metrics(y, pred)
        out["score"] = out[self.metric]
        out["loss"] = float(F.cross_entropy(logits, torch.from_numpy(y)))
        return out


def _as_features(X: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-d feature matrix, got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{name} has {X.shape[1]} features, expected {dim}")
    if len(X) == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _as_labels(y: np.ndarray, name: str, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} has labels outside [0, {num_classes}): min {y.min()}, max {y.max()}")
    return y.astype(np.int64, copy=False)


def fit_softmax_regression(X: np.ndarray, y: np.ndarray, num_classes: int, l2: float, *,
                           init: np.ndarray | None = None, max_iter: int = 200,
                           tolerance_grad: float = 1e-5) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Minimise mean cross-entropy + ``l2/2 * ||W||^2`` with L-BFGS; returns ``(W, b, info)``.

    ``X`` is ``[N, D]`` float64 (already standardised), ``y`` int64 ``[N]``; ``init`` warm-starts
    from a previous flat parameter vector (``info["x"]``). The objective and its closed-form
    gradient are a few numpy matrix products; SciPy's L-BFGS-B drives them. At probe sizes
    (thousands of examples, hundreds of features) the optimiser's own bookkeeping is what costs,
    and SciPy's compiled L-BFGS has far less of it than a Python one.
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    n, d = X.shape
    c = int(num_classes)
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = theta[: c * d].reshape(c, d)
        b = theta[c * d:]
        logits = X @ W.T + b
        top = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - top)
        z = e.sum(axis=1, keepdims=True)
        lse = (np.log(z) + top)[:, 0]
        loss = float((lse - logits[np.arange(n), y]).mean() + 0.5 * l2 * np.dot(theta[: c * d], theta[: c * d]))
        resid = (e / z - onehot) / n  # d loss / d logits
        grad = np.concatenate([(resid.T @ X + l2 * W).ravel(), resid.sum(axis=0)])
        return loss, grad

    x0 = np.zeros(c * d + c) if init is None else np.asarray(init, dtype=np.float64)
    res = scipy.optimize.minimize(objective, x0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": max_iter, "gtol": tolerance_grad, "maxcor": 20})
    theta = res.x
    info = {"objective": float(res.fun), "iterations": int(res.nit), "evaluations": int(res.nfev), "x": theta}
    return theta[: c * d].reshape(c, d), theta[c * d:], info


def fit_probe(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
              num_classes: int, metric: str = "top1", l2_grid: Sequence[float] = DEFAULT_L2_GRID,
              max_iter: int = 100) -> LinearProbe:
    """Fit a probe for every strength in ``l2_grid`` and keep the one best on validation.

    Only the training and validation splits are passed in; score test with ``probe.evaluate``.
    """
    started = time.perf_counter()
    check_metric(metric)
    if int(num_classes) < 2:
        raise ValueError(f"a probe needs at least 2 classes, got num_classes={num_classes}")
    grid = sorted({float(v) for v in l2_grid}, reverse=True)  # strongest first: warm starts follow the path
    if not grid or grid[-1] < 0:
        raise ValueError(f"l2_grid must be a non-empty list of non-negative strengths, got {list(l2_grid)}")
    X_train = _as_features(X_train, "X_train")
    X_val = _as_features(X_val, "X_val", X_train.shape[1])
    y_train = _as_labels(y_train, "y_train", len(X_train), num_classes)
    y_val = _as_labels(y_val, "y_val", len(X_val), num_classes)

    mean = X_train.mean(axis=0, dtype=np.float64)
    scale = X_train.std(axis=0, dtype=np.float64)
    scale = np.where(scale > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), scale, 1.0)
    Xt = (X_train - mean) / scale
    Xv = (X_val - mean) / scale

    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    sweep: list[dict[str, Any]] = []
    warm = None
    for lam in grid:
        t0 = time.perf_counter()
        W, b, info = fit_softmax_regression(Xt, y_train, int(num_classes), lam, init=warm, max_iter=max_iter)
        warm = info["x"]
        pred_val = (Xv @ W.T + b).argmax(axis=1)
        score = headline(metric, y_val, pred_val)
        sweep.append({"l2": lam, "val_score": score, "train_objective": info["objective"],
                      "iterations": info["iterations"], "seconds": time.perf_counter() - t0})
        if best is None or score > best[1]:  # strict: on a tie the earlier (stronger) strength stays
            best = (lam, score, W, b)
    if best is None:  # unreachable: the grid is non-empty
        raise RuntimeError("the probe sweep produced no candidate")
    lam, score, W, b = best
    seconds = time.perf_counter() - started
    log.debug("probe: %d x %d, %d classes, chose l2=%g (val %s %.4f) in %.3fs",
              len(X_train), X_train.shape[1], num_classes, lam, metric, score, seconds)
    return LinearProbe(mean=mean, scale=scale, weight=W, bias=b,
                       l2=lam, val_score=score, metric=metric, sweep=sweep, fit_seconds=seconds)
