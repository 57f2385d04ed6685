"""Views: the exact pre-training data of one run, built from source shards.

A view is a source (or a weighted mixture of sources) passed through a curation funnel:

1. the curation steps (registered filters, in order);
2. for labelled training: labels. A labelled source gives ``.cls``; for an image-text source a
   caption naming exactly one concept of the vocabulary gets that concept's label and every
   other sample is dropped (the ``labels_from_captions`` step);
3. a nested size subset: samples are ranked by a hash of (key, seed) and the first ``size``
   are kept, so for the same seed and curation a smaller view is always inside a larger one.
   A mixture takes from each source a share of ``size`` proportional to its weight;
4. symmetric label noise: exactly ``round(rate * size)`` samples (the lowest by another hash
   of (key, seed)) get a label drawn uniformly from the other classes.

The view is written as webdataset shards to ``out_dir/shards/`` with ``sizes.json``, then
``manifest.json`` last. The whole folder is built next to ``out_dir`` and renamed into place,
so an interrupted build leaves nothing half-written. The manifest records what happened:
``funnel`` (step -> samples removed; ``pool_size == size + sum(funnel.values())``),
``label_accuracy`` (derived labels against the world's ground truth, before noise) and
``achieved_noise``. A pool smaller than the request gives a smaller view, recorded as such.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tarfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from curation.filters import step_names, validate_steps
from harness.artifacts import replaceable_dir
from curation.sources import SOURCES

logger = logging.getLogger(__name__)

VIEW_VERSION = 1
SHARD_SIZE = 1000
MANIFEST = "manifest.json"
SIZES_FILE = "sizes.json"
LABEL_STEP = "labels_from_captions"
SUBSET_STEP = "size_subset"
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class ViewConfig:
    """What a view is made of. Exactly one of ``source`` and ``mixture`` is given."""

    source: str | None
    mixture: dict[str, float] | None
    curation_name: str
    curation: tuple[tuple[str, dict], ...]
    size: int
    label_noise: float
    needs_labels: bool
    seed: int

    def __post_init__(self) -> None:
        if (self.source is None) == (self.mixture is None):
            raise ValueError("ViewConfig: give exactly one of 'source' and 'mixture' "
                             f"(got source={self.source!r}, mixture={self.mixture!r})")
        if self.source is not None and self.source not in SOURCES:
            raise ValueError(f"ViewConfig.source: {SOURCES.unknown_message(self.source)}")
        if self.mixture is not None:
            if not isinstance(self.mixture, dict) or not self.mixture:
                raise ValueError("ViewConfig.mixture: a non-empty mapping of source name -> positive weight")
            for name, w in self.mixture.items():
                if name not in SOURCES:
                    raise ValueError(f"ViewConfig.mixture: {SOURCES.unknown_message(name)}")
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w > 0 and math.isfinite(w)):
                    raise ValueError(f"ViewConfig.mixture[{name!r}]: weights must be positive numbers, got {w!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"ViewConfig.size: a positive sample count, got {self.size!r}")
        if isinstance(self.label_noise, bool) or not isinstance(self.label_noise, (int, float)) \
                or not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"ViewConfig.label_noise: a rate in [0, 1), got {self.label_noise!r}")
        if self.label_noise > 0 and not self.needs_labels:
            raise ValueError(f"ViewConfig.label_noise: {self.label_noise} asks for noisy labels, but needs_labels is "
                             "False (the view carries no labels); use label_noise 0 for label-free methods")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"ViewConfig.seed: an integer, got {self.seed!r}")
        if not isinstance(self.curation, tuple):
            raise ValueError("ViewConfig.curation: a tuple of (step name, params) pairs")
        validate_steps(self.curation)

    @property
    def weights(self) -> dict[str, float]:
        return {self.source: 1.0} if self.source is not None else dict(sorted(self.mixture.items()))

    @property
    def source_label(self) -> str:
        """``source`` itself, or ``mix:a=0.5+b=0.5`` for a mixture."""
        if self.source is not None:
            return self.source
        return "mix:" + "+".join(f"{k}={v:g}" for k, v in sorted(self.mixture.items()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["curation"] = [[name, dict(params)] for name, params in self.curation]
        d["mixture"] = dict(sorted(self.mixture.items())) if self.mixture else None
        return d


def _hash(*parts: Any) -> int:
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def allocate(size: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``size`` over sources in proportion to ``weights`` (largest remainder, sums to ``size``)."""
    total = sum(weights.values())
    exact = {k: size * w / total for k, w in weights.items()}
    out = {k: int(math.floor(v)) for k, v in exact.items()}
    rest = size - sum(out.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:rest]:
        out[k] += 1
    return out


def read_vocabulary(data_root: str | Path) -> list[str] | None:
    """The label vocabulary (the world's concept names), or None without a ``world.json``."""
    p = Path(data_root) / "world.json"
    if not p.is_file():
        return None
    info = json.loads(p.read_text())
    concepts = info.get("concepts")
    if not isinstance(concepts, list) or not concepts:
        raise ValueError(f"{p} has no 'concepts' list (the label vocabulary)")
    return [str(c) for c in concepts]


def _iter_source(name: str, data_root: Path):
    import webdataset as wds

    paths = SOURCES.get(name).shard_paths(data_root)
    # Every shard, in order, whatever process or loader worker this runs in.
    ds = wds.WebDataset(paths, shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None)
    for raw in ds:
        key = raw["__key__"]
        for ext in ("png", "txt", "json"):
            if ext not in raw:
                raise ValueError(f"source {name!r}: sample {key!r} in {raw.get('__url__')} has no .{ext}")
        try:
            meta = json.loads(raw["json"])
        except json.JSONDecodeError as e:
            raise ValueError(f"source {name!r}: sample {key!r} has invalid .json ({e})") from None
        yield {"key": key, "txt": raw["txt"].decode("utf-8", "replace"), "json": meta, "png": raw["png"],
               "cls": raw.get("cls"), "source": name}


def _label_from_caption(txt: str, vocab_index: dict[str, int]) -> int | None:
    named = {vocab_index[w] for w in _WORD.findall(txt.lower()) if w in vocab_index}
    return named.pop() if len(named) == 1 else None


def _curate_source(name: str, cfg: ViewConfig, data_root: Path, n_wanted: int, resolved, names,
                   vocab: list[str] | None) -> tuple[list[dict], dict[str, Any]]:
    entry = SOURCES.get(name)
    vocab_index = {c: i for i, c in enumerate(vocab or [])}
    funnel = {n: 0 for n in names}
    label_step = cfg.needs_labels and entry.kind != "labelled"
    if label_step:
        funnel[LABEL_STEP] = 0
    kept: list[dict] = []
    pool = 0
    for s in _iter_source(name, data_root):
        pool += 1
        dropped = False
        for (fe, params), step in zip(resolved, names):
            if not fe.fn(s, **params):
                funnel[step] += 1
                dropped = True
                break
        if dropped:
            continue
        if cfg.needs_labels:
            if entry.kind == "labelled":
                if s["cls"] is None:
                    raise ValueError(f"labelled source {name!r}: sample {s['key']!r} has no .cls")
                label = int(s["cls"])
                if vocab is not None and not 0 <= label < len(vocab):
                    raise ValueError(f"source {name!r}: sample {s['key']!r} has .cls {label} outside "
                                     f"0..{len(vocab) - 1} (the vocabulary in world.json)")
            else:
                label = _label_from_caption(s["txt"], vocab_index)
                if label is None:
                    funnel[LABEL_STEP] += 1
                    continue
            s["label"] = label
        s["rank"] = _hash(s["key"], cfg.seed, "subset")
        kept.append(s)
    kept.sort(key=lambda s: s["rank"])
    chosen = kept[:n_wanted]
    funnel[SUBSET_STEP] = len(kept) - len(chosen)
    if len(chosen) < n_wanted:
        logger.warning("source %s: %d samples survive curation %r, fewer than the %d requested; the view keeps %d",
                       name, len(kept), cfg.curation_name, n_wanted, len(chosen))
    info = {"pool_size": pool, "requested_size": n_wanted, "size": len(chosen), "funnel": funnel}
    return chosen, info


def _config_matches(manifest: dict, cfg: ViewConfig) -> bool:
    return manifest.get("version") == VIEW_VERSION and \
        json.loads(json.dumps(manifest.get("config"))) == json.loads(json.dumps(cfg.to_dict()))


def build_view(cfg: ViewConfig, data_root: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Build the view ``cfg`` from the sources under ``data_root`` into ``out_dir``; return its manifest.

    Idempotent (an existing view with the same config is returned as is) and atomic.
    """
    import webdataset as wds

    if not isinstance(cfg, ViewConfig):
        raise TypeError(f"build_view expects a ViewConfig, got {type(cfg).__name__}")
    data_root, out_dir = Path(data_root), Path(out_dir)
    mpath = out_dir / MANIFEST
    if mpath.is_file():
        try:
            existing = json.loads(mpath.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing is not None and _config_matches(existing, cfg):
            return existing
    if not replaceable_dir(out_dir, MANIFEST):
        raise FileExistsError(f"{out_dir} exists and is not a view folder (no {MANIFEST}); choose an empty folder")

    resolved = validate_steps(cfg.curation)
    names = step_names(cfg.curation)
    vocab = read_vocabulary(data_root)
    if cfg.needs_labels and vocab is None:
        raise FileNotFoundError(f"labelled views need the class vocabulary in {data_root / 'world.json'} "
                                "('concepts'); write the world there with `tbench world`")
    weights = cfg.weights
    alloc = allocate(cfg.size, weights)

    chosen: list[dict] = []
    per_source: dict[str, Any] = {}
    for name in weights:
        samples, info = _curate_source(name, cfg, data_root, alloc[name], resolved, names, vocab)
        chosen.extend(samples)
        per_source[name] = info
    chosen.sort(key=lambda s: (s["rank"], s["key"]))
    funnel: dict[str, int] = {}
    for info in per_source.values():
        for k, v in info["funnel"].items():
            funnel[k] = funnel.get(k, 0) + v

    label_accuracy = achieved = None
    if cfg.needs_labels and chosen:
        truth = [s["json"].get("concept_id") for s in chosen]
        if all(isinstance(t, int) for t in truth):
            label_accuracy = sum(int(s["label"] == t) for s, t in zip(chosen, truth)) / len(chosen)
        k = len(vocab)
        n_flip = int(round(cfg.label_noise * len(chosen))) if k > 1 else 0
        order = sorted(range(len(chosen)), key=lambda i: (_hash(chosen[i]["key"], cfg.seed, "noise"), i))
        flip = set(order[:n_flip])
        for i, s in enumerate(chosen):
            s["clean_label"] = s["label"]
            if i in flip:
                s["label"] = (s["label"] + 1 + _hash(s["key"], cfg.seed, "noise-label") % (k - 1)) % k
        achieved = sum(int(s["label"] != s["clean_label"]) for s in chosen) / len(chosen)
    elif cfg.needs_labels:
        achieved = 0.0

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        shard_dir = tmp / "shards"
        shard_dir.mkdir(parents=True)
        sizes: dict[str, int] = {}
        for s0 in range(0, max(len(chosen), 1), SHARD_SIZE):
            part = chosen[s0:s0 + SHARD_SIZE]
            if not part and s0 > 0:
                break
            name = f"shard-{s0 // SHARD_SIZE:06d}.tar"
            with wds.TarWriter(str(shard_dir / name), encoder=False, mtime=0, format=tarfile.USTAR_FORMAT) as tw:
                for s in part:
                    meta = dict(s["json"])
                    if cfg.needs_labels:
                        meta["view"] = {"label": s["label"], "clean_label": s["clean_label"],
                                        "noisy": s["label"] != s["clean_label"]}
                    sample = {"__key__": s["key"], "png": s["png"], "txt": s["txt"].encode(),
                              "json": json.dumps(meta, sort_keys=True).encode()}
                    if cfg.needs_labels:
                        sample["cls"] = str(int(s["label"])).encode()
                    tw.write(sample)
            sizes[name] = len(part)
        sizes_text = json.dumps(sizes, indent=1, sort_keys=True)
        (tmp / SIZES_FILE).write_text(sizes_text)
        (shard_dir / SIZES_FILE).write_text(sizes_text)
        pool = sum(i["pool_size"] for i in per_source.values())
        manifest = {
            "version": VIEW_VERSION,
            "config": cfg.to_dict(),
            "source": cfg.source_label,
            "mixture": cfg.to_dict()["mixture"],
            "curation": cfg.curation_name,
            "curation_steps": cfg.to_dict()["curation"],
            "requested_size": cfg.size,
            "size": len(chosen),
            "pool_size": pool,
            "needs_labels": cfg.needs_labels,
            "label_noise": float(cfg.label_noise),
            "achieved_noise": achieved,
            "label_accuracy": label_accuracy,
            "num_classes": len(vocab) if vocab else 0,
            "class_names": list(vocab) if vocab else [],
            "funnel": funnel,
            "per_source": per_source,
            "seed": cfg.seed,
            "shards": [f"shards/{n}" for n in sorted(sizes)],
        }
        if pool - sum(funnel.values()) != len(chosen):  # pragma: no cover - an internal invariant
            raise RuntimeError(f"view funnel does not add up: pool {pool}, removed {funnel}, kept {len(chosen)}")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _swap_into_place(tmp, out_dir, cfg)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("view %s/%s: %d of %d requested (pool %d, funnel %s)", cfg.source_label, cfg.curation_name,
                len(chosen), cfg.size, pool, funnel)
    return json.loads((out_dir / MANIFEST).read_text())


def _swap_into_place(tmp: Path, out_dir: Path, cfg: ViewConfig) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        # Another builder won the race; keep theirs if it is this view.
        mpath = out_dir / MANIFEST
        if not (mpath.is_file() and _config_matches(json.loads(mpath.read_text()), cfg)):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
