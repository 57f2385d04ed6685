"""Where a downstream set's images come from: one reader per storage format.

A reader (:class:`SetStorage`) answers four questions about the data it found, without decoding an
image until asked: which splits the data has, the class names, the labels of a split (as class
indices) and the encoded images of chosen rows of a split (bytes, or a file path). Splitting,
carving, decoding, resizing and caching live in :mod:`downstream.sets`; this module only reads.

Formats:

- ``world`` / ``hf_disk``: a ``datasets.DatasetDict`` (or a single ``Dataset``, taken as the
  ``train`` split) written with ``save_to_disk``.
- ``hf_hub``: a Hugging Face dataset by name, read **only** from the local ``datasets`` cache
  (what ``datasets.load_dataset(NAME)`` leaves there). Nothing is ever downloaded: a dataset that
  is not in the cache is reported as absent.
- ``imagefolder``: ``<path>/<split>/<class name>/<image files>`` (sub-folders inside a class
  folder are walked too; non-image files are ignored).
- ``wds``: webdataset shards, ``<path>/<split>/*.tar`` or a brace pattern per split, an encoded
  image under one of the extensions in ``image_key`` (``"jpg;png;webp"``) and an integer label
  under ``label_key`` (``"cls"``), class names in ``classes.txt`` / ``classnames.txt`` /
  ``classes.json`` next to the shards.

:func:`open_set_storage` finds the data of a set entry (for ``real`` sets trying each conventional
place in turn) and raises :class:`DataNotFoundError` naming every place it looked and what to
provide when there is none.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.tars import TarReadError, TruncatedTar, tar_samples

if TYPE_CHECKING:  # pragma: no cover
    from downstream.sets import DownstreamSet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_WDS_IMAGE_KEY = "jpg;jpeg;png;webp"
DEFAULT_WDS_LABEL_KEY = "cls"
CLASS_FILES = ("classes.txt", "classnames.txt", "classes.json")
# Our split name -> the source split names tried, in order, when a set does not map it explicitly.
AUTO_SPLITS = {"train": ("train", "trainval"), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}


class DataNotFoundError(FileNotFoundError):
    """A downstream set's data is not where it was looked for; the message says what to provide."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataFormatError(ValueError):
    """The data was found but is not laid out as its format requires; the message says how."""


class SetStorage:
    """The data of one set, opened lazily. Subclasses fill in the four questions."""

    kind: str = ""
    location: str = ""

    def split_names(self) -> list[str]:
        raise NotImplementedError

    def class_names(self) -> list[str]:
        raise NotImplementedError

    def labels(self, split: str) -> np.ndarray:
        """Class indices (int64) of every row of ``split``."""
        raise NotImplementedError

    def payloads(self, split: str, rows: np.ndarray) -> list:
        """Encoded images (bytes) or image file paths (str) of ``rows`` of ``split``."""
        raise NotImplementedError

    def fingerprint(self) -> tuple:
        """Changes whenever the data on disk changes (used in the in-process cache key)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"format": self.kind, "location": self.location}


class _PathStorage(SetStorage):
    """A set's storage read from a folder on disk."""

    def __init__(self, entry: DownstreamSet, path: Path):
        self.entry = entry
        self.path = path
        self.location = str(path)


# --------------------------------------------------------------------------------------- helpers


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def _map_names(set_name: str, found: list[str], override: tuple[str, ...] | None, what: str) -> list[str]:
    """Class names, given those the data has and an optional override of the same length."""
    if override is None:
        return list(found)
    if len(override) != len(found):
        raise DataFormatError(
            f"downstream set {set_name!r}: class_names lists {len(override)} names but the data has "
            f"{len(found)} classes ({what}); give one name per class, in label order"
        )
    return list(override)


# --------------------------------------------------------------------------------------- Hugging Face


class HFStorage(SetStorage):
    """A DatasetDict from ``save_to_disk``, or the splits of a dataset in the local HF cache."""

    def __init__(
        self,
        entry: DownstreamSet,
        kind: str,
        location: str,
        splits: dict[str, Any],
        fingerprint: tuple,
        extra: dict[str, Any] | None = None,
    ):
        self.entry = entry
        self.kind = kind
        self.location = location
        self._splits = splits  # name -> Dataset, or a zero-argument callable returning one
        self._fp = fingerprint
        self._extra = dict(extra or {})
        self._lock = threading.Lock()
        self._cols: tuple[str, str, Any] | None = None
        self._names: list[str] | None = None
        self._rows: dict[str, np.ndarray | None] = {}

    # -- plumbing
    def _ds(self, split: str):
        if split not in self._splits:
            raise DataFormatError(
                f"downstream set {self.entry.name!r} at {self.location} has no split {split!r}; "
                f"it has: {', '.join(self._splits)}"
            )
        ds = self._splits[split]
        if callable(ds):
            with self._lock:
                ds = self._splits[split]
                if callable(ds):
                    ds = self._splits[split] = ds()
        return ds

    def _arrow(self, split: str, column: str):
        import pyarrow as pa

        col = self._ds(split).with_format("arrow")[column]
        if isinstance(col, pa.Table):  # older datasets versions return a one-column table
            col = col.column(0)
        return col

    def _columns(self) -> tuple[str, str, Any]:
        """(image column, label column, label feature), found in the first split."""
        if self._cols is not None:
            return self._cols
        import datasets

        e = self.entry
        first = self.split_names()[0]
        feats = self._ds(first).features
        lenient = e.origin == "real" or e.image_key is None
        img = e.image_key or "image"
        if img not in feats:
            if not lenient:
                raise DataFormatError(
                    f"downstream set {e.name!r}: image_key {img!r} is not a column of "
                    f"{self.location} (columns: {', '.join(feats)}); set image_key to the image "
                    f"column"
                )
            cands = [c for c, f in feats.items() if isinstance(f, datasets.Image)]
            cands = cands or [c for c in ("image", "img") if c in feats]
            if len(cands) != 1:
                raise DataFormatError(
                    f"downstream set {e.name!r}: cannot tell which column of {self.location} holds "
                    f"the images (columns: {', '.join(feats)}); set image_key"
                )
            img = cands[0]
        lab = e.label_key or "label"
        if lab not in feats:
            if not (e.origin == "real" or e.label_key is None):
                raise DataFormatError(
                    f"downstream set {e.name!r}: label_key {lab!r} is not a column of "
                    f"{self.location} (columns: {', '.join(feats)}); set label_key to the label "
                    f"column"
                )
            cands = [c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)]
            if len(cands) != 1:
                raise DataFormatError(
                    f"downstream set {e.name!r}: cannot tell which column of {self.location} holds "
                    f"the labels (columns: {', '.join(feats)}); set label_key"
                )
            lab = cands[0]
        feat = feats[lab]
        if isinstance(feat, datasets.ClassLabel):
            pass
        elif isinstance(feat, datasets.Value) and (
            feat.dtype.startswith("int") or feat.dtype.startswith("uint") or feat.dtype in ("string", "large_string")
        ):
            pass
        else:
            raise DataFormatError(
                f"downstream set {e.name!r}: label column {lab!r} of {self.location} is {feat!r}; "
                f"expected a ClassLabel, integers or strings"
            )
        self._cols = (img, lab, feat)
        return self._cols

    def _filtered_rows(self, split: str) -> np.ndarray | None:
        """Row ids kept by the set's ``where`` filter (None: every row)."""
        if split in self._rows:
            return self._rows[split]
        where = self.entry.where
        rows = None
        if where:
            import datasets

            ds = self._ds(split)
            mask = np.ones(ds.num_rows, dtype=bool)
            for col, want in sorted(where.items()):
                if col not in ds.features and self.entry.origin == "real":
                    continue  # a copy saved with only the wanted rows (e.g. one DomainNet domain)
                if col not in ds.features:
                    raise DataFormatError(
                        f"downstream set {self.entry.name!r}: where names column {col!r}, which "
                        f"{self.location} split {split!r} does not have "
                        f"(columns: {', '.join(ds.features)})"
                    )
                values = self._arrow(split, col).to_pylist()
                feat = ds.features[col]
                if isinstance(feat, datasets.ClassLabel) and isinstance(want, str):
                    if want not in feat.names:
                        raise DataFormatError(
                            f"downstream set {self.entry.name!r}: where {col}={want!r}, but {col!r} "
                            f"has only the values {', '.join(feat.names)}"
                        )
                    want = feat.names.index(want)
                mask &= np.asarray([v == want for v in values], dtype=bool)
            rows = np.flatnonzero(mask)
        self._rows[split] = rows
        return rows

    # -- the four questions
    def split_names(self) -> list[str]:
        return list(self._splits)

    def class_names(self) -> list[str]:
        if self._names is not None:
            return self._names
        import datasets

        _, lab, feat = self._columns()
        e = self.entry
        if isinstance(feat, datasets.ClassLabel):
            names = _map_names(e.name, list(feat.names), e.class_names, f"ClassLabel of column {lab!r}")
        elif feat.dtype in ("string", "large_string"):
            found = sorted({v for s in self.split_names() for v in self._raw_labels(s)})
            if e.class_names is not None:
                missing = [v for v in found if v not in e.class_names]
                if missing:
                    raise DataFormatError(
                        f"downstream set {e.name!r}: labels {missing[:5]} of column {lab!r} are not in class_names"
                    )
                names = list(e.class_names)
            else:
                names = found
        else:
            if e.class_names is None:
                raise DataFormatError(
                    f"downstream set {e.name!r}: column {lab!r} of {self.location} holds plain integers, so the class "
                    f"names are unknown; list them in class_names (in label order), or save the labels as a "
                    f"datasets.ClassLabel"
                )
            names = list(e.class_names)
        self._names = names
        return names

    def _raw_labels(self, split: str) -> list:
        _, lab, _ = self._columns()
        values = self._arrow(split, lab)
        rows = self._filtered_rows(split)
        if rows is not None:
            values = values.take(rows)
        return values.to_pylist()

    def labels(self, split: str) -> np.ndarray:
        import datasets

        _, lab, feat = self._columns()
        names = self.class_names()
        raw = self._raw_labels(split)
        if isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string"):
            index = {n: i for i, n in enumerate(names)}
            y = np.asarray([index.get(v, -1) for v in raw], dtype=np.int64)
        else:
            y = np.asarray([-1 if v is None else v for v in raw], dtype=np.int64)
        bad = (y < 0) | (y >= len(names))
        if bad.any():
            example = raw[int(np.argmax(bad))]
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: split {split!r} of {self.location} has "
                f"{int(bad.sum())} examples without a valid label (e.g. {example!r}; "
                f"{len(names)} classes); map a labelled split with splits"
            )
        return y

    def payloads(self, split: str, rows: np.ndarray) -> list:
        import pyarrow as pa

        img, _, _ = self._columns()
        col = self._arrow(split, img)
        base = self._filtered_rows(split)
        take = np.asarray(rows, dtype=np.int64) if base is None else base[np.asarray(rows, dtype=np.int64)]
        sub = col.take(pa.array(take, type=pa.int64()))
        if isinstance(sub, pa.ChunkedArray):
            sub = sub.combine_chunks()
        if pa.types.is_struct(sub.type):
            blobs = sub.field("bytes").to_pylist()
            paths = sub.field("path").to_pylist()
        elif pa.types.is_binary(sub.type) or pa.types.is_large_binary(sub.type):
            blobs, paths = sub.to_pylist(), [None] * len(sub)
        else:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: column {img!r} of {self.location} is not an "
                f"image column ({sub.type})"
            )
        out = []
        for b, p in zip(blobs, paths):
            if b is None and not p:
                raise DataFormatError(
                    f"downstream set {self.entry.name!r}: an image of {self.location} split "
                    f"{split!r} has neither bytes nor a path"
                )
            out.append(b if b is not None else p)
        return out

    def fingerprint(self) -> tuple:
        return self._fp

    def describe(self) -> dict[str, Any]:
        d = {"format": self.kind, "location": self.location}
        d.update(self._extra)
        if self.entry.where:
            d["where"] = dict(sorted(self.entry.where.items()))
        return d


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def open_saved(entry: DownstreamSet, path: Path, kind: str = "hf_disk") -> HFStorage:
    """A dataset written by ``save_to_disk`` (a DatasetDict, or a single Dataset taken as ``train``)."""
    import datasets

    marker = path / "dataset_dict.json"
    if not marker.is_file():
        marker = path / "state.json"
    dd = datasets.load_from_disk(str(path))
    splits = dict(dd) if isinstance(dd, datasets.DatasetDict) else {"train": dd}
    fp = (kind, str(path), _mtime(marker))
    return HFStorage(entry, kind, str(path), splits, fp)


def hf_cache_dir() -> Path:
    """The ``datasets`` cache: ``$HF_DATASETS_CACHE`` as set now, else what ``datasets`` was configured with."""
    env = os.environ.get("HF_DATASETS_CACHE")
    if env:
        return Path(env).expanduser()
    import datasets

    return Path(str(datasets.config.HF_DATASETS_CACHE)).expanduser()


def hub_cache_path(hub_id: str, cache_dir: Path | None = None) -> Path:
    from datasets.naming import camelcase_to_snakecase

    parts = hub_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    return (cache_dir or hf_cache_dir()) / "___".join(parts)


def open_hub_cached(entry: DownstreamSet, hub_id: str, config_name: str | None) -> HFStorage | None:
    """The dataset ``hub_id`` as ``load_dataset`` left it in the local cache; None when it is not there.

    Reads the prepared Arrow files through ``datasets``' own cache builder, which is what
    ``load_dataset`` does in offline mode; the hub is never contacted.
    """
    import logging

    cache_dir = hf_cache_dir()
    root = hub_cache_path(hub_id, cache_dir)
    if not root.is_dir() or not any(root.glob("*/*/*/dataset_info.json")):
        return None
    from datasets.packaged_modules.cache.cache import Cache

    log = logging.getLogger("datasets.packaged_modules.cache.cache")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        builder = Cache(
            cache_dir=str(cache_dir),
            dataset_name=hub_id.split("/")[-1],
            repo_id=hub_id,
            config_name=config_name,
            version="auto",
            hash="auto",
        )
    except ValueError as exc:  # no cache for this config, or several configs and none named
        raise DataFormatError(
            f"downstream set {entry.name!r}: the Hugging Face cache at {root} holds {hub_id!r} but "
            f"not as asked: {exc}. Set config_name to one of the cached configurations"
        ) from None
    finally:
        log.setLevel(level)
    infos = builder.info.splits or {}
    names = list(infos)
    if not names:
        return None
    cache = Path(builder.cache_dir)

    def loader(s: str):
        return lambda: builder.as_dataset(split=s)

    splits = {s: loader(s) for s in names}
    fp = ("hf_hub", str(cache), _mtime(cache / "dataset_info.json"))
    return HFStorage(
        entry, "hf_hub", hub_id, splits, fp, extra={"config_name": builder.config.name, "cache": str(cache)}
    )


# --------------------------------------------------------------------------------------- image folder


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def looks_like_imagefolder(path: Path) -> bool:
    """``path`` has a split folder holding class folders."""
    return any(_subdirs(s) for s in _subdirs(path))


class FolderStorage(_PathStorage):
    """``<path>/<split>/<class name>/<image files>``."""

    kind = "imagefolder"

    def __init__(self, entry: DownstreamSet, path: Path):
        super().__init__(entry, path)
        if not path.is_dir():
            raise DataNotFoundError(
                f"downstream set {entry.name!r}: image folder {path} does not exist; "
                f"provide {path}/<split>/<class name>/<image files>"
            )
        self._split_dirs = {d.name: d for d in _subdirs(path) if _subdirs(d)}
        if not self._split_dirs:
            loose = [p.name for p in path.iterdir() if p.is_file() and _is_image(p.name)][:3] if path.is_dir() else []
            what = (
                f"image files directly in it ({', '.join(loose)}, ...)"
                if loose
                else "no split folders holding class folders"
            )
            raise DataFormatError(
                f"downstream set {entry.name!r}: {path} is not an image folder: found {what}. Expected "
                f"{path}/<split>/<class name>/<image files>, e.g. {path}/train/cat/0001.jpg and "
                f"{path}/test/cat/0002.jpg"
            )
        self._files: dict[str, tuple[list[str], np.ndarray]] = {}
        self._names: list[str] | None = None

    def split_names(self) -> list[str]:
        return list(self._split_dirs)

    def class_names(self) -> list[str]:
        if self._names is None:
            found = sorted({c.name for d in self._split_dirs.values() for c in _subdirs(d)})
            if self.entry.class_names is not None:
                extra = [c for c in found if c not in self.entry.class_names]
                if extra:
                    raise DataFormatError(
                        f"downstream set {self.entry.name!r}: class folders {extra[:5]} under {self.path} are not in "
                        f"class_names; for an image folder, class_names lists the folder names in label order"
                    )
                self._names = list(self.entry.class_names)
            else:
                self._names = found
        return self._names

    def _scan(self, split: str) -> tuple[list[str], np.ndarray]:
        if split in self._files:
            return self._files[split]
        if split not in self._split_dirs:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: {self.path} has no split folder {split!r}; "
                f"it has: {', '.join(self._split_dirs)}"
            )
        d = self._split_dirs[split]
        loose = [p.name for p in d.iterdir() if p.is_file() and _is_image(p.name)]
        if loose:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: image files directly in {d} ({loose[0]}, ...); "
                f"put each image in the folder of its class: {d}/<class name>/<image file>"
            )
        index = {n: i for i, n in enumerate(self.class_names())}
        files: list[str] = []
        labels: list[int] = []
        for c in _subdirs(d):
            for root, dirs, names in os.walk(c):
                dirs[:] = sorted(x for x in dirs if not x.startswith("."))
                for n in sorted(names):
                    if _is_image(n):
                        files.append(os.path.join(root, n))
                        labels.append(index[c.name])
        if not files:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                f"under {d}/<class name>/"
            )
        out = (files, np.asarray(labels, dtype=np.int64))
        self._files[split] = out
        return out

    def labels(self, split: str) -> np.ndarray:
        return self._scan(split)[1]

    def payloads(self, split: str, rows: np.ndarray) -> list:
        files = self._scan(split)[0]
        return [files[int(i)] for i in rows]

    def fingerprint(self) -> tuple:
        stamps = [_mtime(self.path)]
        for d in self._split_dirs.values():
            stamps.append(_mtime(d))
            stamps.extend(_mtime(c) for c in _subdirs(d))
        return ("imagefolder", str(self.path), tuple(stamps))


# --------------------------------------------------------------------------------------- webdataset


@dataclass
class _Shards:
    files: list[Path]
    labels: np.ndarray | None = None
    images: list[bytes] | None = None
    keys: list[str] = field(default_factory=list)


class WdsStorage(_PathStorage):
    """webdataset shards per split: ``<path>/<split>/*.tar`` or a brace pattern relative to ``<path>``."""

    kind = "wds"

    def __init__(self, entry: DownstreamSet, path: Path):
        super().__init__(entry, path)
        self.image_exts = [
            x.strip().lower().lstrip(".") for x in (entry.image_key or DEFAULT_WDS_IMAGE_KEY).split(";") if x.strip()
        ]
        self.label_ext = (entry.label_key or DEFAULT_WDS_LABEL_KEY).lower().lstrip(".")
        self._shards: dict[str, _Shards] = {}
        explicit = dict(entry.splits or {})
        for src in explicit.values():
            if src and _is_pattern(src):
                self._shards[src] = _Shards(_expand(path, src))
        for d in _subdirs(path):
            tars = sorted(d.glob("*.tar"))
            if tars:
                self._shards[d.name] = _Shards(tars)
        if not self._shards:
            if not path.is_dir():
                raise DataNotFoundError(
                    f"downstream set {entry.name!r}: webdataset folder {path} does not exist; "
                    f"provide shards {path}/<split>/*.tar"
                )
            raise DataFormatError(
                f"downstream set {entry.name!r}: no webdataset shards under {path}; expected "
                f"{path}/<split>/*.tar (e.g. {path}/train/000000.tar), or map each split to a "
                f"brace pattern in splits, e.g. {{train: 'train-{{000000..000009}}.tar'}}"
            )
        for name, sh in self._shards.items():
            missing = [str(f) for f in sh.files if not f.is_file()]
            if missing or not sh.files:
                raise DataNotFoundError(
                    f"downstream set {entry.name!r}: split {name!r} names shards that do not "
                    f"exist: {', '.join(missing[:3]) or '(none)'}"
                )
        self._names: list[str] | None = None

    def split_names(self) -> list[str]:
        return list(self._shards)

    def _class_file(self) -> Path | None:
        places = [self.path] + [sh.files[0].parent for sh in self._shards.values()]
        for d in dict.fromkeys(places):
            for n in CLASS_FILES:
                if (d / n).is_file():
                    return d / n
        return None

    def class_names(self) -> list[str]:
        if self._names is not None:
            return self._names
        f = self._class_file()
        found: list[str] | None = None
        if f is not None:
            if f.suffix == ".json":
                obj = json.loads(f.read_text())
                if isinstance(obj, list):
                    found = [str(x) for x in obj]
                elif isinstance(obj, dict) and all(isinstance(v, int) for v in obj.values()):
                    found = [k for k, _ in sorted(obj.items(), key=lambda kv: kv[1])]
                elif isinstance(obj, dict):
                    found = [str(obj[k]) for k in sorted(obj, key=int)]
                else:
                    raise DataFormatError(f"downstream set {self.entry.name!r}: {f} must hold a list of class names")
            else:
                found = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        if found is None and self.entry.class_names is None:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: no class names for the shards under {self.path}; write "
                f"{self.path}/classes.txt (one name per line, in label order) or list them in class_names"
            )
        self._names = (
            list(self.entry.class_names)
            if found is None
            else _map_names(self.entry.name, found, self.entry.class_names, str(f))
        )
        return self._names

    def _sample(self, key: str, sample: dict[str, bytes], shard: Path) -> tuple[int, bytes]:
        """The label and encoded image of one sample (``b""`` where the image was not read); a sample
        without either, or with a label that is not an integer, is a format error naming it."""
        img = next((sample[x] for x in self.image_exts if x in sample), None)
        if img is None:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: sample {key!r} in {shard} has no image "
                f"under {';'.join(self.image_exts)} (it has: {', '.join(sorted(sample))}); "
                f"set image_key"
            )
        if self.label_ext not in sample:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: sample {key!r} in {shard} has no "
                f"label under {self.label_ext!r} (it has: {', '.join(sorted(sample))}); "
                f"set label_key"
            )
        try:
            return int(sample[self.label_ext].decode().strip()), img
        except ValueError:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: sample {key!r} in {shard}: label "
                f"{sample[self.label_ext][:20]!r} is not an integer"
            ) from None

    def _read(self, split: str, with_images: bool) -> _Shards:
        if split not in self._shards:
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: no shards for split {split!r} under "
                f"{self.path}; it has: {', '.join(self._shards)}"
            )
        sh = self._shards[split]
        if sh.labels is not None and (sh.images is not None or not with_images):
            return sh
        labels: list[int] = []
        images: list[bytes] = []
        keys: list[str] = []
        wanted = set(self.image_exts) | {self.label_ext} if with_images else {self.label_ext}
        for f in sh.files:
            try:
                with open(f, "rb") as fh:
                    for key, sample in tar_samples(fh, keep=wanted.__contains__):
                        label, image = self._sample(key, sample, f)
                        labels.append(label)
                        keys.append(key)
                        if with_images:
                            images.append(image)
            except TarReadError as e:
                what = "is truncated" if isinstance(e, TruncatedTar) else "cannot be read as a tar archive"
                raise DataFormatError(
                    f"downstream set {self.entry.name!r}: shard {f} {what} ({e.detail}); shards must be whole "
                    f"webdataset tar files"
                ) from None
        sh.labels = np.asarray(labels, dtype=np.int64)
        sh.keys = keys
        sh.images = images if with_images else None
        n = len(self.class_names())
        bad = (sh.labels < 0) | (sh.labels >= n)
        if bad.any():
            raise DataFormatError(
                f"downstream set {self.entry.name!r}: split {split!r} has labels outside 0..{n - 1} "
                f"(e.g. {int(sh.labels[bad][0])}); the class list has {n} names"
            )
        return sh

    def labels(self, split: str) -> np.ndarray:
        return self._read(split, with_images=False).labels

    def payloads(self, split: str, rows: np.ndarray) -> list:
        sh = self._read(split, with_images=True)
        return [sh.images[int(i)] for i in rows]

    def fingerprint(self) -> tuple:
        f = self._class_file()
        stamps = tuple((str(p), _mtime(p)) for sh in self._shards.values() for p in sh.files)
        return ("wds", str(self.path), stamps, (str(f), _mtime(f)) if f else None)


def _is_pattern(s: str) -> bool:
    return "{" in s or "*" in s or s.endswith(".tar")


def _expand(base: Path, pattern: str) -> list[Path]:
    import glob

    from braceexpand import braceexpand

    out: list[Path] = []
    for p in braceexpand(pattern):
        full = p if os.path.isabs(p) else str(base / p)
        if "*" in full:
            out.extend(Path(x) for x in sorted(glob.glob(full)))
        else:
            out.append(Path(full))
    return out


# --------------------------------------------------------------------------------------- finding the data


def resolve_path(location: str, data_dir: Path) -> Path:
    p = Path(os.path.expandvars(location)).expanduser()
    return p if p.is_absolute() else data_dir / p


def open_set_storage(entry: DownstreamSet, data_dir: Path) -> SetStorage:
    """Open the data of a real or custom set; :class:`DataNotFoundError` lists every place looked."""
    looked: list[str] = []
    fmt = entry.format
    if fmt == "hf_hub":
        src = _from_hub_cache(entry, entry.location, looked)
        if src is not None:
            return src
        raise DataNotFoundError(_absent_message(entry, data_dir, looked, None))
    path = resolve_path(entry.location, data_dir)
    if fmt == "imagefolder":
        if path.is_dir():
            return FolderStorage(entry, path)
        looked.append(f"{path} (an image folder <split>/<class name>/<images>): does not exist")
    elif fmt == "wds":
        if path.is_dir() or any(_is_pattern(s) for s in (entry.splits or {}).values() if s):
            return WdsStorage(entry, path)
        looked.append(f"{path} (webdataset shards <split>/*.tar): does not exist")
    elif fmt == "hf_disk":
        if is_saved_dataset(path):
            return open_saved(entry, path)
        if entry.origin == "real" and path.is_dir():
            if looks_like_imagefolder(path):
                return FolderStorage(entry, path)
            if any(sorted(d.glob("*.tar")) for d in _subdirs(path)):
                return WdsStorage(entry, path)
        state = "is not a saved dataset, an image folder or webdataset shards" if path.is_dir() else "does not exist"
        if entry.origin == "real":
            looked.append(
                f"{path} (a dataset saved with save_to_disk, an image folder <split>/<class name>/<images>, "
                f"or webdataset shards <split>/*.tar): {state}"
            )
        else:
            looked.append(f"{path} (a dataset saved with save_to_disk: dataset_dict.json): {state}")
    else:
        raise ValueError(f"downstream set {entry.name!r}: format {fmt!r} has no reader")
    if entry.hub:
        src = _from_hub_cache(entry, entry.hub, looked)
        if src is not None:
            return src
    raise DataNotFoundError(_absent_message(entry, data_dir, looked, path))


def _from_hub_cache(entry: DownstreamSet, dataset_id: str, looked: list[str]) -> SetStorage | None:
    """The set from the local Hugging Face cache (read offline), else None with the place noted in ``looked``."""
    src = open_hub_cached(entry, dataset_id, entry.config_name)
    if src is None:
        looked.append(
            f"the Hugging Face datasets cache {hub_cache_path(dataset_id)} (dataset {dataset_id!r}; "
            f"read offline, nothing is downloaded): not there"
        )
    return src


def _absent_message(entry: DownstreamSet, data_dir: Path, looked: list[str], path: Path | None) -> str:
    title = f" ({entry.description})" if entry.description else ""
    lines = [f"downstream set {entry.name!r}{title} has no data on this machine. Looked at:"]
    lines += [f"  - {x}" for x in looked]
    lines.append("Provide one of:")
    hub = entry.location if entry.format == "hf_hub" else entry.hub
    cfg = f", {entry.config_name!r}" if entry.config_name else ""
    n = 0
    if path is not None and entry.format in ("hf_disk",) and hub:
        n += 1
        lines.append(
            f'  {n}. a saved Hugging Face dataset (run once where the hub is reachable): python -c "import '
            f"datasets; datasets.load_dataset({hub!r}{cfg}).save_to_disk('{path}')\""
        )
    elif path is not None and entry.format == "hf_disk":
        n += 1
        lines.append(
            f"  {n}. a saved Hugging Face dataset: DatasetDict({{'train': ..., 'test': ...}})"
            f".save_to_disk('{path}') with an image column and a ClassLabel label column"
        )
    if hub:
        n += 1
        lines.append(
            f'  {n}. the dataset in the local Hugging Face cache: python -c "import datasets; '
            f'datasets.load_dataset({hub!r}{cfg})" (with the same HF_DATASETS_CACHE as here)'
        )
    if path is not None and (entry.format == "imagefolder" or entry.origin == "real"):
        n += 1
        lines.append(
            f"  {n}. an image folder {path}/<split>/<class name>/<image files>, splits train and test "
            f"(validation is optional: without it one is carved from train)"
        )
    if path is not None and entry.format == "wds":
        n += 1
        lines.append(
            f"  {n}. webdataset shards {path}/<split>/*.tar with an image "
            f"({entry.image_key or DEFAULT_WDS_IMAGE_KEY}) and an integer label "
            f"({entry.label_key or DEFAULT_WDS_LABEL_KEY}) per sample, and {path}/classes.txt"
        )
    if path is not None and not Path(os.path.expanduser(entry.location)).is_absolute():
        lines.append(
            f"Relative paths are under the data dir {data_dir} (set TBENCH_DATA, or pass data_dir, to move it)."
        )
    if entry.hint:
        lines.append(entry.hint.replace("<dir>", str(path)) if path is not None else entry.hint)
    return "\n".join(lines)
