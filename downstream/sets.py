"""The downstream registry: what each set is, where its data lives and how a split is read.

An entry (:class:`DownstreamSet`) knows how to load its set, its headline metric (``top1``, or
``balanced_acc`` -- mean per-class recall -- for imbalanced sets such as camera traps) and its
chance level. Four kinds of entry (``origin``):

- ``world``: the nine sets of the embedded synthetic world, and
- ``package``: two sets of real images shipped in installed packages (digits, textures). Both
  live at ``<data root>/downstream/<name>/`` as a ``datasets.DatasetDict`` saved with
  ``save_to_disk`` (splits ``train``, ``validation``, ``test``; features ``image`` and ``label``),
  written by ``tbench world``, and are returned as stored (32x32).
- ``real``: the study's nine real sets (``real.cifar100`` ... ``real.cassava``). Each looks in
  ``<data dir>/<folder>`` (a dataset saved with ``save_to_disk``, an image folder or webdataset
  shards) and then in the local Hugging Face cache for the usual hub copy (read offline; nothing
  is ever downloaded). Absent data is answered with a message naming every place looked at and
  exactly what to provide.
- ``custom``: a set declared in a spec from plain data (:meth:`DownstreamSet.from_config`): a
  saved dataset, a hub dataset in the local cache, an image folder or webdataset shards.

The data dir (``data_dir``) holds real and custom sets given by relative path; it defaults to
``$TBENCH_DATA``, else ``~/tbench-data``.

Splits. Where the data has no validation split, one is carved out of the training data: a
seeded, per-class (stratified) fraction (``carve_fraction``, default 0.1; at least one example of
every class that has two or more), disjoint from what stays in ``train``. Where it has no test
split either, ``test_fraction`` (default 0.2) of the training data is carved first, the same way.
Both are recorded in :attr:`SplitData.info`.

Images of real sets vary in size. Given ``image_size`` S, :func:`load_split` resizes each image
so its shorter side is S (bicubic) and centre-crops S x S, the usual evaluation preprocessing;
without it, images of differing sizes are an error. Decoded splits are cached in-process.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from downstream import loaders
from downstream.loaders import DataFormatError, DataNotFoundError
from downstream.metrics import chance_level
from harness.core.layout import SPLITS, default_data_dir
from harness.core.registry import Registry

METRICS = ("top1", "balanced_acc")
ORIGINS = ("world", "package", "real", "custom")
FORMATS = ("world", "hf_disk", "hf_hub", "imagefolder", "wds")
USER_FORMATS = ("hf_disk", "hf_hub", "imagefolder", "wds")
RESIZE_INTERPOLATION = "bicubic"

__all__ = [
    "SPLITS",
    "METRICS",
    "ORIGINS",
    "FORMATS",
    "USER_FORMATS",
    "DownstreamSet",
    "SplitData",
    "DOWNSTREAM",
    "REAL_SETS",
    "resolve_set",
    "load_split",
    "split_info",
    "clear_cache",
    "default_data_dir",
    "carve_indices",
    "resize_center_crop",
    "DataNotFoundError",
    "DataFormatError",
]

# The fields of a plain-data definition (from_config / to_config). ``path`` and ``hub`` hold the
# location: ``hub`` is the dataset id of an hf_hub set, or for a folder set the hub copy tried
# when the folder is absent.
_DATA_FIELDS = (
    "format",
    "path",
    "hub",
    "config_name",
    "splits",
    "image_key",
    "label_key",
    "class_names",
    "carve_fraction",
    "carve_seed",
    "test_fraction",
    "where",
    "metric",
    "origin",
)
_DOC_FIELDS = ("description", "hint")
CONFIG_FIELDS = _DATA_FIELDS + _DOC_FIELDS


class _FrozenDict(dict):
    """A read-only dict: hashable, picklable (Ray ships entries to workers) and JSON-serialisable."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("a downstream set's mappings are read-only; build a new entry (dataclasses.replace)")

    __setitem__ = __delitem__ = __ior__ = _readonly  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass(frozen=True)
class DownstreamSet:
    """A registered (or user-declared) downstream set: how to load it and how to score it."""

    name: str
    metric: str  # headline metric: "top1" or "balanced_acc"
    description: str
    origin: str  # "world", "package", "real" or "custom"
    format: str = "world"  # world | hf_disk | hf_hub | imagefolder | wds
    # A path (absolute, or relative to the data dir; for world/package sets relative to the data
    # root) or, for hf_hub, a hub dataset id such as "uoft-cs/cifar100".
    location: str = ""
    config_name: str | None = None  # hub configuration (hf_hub, or the hub fallback)
    # Folder formats: a hub dataset id looked up in the local HF cache when the folder is absent.
    hub: str | None = None
    # Our split -> the source's split (for wds also a shard pattern); None: absent (carved from
    # train). A split not named is found by its usual names (train|trainval, validation|val|valid|dev, test).
    splits: Mapping[str, str | None] | None = field(default=None, hash=False)
    image_key: str | None = None  # image column (HF; default image) or extensions "jpg;png;webp" (wds)
    label_key: str | None = None  # label column (HF; default label) or extension "cls" (wds)
    class_names: tuple[str, ...] | None = None  # override of the names found in the data
    carve_fraction: float = 0.1  # validation carved from train when the source has none
    carve_seed: int = 0
    test_fraction: float = 0.2  # test carved from train when the source has none
    where: Mapping[str, Any] | None = field(default=None, hash=False)  # keep only rows whose columns equal these (HF)
    hint: str = ""  # what to provide when the data is absent (added to the error)

    def __post_init__(self) -> None:
        who = f"downstream set {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"downstream set names must be non-empty strings, got {self.name!r}")
        if self.metric not in METRICS:
            raise ValueError(f"{who}: metric {self.metric!r} is not valid; valid: {', '.join(METRICS)}")
        if self.origin not in ORIGINS:
            raise ValueError(f"{who}: origin {self.origin!r} is not valid; valid: {', '.join(ORIGINS)}")
        if self.format not in FORMATS:
            raise ValueError(f"{who}: format {self.format!r} is not valid; valid: {', '.join(FORMATS)}")
        if (self.format == "world") != (self.origin in ("world", "package")):
            raise ValueError(
                f"{who}: format 'world' goes with origins world and package only "
                f"(format {self.format!r}, origin {self.origin!r})"
            )
        if not self.location:
            if self.format != "world":
                field_name = "hub" if self.format == "hf_hub" else "path"
                raise ValueError(f"{who}: {field_name} is required for format {self.format!r}")
            object.__setattr__(self, "location", f"downstream/{self.name}")
        if not isinstance(self.location, str):
            raise ValueError(f"{who}: path must be a string, got {self.location!r}")
        if self.format == "hf_hub" and self.hub:
            raise ValueError(f"{who}: format hf_hub names its dataset in hub only")
        for fname in ("config_name", "hub", "image_key", "label_key"):
            v = getattr(self, fname)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{who}: {fname} must be a non-empty string, got {v!r}")
        if self.splits is not None:
            if not isinstance(self.splits, Mapping):
                raise ValueError(
                    f"{who}: splits must map split names ({', '.join(SPLITS)}) to the source's split "
                    f"names, got {self.splits!r}"
                )
            bad = [k for k in self.splits if k not in SPLITS]
            if bad:
                raise ValueError(f"{who}: splits names {bad[0]!r}, which is not a split; valid: {', '.join(SPLITS)}")
            for k, v in self.splits.items():
                if v is not None and (not isinstance(v, str) or not v):
                    raise ValueError(f"{who}: splits.{k} must be a source split name or null, got {v!r}")
            if "train" in self.splits and self.splits["train"] is None:
                raise ValueError(f"{who}: splits.train cannot be null: every set needs training data")
            named = [v for v in self.splits.values() if v is not None]
            if len(set(named)) != len(named):
                raise ValueError(
                    f"{who}: splits maps two of our splits to the same source split ({self.splits!r}); "
                    f"leave validation (or test) out to carve it from train instead"
                )
            object.__setattr__(self, "splits", _FrozenDict({k: self.splits[k] for k in SPLITS if k in self.splits}))
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names) or not names:
                raise ValueError(f"{who}: class_names must be a non-empty list of non-empty strings")
            names = tuple(names)
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"{who}: class_names repeats {dup[:3]}")
            object.__setattr__(self, "class_names", names)
        for fname in ("carve_fraction", "test_fraction"):
            v = getattr(self, fname)
            if not _is_num(v) or not 0.0 < float(v) < 1.0:
                raise ValueError(f"{who}: {fname} must be a number between 0 and 1 (exclusive), got {v!r}")
            object.__setattr__(self, fname, float(v))
        if not _is_int(self.carve_seed) or self.carve_seed < 0:
            raise ValueError(f"{who}: carve_seed must be a non-negative integer, got {self.carve_seed!r}")
        object.__setattr__(self, "carve_seed", int(self.carve_seed))
        if self.where is not None:
            if not isinstance(self.where, Mapping) or not self.where:
                raise ValueError(f"{who}: where must map column names to values, got {self.where!r}")
            for k, v in self.where.items():
                if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
                    raise ValueError(f"{who}: where.{k} must be a string or number, got {v!r}")
            object.__setattr__(self, "where", _FrozenDict(sorted(self.where.items())))

    # ------------------------------------------------------------------ where the data lives
    @property
    def relative_dir(self) -> str:
        """World and package sets: the folder under the data root."""
        return self.location

    def directory(self, data_root: str | Path) -> Path:
        return Path(data_root) / self.location

    def chance(self, num_classes: int) -> float:
        """Chance level of the headline metric: ``1 / num_classes`` (top-1 and balanced accuracy alike)."""
        return chance_level(self.metric, num_classes)

    # ------------------------------------------------------------------ plain data
    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any]) -> DownstreamSet:
        """A set from plain (YAML-like) data; errors name the field at fault and what is valid.

        Fields: ``format`` (hf_disk, hf_hub, imagefolder, wds), ``path`` (folder formats; absolute
        or under the data dir) or ``hub`` (hf_hub: a dataset id in the local HF cache), ``metric``
        (top1), ``splits`` ({train|validation|test: source split or null}), ``image_key``,
        ``label_key``, ``class_names``, ``carve_fraction`` (0.1), ``carve_seed`` (0),
        ``test_fraction`` (0.2), ``config_name``, ``where``, ``description``, ``hint``; ``origin``
        defaults to custom (the output of :meth:`to_config` round-trips).
        """
        who = f"downstream set {name!r}"
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{who}: expected a mapping of fields ({', '.join(CONFIG_FIELDS)}), got {cfg!r}")
        unknown = [k for k in cfg if k not in CONFIG_FIELDS]
        if unknown:
            raise ValueError(f"{who}: unknown field {unknown[0]!r}; valid: {', '.join(CONFIG_FIELDS)}")
        c = {k: v for k, v in cfg.items() if v is not None}
        origin = c.get("origin", "custom")
        if origin not in ORIGINS:
            raise ValueError(f"{who}: origin {origin!r} is not valid; valid: {', '.join(ORIGINS)}")
        fmt = c.get("format")
        valid_formats = FORMATS if origin in ("world", "package") else USER_FORMATS
        if fmt is None:
            raise ValueError(f"{who}: format is required; valid: {', '.join(valid_formats)}")
        if fmt not in valid_formats:
            raise ValueError(f"{who}: format {fmt!r} is not valid; valid: {', '.join(valid_formats)}")
        metric = c.get("metric", "top1")
        if metric not in METRICS:
            raise ValueError(f"{who}: metric {metric!r} is not valid; valid: {', '.join(METRICS)}")
        path, hub = c.get("path"), c.get("hub")
        if fmt == "hf_hub":
            if path is not None:
                raise ValueError(
                    f"{who}: format hf_hub takes hub (a dataset id such as 'uoft-cs/cifar100'), not path; "
                    f"for a dataset saved with save_to_disk use format hf_disk"
                )
            if not isinstance(hub, str) or not hub:
                raise ValueError(f"{who}: hub is required for format hf_hub (a dataset id such as 'uoft-cs/cifar100')")
            location, hub = hub, None
        else:
            if fmt != "world" and (not isinstance(path, (str, os.PathLike)) or not str(path)):
                raise ValueError(f"{who}: path is required for format {fmt!r} (absolute, or relative to the data dir)")
            location = os.fspath(path) if path is not None else ""
        splits = c.get("splits")
        if splits is not None and not isinstance(splits, Mapping):
            raise ValueError(
                f"{who}: splits must map split names ({', '.join(SPLITS)}) to the source's split names "
                f"(or null), got {splits!r}"
            )
        names = c.get("class_names")
        if names is not None and (isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple))):
            raise ValueError(f"{who}: class_names must be a list of names, got {names!r}")
        for fname in ("description", "hint"):
            if fname in c and not isinstance(c[fname], str):
                raise ValueError(f"{who}: {fname} must be a string, got {c[fname]!r}")
        for fname in ("carve_fraction", "test_fraction"):
            if fname in c and not _is_num(c[fname]):
                raise ValueError(f"{who}: {fname} must be a number between 0 and 1 (exclusive), got {c[fname]!r}")
        return cls(
            name=name,
            metric=metric,
            description=c.get("description", ""),
            origin=origin,
            format=fmt,
            location=location,
            config_name=c.get("config_name"),
            hub=hub,
            splits=dict(splits) if splits is not None else None,
            image_key=c.get("image_key"),
            label_key=c.get("label_key"),
            class_names=tuple(names) if names is not None else None,
            carve_fraction=c.get("carve_fraction", 0.1),
            carve_seed=c.get("carve_seed", 0),
            test_fraction=c.get("test_fraction", 0.2),
            where=c.get("where"),
            hint=c.get("hint", ""),
        )

    def to_config(self, docs: bool = True) -> dict[str, Any]:
        """The plain dict :meth:`from_config` accepts, with sorted keys and JSON types only.

        Every data field is present (unset ones as None), so a definition that spells out a
        default and one that leaves it out give the same dict. ``docs=False`` leaves out
        ``description`` and ``hint``, which do not change the data: hash that one into job keys.
        """
        d: dict[str, Any] = {
            "format": self.format,
            "path": None if self.format == "hf_hub" else self.location,
            "hub": self.location if self.format == "hf_hub" else self.hub,
            "config_name": self.config_name,
            "splits": dict(self.splits) if self.splits is not None else None,
            "image_key": self.image_key,
            "label_key": self.label_key,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "carve_fraction": self.carve_fraction,
            "carve_seed": self.carve_seed,
            "test_fraction": self.test_fraction,
            "where": dict(self.where) if self.where is not None else None,
            "metric": self.metric,
            "origin": self.origin,
        }
        if docs:
            d["description"] = self.description
            d["hint"] = self.hint
        return json.loads(json.dumps(d, sort_keys=True))


@dataclass(frozen=True)
class SplitData:
    """One decoded split: images uint8 [N, H, W, 3], labels int64 [N], the class names and provenance.

    The arrays are shared with an in-process cache and marked read-only; copy before editing.
    ``info`` (JSON-serialisable) says where the split came from: format, location, source split,
    any carving (``info["validation"] == {"carved_from": "train", "fraction": 0.1, "seed": 0,
    "stratified": True}``) and any resizing.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DOWNSTREAM: Registry[DownstreamSet] = Registry("downstream set")

# --------------------------------------------------------------------------------------- the real sets

_SAVE_HINT = "Class names come from the data (the ClassLabel names, or the folder names of an image folder)."

# name, metric, folder under the data dir, hub id (None: no standard copy), image column, label column,
# where-filter, description, hint
REAL_SETS: tuple[tuple, ...] = (
    (
        "real.cifar100",
        "top1",
        "cifar100",
        "uoft-cs/cifar100",
        "img",
        "fine_label",
        None,
        "CIFAR-100: 100 classes of 32x32 photos (fine labels)",
        _SAVE_HINT,
    ),
    (
        "real.dtd",
        "top1",
        "dtd",
        "tanganke/dtd",
        "image",
        "label",
        None,
        "Describable Textures (DTD): 47 texture classes",
        _SAVE_HINT,
    ),
    (
        "real.caltech101",
        "top1",
        "caltech101",
        "flwrlabs/caltech101",
        "image",
        "label",
        None,
        "Caltech-101: 101 object classes (plus background where the copy has it)",
        "The hub copy has only a train split: test (test_fraction) and validation (carve_fraction) are then carved "
        "from it, seeded and stratified. " + _SAVE_HINT,
    ),
    (
        "real.pets",
        "top1",
        "pets",
        "timm/oxford-iiit-pet",
        "image",
        "label",
        None,
        "Oxford-IIIT Pets: 37 cat and dog breeds",
        _SAVE_HINT,
    ),
    (
        "real.domainnet_real",
        "top1",
        "domainnet_real",
        "wltjr1007/DomainNet",
        "image",
        "label",
        {"domain": "real"},
        "DomainNet 'real' domain: photographs of 345 classes",
        "The hub copy holds all six domains; rows whose 'domain' is 'real' are kept (a saved copy may hold just that "
        "domain). From the official release (ai.bu.edu/M3SDA), use real_train.txt/real_test.txt to lay out "
        "<dir>/train/<class>/*.jpg and <dir>/test/<class>/*.jpg.",
    ),
    (
        "real.domainnet_clipart",
        "top1",
        "domainnet_clipart",
        "wltjr1007/DomainNet",
        "image",
        "label",
        {"domain": "clipart"},
        "DomainNet 'clipart' domain: clipart of 345 classes",
        "The hub copy holds all six domains; rows whose 'domain' is 'clipart' are kept (a saved copy may hold just "
        "that domain). From the official release (ai.bu.edu/M3SDA), use clipart_train.txt/clipart_test.txt to lay "
        "out <dir>/train/<class>/*.jpg and <dir>/test/<class>/*.jpg.",
    ),
    (
        "real.eurosat",
        "top1",
        "eurosat",
        "timm/eurosat-rgb",
        "image",
        "label",
        None,
        "EuroSAT (RGB): 10 land-cover classes of Sentinel-2 patches",
        _SAVE_HINT,
    ),
    (
        "real.cameratraps",
        "balanced_acc",
        "cameratraps",
        None,
        None,
        None,
        None,
        "Camera-trap frames of animal species; classes are imbalanced, so the headline is mean per-class recall",
        "There is no standard Hugging Face copy. Take camera-trap images from LILA BC (lila.science; e.g. Caltech "
        "Camera Traps), one folder per species, and lay them out as <dir>/train/<species>/*.jpg and "
        "<dir>/test/<species>/*.jpg (camera locations disjoint between train and test is recommended); "
        "validation is carved from train. Or save a DatasetDict with image and ClassLabel label columns there.",
    ),
    (
        "real.cassava",
        "top1",
        "cassava",
        None,
        None,
        None,
        None,
        "Cassava leaf disease: 5 classes (4 diseases and healthy) of cassava leaf photos",
        "There is no standard Hugging Face copy. From Kaggle's cassava-leaf-disease-classification "
        "(train_images/ with train.csv and label_num_to_disease_map.json), lay the images out as "
        "<dir>/train/<disease>/*.jpg; the competition's test labels are not public, so with only train/ a test "
        "split (test_fraction) and a validation split (carve_fraction) are carved from it, seeded and stratified.",
    ),
)


def _fill() -> None:
    # World names, metrics and descriptions come from the world's declarations so they never drift apart.
    from curation.catalogue import PACKAGE_SETS, SET_DECLS

    for d in SET_DECLS:
        DOWNSTREAM.register(d.name, DownstreamSet(d.name, d.metric, d.description, "world"))
    for name, desc in PACKAGE_SETS.items():
        DOWNSTREAM.register(name, DownstreamSet(name, "top1", desc, "package"))
    for name, metric, folder, hub, image_key, label_key, where, desc, hint in REAL_SETS:
        DOWNSTREAM.register(
            name,
            DownstreamSet(
                name,
                metric,
                desc,
                "real",
                format="hf_disk",
                location=folder,
                hub=hub,
                image_key=image_key,
                label_key=label_key,
                where=where,
                hint=hint,
            ),
        )


_fill()


def resolve_set(name_or_entry: str | DownstreamSet, custom: Mapping[str, Any] | None = None) -> DownstreamSet:
    """An entry passes through; a name is looked up in ``custom`` (configs from a spec) and then in DOWNSTREAM."""
    if isinstance(name_or_entry, DownstreamSet):
        return name_or_entry
    if custom and name_or_entry in custom:
        cfg = custom[name_or_entry]
        return cfg if isinstance(cfg, DownstreamSet) else DownstreamSet.from_config(name_or_entry, cfg)
    return DOWNSTREAM.get(name_or_entry)


def _data_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


# --------------------------------------------------------------------------------------- carving

_STREAMS = {"validation": 0, "test": 1}


def carve_indices(
    labels: np.ndarray, fraction: float, seed: int, stream: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into (kept, carved), seeded and stratified by class.

    Each class with n >= 2 examples gives ``round(fraction * n)`` of them, at least 1 and at most
    n - 1; a class with one example keeps it. Each class draws from its own seeded stream, so the
    carve of a class depends only on that class's positions, ``seed`` and ``stream``. Both index
    arrays are sorted, disjoint and together cover every position.
    """
    labels = np.asarray(labels, dtype=np.int64)
    carved: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        if n < 2:
            continue
        k = min(n - 1, max(1, int(math.floor(fraction * n + 0.5))))
        rng = np.random.default_rng([int(seed), _STREAMS[stream], int(c)])
        carved.append(idx[rng.permutation(n)[:k]])
    out = np.sort(np.concatenate(carved)) if carved else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), out, assume_unique=True)
    return keep.astype(np.int64), out.astype(np.int64)


def _carve_record(entry: DownstreamSet, stream: str) -> dict[str, Any]:
    fraction = entry.carve_fraction if stream == "validation" else entry.test_fraction
    return {"carved_from": "train", "fraction": fraction, "seed": entry.carve_seed, "stratified": True}


def _map_splits(entry: DownstreamSet, storage: loaders.SetStorage) -> dict[str, str | None]:
    """Our split -> the storage's split name (None: carved from train)."""
    available = storage.split_names()
    explicit = dict(entry.splits or {})
    out: dict[str, str | None] = {}
    for s in SPLITS:
        if s in explicit:
            v = explicit[s]
            if v is not None and v not in available:
                raise DataFormatError(
                    f"downstream set {entry.name!r}: splits maps {s} to {v!r}, which "
                    f"{storage.location} does not have; it has: {', '.join(available)}"
                )
            out[s] = v
        else:
            out[s] = next((c for c in loaders.AUTO_SPLITS[s] if c in available and c not in explicit.values()), None)
    if out["train"] is None:
        raise DataFormatError(
            f"downstream set {entry.name!r}: {storage.location} has no training split (looked for "
            f"{', '.join(loaders.AUTO_SPLITS['train'])}; it has: {', '.join(available)}); "
            f"map one with splits: {{train: NAME}}"
        )
    if entry.format == "world":
        missing = [s for s in SPLITS if out[s] is None]
        if missing:
            raise DataFormatError(
                f"downstream set {entry.name!r} at {storage.location} has no split {missing[0]!r}; "
                f"it has: {', '.join(available)}; rebuild it with `tbench world`"
            )
    return out


def _rows(
    entry: DownstreamSet, storage: loaders.SetStorage, mapping: dict[str, str | None], split: str
) -> tuple[str, np.ndarray]:
    """(the storage's split name, row positions in it) of our ``split``."""
    src = mapping[split]
    if split != "train" and src is not None:
        return src, np.arange(len(storage.labels(src)), dtype=np.int64)
    train = mapping["train"]
    y = storage.labels(train)
    rows = np.arange(len(y), dtype=np.int64)
    if mapping["test"] is None:
        keep, test = carve_indices(y, entry.test_fraction, entry.carve_seed, "test")
        if split == "test":
            return train, test
        rows = keep
    if mapping["validation"] is None:
        keep, val = carve_indices(y[rows], entry.carve_fraction, entry.carve_seed, "validation")
        return train, (rows[val] if split == "validation" else rows[keep])
    return train, rows


def _carves(entry: DownstreamSet, mapping: dict[str, str | None]) -> dict[str, Any]:
    return {s: _carve_record(entry, s) for s in ("test", "validation") if mapping[s] is None}


# --------------------------------------------------------------------------------------- decoding

_PIL_RESAMPLE = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}


def resize_center_crop(image: Any, size: int, interpolation: str | None = None, crop_pct: float | None = None) -> Any:
    """Resize so the shorter side is ``size`` (bicubic unless ``interpolation`` names another),
    then crop the centre ``size`` x ``size``. With ``crop_pct`` (a timm model's), an image larger
    than ``size`` has its shorter side resized to ``floor(size / crop_pct)`` before the crop.

    Takes and returns a PIL image, or a uint8 [H, W, 3] array. Sizes and crop offsets follow
    torchvision's ``Resize(scale)`` + ``CenterCrop(size)`` (timm's eval transform).
    """
    from PIL import Image

    interpolation = interpolation or RESIZE_INTERPOLATION
    if interpolation not in _PIL_RESAMPLE:
        raise ValueError(f"interpolation {interpolation!r} is not supported; valid: {', '.join(_PIL_RESAMPLE)}")
    as_array = isinstance(image, np.ndarray)
    im = Image.fromarray(image) if as_array else image
    w, h = im.size
    if (w, h) != (size, size):
        scale = math.floor(size / crop_pct) if crop_pct is not None and min(w, h) > size else size
        if w <= h:
            nw, nh = scale, int(scale * h / w)
        else:
            nw, nh = int(scale * w / h), scale
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), getattr(Image, _PIL_RESAMPLE[interpolation]))
        left = int(round((nw - size) / 2.0))
        top = int(round((nh - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    return np.asarray(im) if as_array else im


def _decode_one(payload: bytes | str, size: int | None, resize: dict[str, Any] | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload) as im:
        im = im.convert("RGB")
        if size is not None:
            im = resize_center_crop(im, size, **(resize or {}))
        return np.asarray(im, dtype=np.uint8)


def _decode_all(payloads: list, size: int | None, what: str, resize: dict[str, Any] | None = None) -> np.ndarray:
    n = len(payloads)
    if n == 0:
        s = size or 32
        return np.zeros((0, s, s, 3), np.uint8)
    workers = min(8, os.cpu_count() or 1) if n >= 64 else 1
    out: np.ndarray | None = None
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        results = (
            pool.map(_decode_one, payloads, [size] * n, [resize] * n)
            if pool
            else (_decode_one(p, size, resize) for p in payloads)
        )
        for i, arr in enumerate(results):
            if out is None:
                out = np.empty((n,) + arr.shape, np.uint8)
            elif arr.shape != out.shape[1:]:
                raise ValueError(
                    f"{what}: images differ in size ({out.shape[2]}x{out.shape[1]} and {arr.shape[1]}x{arr.shape[0]}); "
                    f"pass image_size so each image is resized (shorter side) and centre-cropped to one size"
                )
            out[i] = arr
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


# --------------------------------------------------------------------------------------- cache

# Decoded splits kept per process (the least recently used go first), bounded by count and bytes.
# A run's feature extractions visit every split of every set once per checkpoint, in turn: the
# quickstart's 11 sets are 33 splits (about 60 MB decoded), so a cache of fewer entries than that
# misses on every visit and each extraction decodes its set's PNGs again (about 0.4 s of its 1 s).
_CACHE_SIZE = 64
_CACHE_BYTES = int(float(os.environ.get("TBENCH_SPLIT_CACHE_MB", "4096")) * 2**20)
_cache: OrderedDict[tuple, SplitData] = OrderedDict()
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every decoded split (e.g. after rebuilding a world in the same process)."""
    with _lock:
        _cache.clear()


def _cache_get(key: tuple) -> SplitData | None:
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
        return hit


def _cache_put(key: tuple, data: SplitData) -> None:
    with _lock:
        _cache[key] = data
        _cache.move_to_end(key)
        total = sum(d.images.nbytes for d in _cache.values())
        while len(_cache) > 1 and (len(_cache) > _CACHE_SIZE or total > _CACHE_BYTES):
            _, old = _cache.popitem(last=False)
            total -= old.images.nbytes


# --------------------------------------------------------------------------------------- loading


def _check_split(entry: DownstreamSet, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(
            f"unknown split {split!r} for downstream set {entry.name!r}; valid splits: {', '.join(SPLITS)}"
        )


def _world_set_path(entry: DownstreamSet, data_root: str | Path) -> tuple[Path, Path]:
    path = entry.directory(data_root)
    marker = path / "dataset_dict.json"
    if not marker.is_file():
        raise FileNotFoundError(
            f"downstream set {entry.name!r} is not on disk at {path} (no dataset_dict.json); "
            f"write the world there with `tbench world --out {Path(data_root)}`"
        )
    return path.resolve(), marker


def _open(entry: DownstreamSet, data_root: str | Path | None, data_dir: str | Path | None) -> loaders.SetStorage:
    if entry.format == "world":
        if data_root is None:
            raise ValueError(f"downstream set {entry.name!r} lives in the embedded world: pass data_root")
        path, _ = _world_set_path(entry, data_root)
        return loaders.open_saved(entry, path, kind="world")
    return loaders.open_set_storage(entry, _data_dir(data_dir))


def load_split(
    name_or_entry: str | DownstreamSet,
    split: str,
    data_root: str | Path | None,
    *,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> SplitData:
    """Decode split ``split`` (train, validation or test) of a downstream set.

    ``data_root`` is the embedded world's folder (world and package sets, returned as stored);
    ``data_dir`` is where real and custom sets with relative paths live (default: $TBENCH_DATA,
    else ~/tbench-data). ``image_size`` S resizes real and custom sets' images (shorter side S,
    centre crop S x S); it is required when their images differ in size. ``interpolation`` and
    ``crop_pct`` (a checkpoint's own, ``downstream.features.resize_options``) replace the default
    bicubic resize (:func:`resize_center_crop`); world and package sets ignore them (their images
    are resized by ``downstream.features.prepare_images``).

    Raises ``UnknownNameError`` for an unknown set, ``ValueError`` for an unknown split or mixed
    image sizes without ``image_size``, ``FileNotFoundError`` (naming the folder and ``tbench
    world``) when a world set is not on disk, :class:`DataNotFoundError` (a FileNotFoundError
    naming every place looked at and what to provide) when a real or custom set's data is absent,
    and :class:`DataFormatError` (a ValueError) when the data is there but not laid out as needed.
    """
    entry = resolve_set(name_or_entry)
    _check_split(entry, split)
    if image_size is not None and (not _is_int(image_size) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    resize = {k: v for k, v in (("interpolation", interpolation), ("crop_pct", crop_pct)) if v is not None}
    if entry.format == "world":
        if data_root is None:
            raise ValueError(f"downstream set {entry.name!r} lives in the embedded world: pass data_root")
        path, marker = _world_set_path(entry, data_root)
        size = None
        key: tuple = ("world", entry.name, str(path), split, marker.stat().st_mtime_ns)
        hit = _cache_get(key)
        if hit is not None:
            return hit
        storage: loaders.SetStorage = loaders.open_saved(entry, path, kind="world")
    else:
        storage = loaders.open_set_storage(entry, _data_dir(data_dir))
        size = int(image_size) if image_size is not None else None
        key = (entry.name, json.dumps(entry.to_config(docs=False), sort_keys=True), storage.fingerprint(), split, size)
        if resize:
            key += (json.dumps(resize, sort_keys=True),)
        hit = _cache_get(key)
        if hit is not None:
            return hit
    data = _load(entry, storage, split, size, resize)
    _cache_put(key, data)
    return data


def _load(
    entry: DownstreamSet,
    storage: loaders.SetStorage,
    split: str,
    size: int | None,
    resize: dict[str, Any] | None = None,
) -> SplitData:
    mapping = _map_splits(entry, storage)
    src, rows = _rows(entry, storage, mapping, split)
    names = storage.class_names()
    labels = np.ascontiguousarray(storage.labels(src)[rows], dtype=np.int64)
    what = f"downstream set {entry.name!r} split {split!r} ({storage.location})"
    images = _decode_all(storage.payloads(src, rows), size, what, resize)
    images.setflags(write=False)
    labels.setflags(write=False)
    info: dict[str, Any] = {"set": entry.name, "origin": entry.origin}
    info.update(storage.describe())
    info.update(
        {
            "split": split,
            "source_split": src,
            "num_examples": int(len(labels)),
            "num_classes": len(names),
            "image_shape": [int(x) for x in images.shape[1:]],
        }
    )
    info["preprocess"] = (
        {"resize_shorter_side": size, "center_crop": size, "interpolation": RESIZE_INTERPOLATION}
        if size is not None
        else None
    )
    if size is not None and resize:  # a checkpoint's own resizing (recorded only then: default rows stay as they were)
        info["preprocess"].update(resize)
    info.update(_carves(entry, mapping))
    return SplitData(images=images, labels=labels, class_names=list(names), info=json.loads(json.dumps(info)))


def split_info(
    name_or_entry: str | DownstreamSet, data_root: str | Path | None, *, data_dir: str | Path | None = None
) -> dict[str, Any]:
    """A summary of a set's splits, read from the labels only (no image is decoded).

    ``{"set", "origin", "metric", "format", "location", "num_classes", "class_names", "chance",
    "splits": {split: {"source_split", "count", "carved", "class_counts"}}}`` plus the carve
    records under ``"validation"`` / ``"test"`` when those splits were carved from train.
    """
    entry = resolve_set(name_or_entry)
    storage = _open(entry, data_root, data_dir)
    mapping = _map_splits(entry, storage)
    names = storage.class_names()
    out: dict[str, Any] = {"set": entry.name, "origin": entry.origin, "metric": entry.metric}
    out.update(storage.describe())
    out.update({"num_classes": len(names), "class_names": list(names), "chance": entry.chance(len(names))})
    splits = {}
    for s in SPLITS:
        src, rows = _rows(entry, storage, mapping, s)
        y = storage.labels(src)[rows]
        splits[s] = {
            "source_split": src,
            "count": int(len(rows)),
            "carved": mapping[s] is None,
            "class_counts": [int(x) for x in np.bincount(y, minlength=len(names))],
        }
    out["splits"] = splits
    out.update(_carves(entry, mapping))
    return json.loads(json.dumps(out))
