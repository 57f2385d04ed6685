"""k-shot subsets of a training split.

The rule: for every class ``c`` present in ``labels``, the indices of that class (in ascending
order) are permuted by a generator seeded with ``(seed, c)`` and the first ``k`` are kept. So

- the same ``(labels, k, seed)`` always gives the same subset, on any machine;
- for a fixed seed, smaller shot sets are nested inside larger ones (the 1-shot set is inside
  the 5-shot set, which is inside the 10-shot set, ...), so a shot sweep adds data rather than
  redrawing it, and the curve over k is not confounded by resampling noise;
- a class's draw does not depend on which other classes exist or how many examples they have.

A class with fewer than ``k`` examples contributes all of them, once each: no duplication. (The
core study's code drew with replacement in that case; duplicating an example adds no
information and only re-weights it, so this harness keeps the subset a plain subset and lets
such a class be under-represented. ``shots`` in the results is the requested k.)
"""

from __future__ import annotations

import numpy as np


def sample_shots(labels: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Indices (sorted ascending, int64) of a k-shot subset of ``labels``; ``k=None`` means all.

    Classes with fewer than ``k`` examples contribute all of their examples, without duplication.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if k is None:
        return np.arange(len(labels), dtype=np.int64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"shots must be a positive integer or None (the full set), got {k!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, got {labels.min()}")
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([int(seed), int(c)])
        chosen.append(members[rng.permutation(len(members))[: int(k)]])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)
