"""Linear probe: multinomial logistic regression on cached features, in torch.

The recipe, with every choice made on the validation split and never on test:

1. Standardise each feature with the *training* mean and standard deviation (a feature that is
   constant on the training set is only centred).
2. For each L2 strength ``lam`` of a log grid, from the strongest to the weakest, minimise

       mean cross-entropy(X W^T + b, y) + lam / 2 * ||W||_F^2        (the bias is not penalised)

   full-batch with L-BFGS (strong-Wolfe line search), starting from the previous strength's
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
import torch
import torch.nn.functional as F

from downstream.metrics import all_metrics, check_metric, headline

log = logging.getLogger(__name__)

DEFAULT_L2_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


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


def fit_softmax_regression(X: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, *,
                           init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 200,
                           tolerance_grad: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Minimise mean cross-entropy + ``l2/2 * ||W||^2`` by full-batch L-BFGS; returns ``(W, b, info)``.

    ``X`` is ``[N, D]`` (already standardised), ``y`` int64 ``[N]``; ``init`` warm-starts from a
    previous ``(W, b)``. ``info`` has the final objective, L-BFGS iterations and function evaluations.
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    d = X.shape[1]
    if init is None:
        W = torch.zeros((num_classes, d), dtype=X.dtype, device=X.device)
        b = torch.zeros(num_classes, dtype=X.dtype, device=X.device)
    else:
        W, b = (t.detach().clone().to(dtype=X.dtype, device=X.device) for t in init)
    n = X.shape[0]
    onehot = F.one_hot(y, num_classes).to(X.dtype)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, max_eval=max_iter * 2, history_size=20,
                            tolerance_grad=tolerance_grad, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    @torch.no_grad()
    def objective() -> torch.Tensor:
        # Closed-form gradient: autograd's bookkeeping costs more than the maths at these sizes.
        logits = torch.addmm(b, X, W.T)
        lse = torch.logsumexp(logits, dim=1)
        loss = (lse - logits.gather(1, y[:, None]).squeeze(1)).mean() + 0.5 * l2 * W.pow(2).sum()
        resid = torch.exp(logits - lse[:, None]).sub_(onehot).div_(n)  # d loss / d logits
        W.grad = resid.T @ X + l2 * W
        b.grad = resid.sum(dim=0)
        return loss

    opt.step(objective)
    final = float(objective())
    state = opt.state[W]
    info = {"objective": final, "iterations": int(state.get("n_iter", 0)),
            "evaluations": int(state.get("func_evals", 0))}
    return W.detach(), b.detach(), info


def fit_probe(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
              num_classes: int, metric: str = "top1", l2_grid: Sequence[float] = DEFAULT_L2_GRID,
              max_iter: int = 200, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> LinearProbe:
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
    to_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    Xt = to_t((X_train - mean) / scale)
    Xv = to_t((X_val - mean) / scale)
    yt = torch.as_tensor(y_train, device=device)

    best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None
    sweep: list[dict[str, Any]] = []
    params = None
    for lam in grid:
        t0 = time.perf_counter()
        W, b, info = fit_softmax_regression(Xt, yt, int(num_classes), lam, init=params, max_iter=max_iter)
        params = (W, b)
        with torch.no_grad():
            pred_val = (Xv @ W.T + b).argmax(dim=1).cpu().numpy()
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
    return LinearProbe(mean=mean, scale=scale, weight=W.cpu().double().numpy(), bias=b.cpu().double().numpy(),
                       l2=lam, val_score=score, metric=metric, sweep=sweep, fit_seconds=seconds)
