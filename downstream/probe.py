"""Linear probe: multinomial logistic regression on cached features.

The recipe, with every choice made on the validation split and never on test:

1. Standardise each feature with the *training* mean and standard deviation (a feature that is
   constant on the training set is only centred).
2. For each L2 strength ``lam`` of a log grid, from the strongest to the weakest, minimise

       sum_i s_i * cross-entropy(x_i W^T + b, y_i) / n + lam / 2 * ||W||_F^2     (the bias is not penalised)

   full-batch with L-BFGS, starting from the previous strength's solution (a warm start: the
   path from strong to weak regularisation is smooth). ``s_i`` is 1, or with
   ``class_weight="balanced"`` ``n / (C_present * n_class(y_i))``, so that every class present
   weighs the same in the loss (scikit-learn's meaning; the weights sum to ``n``). In
   scikit-learn's terms ``lam = 1 / (C * n_train)``: ``LogisticRegression(C=...)`` minimises
   the same objective up to a constant factor, so it has the same optimum.
3. Keep the strength with the best validation headline metric; ties go to the stronger
   regularisation (the simpler model).

The test split is scored afterwards, once, through :meth:`LinearProbe.evaluate`; :func:`fit_probe`
never receives it.

How the solve is made fast without changing the problem (``reduce=True``, the default):

- **Row space.** The gradient of the data term with respect to ``W`` is ``R^T X`` (``R`` the
  per-example residuals) and the penalty's is ``lam W``; at the optimum ``lam W = -R^T X``, so
  ``W`` lies in the row space of the standardised training matrix ``X`` (the unpenalised bias
  does not change this). With an orthonormal basis ``V`` [D, r] of that space
  (``r = min(n, D')``, ``D'`` the features that vary on the training set), ``W = A V^T`` and
  ``||W|| = ||A||``: the problem in ``A`` [C, r] on ``Z = X V`` is the same problem with
  ``C * r`` unknowns instead of ``C * D``. In few-shot work (1-20 shots of 10-40 classes
  against 512-2048 features) ``r`` is a fraction of ``D``. ``V`` comes from a Householder QR
  of ``X^T`` when ``n < D'`` and from ``X^T X`` otherwise.
- **Preconditioning.** ``V`` is also an eigenbasis of ``X^T X`` (the QR's triangle is
  diagonalised), where the Hessian is close to diagonal. L-BFGS starts each step from the
  inverse of the Hessian's diagonal (``lam + sum_i s_i p_ic (1 - p_ic) z_ij^2 / n``, refreshed
  every few iterations) instead of a multiple of the identity: it changes the path to the
  optimum, not the optimum. A well-conditioned problem takes a few tens of iterations where
  the raw one takes hundreds.
- **The path.** Each strength starts from the better (lower objective) of the previous
  solution and a linear extrapolation of the last two solutions in ``log(lam)``.
- **Stopping** uses scikit-learn's test on the same objective: the largest gradient entry, in
  the coordinates of the standardised features and the bias, at most ``tol`` (``1e-4``, its
  default), or ``max_iter`` iterations per strength (100, its default).
- The objective runs in float32 (the features are float32) with its two matrix products in
  torch; the basis is computed in float32 too (``V`` orthonormal to ~1e-6, far below what the
  stopping test resolves); the optimiser's iterates, validation logits and everything returned
  are float64.

``reduce=False`` solves the same objective on all ``D`` standardised features in float64 (no
basis, the same diagonal preconditioning): the reference the reduced solve is tested against. The bench
``bench/probe_solver.py`` times the sweep against scikit-learn's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from downstream.metrics import all_metrics, check_metric, headline

log = logging.getLogger(__name__)

DEFAULT_L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_TOL = 1e-4  # largest gradient entry at which a strength's solve stops (scikit-learn's default tol)
CLASS_WEIGHTS: tuple[str | None, ...] = (None, "balanced")
_MAXCOR = 10  # L-BFGS memory


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
    sweep: list[dict[str, Any]] = field(
        default_factory=list
    )  # per strength: l2, val_score, train_objective, iterations, ...
    fit_seconds: float = 0.0
    class_weight: str | None = None
    rank: int = 0  # dimension the solve ran in (D when not reduced)
    path: list[tuple[float, np.ndarray, np.ndarray]] | None = (
        None  # (l2, weight, bias) per strength, with keep_path=True
    )

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


def probe_to_linear(probe: LinearProbe) -> tuple[np.ndarray, np.ndarray]:
    """The probe as weights on *raw* (unstandardised) features: ``(W_raw [C, D], b_raw [C])``.

    ``x @ W_raw.T + b_raw == probe.logits(x)``: ``W_raw = W / scale`` and
    ``b_raw = b - W_raw @ mean``. Used to start a fine-tuning head from a probe (LP-FT).
    """
    W_raw = np.asarray(probe.weight, dtype=np.float64) / probe.scale[None, :]
    b_raw = np.asarray(probe.bias, dtype=np.float64) - W_raw @ probe.mean
    return W_raw, b_raw


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


def check_class_weight(class_weight: str | None) -> str | None:
    """Return ``class_weight`` if valid (None or "balanced"), else raise naming the valid values."""
    if class_weight not in CLASS_WEIGHTS:
        raise ValueError(f"class_weight {class_weight!r} is not valid; valid: None, 'balanced'")
    return class_weight


def class_weights(y: np.ndarray, num_classes: int, class_weight: str | None) -> np.ndarray | None:
    """Per-class loss weights: None, or ``n / (C_present * n_c)`` for "balanced" (0 for absent classes)."""
    if check_class_weight(class_weight) is None:
        return None
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=int(num_classes)).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(int(num_classes))
    per_class[present] = len(y) / (present.sum() * counts[present])
    return per_class


def sample_weights(y: np.ndarray, num_classes: int, class_weight: str | None) -> np.ndarray | None:
    """Per-example loss weights: None, or the class's "balanced" weight (they sum to ``n``)."""
    per_class = class_weights(y, num_classes, class_weight)
    return None if per_class is None else per_class[y]


# --------------------------------------------------------------------------------------- the solver


class _Problem:
    """``sum_i s_i CE(Z A^T + b, y_i) / n + lam/2 ||A||^2`` over ``A`` [C, r] and ``b`` [C].

    ``Z`` [n, r] holds the features in the solve's basis. The unknowns are one matrix
    ``T = [A | b]`` [C, r + 1] on ``[Z | 1]``, so one matrix product gives every logit and one
    every gradient entry. :meth:`solve` runs L-BFGS (two-loop recursion, memory ``_MAXCOR``)
    whose initial inverse Hessian is the inverse of the Hessian's diagonal
    ``lam + sum_i s_i p_ic (1 - p_ic) z_ij^2 / n`` (the bias: no ``lam``), refreshed from the
    current probabilities every few iterations, with a backtracking Armijo line search from the
    unit step.
    """

    def __init__(
        self,
        Z: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        weights: np.ndarray | None,
        dtype: type = np.float32,
        V: np.ndarray | None = None,
    ):
        self.n, self.r = Z.shape
        self.c = int(num_classes)
        self.dtype = dtype
        self.Z1 = np.empty((self.n, self.r + 1), dtype=dtype)
        self.Z1[:, : self.r] = Z
        self.Z1[:, self.r] = 1.0
        self.Z1t = torch.from_numpy(self.Z1)
        self.Z1sq = torch.from_numpy(self.Z1 * self.Z1)
        self.y = y
        self.flat = y * self.n + np.arange(self.n)  # entry (y_i, i) of a [C, n] array, flattened
        # per-example factor s_i / n of the data term (a row: it broadcasts over the classes of [C, n])
        w = np.full(self.n, 1.0 / self.n) if weights is None else np.asarray(weights, np.float64) / self.n
        self.w64 = w
        self.w = w.astype(dtype)[None, :]
        self.penalised = np.ones((self.c, self.r + 1))
        self.penalised[:, self.r] = 0.0
        self.penalised = self.penalised.ravel()
        self.P: np.ndarray | None = None  # probabilities at the last evaluated point
        self.V = V  # the basis [D, r] (None: the identity), for the stopping test in feature coordinates
        m, size = _MAXCOR, self.c * (self.r + 1)
        self.S, self.Y, self.rho = np.zeros((m, size)), np.zeros((m, size)), np.zeros(m)
        self.k = 0  # pairs stored so far (ring buffer position k % m)

    def value_and_grad(self, theta: np.ndarray, lam: float) -> tuple[float, np.ndarray]:
        # logits as [C, n]: the per-example reductions then run along contiguous rows. The two
        # matrix products go through torch (its CPU BLAS is the faster one here); the arrays are shared.
        T = torch.from_numpy(theta.reshape(self.c, self.r + 1).astype(self.dtype))
        L = torch.mm(T, self.Z1t.T).numpy()
        L -= L.max(axis=0)
        picked = L.ravel()[self.flat]
        np.exp(L, out=L)
        z = L.sum(axis=0)
        data = float(np.dot(self.w64, np.log(z, dtype=np.float64) - picked))
        L /= z
        self.P = L
        G = L.copy()
        G.ravel()[self.flat] -= 1.0
        G *= self.w
        grad = torch.mm(torch.from_numpy(G), self.Z1t).numpy().astype(np.float64).ravel()
        pen = theta * self.penalised
        grad += lam * pen
        return data + 0.5 * lam * float(np.dot(pen, theta)), grad

    def diagonal(self, lam: float) -> np.ndarray:
        """The Hessian's diagonal at the last evaluated point (floored away from 0)."""
        S = self.P * (1.0 - self.P)
        S *= self.w
        d = torch.mm(torch.from_numpy(S), self.Z1sq).numpy().astype(np.float64).ravel()
        d += lam * self.penalised
        return np.maximum(d, 1e-10 * max(float(d.max()), 1e-30))

    def grad_max(self, g: np.ndarray) -> float:
        """``max |gradient|`` in the coordinates of the original features (``A V^T``) and the bias."""
        G = g.reshape(self.c, self.r + 1)
        gb = float(np.abs(G[:, self.r]).max())
        if self.V is None:
            return max(gb, float(np.abs(G[:, : self.r]).max()))
        gW = _mm(np.ascontiguousarray(G[:, : self.r], dtype=np.float32), self.V.T)
        return max(gb, float(np.abs(gW).max()))

    def converged(self, g: np.ndarray, tol: float) -> bool:
        """``grad_max(g) <= tol``, from cheap bounds when they decide it.

        Each entry of a row of ``gA V^T`` is at most the row's norm; the largest entry of a row
        of ``D`` entries is at least norm / sqrt(D) and, unless the row is spread evenly, a few
        times that: the exact (costly) test is run only below ``norm <= tol sqrt(D) / 2``, so a
        spread-out gradient may be run a little further than needed, never stopped early.
        """
        G = g.reshape(self.c, self.r + 1)
        if float(np.abs(G[:, self.r]).max()) > tol:
            return False
        if self.V is None:
            return float(np.abs(G[:, : self.r]).max()) <= tol
        rows = float(np.sqrt((G[:, : self.r] ** 2).sum(axis=1)).max())
        if rows <= tol:
            return True
        if rows > 0.5 * tol * np.sqrt(self.V.shape[0]):
            return False
        return self.grad_max(g) <= tol

    def _direction(self, g: np.ndarray, diag: np.ndarray) -> np.ndarray:
        """``-H g`` by the two-loop recursion, ``H0 = gamma diag^-1``."""
        m, k = _MAXCOR, self.k
        used = min(k, m)
        order = [(k - 1 - i) % m for i in range(used)]  # newest first
        q = g.copy()
        alpha = np.empty(used)
        S, Y, rho = self.S, self.Y, self.rho
        for j, idx in enumerate(order):
            alpha[j] = rho[idx] * float(np.dot(S[idx], q))
            q -= alpha[j] * Y[idx]
        if used:
            yy = Y[order[0]]
            q *= (1.0 / (rho[order[0]] * float(np.dot(yy, yy / diag)))) / diag
        else:
            q /= diag
        for j in reversed(range(used)):
            idx = order[j]
            q += (alpha[j] - rho[idx] * float(np.dot(Y[idx], q))) * S[idx]
        q *= -1.0
        return q

    def solve(
        self, lam: float, T0: np.ndarray, max_iter: int, tol: float, refresh: int = 10, guess: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Minimise from ``T0`` [C, r + 1], or from ``guess`` when its objective is lower."""
        self.k = 0  # curvature pairs of another strength start slower than none (measured)
        x = np.asarray(T0, np.float64).ravel().copy()
        f, g = self.value_and_grad(x, lam)
        nfev = 1
        if guess is not None:
            x1 = np.asarray(guess, np.float64).ravel().copy()
            f1, g1 = self.value_and_grad(x1, lam)
            nfev += 1
            if f1 < f:
                x, f, g = x1, f1, g1
        it = 0
        diag = self.diagonal(lam)
        noise = 1e-7 if self.dtype == np.float32 else 1e-12  # rounding allowance in the Armijo test
        while it < max_iter and not self.converged(g, tol):
            if it and it % refresh == 0:
                diag = self.diagonal(lam)
            d = self._direction(g, diag)
            gd = float(np.dot(g, d))
            if gd >= 0:  # not a descent direction (rounding): forget the pairs, use the preconditioned gradient
                self.k = 0
                d = -g / diag
                gd = float(np.dot(g, d))
            step = 1.0
            for _ in range(40):
                x_new = x + step * d
                f_new, g_new = self.value_and_grad(x_new, lam)
                nfev += 1
                if f_new <= f + 1e-4 * step * gd + noise * (1.0 + abs(f)):
                    break
                # quadratic interpolation of the backtrack, kept within [0.1, 0.5] of the step
                denom = 2.0 * (f_new - f - step * gd)
                new_step = -gd * step * step / denom if denom > 0 else 0.5 * step
                step = min(max(new_step, 0.1 * step), 0.5 * step)
            else:
                break  # no decrease found: the point is as good as the arithmetic allows
            s_vec = x_new - x
            y_vec = g_new - g
            sy = float(np.dot(s_vec, y_vec))
            if sy > 1e-12 * float(np.linalg.norm(s_vec)) * float(np.linalg.norm(y_vec)):
                j = self.k % _MAXCOR
                self.S[j], self.Y[j], self.rho[j] = s_vec, y_vec, 1.0 / sy
                self.k += 1
            x, f, g = x_new, f_new, g_new
            it += 1
        return {
            "T": x.reshape(self.c, self.r + 1),
            "objective": float(f),
            "iterations": it,
            "evaluations": nfev,
            "grad_max": self.grad_max(g),
        }


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for float32 arrays through torch's CPU BLAS (faster here than numpy's)."""
    return torch.mm(
        torch.from_numpy(np.asarray(a, dtype=np.float32)), torch.from_numpy(np.asarray(b, dtype=np.float32))
    ).numpy()


def _basis(Xt: np.ndarray, reduce: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """``(V [D, r] or None, Z = Xt V [n, r])`` for the solve.

    ``reduce``: ``V`` an orthonormal eigenbasis of the row space of ``Xt`` (``r = min(n, D')``,
    ``D'`` the features that vary on the training set: the others are 0 after standardisation
    and get weight 0); otherwise ``V = None`` (the identity) and ``Z = Xt``. The basis is
    computed in float32, the precision the objective runs in: ``V`` is orthonormal to float32
    rounding, so ``||A V^T|| = ||A||`` to ~1e-6 relative.
    """
    n, d = Xt.shape
    if not reduce:
        return None, Xt
    live = np.flatnonzero(np.abs(Xt).max(axis=0) > 0)
    if live.size == 0:  # every training feature constant: one direction keeps the shapes valid
        live = np.arange(1)
    X32 = np.ascontiguousarray(Xt[:, live], dtype=np.float32)
    if n < live.size:
        # X^T = Q R (Q [D', n] orthonormal), so X Q = R^T; diagonalise R R^T = E L E^T: V = Q E, Z = R^T E
        Q, Rm = scipy.linalg.qr(X32.T, mode="economic", check_finite=False)
        _, E = scipy.linalg.eigh(_mm(Rm, Rm.T), check_finite=False, driver="evd")
        Vl = _mm(Q, E)
        Z = _mm(Rm.T, E)
    else:
        _, Vl = scipy.linalg.eigh(_mm(X32.T, X32), check_finite=False, driver="evd")
        Z = _mm(X32, Vl)
    V = np.zeros((d, Vl.shape[1]), dtype=np.float32)
    V[live] = Vl
    return V, Z


def fit_softmax_regression(
    X: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    l2: float,
    *,
    init: np.ndarray | None = None,
    max_iter: int = 200,
    tol: float = DEFAULT_TOL,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Minimise ``sum_i s_i CE_i / n + l2/2 * ||W||^2`` on ``X`` as given (no basis change), in float64.

    Returns ``(W, b, info)``; ``init`` warm-starts from a previous ``info["x"]`` (``[W | b]`` flattened).
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, d = X.shape
    c = int(num_classes)
    prob = _Problem(X, y, c, sample_weight, dtype=np.float64)
    T0 = np.zeros((c, d + 1)) if init is None else np.asarray(init, dtype=np.float64).reshape(c, d + 1)
    out = prob.solve(float(l2), T0, max_iter, tol)
    info = {k: out[k] for k in ("objective", "iterations", "evaluations", "grad_max")}
    info["x"] = out["T"].ravel().copy()
    return out["T"][:, :d].copy(), out["T"][:, d].copy(), info


def fit_probe(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    num_classes: int,
    metric: str = "top1",
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 100,
    class_weight: str | None = None,
    tol: float = DEFAULT_TOL,
    reduce: bool = True,
    keep_path: bool = False,
) -> LinearProbe:
    """Fit a probe for every strength in ``l2_grid`` and keep the one best on validation.

    Only the training and validation splits are passed in; score test with ``probe.evaluate``.
    ``class_weight``: None or "balanced" (see the module docstring). ``max_iter``: L-BFGS
    iterations per strength at most; ``tol``: the largest gradient entry at which a strength's
    solve stops. ``reduce=False`` solves on all features in float64 (a reference: same problem, slower).
    ``keep_path=True`` keeps every strength's solution in ``probe.path``.
    """
    started = time.perf_counter()
    grid = _check_settings(metric, class_weight, num_classes, l2_grid, max_iter, tol)
    num_classes = int(num_classes)
    X_train = _as_features(X_train, "X_train")
    X_val = _as_features(X_val, "X_val", X_train.shape[1])
    y_train = _as_labels(y_train, "y_train", len(X_train), num_classes)
    y_val = _as_labels(y_val, "y_val", len(X_val), num_classes)

    mean, scale, prob, Zv = _standardised_problem(X_train, y_train, X_val, num_classes, class_weight, reduce)
    (lam, score, T), sweep, path = _sweep(prob, Zv, y_val, grid, metric, int(max_iter), float(tol), keep_path)
    W, b = _in_features(T, prob.V)
    seconds = time.perf_counter() - started
    log.debug(
        "probe: %d x %d (rank %d), %d classes, chose l2=%g (val %s %.4f) in %.3fs",
        len(X_train),
        X_train.shape[1],
        prob.r,
        num_classes,
        lam,
        metric,
        score,
        seconds,
    )
    return LinearProbe(
        mean=mean,
        scale=scale,
        weight=W,
        bias=b,
        l2=lam,
        val_score=score,
        metric=metric,
        sweep=sweep,
        fit_seconds=seconds,
        class_weight=class_weight,
        rank=int(prob.r),
        path=path if keep_path else None,
    )


def _check_settings(
    metric: str, class_weight: str | None, num_classes: int, l2_grid: Sequence[float], max_iter: int, tol: float
) -> list[float]:
    """Check :func:`fit_probe`'s settings (each error names the one at fault); return the grid strongest first.

    Strongest first because each strength's solve warm-starts from the previous one along the path.
    """
    check_metric(metric)
    check_class_weight(class_weight)
    if int(num_classes) < 2:
        raise ValueError(f"a probe needs at least 2 classes, got num_classes={num_classes}")
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    if not grid or grid[-1] < 0:
        raise ValueError(f"l2_grid must be a non-empty list of non-negative strengths, got {list(l2_grid)}")
    if int(max_iter) < 1 or not tol > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")
    return grid


def _standardised_problem(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    num_classes: int,
    class_weight: str | None,
    reduce: bool,
) -> tuple[np.ndarray, np.ndarray, _Problem, np.ndarray]:
    """``(mean, scale, problem, Zv)``: the training statistics, the problem in the solve's basis, and
    the validation features in that basis (float64) for scoring each strength.

    Standardisation uses the training split only (step 1 of the module docstring); a feature
    constant on it is only centred.
    """
    mean = X_train.mean(axis=0, dtype=np.float64)
    scale = X_train.std(axis=0, dtype=np.float64)
    scale = np.where(scale > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), scale, 1.0)
    Xt = (X_train - mean) / scale
    V, Z = _basis(Xt, reduce)
    Xv = (X_val - mean) / scale
    # validation logits in float64 from the float32 projection (rounding ~1e-7 of a logit)
    Zv = _mm(Xv.astype(np.float32), V).astype(np.float64) if V is not None else Xv
    prob = _Problem(
        Z,
        y_train,
        num_classes,
        sample_weights(y_train, num_classes, class_weight),
        dtype=np.float32 if reduce else np.float64,
        V=V,
    )
    return mean, scale, prob, Zv


def _in_features(T: np.ndarray, V: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A solution ``T = [A | b]`` in the solve's basis as ``(W = A V^T [C, D], b [C])`` on the standardised features."""
    r = T.shape[1] - 1
    A = T[:, :r]
    return (A @ V.T.astype(np.float64) if V is not None else A.copy()), T[:, r].copy()


def _sweep(
    prob: _Problem,
    Zv: np.ndarray,
    y_val: np.ndarray,
    grid: list[float],
    metric: str,
    max_iter: int,
    tol: float,
    keep_path: bool,
) -> tuple[tuple[float, float, np.ndarray], list[dict[str, Any]], list[tuple[float, np.ndarray, np.ndarray]]]:
    """Solve every strength of ``grid`` (strongest first, warm-started) and score each on validation.

    Returns ``((l2, val_score, T) of the selection, sweep rows, path)``; the path (``(l2, W, b)``
    per strength) is filled only with ``keep_path``. Ties go to the earlier, stronger strength.
    """
    best: tuple[float, float, np.ndarray] | None = None
    sweep: list[dict[str, Any]] = []
    path: list[tuple[float, np.ndarray, np.ndarray]] = []
    r = prob.r
    T = np.zeros((prob.c, r + 1))
    previous: list[tuple[float, np.ndarray]] = []  # the last two (lam, solution)
    for lam in grid:
        t0 = time.perf_counter()
        guess = None
        if len(previous) == 2 and lam > 0 and previous[0][0] > previous[1][0] > 0:
            # linear extrapolation of the path in log(lam) from the last two solutions
            (lam0, T0), (lam1, T1) = previous
            guess = T1 + np.log(lam1 / lam) / np.log(lam0 / lam1) * (T1 - T0)
        out = prob.solve(lam, T, max_iter, tol, guess=guess)
        T = out["T"]
        previous = (previous + [(lam, T)])[-2:]
        if keep_path:
            path.append((lam, *_in_features(T, prob.V)))
        pred_val = (Zv @ T[:, :r].T + T[:, r]).argmax(axis=1)
        score = headline(metric, y_val, pred_val)
        sweep.append(
            {
                "l2": lam,
                "val_score": score,
                "train_objective": out["objective"],
                "iterations": out["iterations"],
                "grad_max": out["grad_max"],
                "seconds": time.perf_counter() - t0,
            }
        )
        if best is None or score > best[1]:  # strict: on a tie the earlier (stronger) strength stays
            best = (lam, score, T)
    if best is None:  # unreachable: the grid is non-empty
        raise RuntimeError("the probe sweep produced no candidate")
    return best, sweep, path
