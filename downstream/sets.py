"""The downstream registry: the nine world sets and two sets of real images from installed packages.

Every set lives at ``<data root>/downstream/<name>/`` as a Hugging Face ``datasets.DatasetDict``
saved with ``save_to_disk``: splits ``train``, ``validation`` and ``test``, features ``image``
(``datasets.Image``) and ``label`` (``datasets.ClassLabel`` with the class names). ``tbench world``
writes them. :func:`load_split` decodes a split into arrays, cached in-process because several
evaluations read the same set.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.registry import Registry

SPLITS = ("train", "validation", "test")
METRICS = ("top1", "balanced_acc")
ORIGINS = ("world", "package")


@dataclass(frozen=True)
class DownstreamSet:
    """A registered downstream set."""

    name: str
    metric: str  # headline metric: "top1" or "balanced_acc"
    description: str
    origin: str  # "world" (generated) or "package" (real images shipped in an installed package)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"downstream set {self.name!r}: metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.origin not in ORIGINS:
            raise ValueError(f"downstream set {self.name!r}: origin {self.origin!r}; valid: {', '.join(ORIGINS)}")

    @property
    def relative_dir(self) -> str:
        return f"downstream/{self.name}"

    def directory(self, data_root: str | Path) -> Path:
        return Path(data_root) / self.relative_dir


@dataclass(frozen=True)
class SplitData:
    """One decoded split: images uint8 [N, H, W, 3], labels int64 [N] and the class names.

    The arrays are shared with an in-process cache and marked read-only; copy before editing.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DOWNSTREAM: Registry[DownstreamSet] = Registry("downstream set")


def _fill() -> None:
    # Names, metrics and descriptions come from the world's declarations so they never drift apart.
    from curation.world import PACKAGE_SETS, SET_DECLS

    for d in SET_DECLS:
        DOWNSTREAM.register(d.name, DownstreamSet(d.name, d.metric, d.description, "world"))
    for name, desc in PACKAGE_SETS.items():
        DOWNSTREAM.register(name, DownstreamSet(name, "top1", desc, "package"))


_fill()

_CACHE_SIZE = 8
_cache: OrderedDict[tuple, SplitData] = OrderedDict()
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every decoded split (e.g. after rebuilding a world in the same process)."""
    with _lock:
        _cache.clear()


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def load_split(name: str, split: str, data_root: str | Path) -> SplitData:
    """Decode split ``split`` of downstream set ``name`` under ``data_root``.

    Raises ``UnknownNameError`` for an unknown set, ``ValueError`` for an unknown split and
    ``FileNotFoundError`` (naming the folder and ``tbench world``) when the set is not on disk.
    """
    entry = DOWNSTREAM.get(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for downstream set {name!r}; valid splits: {', '.join(SPLITS)}")
    path = entry.directory(data_root)
    marker = path / "dataset_dict.json"
    if not marker.is_file():
        raise FileNotFoundError(f"downstream set {name!r} is not on disk at {path} (no dataset_dict.json); "
                                f"write the world there with `tbench world --out {Path(data_root)}`")
    resolved = path.resolve()
    key = (str(resolved), split, marker.stat().st_mtime_ns)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    data = _load(resolved, name, split)
    with _lock:
        _cache[key] = data
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return data


def _load(path: Path, name: str, split: str) -> SplitData:
    import datasets

    dd = datasets.load_from_disk(str(path))
    if not isinstance(dd, datasets.DatasetDict):
        raise ValueError(f"{path} holds a single Dataset, expected a DatasetDict with splits {', '.join(SPLITS)}")
    if split not in dd:
        raise ValueError(f"downstream set {name!r} at {path} has no split {split!r}; it has: {', '.join(dd)}")
    ds = dd[split]
    for col in ("image", "label"):
        if col not in ds.column_names:
            raise ValueError(f"{path} split {split!r} has no {col!r} column; columns: {ds.column_names}")
    label_feature = ds.features["label"]
    if not isinstance(label_feature, datasets.ClassLabel):
        raise ValueError(f"{path}: feature 'label' must be a ClassLabel, got {type(label_feature).__name__}")
    ds = ds.cast_column("image", datasets.Image(decode=False))
    raw = ds["image"]
    labels = np.asarray(ds["label"], dtype=np.int64)
    if len(raw):
        images = np.stack([_decode(r["bytes"]) if r.get("bytes") is not None else _decode(Path(r["path"]).read_bytes())
                           for r in raw])
    else:
        images = np.zeros((0, 32, 32, 3), np.uint8)
    images.setflags(write=False)
    labels.setflags(write=False)
    return SplitData(images=images, labels=labels, class_names=list(label_feature.names))
