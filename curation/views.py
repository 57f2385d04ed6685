"""Views: the exact pre-training data of one run, built from source shards.

A view is a source (or a weighted mixture of sources) passed through a curation funnel. It is
built in three phases, so that the part that touches every sample runs in parallel over shards
(as a Ray Data job when Ray is running, else a loop in this process) and the rest works on a
compact table of one row per sample:

1. **scan** (per shard): read every sample through :func:`curation.sources.open_source`, apply
   the per-sample curation steps (recording which pass), compute what the global steps need (a
   CLIP score from the source's precomputed field or from a CLIP checkpoint; a perceptual hash
   for ``dedup``), the caption-derived label (a caption naming exactly one concept of the
   vocabulary gets that concept; labelled sources give ``.cls``) and a rank = hash(key, seed);
2. **select** (the whole table, in step order): each step removes samples from the survivors
   of the previous ones and records how many (the funnel): sample steps by their recorded
   verdict; ``clip_score`` with ``top_fraction`` keeps the best-scored fraction of the
   survivors; ``dedup`` removes near-duplicates within the survivors (one per cluster is kept:
   the lowest rank) and every survivor that matches a downstream test image, reporting the
   overlap per set. Then ``labels_from_captions`` (labelled training only) drops unlabelled
   samples, ``size_subset`` keeps the ``size`` lowest-ranked samples, and label noise flips
   exactly ``round(rate * size)`` labels chosen by another hash of (key, seed):
   ``symmetric`` to a uniformly drawn other class, ``class_dependent`` to the class's fixed
   confusable partner (the next class of its concept group in a seeded cycle);
3. **materialise**: new webdataset shards (``materialize: shards``, one output shard per input
   shard that kept samples) or an index over the original shards (``materialize: index``:
   ``index.parquet`` with the kept keys and their labels; the pre-training loader reads the
   original shards and keeps those keys).

Nesting: every step before the size subset is independent of ``size`` and the subset takes
the lowest ranks, so for the same seed a smaller view is always inside a larger one. A mixture
merges its sources' ranked survivors by a divisor rule (the j-th sample of a source of weight
w has priority (j + 1/2) / w), which is also size-monotone.

The folder is built next to ``out_dir`` and renamed into place with ``manifest.json`` (written
last), so an interrupted build leaves nothing half-written. The manifest records the funnel
(``pool_size == size + sum(funnel.values())``), per-source funnels, the dedup report,
``label_accuracy`` (derived labels against the world's ground truth, before noise),
``achieved_noise`` and what was skipped while reading (never part of the pool): ``skipped`` by
reason (:data:`curation.sources.SKIP_REASONS`; an image that does not decode is ``bad_image``,
found by the steps that read images) and ``skipped_samples``, their total in samples (broken
shards and repeated members are counted in ``skipped`` only). A pool smaller than the request
gives a smaller view, recorded as such.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation.filters import FILTERS, step_names, validate_steps
from curation.sources import NOT_SAMPLE_REASONS
from harness.core.artifacts import replaceable_dir
from harness.core.atomic import swap_dir_into_place
from harness.core.layout import INDEX_FILE, SHARDS_DIR, SIZES_FILE

logger = logging.getLogger(__name__)

VIEW_VERSION = 2
MANIFEST = "manifest.json"
LABEL_STEP = "labels_from_captions"
SUBSET_STEP = "size_subset"
NOISE_MODELS = ("symmetric", "class_dependent")
MATERIALIZE = ("shards", "index")
ENGINES = ("local", "ray")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class ViewConfig:
    """What a view is made of. Exactly one of ``source`` and ``mixture`` is given.

    ``sources``: declared sources (name -> config, see :class:`curation.sources.SourceEntry`)
    the view may read besides the registered ones. ``against``: the downstream sets ``dedup``
    steps with ``against: all`` compare with.
    """

    source: str | None
    mixture: dict[str, float] | None
    curation_name: str
    curation: tuple[tuple[str, dict], ...]
    size: int
    label_noise: float
    needs_labels: bool
    seed: int
    noise_model: str = "symmetric"
    materialize: str = "shards"
    sources: dict[str, dict] | None = None
    against: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from curation.sources import resolve_source

        if (self.source is None) == (self.mixture is None):
            raise ValueError(
                "ViewConfig: give exactly one of 'source' and 'mixture' "
                f"(got source={self.source!r}, mixture={self.mixture!r})"
            )
        names = [self.source] if self.source is not None else list(self.mixture or {})
        if self.mixture is not None:
            if not isinstance(self.mixture, dict) or not self.mixture:
                raise ValueError("ViewConfig.mixture: a non-empty mapping of source name -> positive weight")
            for name, w in self.mixture.items():
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w > 0 and math.isfinite(w)):
                    raise ValueError(f"ViewConfig.mixture[{name!r}]: weights must be positive numbers, got {w!r}")
        for name in names:
            try:
                resolve_source(name, self.sources)
            except (KeyError, ValueError) as exc:
                raise ValueError(
                    f"ViewConfig.{'source' if self.source is not None else 'mixture'}: "
                    f"{exc.args[0] if exc.args else exc}"
                ) from None
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"ViewConfig.size: a positive sample count, got {self.size!r}")
        if (
            isinstance(self.label_noise, bool)
            or not isinstance(self.label_noise, (int, float))
            or not 0.0 <= self.label_noise < 1.0
        ):
            raise ValueError(f"ViewConfig.label_noise: a rate in [0, 1), got {self.label_noise!r}")
        if self.label_noise > 0 and not self.needs_labels:
            raise ValueError(
                f"ViewConfig.label_noise: {self.label_noise} asks for noisy labels, but needs_labels is "
                "False (the view carries no labels); use label_noise 0 for label-free methods"
            )
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"ViewConfig.noise_model: one of {', '.join(NOISE_MODELS)}, got {self.noise_model!r}")
        if self.materialize not in MATERIALIZE:
            raise ValueError(f"ViewConfig.materialize: one of {', '.join(MATERIALIZE)}, got {self.materialize!r}")
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
        d["against"] = list(self.against)
        return d


def _hash(*parts: Any) -> int:
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def allocate(size: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``size`` over sources in proportion to ``weights`` by the divisor rule of
    :func:`mixture_order` (sums to ``size``; never decreases as ``size`` grows)."""
    order = mixture_order({k: size for k in weights}, weights)[:size]
    out = {k: 0 for k in weights}
    for k in order:
        out[k] += 1
    return out


def mixture_order(available: dict[str, int], weights: dict[str, float]) -> list[str]:
    """The source of each successive sample of a mixture: the j-th sample of source s has
    priority (j + 1/2) / w_s (Sainte-Laguë), ties by name; a source stops when it runs out."""
    total = sum(weights.values())
    items = [((j + 0.5) / (weights[s] / total), s) for s, n in available.items() for j in range(n)]
    items.sort()
    return [s for _, s in items]


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


def own_classes(cfg: ViewConfig) -> list[str] | None:
    """The label space of a view whose sources are all labelled sources declaring the same
    ``num_classes`` (``real.imagenet``: 1000): classes ``0 .. num_classes - 1``, named by index.
    Such a view keeps its sources' classes; any other labelled view uses the world's concept
    vocabulary (labels from captions, the world's own labelled source)."""
    from curation.sources import resolve_source

    entries = [resolve_source(name, cfg.sources) for name in cfg.weights]
    counts = {e.num_classes for e in entries}
    if entries and all(e.kind == "labelled" for e in entries) and len(counts) == 1 and None not in counts:
        return [f"class_{i}" for i in range(counts.pop())]
    return None


def read_concept_groups(data_root: str | Path) -> dict[str, str]:
    p = Path(data_root) / "world.json"
    if not p.is_file():
        return {}
    return dict((json.loads(p.read_text()).get("factors") or {}).get("concept_groups") or {})


def _label_from_caption(txt: str, vocab_index: dict[str, int]) -> int | None:
    named = {vocab_index[w] for w in _WORD.findall(txt.lower()) if w in vocab_index}
    return named.pop() if len(named) == 1 else None


# --------------------------------------------------------------------------- scan


@dataclass(frozen=True)
class ScanTask:
    """Everything one shard's scan needs (plain data: it travels to Ray Data workers)."""

    source: str
    url: str
    seed: int
    steps: tuple[tuple[str, dict], ...]  # resolved parameters
    needs_labels: bool
    vocab: tuple[str, ...] | None
    size: int  # the shard's sample count, as the driver's validation found it
    counted_by: str
    sources: dict[str, dict] | None = None


def open_sources(cfg: ViewConfig, data_root: str | Path, data_dir: str | Path | None) -> dict[str, Any]:
    """Each source of the view, opened (and so validated) once: name -> OpenedSource."""
    from curation.sources import open_source

    return {
        name: open_source(name, world_root=data_root, data_dir=data_dir, custom=cfg.sources) for name in cfg.weights
    }


def _shard_reader(source: str, url: str, size: int, counted_by: str, sources: dict | None):
    """A reader of one shard of a source the driver has validated: no listing or probing again."""
    from curation.sources import OpenedSource, resolve_source

    return OpenedSource(
        entry=resolve_source(source, sources),
        location=url,
        urls=[url],
        sizes={url: size},
        num_samples=size,
        counted_by=counted_by,
        fields={},
    )


_SCORERS: dict[str, Any] = {}


def _checkpoint_scorer(path: str):
    """``score(images: list[bytes], captions: list[str]) -> np.ndarray`` for a CLIP checkpoint (cached per process).

    The model runs on the GPU when the process has one (bf16 autocast, channels-last; see
    :mod:`downstream.accel`), else on the CPU in fp32; the cosine is taken in fp32.
    """
    if path not in _SCORERS:
        import torch

        from downstream import accel
        from downstream.features import default_device, meta_stats, normalise, prepare_images, resize_options
        from downstream.sets import resize_center_crop
        from downstream.zeroshot import load_zeroshot_model
        from pretrain.data import decode_image

        model, tokenizer, meta = load_zeroshot_model(path)
        model.eval()
        device = default_device()
        accel.prepare_model(model, device)
        mean, std = meta_stats(meta, device)
        size = int(meta["image_size"])
        resize = resize_options(meta)  # an existing model's own interpolation/crop; none for the harness's

        @torch.inference_mode()
        def score(images: list[bytes], captions: list[str]) -> np.ndarray:
            arr = np.stack(
                [resize_center_crop(decode_image(b).permute(1, 2, 0).numpy(), size, **resize) for b in images]
            )
            x = accel.images_layout(normalise(accel.to_device(prepare_images(arr, size), device), mean, std))
            with accel.autocast(device):
                img, txt = model.encode_image(x), model.encode_text(tokenizer(captions).to(device))
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)
            return (img * txt).sum(-1).cpu().numpy()

        _SCORERS[path] = score
    return _SCORERS[path]


SIZE_STEPS = ("min_resolution", "aspect_ratio")  # steps that judge the image's size


def _image_check(resolved) -> str | None:
    """How much of each image the steps read: ``pixels`` (``dedup``'s hash or model, a checkpoint scorer),
    ``header`` (the size steps: their sizes come from the metadata, but the image must be one) or None."""
    if any(e.name == "dedup" or (e.name == "clip_score" and p["scorer"] == "checkpoint") for e, p in resolved):
        return "pixels"
    return "header" if any(e.name in SIZE_STEPS for e, _ in resolved) else None


def _header_problem(image: bytes) -> str | None:
    """Why ``image`` is not an image PIL can identify (its header only: cheap), or None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as im:
            im.size  # noqa: B018 - the header is parsed on open; reading the size is all the check needs
    except Exception as e:  # noqa: BLE001 - PIL raises several types for bad data
        return f"{type(e).__name__}: {e}"
    return None


def _pixels_problem(image: bytes) -> str | None:
    """Why ``image`` does not decode with pre-training's decoder (as a checkpoint scorer reads it), or None."""
    from pretrain.data import decode_image

    try:
        decode_image(image)
    except Exception as e:  # noqa: BLE001 - torchvision and PIL raise several types for bad data
        return f"{type(e).__name__}: {e}"
    return None


def scan_shard(task: ScanTask) -> dict[str, list]:
    """One shard's rows: key, url, rank, label, truth, and per step its verdict or score.

    ``skipped`` (not a column: a JSON object of reason -> count) holds what the shard's reading
    skipped (see :data:`curation.sources.SKIP_REASONS`), including ``bad_image``: a sample whose
    image does not decode as far as the steps read it (:func:`_image_check`) is skipped, not scored.
    """
    src = _shard_reader(task.source, task.url, task.size, task.counted_by, task.sources)
    kind = src.entry.kind
    vocab_index = {c: i for i, c in enumerate(task.vocab or ())}
    resolved = [(FILTERS.get(n), p) for n, p in task.steps]
    cols: dict[str, list] = {"key": [], "url": [], "source": [], "rank": [], "label": [], "truth": []}
    for i in range(len(resolved)):
        cols[f"s{i}"] = []
    need_hash = any(e.name == "dedup" and p.get("model") is None for e, p in resolved)
    if need_hash:
        cols["h0"], cols["h1"] = [], []
    model_steps = [i for i, (e, p) in enumerate(resolved) if e.name == "clip_score" and p["scorer"] == "checkpoint"]
    embed_steps = [i for i, (e, p) in enumerate(resolved) if e.name == "dedup" and p.get("model") is not None]
    model_steps += embed_steps
    check = _image_check(resolved)
    pending_images: list[bytes] = []
    pending_caps: list[str] = []
    for s in src.iter_shard(task.url):
        problem, hashes = _sample_problem(s["image"], need_hash, bool(model_steps), check)
        if problem is not None:
            src.skipped["bad_image"] += 1
            if src.skipped["bad_image"] <= 3:
                logger.warning(
                    "source %r: sample %r in %s: its image does not decode (%s); skipping it",
                    task.source,
                    s["key"],
                    task.url,
                    problem,
                )
            continue
        sample = {"key": s["key"], "txt": s.get("txt") or "", "json": s.get("json") or {}}
        cols["key"].append(s["key"])
        cols["url"].append(task.url)
        cols["source"].append(task.source)
        cols["rank"].append(_hash(s["key"], task.seed, "subset") >> 1)  # fits int64
        truth = sample["json"].get("concept_id")
        cols["truth"].append(int(truth) if isinstance(truth, int) and not isinstance(truth, bool) else -1)
        cols["label"].append(_sample_label(task, kind, s, sample, vocab_index))
        _append_step_values(cols, resolved, sample, task.vocab)
        if need_hash:
            h0, h1 = hashes
            cols["h0"].append(int(h0))
            cols["h1"].append(int(h1))
        if model_steps:
            pending_images.append(s["image"])
            pending_caps.append(sample["txt"])
    _model_columns(cols, resolved, model_steps, embed_steps, pending_images, pending_caps)
    cols["skipped"] = json.dumps(dict(src.skipped), sort_keys=True)  # a shard with no rows still counts
    return cols


def _sample_problem(image: bytes, need_hash: bool, decode: bool, check: str | None) -> tuple[str | None, Any]:
    """Why a sample's image cannot be used (None if it can), and its dedup hashes when asked for."""
    problem = hashes = None
    if need_hash:
        from curation.dedup import hash_image

        try:
            hashes = hash_image(image)
        except ValueError as e:  # decode_gray names the bytes and PIL's complaint
            problem = str(e)
    if problem is None and decode:
        problem = _pixels_problem(image)
    if problem is None and check == "header":
        problem = _header_problem(image)
    return problem, hashes


def _sample_label(
    task: ScanTask, kind: str, s: dict[str, Any], sample: dict[str, Any], vocab_index: dict[str, int]
) -> int:
    """A sample's label in the view's vocabulary (its class, or the concept its caption names); -1 if none."""
    label = -1
    if task.needs_labels:
        if kind == "labelled":
            label = -1 if s.get("cls") is None else int(s["cls"])
            if task.vocab is not None and not 0 <= label < len(task.vocab):
                label = -1
        else:
            got = _label_from_caption(sample["txt"], vocab_index)
            label = -1 if got is None else got
    return label


def _append_step_values(cols: dict[str, list], resolved: list, sample: dict[str, Any], vocab) -> None:
    """Each step's verdict or score of one sample (checkpoint scores and dedup are filled later)."""
    for i, (entry, params) in enumerate(resolved):
        if entry.name == "clip_score":
            if params["scorer"] == "field":
                v = sample["json"].get(params["field"])
                cols[f"s{i}"].append(float(v) if isinstance(v, (int, float)) else float("nan"))
            else:
                cols[f"s{i}"].append(float("nan"))  # filled by the batch below
        elif entry.name == "dedup":
            cols[f"s{i}"].append(True)
        elif entry.name == "caption_concept" and params.get("words") is None:
            cols[f"s{i}"].append(bool(entry.fn(sample, words=list(vocab or ()))))
        else:
            cols[f"s{i}"].append(bool(entry.fn(sample, **params)))


def _model_columns(
    cols: dict[str, list],
    resolved: list,
    model_steps: list[int],
    embed_steps: list[int],
    pending_images: list[bytes],
    pending_caps: list[str],
) -> None:
    """The columns a model fills for the whole shard: embeddings for dedup, checkpoint CLIP scores."""
    for i in embed_steps:  # the embedding model's unit vectors, float32 bytes per sample
        from curation.dedup import embed_images

        emb = embed_images(pending_images, resolved[i][1]["checkpoint"]) if pending_images else []
        cols[f"e{i}"] = [np.asarray(v, np.float32).tobytes() for v in emb]
    for i in model_steps:
        if i in embed_steps:
            continue
        score = _checkpoint_scorer(resolved[i][1]["checkpoint"])
        out: list[float] = []
        for b0 in range(0, len(pending_images), 256):
            out.extend(score(pending_images[b0 : b0 + 256], pending_caps[b0 : b0 + 256]).tolist())
        cols[f"s{i}"] = out


def _scan_tasks(cfg: ViewConfig, opened: dict[str, Any], steps, vocab) -> list[ScanTask]:
    return [
        ScanTask(
            name,
            url,
            cfg.seed,
            steps,
            cfg.needs_labels,
            tuple(vocab) if vocab else None,
            src.sizes[url],
            src.counted_by,
            cfg.sources,
        )
        for name, src in opened.items()
        for url in src.urls
    ]


def _concat(parts: Iterable[dict[str, list]], skipped: Counter | None = None):
    import pandas as pd

    frames = []
    for p in parts:
        p = dict(p)
        counts = p.pop("skipped", None)
        if skipped is not None and counts:
            skipped.update(json.loads(counts))
        if len(p["key"]):
            frames.append(pd.DataFrame(p))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def resolve_engine(engine: str, num_shards: int) -> str:
    """``auto``: Ray Data when Ray is running and there are at least :data:`RAY_MIN_SHARDS` shards
    (below that a Ray Data job costs more than it saves), else this process."""
    if engine not in ENGINES + ("auto",):
        raise ValueError(f"engine must be one of {', '.join(ENGINES)} or auto, got {engine!r}")
    if engine != "auto":
        return engine
    import ray

    return "ray" if ray.is_initialized() and num_shards >= RAY_MIN_SHARDS else "local"


RAY_MIN_SHARDS = 2


def scan(tasks: list[ScanTask], engine: str = "local", skipped: Counter | None = None):
    """The scan table of every shard: a pandas DataFrame, one row per sample.

    ``skipped``, when given, is updated with what the scan skipped, by reason (bad samples and
    broken shards: :data:`curation.sources.SKIP_REASONS`).
    """
    engine = resolve_engine(engine, len(tasks))
    if engine == "local" or not tasks:
        return _concat((scan_shard(t) for t in tasks), skipped)
    import ray

    if not ray.is_initialized():
        raise RuntimeError("engine 'ray' needs a running Ray (ray.init() or `tbench run`); use engine 'local'")
    data = _ray_data()
    # tasks travel as JSON text: Arrow cannot type their nested parameters
    ds = data.from_items([{"task": json.dumps(asdict(t))} for t in tasks], override_num_blocks=len(tasks))
    ds = ds.map(_scan_row)
    return _concat((r["cols"] for r in ds.iter_rows()), skipped)


def _scan_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"cols": scan_shard(ScanTask(**json.loads(row["task"])))}


def _ray_data():
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ray.data


# --------------------------------------------------------------------------- select


def _reference_hashes(
    names: Iterable[str], data_root: Path, data_dir: Path | None, sets_config: dict | None
) -> dict[str, np.ndarray]:
    from curation.dedup import hash_images
    from downstream.sets import load_split, resolve_set

    out = {}
    for name in names:
        entry = resolve_set(name, sets_config)
        try:
            split = load_split(entry, "test", data_root, data_dir=data_dir)
        except ValueError as exc:  # images of mixed sizes: hash them at one size (pHash resizes anyway)
            if "differ in size" not in str(exc):
                raise
            split = load_split(entry, "test", data_root, data_dir=data_dir, image_size=64)
        out[name] = hash_images(split.images)
    return out


def select(
    table, cfg: ViewConfig, steps, names: list[str], *, references: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, int], dict[str, Any]]:
    """Apply the steps in order to the scan table; return (surviving mask, funnel, reports)."""
    n = len(table)
    alive = np.ones(n, dtype=bool)
    funnel: dict[str, int] = {}
    reports: dict[str, Any] = {}
    rank = table["rank"].to_numpy() if n else np.zeros(0, np.int64)
    for i, ((name, params), step) in enumerate(zip(steps, names)):
        before = int(alive.sum())
        col = table[f"s{i}"].to_numpy() if n else np.zeros(0)
        if name == "clip_score":
            score = col.astype(np.float64)
            if np.isnan(score[alive]).any():
                bad = table["key"].to_numpy()[alive & np.isnan(score)][:3].tolist()
                raise ValueError(
                    f"curation step {step!r}: samples {bad} have no score (json field "
                    f"{params['field']!r} missing); use scorer: checkpoint or another field"
                )
            if params["threshold"] is not None:
                alive &= score >= float(params["threshold"])
            else:
                idx = np.nonzero(alive)[0]
                keep = int(math.ceil(float(params["top_fraction"]) * len(idx)))
                order = idx[np.lexsort((rank[idx], -score[idx]))]  # best score first, ties by rank
                mask = np.zeros(n, dtype=bool)
                mask[order[:keep]] = True
                alive &= mask
                reports[step] = {
                    "kept_fraction": params["top_fraction"],
                    "score_cutoff": float(score[order[keep - 1]]) if keep else None,
                }
        elif name == "dedup" and params.get("model") is not None:
            reports[step] = _dedup_embeddings(table, i, params, step, alive, rank, cfg, references or {})
        elif name == "dedup":
            from curation.dedup import DEFAULT_THRESHOLD, matches_reference, near_duplicates

            threshold = int(params["threshold"] if params["threshold"] is not None else DEFAULT_THRESHOLD)
            hashes = (
                np.stack([table["h0"].to_numpy(np.uint64), table["h1"].to_numpy(np.uint64)], axis=1)
                if n
                else np.zeros((0, 2), np.uint64)
            )
            rep: dict[str, Any] = {"threshold": threshold}
            if params["within"]:
                idx = np.nonzero(alive)[0]
                res = near_duplicates(hashes[idx], threshold=threshold, order=rank[idx])
                alive[idx[res.remove]] = False
                rep.update(within_removed=int(res.remove.sum()), clusters=int(res.num_clusters))
            against = _against(params, cfg)
            if against:
                overlap = {}
                for set_name in against:
                    ref = (references or {}).get(set_name)
                    if ref is None:
                        raise ValueError(f"curation step {step!r}: no reference hashes for downstream set {set_name!r}")
                    idx = np.nonzero(alive)[0]
                    hit = matches_reference(hashes[idx], ref, threshold=threshold) if len(idx) else np.zeros(0, bool)
                    overlap[set_name] = int(hit.sum())
                    alive[idx[hit]] = False
                rep["overlap"] = overlap
            reports[step] = rep
        else:
            alive &= col.astype(bool)
        funnel[step] = before - int(alive.sum())
    return alive, funnel, reports


def _dedup_embeddings(
    table,
    i: int,
    params: dict[str, Any],
    step: str,
    alive: np.ndarray,
    rank: np.ndarray,
    cfg: ViewConfig,
    references: dict,
) -> dict[str, Any]:
    """``dedup`` with a model: cosine >= ``cosine`` between the model's embeddings, within the
    survivors (one per cluster kept) and against downstream test sets; updates ``alive``."""
    from curation.dedup import DEFAULT_COSINE, embedding_duplicates, matches_reference_embeddings

    cosine = float(params["cosine"] if params["cosine"] is not None else DEFAULT_COSINE)
    n = len(table)
    emb = np.stack([np.frombuffer(b, np.float32) for b in table[f"e{i}"]]) if n else np.zeros((0, 1), np.float32)
    rep: dict[str, Any] = {"method": "embedding", "model": params["model"], "cosine": cosine}
    if params["within"]:
        idx = np.nonzero(alive)[0]
        res = embedding_duplicates(emb[idx], cosine, order=rank[idx])
        alive[idx[res.remove]] = False
        rep.update(within_removed=int(res.remove.sum()), clusters=int(res.num_clusters))
    against = _against(params, cfg)
    if against:
        overlap = {}
        for set_name in against:
            ref = references.get((set_name, params["checkpoint"]))
            if ref is None:
                raise ValueError(f"curation step {step!r}: no reference embeddings for downstream set {set_name!r}")
            idx = np.nonzero(alive)[0]
            hit = matches_reference_embeddings(emb[idx], ref, cosine) if len(idx) else np.zeros(0, bool)
            overlap[set_name] = int(hit.sum())
            alive[idx[hit]] = False
        rep["overlap"] = overlap
    return rep


def _dedup_checkpoints(steps, checkpoints: dict[str, str] | None) -> tuple:
    """``steps`` with each model ``dedup`` step's ``checkpoint``: ``checkpoints[model]`` (a declared
    model's imported checkpoint, given by the executor) or ``model`` itself as a checkpoint file."""
    out = []
    for name, p in steps:
        if name == "dedup" and p.get("model") is not None:
            path = (checkpoints or {}).get(p["model"], p["model"])
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"curation step dedup: model {p['model']!r} is neither a model of the spec "
                    f"(models:) nor a harness checkpoint file (no file at {path})"
                )
            p = {**p, "checkpoint": str(path)}
        out.append((name, p))
    return tuple(out)


def _reference_embeddings(
    steps, cfg: ViewConfig, data_root: Path, data_dir: Path | None, sets_config: dict | None
) -> dict[tuple[str, str], np.ndarray]:
    """(set, checkpoint) -> unit embeddings of the set's test images, for each model ``dedup`` step's ``against``."""
    from curation.dedup import _embedder, embed_images
    from downstream.sets import load_split, resolve_set

    out: dict[tuple[str, str], np.ndarray] = {}
    for name, p in steps:
        if name != "dedup" or p.get("model") is None:
            continue
        for set_name in _against(p, cfg):
            if (set_name, p["checkpoint"]) not in out:
                _, meta, resize, _ = _embedder(p["checkpoint"])  # real sets at the model's size, as it evaluates
                split = load_split(
                    resolve_set(set_name, sets_config),
                    "test",
                    data_root,
                    data_dir=data_dir,
                    image_size=int(meta["image_size"]),
                    **resize,
                )
                out[(set_name, p["checkpoint"])] = embed_images(list(split.images), p["checkpoint"])
    return out


def _against(params: dict[str, Any], cfg: ViewConfig) -> list[str]:
    a = params.get("against")
    if not a:
        return []
    if a == "all":
        return list(cfg.against)
    if isinstance(a, str):
        return [a]
    return list(a)


def class_partners(num_classes: int, groups: dict[str, str], vocab: list[str] | None, seed: int) -> np.ndarray:
    """Each class's confusable partner for ``class_dependent`` noise: the next class of its
    concept group in a seeded cycle (classes alone in their group, or without groups: c + 1)."""
    partner = (np.arange(num_classes) + 1) % num_classes
    if vocab and groups:
        by_group: dict[str, list[int]] = {}
        for c, name in enumerate(vocab):
            by_group.setdefault(groups.get(name, ""), []).append(c)
        for members in by_group.values():
            if len(members) < 2:
                continue
            cyc = sorted(members, key=lambda c: (_hash(seed, "partner", vocab[c]), c))
            for j, c in enumerate(cyc):
                partner[c] = cyc[(j + 1) % len(cyc)]
    return partner


def add_label_noise(
    keys: list[str],
    labels: np.ndarray,
    num_classes: int,
    rate: float,
    seed: int,
    model: str = "symmetric",
    partners: np.ndarray | None = None,
) -> np.ndarray:
    """Flip exactly ``round(rate * n)`` labels (the lowest by hash(key, seed)); return the new labels."""
    labels = np.asarray(labels, dtype=np.int64)
    out = labels.copy()
    n = len(labels)
    if num_classes < 2 or n == 0 or rate <= 0:
        return out
    n_flip = int(round(rate * n))
    order = sorted(range(n), key=lambda i: (_hash(keys[i], seed, "noise"), i))[:n_flip]
    for i in order:
        if model == "symmetric":
            out[i] = (labels[i] + 1 + _hash(keys[i], seed, "noise-label") % (num_classes - 1)) % num_classes
        else:
            out[i] = int(partners[labels[i]])
    return out


# --------------------------------------------------------------------------- build


def _config_matches(manifest: dict, cfg: ViewConfig) -> bool:
    return manifest.get("version") == VIEW_VERSION and json.loads(json.dumps(manifest.get("config"))) == json.loads(
        json.dumps(cfg.to_dict())
    )


def build_view(
    cfg: ViewConfig,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    engine: str = "local",
    data_dir: str | os.PathLike | None = None,
    sets_config: dict | None = None,
    checkpoints: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build the view ``cfg`` from the sources under ``data_root`` into ``out_dir``; return its manifest.

    ``engine``: ``local`` (this process), ``ray`` (scan and write as Ray Data jobs over the
    shards; needs a running Ray) or ``auto`` (:func:`resolve_engine`). ``data_dir``: where real and
    declared sources and sets with relative paths live. ``sets_config``: declared downstream sets
    (for ``dedup`` against them).
    ``checkpoints``: model name -> harness checkpoint of ``dedup`` steps with a declared ``model``
    (a ``model`` not in it is itself a checkpoint file).
    Idempotent (an existing view with the same config is returned as is) and atomic.

    Three phases over one :class:`_Build`: :func:`_scan_phase` (every sample of every shard),
    :func:`_select_phase` (the curation steps, the label check, the size subset and label noise)
    and :func:`_write_phase` (shards or an index, sizes and the manifest, swapped into place).
    """
    if not isinstance(cfg, ViewConfig):
        raise TypeError(f"build_view expects a ViewConfig, got {type(cfg).__name__}")
    out_dir = Path(out_dir)
    existing = _existing_view(cfg, out_dir)
    if existing is not None:
        return existing
    b = _set_up(cfg, Path(data_root), Path(data_dir) if data_dir is not None else None, checkpoints)
    _scan_phase(b, engine)
    _select_phase(b, sets_config)
    _write_phase(b, out_dir)
    logger.info(
        "view %s/%s: %d of %d requested (pool %d, funnel %s)",
        cfg.source_label,
        cfg.curation_name,
        len(b.chosen),
        cfg.size,
        b.pool,
        b.funnel,
    )
    return json.loads((out_dir / MANIFEST).read_text())


@dataclass
class _Build:
    """What :func:`build_view`'s phases share: set up, then filled in by scan, select and write."""

    cfg: ViewConfig
    data_root: Path
    data_dir: Path | None
    steps: tuple  # (step name, params) after validation, dedup models resolved to checkpoints
    names: list[str]  # the steps' report names
    vocab: list[str] | None  # the class vocabulary (None: no world.json and not needed)
    own: list[str] | None  # the view's own classes (e.g. real.imagenet's), when it has them
    engine: str = "local"
    opened: dict[str, Any] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    table: Any = None  # scan: one row per sample
    pool: int = 0
    funnel: dict[str, int] = field(default_factory=dict)  # select: step -> samples removed, in step order
    reports: Any = None
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)
    chosen: Any = None  # select: the rows kept
    clean: np.ndarray | None = None  # the chosen rows' labels before noise, and after
    noisy: np.ndarray | None = None
    labels: dict[str, Any] = field(default_factory=dict)  # label_accuracy, achieved_noise(_per_class)


def _existing_view(cfg: ViewConfig, out_dir: Path) -> dict[str, Any] | None:
    """The manifest of the view already at ``out_dir`` if it is ``cfg``'s; raise if the folder is not a view's."""
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
    return None


def _set_up(cfg: ViewConfig, data_root: Path, data_dir: Path | None, checkpoints: dict[str, str] | None) -> _Build:
    """Validate the steps and find the class vocabulary, before anything is read."""
    resolved = validate_steps(cfg.curation)
    steps = _dedup_checkpoints(tuple((e.name, p) for e, p in resolved), checkpoints)
    names = step_names(cfg.curation)
    vocab = read_vocabulary(data_root)
    own = own_classes(cfg) if cfg.needs_labels else None
    if own is not None:  # e.g. real.imagenet: its 1000 classes, not the world's concepts
        vocab = own
    if cfg.needs_labels and vocab is None:
        raise FileNotFoundError(
            f"labelled views need the class vocabulary in {data_root / 'world.json'} "
            "('concepts'); write the world there with `tbench world`"
        )
    if any(n == "caption_concept" and p.get("words") is None for n, p in steps) and vocab is None:
        raise ValueError(
            "curation step caption_concept without 'words' uses the world's vocabulary, but "
            f"{data_root / 'world.json'} is missing; give words: [...]"
        )
    return _Build(cfg, data_root, data_dir, steps, names, vocab, own)


def _scan_phase(b: _Build, engine: str) -> None:
    """Open the sources and scan every shard (with ``engine``) into one table of samples."""
    b.opened = open_sources(b.cfg, b.data_root, b.data_dir)
    tasks = _scan_tasks(b.cfg, b.opened, b.steps, b.vocab)
    b.engine = resolve_engine(engine, len(tasks))
    b.table = scan(tasks, b.engine, b.skipped)
    b.pool = len(b.table)


def _select_phase(b: _Build, sets_config: dict | None) -> None:
    """Run the curation steps, drop unlabelled samples, take the size subset and add label noise."""
    cfg, steps = b.cfg, b.steps
    against = sorted({s for n, p in steps if n == "dedup" and p.get("model") is None for s in _against(p, cfg)})
    references: dict = _reference_hashes(against, b.data_root, b.data_dir, sets_config) if against else {}
    references.update(_reference_embeddings(steps, cfg, b.data_root, b.data_dir, sets_config))
    alive, b.funnel, b.reports = select(b.table, cfg, steps, b.names, references=references)
    if cfg.needs_labels:
        alive = _drop_unlabelled(b, alive)
    chosen_idx = _take_subset(b, alive)
    b.chosen = b.table.iloc[chosen_idx].reset_index(drop=True) if b.pool else b.table
    if cfg.needs_labels:
        _add_label_noise(b)


def _drop_unlabelled(b: _Build, alive: np.ndarray) -> np.ndarray:
    """``alive`` less the samples without a label, counted in the funnel."""
    from curation.sources import resolve_source

    labels = b.table["label"].to_numpy(np.int64) if b.pool else np.zeros(0, np.int64)
    removed = alive & (labels < 0)
    if any(resolve_source(name, b.cfg.sources).kind != "labelled" for name in b.cfg.weights):
        b.funnel[LABEL_STEP] = int(removed.sum())
    elif removed.any():  # a labelled source's class past the vocabulary (no num_classes declared to skip it)
        b.funnel["invalid_label"] = int(removed.sum())
    return alive & (labels >= 0)


def _take_subset(b: _Build, alive: np.ndarray) -> np.ndarray:
    """The size subset: per source the lowest ranks; a mixture merges them by the divisor rule."""
    cfg, table = b.cfg, b.table
    src_col = table["source"].to_numpy() if b.pool else np.zeros(0, object)
    rank = table["rank"].to_numpy() if b.pool else np.zeros(0, np.int64)
    ranked = {name: np.nonzero(alive & (src_col == name))[0] for name in cfg.weights}
    ranked = {k: v[np.argsort(rank[v], kind="stable")] for k, v in ranked.items()}
    order = mixture_order({k: len(v) for k, v in ranked.items()}, cfg.weights)[: cfg.size]
    take = {k: 0 for k in ranked}
    for k in order:
        take[k] += 1
    chosen_idx = np.sort(np.concatenate([ranked[k][: take[k]] for k in ranked] or [np.zeros(0, np.int64)]))
    b.funnel[SUBSET_STEP] = int(alive.sum()) - len(chosen_idx)
    if len(chosen_idx) < cfg.size:
        logger.warning(
            "view %s/%s: %d samples survive curation, fewer than the %d requested",
            cfg.source_label,
            cfg.curation_name,
            len(chosen_idx),
            cfg.size,
        )
    requested = allocate(cfg.size, cfg.weights)
    b.per_source = {
        name: {
            "pool_size": int((src_col == name).sum()),
            "size": int(take[name]),
            "requested_size": int(requested[name]),
        }
        for name in cfg.weights
    }
    return chosen_idx


def _add_label_noise(b: _Build) -> None:
    """The chosen rows' clean and noisy labels, and what the noise achieved (labelled views only)."""
    b.labels = {"label_accuracy": None, "achieved_noise": 0.0, "achieved_noise_per_class": None}
    if not len(b.chosen):
        return
    cfg, vocab = b.cfg, b.vocab
    keys = b.chosen["key"].tolist()
    clean = b.chosen["label"].to_numpy(np.int64)
    truth = b.chosen["truth"].to_numpy(np.int64)
    if (truth >= 0).all():
        b.labels["label_accuracy"] = float((clean == truth).mean())
    k = len(vocab)
    partners = class_partners(k, {} if b.own is not None else read_concept_groups(b.data_root), vocab, cfg.seed)
    noisy = add_label_noise(keys, clean, k, float(cfg.label_noise), cfg.seed, cfg.noise_model, partners)
    b.labels["achieved_noise"] = float((noisy != clean).mean())
    b.labels["achieved_noise_per_class"] = {
        vocab[c]: round(float((noisy[clean == c] != c).mean()), 4) for c in np.unique(clean)
    }
    b.clean, b.noisy = clean, noisy


def _write_phase(b: _Build, out_dir: Path) -> None:
    """Write the chosen samples (shards or an index), their sizes and the manifest; swap into place."""
    cfg = b.cfg
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        if cfg.materialize == "shards":
            sizes = _write_shards(cfg, b.chosen, b.noisy, b.clean, tmp, b.opened, b.engine)
            shard_list = [f"{SHARDS_DIR}/{n}" for n in sorted(sizes)]
        else:
            sizes = _write_index(b.chosen, b.noisy, b.clean, tmp)
            shard_list = sorted(sizes)
        (tmp / SIZES_FILE).write_text(json.dumps(sizes, indent=1, sort_keys=True))
        manifest = _manifest(b, shard_list)
        if b.pool - sum(b.funnel.values()) != len(b.chosen):  # pragma: no cover - an internal invariant
            raise RuntimeError(f"view funnel does not add up: pool {b.pool}, removed {b.funnel}, kept {len(b.chosen)}")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))  # key order kept: the funnel is in step order
        _swap_into_place(tmp, out_dir, cfg)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _manifest(b: _Build, shard_list: list[str]) -> dict[str, Any]:
    """The view's ``manifest.json`` (key order is the file's)."""
    cfg, vocab = b.cfg, b.vocab
    return {
        "version": VIEW_VERSION,
        "config": cfg.to_dict(),
        "source": cfg.source_label,
        "mixture": cfg.to_dict()["mixture"],
        "curation": cfg.curation_name,
        "curation_steps": cfg.to_dict()["curation"],
        "requested_size": cfg.size,
        "size": int(len(b.chosen)),
        "pool_size": int(b.pool),
        "skipped_samples": sum(n for why, n in b.skipped.items() if why not in NOT_SAMPLE_REASONS),
        "skipped": dict(sorted(b.skipped.items())),
        "needs_labels": cfg.needs_labels,
        "label_noise": float(cfg.label_noise),
        "noise_model": cfg.noise_model,
        "achieved_noise": b.labels.get("achieved_noise"),
        "achieved_noise_per_class": b.labels.get("achieved_noise_per_class"),
        "label_accuracy": b.labels.get("label_accuracy"),
        "num_classes": len(vocab) if vocab else 0,
        "class_names": list(vocab) if vocab else [],
        "funnel": b.funnel,
        "steps": b.reports,
        "per_source": b.per_source,
        "seed": cfg.seed,
        "materialize": cfg.materialize,
        "engine": b.engine,
        "shards": shard_list,
    }


@dataclass(frozen=True)
class WriteTask:
    source: str
    url: str
    out: str
    labels: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # key -> (label, clean label); {} = all kept, unlabelled
    keys: tuple[str, ...] = ()
    size: int = 0  # the source shard's sample count
    counted_by: str = ""
    sources: dict[str, dict] | None = None
    needs_labels: bool = False


def write_shard(task: WriteTask) -> int:
    """Copy the kept samples of one source shard into a new shard; return how many were written."""
    import webdataset as wds

    src = _shard_reader(task.source, task.url, task.size, task.counted_by, task.sources)
    want = set(task.keys)
    n = 0
    with wds.TarWriter(task.out, encoder=False, mtime=0, format=tarfile.USTAR_FORMAT) as tw:
        for s in src.iter_shard(task.url):
            if s["key"] not in want:
                continue
            meta = dict(s.get("json") or {})
            out = {"__key__": s["key"], s.get("image_ext") or "png": s["image"], "txt": (s.get("txt") or "").encode()}
            if task.needs_labels:
                label, clean = task.labels[s["key"]]
                meta["view"] = {"label": label, "clean_label": clean, "noisy": label != clean}
                out["cls"] = str(int(label)).encode()
            out["json"] = json.dumps(meta, sort_keys=True).encode()
            tw.write(out)
            n += 1
    return n


def _write_shards(
    cfg: ViewConfig, chosen, noisy, clean, tmp: Path, opened: dict[str, Any], engine: str
) -> dict[str, int]:
    shard_dir = tmp / SHARDS_DIR
    shard_dir.mkdir()
    tasks = []
    if len(chosen):
        for j, ((source, url), grp) in enumerate(chosen.groupby(["source", "url"], sort=True)):
            labels = {}
            if cfg.needs_labels:
                idx = grp.index.to_numpy()
                labels = {k: (int(noisy[i]), int(clean[i])) for k, i in zip(grp["key"], idx)}
            tasks.append(
                WriteTask(
                    source,
                    url,
                    str(shard_dir / f"shard-{j:06d}.tar"),
                    labels,
                    tuple(grp["key"]),
                    opened[source].sizes[url],
                    opened[source].counted_by,
                    cfg.sources,
                    cfg.needs_labels,
                )
            )
    if engine == "ray" and tasks:
        data = _ray_data()
        rows = [{"task": json.dumps(asdict(t))} for t in tasks]
        ds = data.from_items(rows, override_num_blocks=len(tasks)).map(_write_row)
        counts = {Path(r["out"]).name: int(r["n"]) for r in ds.iter_rows()}
    else:
        counts = {Path(t.out).name: write_shard(t) for t in tasks}
    for t in tasks:
        if counts[Path(t.out).name] != len(t.keys):
            raise RuntimeError(
                f"shard {t.url}: wrote {counts[Path(t.out).name]} of {len(t.keys)} kept samples "
                "(the source changed while the view was built?)"
            )
    if not tasks:  # an empty view still has one (empty) shard, so readers find the folder well-formed
        import webdataset as wds

        with wds.TarWriter(str(shard_dir / "shard-000000.tar"), encoder=False, mtime=0, format=tarfile.USTAR_FORMAT):
            pass
        counts = {"shard-000000.tar": 0}
    (shard_dir / SIZES_FILE).write_text(json.dumps(counts, indent=1, sort_keys=True))
    return counts


def _write_row(row: dict[str, Any]) -> dict[str, Any]:
    task = WriteTask(**json.loads(row["task"]))
    return {"out": task.out, "n": write_shard(task)}


def _write_index(chosen, noisy, clean, tmp: Path) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(chosen)
    table = pa.table(
        {
            "url": pa.array(chosen["url"].tolist() if n else [], pa.string()),
            "key": pa.array(chosen["key"].tolist() if n else [], pa.string()),
            "source": pa.array(chosen["source"].tolist() if n else [], pa.string()),
            "label": pa.array(noisy.tolist() if noisy is not None else [None] * n, pa.int64()),
            "clean_label": pa.array(clean.tolist() if clean is not None else [None] * n, pa.int64()),
        }
    )
    pq.write_table(table, tmp / INDEX_FILE)
    return {u: int(c) for u, c in chosen.groupby("url").size().items()} if n else {}


def _swap_into_place(tmp: Path, out_dir: Path, cfg: ViewConfig) -> None:
    def same_view(d: Path) -> bool:  # another builder won the race: keep theirs if it is this view
        mpath = d / MANIFEST
        return mpath.is_file() and _config_matches(json.loads(mpath.read_text()), cfg)

    swap_dir_into_place(tmp, out_dir, same_view)
