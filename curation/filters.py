"""Curation steps: named filters over a source's samples, applied in order as a funnel.

A sample, as filters see it, is a dict with ``key`` (str), ``txt`` (the decoded caption) and
``json`` (the decoded metadata: ``width``/``height``, img2dataset's ``original_width``/
``original_height``, a precomputed image-text ``similarity`` when the source has one).

Two kinds of step:

- **sample** steps are predicates ``fn(sample, **params) -> bool`` (True keeps the sample):
  caption length, a caption naming a concept of a vocabulary, a simple language rule, minimum
  image side, aspect ratio, a CLIP-score threshold on a precomputed field;
- **global** steps need the whole surviving pool and are applied by :mod:`curation.views`:
  ``clip_score`` by ``top_fraction`` or with a model ``scorer``, and ``dedup`` (near-duplicates
  within the view and against downstream test sets, :mod:`curation.dedup`).

:func:`run_steps` applies sample steps to an iterable and counts how many samples each removed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.core.registry import Registry

_WORD = re.compile(r"[A-Za-z0-9']+")

REQUIRED = object()  # marks a parameter without a default


@dataclass(frozen=True)
class FilterEntry:
    """A registered filter: its predicate, its parameters (name -> default or REQUIRED) and types."""

    name: str
    fn: Callable[..., bool]
    params: dict[str, Any] = field(default_factory=dict)
    types: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    description: str = ""
    kind: str = "sample"  # "sample": fn is a per-sample predicate; "global": applied by curation.views
    validate: Callable[[dict[str, Any], str], None] | None = None  # cross-parameter checks

    def is_global(self, params: dict[str, Any]) -> bool:
        """Whether these parameters make the step need the whole pool (e.g. a top fraction)."""
        return self.kind == "global" or (
            self.name == "clip_score"
            and (params.get("top_fraction") is not None or params.get("scorer", "field") != "field")
        )

    def check_params(self, params: dict[str, Any], where: str | None = None) -> dict[str, Any]:
        """Validate ``params`` and return them with defaults filled in."""
        where = where or f"curation step {self.name!r}"
        if not isinstance(params, dict):
            raise TypeError(f"{where}: parameters must be a mapping, got {type(params).__name__}")
        valid = (
            ", ".join(f"{k} (required)" if v is REQUIRED else f"{k} (default {v!r})" for k, v in self.params.items())
            or "none"
        )
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"{where}: unknown parameter(s) {unknown}; valid parameters: {valid}")
        out = {}
        for k, default in self.params.items():
            if k not in params:
                if default is REQUIRED:
                    raise ValueError(f"{where}: missing required parameter {k!r}; valid parameters: {valid}")
                out[k] = default
                continue
            v = params[k]
            t = self.types.get(k)
            if v is not None and t is not None and (not isinstance(v, t) or (isinstance(v, bool) and t is not bool)):
                names = t.__name__ if isinstance(t, type) else " or ".join(x.__name__ for x in t)
                raise TypeError(f"{where}: parameter {k!r} must be {names}, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{where}: parameter {k!r} must be finite, got {v!r}")
            out[k] = v
        if self.validate is not None:
            self.validate(out, where)
        return out


FILTERS: Registry[FilterEntry] = Registry("curation step")

_NUM = (int, float)


def caption_length(sample: dict[str, Any], min_words: int = 1, max_words: int | None = None) -> bool:
    """Keep captions with at least ``min_words`` and at most ``max_words`` words."""
    n = len(_WORD.findall(sample.get("txt") or ""))
    return n >= min_words and (max_words is None or n <= max_words)


def clip_score(
    sample: dict[str, Any],
    threshold: float | None = None,
    top_fraction: float | None = None,
    scorer: str = "field",
    field: str = "similarity",
    checkpoint: str | None = None,
) -> bool:
    """Keep samples whose precomputed image-text similarity (json ``field``) is at least ``threshold``.

    The per-sample form only; ``top_fraction`` and model scorers are global (see curation.views).
    """
    meta = sample.get("json") or {}
    if field not in meta:
        raise KeyError(
            f"sample {sample.get('key')!r} has no {field!r} in its json; clip_score with "
            "scorer 'field' needs a precomputed image-text similarity (or use scorer: checkpoint)"
        )
    return float(meta[field]) >= float(threshold)


def _check_clip_score(p: dict[str, Any], where: str) -> None:
    if (p["threshold"] is None) == (p["top_fraction"] is None):
        raise ValueError(
            f"{where}: give exactly one of 'threshold' (keep score >= threshold) and 'top_fraction' "
            f"(keep the best fraction of the pool), got threshold={p['threshold']!r}, "
            f"top_fraction={p['top_fraction']!r}"
        )
    if p["top_fraction"] is not None and not 0 < p["top_fraction"] <= 1:
        raise ValueError(f"{where}: top_fraction must lie in (0, 1], got {p['top_fraction']!r}")
    if p["scorer"] not in ("field", "checkpoint"):
        raise ValueError(
            f"{where}: scorer must be 'field' (the source's precomputed similarity, json key "
            f"'field') or 'checkpoint' (a CLIP checkpoint file: 'checkpoint'), got {p['scorer']!r}"
        )
    if p["scorer"] == "checkpoint" and not p["checkpoint"]:
        raise ValueError(
            f"{where}: scorer 'checkpoint' needs 'checkpoint': the path of a CLIP checkpoint "
            "(one this harness wrote, or an open_clip state dict with 'model' and 'pretrained')"
        )


def _sizes(meta: dict[str, Any]) -> tuple[int, int]:
    """The image's size before any resizing: img2dataset's ``original_*`` when present."""
    w = meta.get("original_width", meta.get("width", 0))
    h = meta.get("original_height", meta.get("height", 0))
    try:
        return int(w or 0), int(h or 0)
    except (TypeError, ValueError):
        return 0, 0


def min_resolution(sample: dict[str, Any], min_side: int) -> bool:
    """Keep images whose shorter side is at least ``min_side`` pixels (original size when recorded)."""
    return min(_sizes(sample.get("json") or {})) >= min_side


def aspect_ratio(sample: dict[str, Any], max_ratio: float = 3.0) -> bool:
    """Keep images whose longer side is at most ``max_ratio`` times the shorter (original size)."""
    w, h = _sizes(sample.get("json") or {})
    return min(w, h) > 0 and max(w, h) / min(w, h) <= max_ratio


def caption_concept(sample: dict[str, Any], words: list[str] | None = None) -> bool:
    """Keep captions naming at least one word of ``words`` (default: the class vocabulary)."""
    vocab = {w.lower() for w in (words or ())}
    return any(w in vocab for w in _WORD.findall((sample.get("txt") or "").lower()))


# Function words of a few languages: enough to tell them apart in short captions.
STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "a an the of and or in on at with for to from by is are this that its his her their "
        "my your our some two three near over under into photo picture image".split()
    ),
    "de": frozenset(
        "der die das ein eine einer einem einen und oder mit auf im in am zum zur von für ist "
        "sind nicht auch bei aus dem den des unter über neben foto bild".split()
    ),
    "es": frozenset(
        "el la los las un una unos unas y o con en del al de por para es son sobre bajo junto foto imagen".split()
    ),
    "fr": frozenset(
        "le la les un une des et ou avec dans sur sous du au aux de pour est sont près photo image".split()
    ),
    "it": frozenset(
        "il lo la gli le un una uno e o con nel nella sul sulla del della di per è sono foto immagine".split()
    ),
    "pt": frozenset("o a os as um uma uns umas e ou com em no na do da dos das de por para é são foto imagem".split()),
    "nl": frozenset("de het een en of met op in aan van voor is zijn bij uit onder over foto".split()),
}


def detect_language(text: str) -> str:
    """The language whose function words a caption uses most ("en" on a tie with English or
    when none is used and the caption is ASCII; "unknown" for non-ASCII text without any)."""
    words = [w.lower() for w in _WORD.findall(text or "")]
    votes = {lang: sum(w in sw for w in words) for lang, sw in STOPWORDS.items()}
    best = max(votes.values(), default=0)
    if best == 0:
        letters = [ch for ch in (text or "") if ch.isalpha()]
        ascii_share = sum(ch.isascii() for ch in letters) / len(letters) if letters else 1.0
        return "en" if ascii_share >= 0.9 else "unknown"
    if votes["en"] == best:
        return "en"
    return max(votes, key=lambda k: (votes[k], k == "en"))


def caption_language(sample: dict[str, Any], languages: list[str] | None = None) -> bool:
    """Keep captions whose language by :func:`detect_language` is in ``languages`` (default English)."""
    return detect_language(sample.get("txt") or "") in set(languages or ["en"])


def _check_languages(p: dict[str, Any], where: str) -> None:
    bad = [x for x in (p["languages"] or []) if x not in STOPWORDS]
    if bad:
        raise ValueError(f"{where}: unknown language(s) {bad}; valid: {', '.join(STOPWORDS)}")


def _check_dedup(p: dict[str, Any], where: str) -> None:
    if p["model"] is not None:
        if not isinstance(p["model"], str) or not p["model"].strip():
            raise ValueError(
                f"{where}: model must name a model of the spec's models: or a harness checkpoint "
                f"file, got {p['model']!r}"
            )
        if p["threshold"] is not None:
            raise ValueError(
                f"{where}: threshold is the hash method's Hamming distance; with model give "
                "cosine (a cosine similarity in (0, 1]) instead"
            )
    if p["cosine"] is not None:
        if p["model"] is None:
            raise ValueError(f"{where}: cosine needs model (the embedding model); without one dedup hashes")
        if isinstance(p["cosine"], bool) or not 0 < p["cosine"] <= 1:
            raise ValueError(f"{where}: cosine must be a cosine similarity in (0, 1], got {p['cosine']!r}")
    if p["threshold"] is not None and not 0 <= p["threshold"] <= 32:
        raise ValueError(
            f"{where}: threshold is a Hamming distance between 64-bit hashes in [0, 32], got {p['threshold']!r}"
        )
    if not p["within"] and not p["against"]:
        raise ValueError(
            f"{where}: nothing to do: set within: true and/or against: [downstream sets] "
            "(or 'all' for every downstream set of the spec)"
        )


def _dedup_unapplied(sample: dict[str, Any], **_: Any) -> bool:  # pragma: no cover - never called per sample
    raise TypeError("dedup is a global step: build a view (curation.views) to apply it")


FILTERS.register(
    "caption_length",
    FilterEntry(
        "caption_length",
        caption_length,
        {"min_words": 1, "max_words": None},
        {"min_words": int, "max_words": int},
        "caption word count within [min_words, max_words]",
    ),
)
FILTERS.register(
    "clip_score",
    FilterEntry(
        "clip_score",
        clip_score,
        {"threshold": None, "top_fraction": None, "scorer": "field", "field": "similarity", "checkpoint": None},
        {"threshold": _NUM, "top_fraction": _NUM, "scorer": str, "field": str, "checkpoint": str},
        "image-text cosine similarity: >= threshold, or the top_fraction of the pool; scored by the source's "
        "precomputed json field or by a CLIP checkpoint",
        validate=_check_clip_score,
    ),
)
FILTERS.register(
    "min_resolution",
    FilterEntry(
        "min_resolution",
        min_resolution,
        {"min_side": REQUIRED},
        {"min_side": int},
        "shorter image side (original size when recorded) >= min_side pixels",
    ),
)
FILTERS.register(
    "aspect_ratio",
    FilterEntry(
        "aspect_ratio",
        aspect_ratio,
        {"max_ratio": 3.0},
        {"max_ratio": _NUM},
        "longer side / shorter side (original size when recorded) <= max_ratio",
    ),
)
FILTERS.register(
    "caption_concept",
    FilterEntry(
        "caption_concept",
        caption_concept,
        {"words": None},
        {"words": (list, tuple)},
        "the caption names at least one word of 'words' (default: the class vocabulary)",
    ),
)
FILTERS.register(
    "caption_language",
    FilterEntry(
        "caption_language",
        caption_language,
        {"languages": None},
        {"languages": (list, tuple)},
        "the caption's language by a function-word rule is one of 'languages' (default ['en'])",
        validate=_check_languages,
    ),
)
FILTERS.register(
    "dedup",
    FilterEntry(
        "dedup",
        _dedup_unapplied,
        {"threshold": None, "within": True, "against": None, "model": None, "cosine": None},
        {"threshold": int, "within": bool, "against": (list, tuple, str), "model": str, "cosine": _NUM},
        "near-duplicate removal by perceptual hash (threshold: Hamming distance, default "
        "curation.dedup.DEFAULT_THRESHOLD) or, with model (a model of the spec's models: or a harness "
        "checkpoint file), by embedding cosine similarity >= cosine (default curation.dedup.DEFAULT_COSINE): "
        "within the view (keeps one per cluster) and against downstream test sets ('against': names or 'all')",
        kind="global",
        validate=_check_dedup,
    ),
)


def step_names(steps: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
    """Funnel keys for ``steps``: the filter name, suffixed ``#2``, ``#3`` when a filter repeats."""
    seen: dict[str, int] = {}
    out = []
    for name, _ in steps:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def validate_steps(steps: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[FilterEntry, dict[str, Any]]]:
    """Resolve each ``(name, params)`` step to its filter and checked parameters, or raise."""
    out = []
    for i, step in enumerate(steps):
        if not (isinstance(step, (tuple, list)) and len(step) == 2):
            raise TypeError(f"curation step {i}: expected a (name, params) pair, got {step!r}")
        name, params = step
        entry = FILTERS.get(name)
        out.append((entry, entry.check_params(dict(params or {}), f"curation step {i} ({name!r})")))
    return out


def run_steps(
    samples: Iterable[dict[str, Any]], steps: Iterable[tuple[str, dict[str, Any]]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Apply ``steps`` in order; return the kept samples and ``{step: removed}`` (in step order)."""
    steps = list(steps)
    resolved = validate_steps(steps)
    glob = [e.name for e, p in resolved if e.is_global(p)]
    if glob:
        raise ValueError(f"run_steps applies per-sample steps only; {glob} need the whole pool: build a view")
    names = step_names(steps)
    funnel = {n: 0 for n in names}
    kept = []
    for s in samples:
        for (entry, params), n in zip(resolved, names):
            if not entry.fn(s, **params):
                funnel[n] += 1
                break
        else:
            kept.append(s)
    return kept, funnel
