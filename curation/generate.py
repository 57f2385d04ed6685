"""Sampling the embedded world from its catalogue: latent factors, rendered images, captions.

Every draw comes from a generator seeded with :func:`stable_seed` of the world seed and the
thing drawn, so the same seed gives the same world on every machine and in every process.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from curation import render as R
from curation.catalogue import (
    FOREIGN_LANGS,
    FOREIGN_VOCAB,
    HYPERNYMS,
    SCENE_WORDS,
    STYLE_PHRASES,
    B,
    C,
    CaptionModel,
    Distribution,
    ImageSizeModel,
    S,
    SourceDecl,
    T,
    concept_weights,
    probabilities,
)

RENDER_BATCH = 512


def stable_seed(*parts: Any) -> list[int]:
    """A numpy seed sequence from ``parts``, stable across processes and Python versions (crc32, not hash())."""
    return [zlib.crc32(str(p).encode()) for p in parts]


def sample_factors(
    dist: Distribution, n: int, rng: np.random.Generator, overrides: dict[str, np.ndarray] | None = None
) -> R.Factors:
    """Draw ``n`` factor tuples; ``overrides`` fixes concept/texture/colour indices per sample."""
    overrides = overrides or {}
    concepts = list(R.CONCEPT_NAMES)
    style = rng.choice(len(S), n, p=probabilities(dist.styles, S, "styles"))
    bg = np.zeros(n, np.int64)
    for st in np.unique(style):
        i = np.nonzero(style == st)[0]
        allowed = R.STYLE_BACKGROUNDS[S[st]]
        w = {b: dist.backgrounds.get(b, 0.0) for b in allowed}
        if sum(w.values()) <= 0:
            w = {b: 1.0 for b in allowed}
        bg[i] = (
            [B.index(b) for b in allowed][0]
            if len(allowed) == 1
            else np.array([B.index(b) for b in allowed])[
                rng.choice(len(allowed), len(i), p=probabilities(w, allowed, "backgrounds"))
            ]
        )

    def pick(key: str, weights: dict[str, float], vocab) -> np.ndarray:
        if key in overrides:
            return np.asarray(overrides[key], np.int64)
        return rng.choice(len(vocab), n, p=probabilities(weights, vocab, key))

    concept = pick("concept", dist.concepts, concepts)
    texture = pick("texture", dist.textures, T)
    colour = pick("colour", dist.colours, C)
    scale = rng.uniform(dist.scale[0], dist.scale[1], n)
    cx = rng.uniform(-dist.jitter, dist.jitter, n)
    cy = rng.uniform(-dist.jitter, dist.jitter, n)
    rot_max = np.where(style == S.index("satellite"), 180.0, dist.rotation)
    rot = np.deg2rad(rng.uniform(-1, 1, n) * rot_max)
    noise = rng.uniform(dist.noise[0], dist.noise[1], n)
    k = np.minimum(rng.poisson(dist.clutter, n), R.MAX_CLUTTER) if dist.clutter > 0 else np.zeros(n, np.int64)
    cc_w = dist.clutter_concepts if dist.clutter_concepts is not None else (dist.concepts or concept_weights())
    cc = -np.ones((n, R.MAX_CLUTTER), np.int64)
    if k.any():
        draws = rng.choice(len(concepts), (n, R.MAX_CLUTTER), p=probabilities(cc_w, concepts, "clutter_concepts"))
        cc = np.where(np.arange(R.MAX_CLUTTER)[None, :] < k[:, None], draws, -1)
    return R.Factors(
        concept=concept,
        texture=texture,
        colour=colour,
        background=bg,
        style=style,
        cx=cx.astype(np.float32),
        cy=cy.astype(np.float32),
        scale=scale.astype(np.float32),
        rot=rot.astype(np.float32),
        noise=noise.astype(np.float32),
        clutter_concept=cc,
        clutter_colour=rng.integers(0, len(C), (n, R.MAX_CLUTTER)),
        clutter_xy=rng.uniform(-0.75, 0.75, (n, R.MAX_CLUTTER, 2)).astype(np.float32),
        clutter_scale=rng.uniform(0.14, 0.26, (n, R.MAX_CLUTTER)).astype(np.float32),
    )


def render_all(f: R.Factors, seed_parts: tuple, log_every: int = 0) -> list[bytes]:
    """Render and PNG-encode ``f`` in batches, each with its own seeded generator."""
    out: list[bytes] = []
    n = len(f)
    for b0 in range(0, n, RENDER_BATCH):
        idx = np.arange(b0, min(n, b0 + RENDER_BATCH))
        rng = np.random.default_rng(stable_seed(*seed_parts, "render", b0))
        images = R.render(f.take(idx), rng)
        out.extend(R.png_bytes(im) for im in images)
    return out


# --------------------------------------------------------------------------- captions


def sample_original_sizes(model: ImageSizeModel, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) of ``n`` images before resizing, drawn from ``model``."""
    short = np.exp(np.log(model.median_short) + model.sigma * rng.standard_normal(n))
    labels = [a for a, _ in model.aspects]
    w = np.array([x for _, x in model.aspects], float)
    ratio_of = {a: (float(a.split(":")[0]) / float(a.split(":")[1])) for a in labels}
    ratio = np.array([ratio_of[labels[j]] for j in rng.choice(len(labels), n, p=w / w.sum())])
    pano = rng.random(n) < model.p_panorama
    ratio = np.where(pano, rng.uniform(3.0, 6.0, n), ratio)
    portrait = rng.random(n) < model.p_portrait
    short = np.clip(np.round(short), model.min_side, model.max_side).astype(np.int64)
    long = np.clip(np.round(short * ratio), short, model.max_side).astype(np.int64)
    width = np.where(portrait, short, long)
    height = np.where(portrait, long, short)
    return width, height


def _foreign_caption(lang: str, f: R.Factors, i: int, cm: CaptionModel, rng: np.random.Generator) -> tuple[str, bool]:
    """A caption in ``lang`` for sample ``i`` (and whether it names the colour); draws only from ``rng``."""
    v = FOREIGN_VOCAB[lang]
    words = [v["opener"][int(rng.integers(len(v["opener"])))], v["noun"][int(rng.integers(len(v["noun"])))]]
    colour = bool(rng.random() < cm.p_colour)
    if colour:
        words.append(v["colour"][C[f.colour[i]]])
    words.append(v["scene"][B[f.background[i]]])
    nf = int(rng.integers(0, 3))
    if nf:
        words += [v["filler"][j] for j in rng.integers(0, len(v["filler"]), nf)]
    return " ".join(words), colour


def make_captions(
    decl: SourceDecl, f: R.Factors, rng: np.random.Generator, lang_rng: np.random.Generator | None = None
) -> tuple[list[str], list[dict], np.ndarray]:
    """Captions, per-sample caption facts (with ``lang``), and the precomputed image-text similarity.

    With ``lang_rng``, a share ``decl.caption.p_foreign`` of the captions is replaced by one in
    another language, drawn from ``lang_rng`` alone (``rng`` is consumed exactly as without it).
    Such a caption names no concept, and its similarity is that of a caption an English image-text
    model cannot read: near the floor.
    """
    cm = decl.caption
    n = len(f)
    concepts = R.CONCEPT_NAMES
    if decl.kind == "labelled":
        caps = [concepts[c] for c in f.concept]
        facts = [{"names": "correct", "concepts": [concepts[c]], "lang": "en"} for c in f.concept]
        sim = np.clip(0.32 + cm.score_noise * rng.standard_normal(n), 0, 1)
        return caps, facts, sim
    u = rng.random((n, 8))
    kind = _caption_kinds(cm, u[:, 0])
    wrong = (f.concept + rng.integers(1, len(concepts), n)) % len(concepts)
    caps, facts, scores = [], [], []
    for i in range(n):
        caption, fact, s = _english_caption(cm, f, i, u[i], int(kind[i]), int(wrong[i]), rng)
        caps.append(caption)
        facts.append(fact)
        scores.append(s)
    score = np.array(scores, dtype=np.float64)
    if lang_rng is not None and cm.p_foreign > 0:
        _replace_with_foreign(cm, f, lang_rng, caps, facts, score)
    sim = np.clip(score + cm.score_noise * rng.standard_normal(n), 0, 1)
    return caps, facts, sim


def _caption_kinds(cm: CaptionModel, u: np.ndarray) -> np.ndarray:
    """What each caption names, from one uniform draw per sample: 0 the concept, 1 a hypernym,
    2 a wrong concept, 3 none (a scene word instead), with the caption model's probabilities."""
    return np.where(
        u < cm.p_correct,
        0,
        np.where(
            u < cm.p_correct + cm.p_hypernym,
            1,
            np.where(u < cm.p_correct + cm.p_hypernym + cm.p_wrong, 2, 3),
        ),
    )


def _english_caption(
    cm: CaptionModel, f: R.Factors, i: int, u: np.ndarray, k: int, wrong: int, rng: np.random.Generator
) -> tuple[str, dict, float]:
    """Sample ``i``'s English caption, its facts and its image-text score before noise.

    ``u`` is the sample's row of uniform draws (column 0 already decided ``k``, see
    :func:`_caption_kinds`); ``rng`` is only drawn from for the filler words, so the caller's
    generator is consumed exactly as when this loop body was inline. The score starts at 0.16 and
    moves by the same steps, in the same order, for each phrase the caption gets.
    """
    concepts = R.CONCEPT_NAMES
    score = 0.16
    words: list[str] = []
    style = S[f.style[i]]
    if u[1] < cm.p_style:
        words.append(STYLE_PHRASES[style][int(u[5] * len(STYLE_PHRASES[style]))])
        score += 0.015
    else:
        words.append("a")
    if u[2] < cm.p_colour:
        words.append(C[f.colour[i]])
        score += 0.025
    if u[3] < cm.p_texture:
        words.append(R.TEXTURE_ADJECTIVES[T[f.texture[i]]])
        score += 0.025
    named: list[str] = []
    if k == 0:
        named.append(concepts[f.concept[i]])
        score += 0.13
    elif k == 1:
        hyp = HYPERNYMS[R.CONCEPTS[f.concept[i]].group]
        words.append(hyp[int(u[6] * len(hyp))])
        score += 0.06
    elif k == 2:
        named.append(concepts[wrong])
        score -= 0.04
    words.extend(named)
    if k == 3:
        words.append(SCENE_WORDS[B[f.background[i]]])
    clutter = [c for c in f.clutter_concept[i] if c >= 0]
    if clutter and u[4] < cm.p_clutter:
        extra = concepts[clutter[0]]
        words += ["and", "a", extra]
        if extra not in named:
            named.append(extra)
    nf = int(rng.integers(cm.n_filler[0], cm.n_filler[1] + 1)) if cm.filler else 0
    if nf:
        fill = [cm.filler[j] for j in rng.integers(0, len(cm.filler), nf)]
        cut = int(u[7] * (nf + 1))
        words = fill[:cut] + words + fill[cut:]
        score -= 0.004 * nf
    fact = {"names": ("correct", "hypernym", "wrong", "none")[k], "concepts": named, "lang": "en"}
    return " ".join(words), fact, score


def _replace_with_foreign(
    cm: CaptionModel,
    f: R.Factors,
    lang_rng: np.random.Generator,
    caps: list[str],
    facts: list[dict],
    score: np.ndarray,
) -> None:
    """Replace a share ``cm.p_foreign`` of the captions, in place, by ones in another language.

    Every draw comes from ``lang_rng`` (which captions, their language, their words), so the main
    generator is untouched. Such a caption names nothing an English model reads: its score is the
    floor, a little more when it names the colour.
    """
    for i in np.nonzero(lang_rng.random(len(caps)) < cm.p_foreign)[0]:
        lang = FOREIGN_LANGS[int(lang_rng.integers(len(FOREIGN_LANGS)))]
        caps[i], colour = _foreign_caption(lang, f, int(i), cm, lang_rng)
        facts[i] = {"names": "none", "concepts": [], "lang": lang}
        score[i] = 0.17 + 0.02 * colour


def sample_meta(f: R.Factors, i: int) -> dict[str, Any]:
    c = int(f.concept[i])
    return {
        "width": R.SIZE,
        "height": R.SIZE,
        "concept": R.CONCEPT_NAMES[c],
        "concept_id": c,
        "group": R.CONCEPTS[c].group,
        "texture": T[f.texture[i]],
        "colour": C[f.colour[i]],
        "background": B[f.background[i]],
        "style": S[f.style[i]],
        "scale": round(float(f.scale[i]), 4),
        "position": [round(float(f.cx[i]), 4), round(float(f.cy[i]), 4)],
        "rotation_deg": round(float(np.rad2deg(f.rot[i])), 2),
        "clutter": [R.CONCEPT_NAMES[k] for k in f.clutter_concept[i] if k >= 0],
    }
