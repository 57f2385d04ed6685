"""How much a source's images resemble a downstream set's, computed from their declarations.

``similarity[source][set]`` (:func:`similarity_table`) is written into ``world.json``; it is a
property of the declarations in :mod:`curation.catalogue`, not of sampled images.
"""

from __future__ import annotations

import math

import numpy as np

from curation import render as R
from curation.catalogue import SET_DECLS, SOURCE_DECLS, B, C, Distribution, S, SetDecl, T, probabilities

# --------------------------------------------------------------------------- similarity


def marginals(dist: Distribution, classes: tuple = (), class_weights: tuple | None = None) -> dict[str, np.ndarray]:
    """Marginal distributions of the categorical factors (class overrides folded in)."""
    out = {
        "style": probabilities(dist.styles, S, "styles"),
    }
    bg = np.zeros(len(B))
    for st, p in zip(S, out["style"]):
        if p == 0:
            continue
        allowed = R.STYLE_BACKGROUNDS[st]
        w = {b: dist.backgrounds.get(b, 0.0) for b in allowed}
        if sum(w.values()) <= 0:
            w = {b: 1.0 for b in allowed}
        q = probabilities(w, allowed, "backgrounds")
        for b, qb in zip(allowed, q):
            bg[B.index(b)] += p * qb
    out["background"] = bg
    cw = (
        np.full(len(classes), 1.0 / max(1, len(classes)))
        if class_weights is None
        else np.asarray(class_weights, float) / sum(class_weights)
    )
    for factor, weights, vocab in (
        ("concept", dist.concepts, R.CONCEPT_NAMES),
        ("texture", dist.textures, T),
        ("colour", dist.colours, C),
    ):
        if classes and any(factor in ov for _, ov in classes):
            m = np.zeros(len(vocab))
            for (_, ov), w in zip(classes, cw):
                m[list(vocab).index(ov[factor])] += w
            out[factor] = m
        else:
            out[factor] = probabilities(weights, vocab, factor)
    return out


def _bc(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(np.sqrt(p * q)))


FACTOR_WEIGHTS = {
    "style": 0.3,
    "concept": 0.2,
    "background": 0.15,
    "texture": 0.1,
    "colour": 0.1,
    "scale": 0.1,
    "clutter": 0.05,
}


def factor_similarity(src: Distribution, st: SetDecl) -> float:
    """How much a source's images resemble a set's, in [0, 1].

    A weighted mean of per-factor overlaps: the Bhattacharyya coefficient of the categorical
    marginals (style, background, concept, texture, colour), the overlap of the uniform scale
    ranges, and the Bhattacharyya coefficient of the Poisson clutter counts. The factors a set's
    labels depend on weigh twice as much.
    """
    ms, mt = marginals(src), marginals(st.dist, st.classes, st.class_weights)
    parts = {k: _bc(ms[k], mt[k]) for k in ("style", "background", "concept", "texture", "colour")}
    (a0, a1), (b0, b1) = src.scale, st.dist.scale
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    parts["scale"] = inter / math.sqrt((a1 - a0) * (b1 - b0))
    parts["clutter"] = math.exp(-((math.sqrt(src.clutter) - math.sqrt(st.dist.clutter)) ** 2) / 2)
    label_factors = {f for _, ov in st.classes for f in ov}
    w = {k: FACTOR_WEIGHTS[k] * (2.0 if k in label_factors else 1.0) for k in parts}
    return round(sum(w[k] * parts[k] for k in parts) / sum(w.values()), 4)


def similarity_table() -> dict[str, dict[str, float]]:
    return {s.name: {d.name: factor_similarity(s.dist, d) for d in SET_DECLS} for s in SOURCE_DECLS}
