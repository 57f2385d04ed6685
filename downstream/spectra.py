"""Spectral analysis of penultimate features (Deng et al., ICCV 2023).

For a checkpoint and a downstream set, the feature matrix ``F`` (``[N, D]``, one row per image
of a split, the encoder's penultimate output as cached by :mod:`downstream.features`) is
decomposed as ``F = U diag(s) V^T``. Reported per spectrum:

- the singular values ``s_1 >= s_2 >= ... >= s_r`` (``r = min(N, D)``);
- ``k80``: the smallest ``k`` with ``s_1 + ... + s_k >= 0.8 * (s_1 + ... + s_r)`` (how many
  directions hold 80% of the singular-value mass; the study's measure of how concentrated a
  representation is);
- ``effective_rank`` (Roy and Vetterli, 2007): ``exp(H(p))`` with ``p_i = s_i / sum(s)`` and
  ``H`` the Shannon entropy; between 1 (one direction) and ``r`` (a flat spectrum).

The matrix is taken as it is, not centred (as Deng et al. and Batch Spectral Shrinkage do):
``center=True`` removes the mean feature first, which drops the one large singular value the
mean contributes. Computed in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MASS = 0.8


def spectrum(features: np.ndarray, *, center: bool = False) -> np.ndarray:
    """Singular values (descending, float64) of ``features`` ``[N, D]``."""
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"features must be a non-empty 2-d matrix, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("features contain NaN or infinite values")
    if center:
        X = X - X.mean(axis=0, keepdims=True)
    return np.linalg.svd(X, compute_uv=False)


def k_mass(singular_values: np.ndarray, mass: float = MASS) -> int:
    """Smallest k whose top-k singular values hold ``mass`` of their sum (0 for an all-zero spectrum)."""
    s = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]
    if not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass}")
    total = s.sum()
    if total <= 0:
        return 0
    csum = np.cumsum(s)
    return int(np.searchsorted(csum, mass * total * (1 - 1e-12)) + 1)


def effective_rank(singular_values: np.ndarray) -> float:
    """``exp`` of the entropy of the normalised singular values (0 for an all-zero spectrum)."""
    s = np.asarray(singular_values, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def summarise(features: np.ndarray, *, center: bool = False) -> dict[str, Any]:
    """``{"singular_values": [...], "k80": int, "effective_rank": float, "n": N, "dim": D}``."""
    s = spectrum(features, center=center)
    return {
        "singular_values": s.tolist(),
        "k80": k_mass(s),
        "effective_rank": effective_rank(s),
        "n": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "centred": bool(center),
    }
