"""Curation filters: named keep/drop predicates over a sample, applied as a funnel.

A sample, as filters see it, is a dict with ``key`` (str), ``txt`` (the decoded caption) and
``json`` (the decoded metadata). A filter is ``fn(sample, **params) -> bool`` (True keeps the
sample). :func:`run_steps` applies a list of ``(name, params)`` steps in order and counts how
many samples each step removed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from harness.registry import Registry

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

    def check_params(self, params: dict[str, Any], where: str | None = None) -> dict[str, Any]:
        """Validate ``params`` and return them with defaults filled in."""
        where = where or f"curation step {self.name!r}"
        if not isinstance(params, dict):
            raise TypeError(f"{where}: parameters must be a mapping, got {type(params).__name__}")
        valid = ", ".join(f"{k} (required)" if v is REQUIRED else f"{k} (default {v!r})"
                          for k, v in self.params.items()) or "none"
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
            if v is not None and t is not None and (isinstance(v, bool) or not isinstance(v, t)):
                names = t.__name__ if isinstance(t, type) else " or ".join(x.__name__ for x in t)
                raise TypeError(f"{where}: parameter {k!r} must be {names}, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{where}: parameter {k!r} must be finite, got {v!r}")
            out[k] = v
        return out


FILTERS: Registry[FilterEntry] = Registry("curation step")

_NUM = (int, float)


def caption_length(sample: dict[str, Any], min_words: int = 1, max_words: int | None = None) -> bool:
    """Keep captions with at least ``min_words`` and at most ``max_words`` words."""
    n = len(_WORD.findall(sample.get("txt") or ""))
    return n >= min_words and (max_words is None or n <= max_words)


def clip_score(sample: dict[str, Any], threshold: float) -> bool:
    """Keep samples whose precomputed image-text ``similarity`` is at least ``threshold``."""
    meta = sample.get("json") or {}
    if "similarity" not in meta:
        raise KeyError(f"sample {sample.get('key')!r} has no 'similarity' in its json; "
                       "clip_score needs a precomputed image-text similarity")
    return float(meta["similarity"]) >= threshold


def min_resolution(sample: dict[str, Any], min_side: int) -> bool:
    """Keep images whose shorter side (json ``width``/``height``) is at least ``min_side`` pixels."""
    meta = sample.get("json") or {}
    return min(int(meta.get("width", 0)), int(meta.get("height", 0))) >= min_side


FILTERS.register("caption_length", FilterEntry(
    "caption_length", caption_length, {"min_words": 1, "max_words": None},
    {"min_words": int, "max_words": int}, "caption word count within [min_words, max_words]"))
FILTERS.register("clip_score", FilterEntry(
    "clip_score", clip_score, {"threshold": REQUIRED}, {"threshold": _NUM},
    "precomputed image-text similarity (a CLIP score) >= threshold"))
FILTERS.register("min_resolution", FilterEntry(
    "min_resolution", min_resolution, {"min_side": REQUIRED}, {"min_side": int},
    "shorter image side >= min_side pixels"))


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


def run_steps(samples: Iterable[dict[str, Any]], steps: Iterable[tuple[str, dict[str, Any]]]
              ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Apply ``steps`` in order; return the kept samples and ``{step: removed}`` (in step order)."""
    steps = list(steps)
    resolved = validate_steps(steps)
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
