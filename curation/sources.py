"""The source registry: where a pre-training source's shards are, and how to open and validate them.

A source is a set of webdataset shards: tar files whose members are grouped into samples by
key (``00000042.jpg``, ``00000042.txt``, ``00000042.json`` ...), as img2dataset writes them.
An image is stored under one of ``image_exts``, the caption under ``txt``, the metadata under
``json`` (``width``/``height``, img2dataset's ``original_width``/``original_height`` and, for
LAION, the precomputed image-text ``similarity``) and, for labelled sources, an integer class
under ``cls``.

Three kinds of entry, one type (:class:`SourceEntry`):

* **world sources** (``SOURCES``: ``cc3m``, ``cc12m``, ``redcaps``, ``yfcc``, ``laion``, ``wit``,
  ``shutterstock``, ``imagenet``): the embedded world's shards under
  ``<world root>/sources/<name>/`` with a ``sizes.json`` (``tbench world`` writes them);
* **real sources** (``REAL_SOURCES``: ``real.cc3m`` ... ``real.imagenet``): where the real data
  is conventionally placed under the data dir (``$TBENCH_DATA``, else ``~/tbench-data``), e.g.
  ``<data dir>/laion/00000.tar`` with img2dataset's ``00000_stats.json``;
* **declared sources** (:meth:`SourceEntry.from_config`): a spec's own
  ``{shards: "s3://bucket/x/{00000..00099}.tar", kind: image-text, size: N}``.

:func:`open_source` turns an entry into an :class:`OpenedSource`: it expands the shard pattern,
checks that every shard is reachable (locally through :mod:`pathlib`, remotely through
:mod:`fsspec`), reads the per-shard sample counts (``sizes.json``, img2dataset's
``*_stats.json``, else by scanning) and probes the first samples for the fields the kind needs.
Every failure raises an error naming the source, the path or URL and what would be valid.
Iterating an opened source never crashes on bad data: bad samples and truncated shards are
skipped and counted in :attr:`OpenedSource.skipped`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.layout import SIZES_FILE, default_data_dir
from harness.core.registry import Registry, UnknownNameError
from harness.core.tars import TruncatedTar, UnreadableTar, tar_samples

logger = logging.getLogger(__name__)

STATS_SUFFIX = "_stats.json"  # img2dataset: 00000.tar -> 00000_stats.json with "successes"
KINDS = ("image-text", "labelled")
AUTO = "auto"  # kind of an ad-hoc location: decided by the probe
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DATA_DIR_PLACEHOLDER = "{data_dir}"
COUNTED_BY = ("sizes.json", "stats", "scan")

# The reasons a sample or shard is skipped while iterating (keys of OpenedSource.skipped).
SKIP_REASONS = {
    "no_image": "sample without an image member under one of the image extensions",
    "no_caption": "image-text sample without a caption (missing or empty)",
    "bad_json": "metadata that is not a JSON object",
    "no_label": "labelled sample without a class",
    "bad_cls": "labelled sample whose class is not an integer",
    "label_out_of_range": "labelled sample whose class is negative or not below the source's num_classes",
    "bad_image": "image that does not decode (found by the curation steps that read images: curation.views)",
    "duplicate_member": "member repeated within a sample (the first is kept)",
    "truncated_shard": "shard that ends early (iteration of that shard stops)",
    "unreadable_shard": "shard that cannot be opened as a tar archive",
}
# Reasons that count shards or repeated members, not dropped samples.
NOT_SAMPLE_REASONS = ("duplicate_member", "truncated_shard", "unreadable_shard")

_PROTOCOL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_FS_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "hf": "huggingface_hub",
}


class SourceError(Exception):
    """A source cannot be resolved, opened or validated; the message says what would be valid."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """Shards (or the folder, or the world) are not where the source says."""


class SourceFormatError(SourceError, ValueError):
    """The source was found but its pattern, counts or samples are not as they must be."""


class SourceConfigError(SourceError, ValueError):
    """A declared source's configuration is invalid."""


# ------------------------------------------------------------------------------------ entries


@dataclass(frozen=True)
class SourceEntry:
    """A pre-training source: what it is and where its shards are.

    ``shards`` is a shard location: a brace pattern (``{data_dir}/laion/{00000..41407}.tar``),
    a folder holding ``*.tar`` shards, a glob (``.../imagenet-train-*.tar``) or a URL of any of
    these (``s3://``, ``gs://``, ``https://``, ``memory://`` ...); ``{data_dir}`` stands for the
    data dir. ``None`` means the embedded world's ``sources/<name>`` under a world root.
    """

    name: str
    kind: str  # "image-text" or "labelled" ("auto" only for ad-hoc locations, decided when opened)
    description: str = ""
    shards: str | None = None
    size: int | None = None  # documented sample count; informational
    image_exts: tuple[str, ...] = IMAGE_EXTS
    caption_key: str = "txt"
    meta_key: str = "json"
    label_key: str = "cls"
    num_classes: int | None = None  # labelled sources: classes are 0 .. num_classes - 1 (others are skipped)
    hint: str = ""  # what to provide and how to produce it
    origin: str = ""  # where the real data comes from

    # -- plain data

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any]) -> SourceEntry:
        """A declared source from plain (YAML-like) data; :meth:`to_config` round-trips.

        Fields: ``shards`` (required), ``kind`` (image-text or labelled; default image-text),
        ``size``, ``description``, ``image_exts``, ``caption_key``, ``meta_key``, ``label_key``,
        ``num_classes`` (labelled sources: samples whose class is outside ``[0, num_classes)`` are
        skipped and counted), ``hint``, ``origin``.
        """
        who = f"source {name!r}"
        valid = ", ".join(CONFIG_FIELDS)
        if not isinstance(name, str) or not name:
            raise SourceConfigError(f"source names must be non-empty strings, got {name!r}")
        if not isinstance(cfg, Mapping):
            raise SourceConfigError(f"{who}: expected a mapping of fields ({valid}), got {cfg!r}")
        unknown = [str(k) for k in cfg if k not in CONFIG_FIELDS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], CONFIG_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SourceConfigError(f"{who}: unknown key(s) {', '.join(map(repr, unknown))}{hint}; valid keys: {valid}")
        shards = cfg.get("shards")
        if not isinstance(shards, (str, os.PathLike)) or not os.fspath(shards):
            raise SourceConfigError(
                f"{who}: 'shards' is required: a brace pattern ('{{data_dir}}/mine/{{00000..00099}}.tar'), a folder "
                f"of .tar shards, a glob, or a URL (s3://bucket/mine/{{00000..00099}}.tar); got {shards!r}"
            )
        kind = cfg.get("kind", "image-text")
        if kind not in KINDS:
            raise SourceConfigError(f"{who}: kind {kind!r} is not valid; valid: {', '.join(KINDS)}")
        size = cfg.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise SourceConfigError(
                f"{who}: size must be a non-negative integer (the documented sample count), got {size!r}"
            )
        num_classes = cfg.get("num_classes")
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise SourceConfigError(
                    f"{who}: num_classes must be a positive integer (classes are 0 .. "
                    f"num_classes - 1), got {num_classes!r}"
                )
            if kind != "labelled":
                raise SourceConfigError(
                    f"{who}: num_classes applies to labelled sources (kind: labelled); this one is {kind}"
                )
        exts = cfg.get("image_exts", IMAGE_EXTS)
        if isinstance(exts, str):
            exts = [exts]
        if (
            not isinstance(exts, (list, tuple))
            or not exts
            or not all(isinstance(e, str) and e.strip(".") for e in exts)
        ):
            raise SourceConfigError(
                f"{who}: image_exts must be a non-empty list of file extensions such as "
                f"{list(IMAGE_EXTS)}, got {exts!r}"
            )
        out: dict[str, Any] = {}
        for k in ("description", "hint", "origin"):
            v = cfg.get(k, "")
            if not isinstance(v, str):
                raise SourceConfigError(f"{who}: {k} must be a string, got {v!r}")
            out[k] = v
        for k in ("caption_key", "meta_key", "label_key"):
            v = cfg.get(k, getattr(cls, k))
            if not isinstance(v, str) or not v.strip("."):
                raise SourceConfigError(f"{who}: {k} must be a member extension such as 'txt', got {v!r}")
            out[k] = v.strip(".").lower()
        return cls(
            name=name,
            kind=kind,
            shards=os.fspath(shards),
            size=size,
            num_classes=num_classes,
            image_exts=tuple(e.strip(".").lower() for e in exts),
            **out,
        )

    def to_config(self) -> dict[str, Any]:
        """Plain data: ``shards`` and ``kind`` always, other fields where they differ from the defaults."""
        out: dict[str, Any] = {"shards": self.shards, "kind": self.kind}
        for f in dataclasses.fields(self):
            if f.name in ("name", "shards", "kind"):
                continue
            v = getattr(self, f.name)
            if v != f.default:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def for_location(cls, location: str | os.PathLike, kind: str = AUTO) -> SourceEntry:
        """An ad-hoc entry for a folder, pattern or URL of shards (its kind decided by the probe)."""
        loc = os.fspath(location)
        return cls(
            name=loc,
            kind=kind,
            description="shards at a given location",
            shards=loc,
            hint="a folder of webdataset .tar shards, a brace pattern such as 'dir/{00000..00009}.tar', a "
            "glob such as 'dir/*.tar', or a URL of any of these (s3://, gs://, https://, file://)",
        )

    # -- where

    @property
    def is_world(self) -> bool:
        return self.shards is None

    @property
    def required_fields(self) -> tuple[str, ...]:
        """The fields every sample of this kind must carry (checked by the probe)."""
        if self.kind == "labelled":
            return ("image", "cls")
        if self.kind == "image-text":
            return ("image", "txt", "json")
        return ("image",)

    def location(self, world_root: str | Path | None = None, data_dir: str | Path | None = None) -> str:
        """The shard location with ``{data_dir}`` (or, for a world source, the world root) filled in."""
        if self.is_world:
            if world_root is None:
                raise SourceError(
                    f"source {self.name!r} is an embedded-world source: pass the world root, the folder "
                    f"`tbench world --out DIR` wrote (on the command line: --world DIR, default tbench-out/world)"
                )
            return str(Path(world_root) / self.relative_dir)
        loc = self.shards
        if DATA_DIR_PLACEHOLDER in loc:
            loc = loc.replace(
                DATA_DIR_PLACEHOLDER, str(Path(data_dir).expanduser() if data_dir is not None else default_data_dir())
            )
        if not _PROTOCOL.match(loc):
            loc = os.path.expanduser(loc)
        return loc

    def hint_text(self, data_dir: str | Path | None = None) -> str:
        if DATA_DIR_PLACEHOLDER not in self.hint:
            return self.hint
        dd = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        return self.hint.replace(DATA_DIR_PLACEHOLDER, str(dd))

    # -- the embedded world's layout (``root`` is the world root; for other entries the data dir)

    @property
    def relative_dir(self) -> str:
        """Where a world source's shards live, relative to the world root."""
        return f"sources/{self.name}"

    def directory(self, data_root: str | Path) -> Path:
        if self.is_world:
            return Path(data_root) / self.relative_dir
        loc = self.location(data_dir=data_root)
        return Path(loc).parent if (_has_braces(loc) or "*" in loc or loc.endswith(SHARD_SUFFIXES)) else Path(loc)

    def sizes(self, data_root: str | Path) -> dict[str, int]:
        """Shard file name -> sample count (world: from ``sizes.json``; others: as :func:`open_source` counts)."""
        if not self.is_world:
            opened = open_source(self, data_dir=data_root, probe=0)
            return {_basename(u): n for u, n in opened.sizes.items()}
        d = self.directory(data_root)
        p = d / SIZES_FILE
        if not p.is_file():
            raise SourceNotFoundError(
                f"source {self.name!r}: no {SIZES_FILE} in {d}; write the embedded world there with "
                f"`tbench world --out {Path(data_root)}` (or place real shards and their {SIZES_FILE} there)"
            )
        return _parse_sizes(p.read_text(), str(p), self.name)

    def shard_paths(self, data_root: str | Path) -> list[str]:
        """Paths (or URLs) of the source's shards, in shard order; each must exist."""
        if not self.is_world:
            return list(open_source(self, data_dir=data_root, probe=0).urls)
        d = self.directory(data_root)
        paths = [d / name for name in sorted(self.sizes(data_root))]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise SourceNotFoundError(
                f"source {self.name!r}: {d / SIZES_FILE} lists shards missing from {d}: "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; rebuild with `tbench world`"
            )
        return [str(p) for p in paths]

    def num_samples(self, data_root: str | Path) -> int:
        return sum(self.sizes(data_root).values())


CONFIG_FIELDS = (
    "shards",
    "kind",
    "size",
    "description",
    "image_exts",
    "caption_key",
    "meta_key",
    "label_key",
    "num_classes",
    "hint",
    "origin",
)

SOURCES: Registry[SourceEntry] = Registry("source")
REAL_SOURCES: Registry[SourceEntry] = Registry("real source")


def _register(name: str, kind: str, description: str) -> None:
    SOURCES.register(name, SourceEntry(name, kind, description))


_IMG2DATASET = (
    "img2dataset --url_list {src} --input_format {fmt} --url_col {url} --caption_col {cap}{extra} "
    "--output_format webdataset --output_folder {{data_dir}}/{name} --image_size 256 "
    "--resize_mode keep_ratio --processes_count 16 --thread_count 64"
)

# (name, size, description, origin, how to produce the shards)
_REAL: tuple[tuple[str, int, str, str, str], ...] = (
    (
        "cc3m",
        3_318_333,
        "Conceptual Captions: 3.3M alt-texts rewritten with hypernyms",
        "Sharma et al. 2018, Conceptual Captions (ai.google.com/research/ConceptualCaptions); the tsv of URLs "
        "and captions",
        _IMG2DATASET.format(src="cc3m.tsv", fmt="tsv", url="url", cap="caption", extra="", name="cc3m"),
    ),
    (
        "cc12m",
        12_423_374,
        "Conceptual 12M: CC3M's pipeline with looser filters",
        "Changpinyo et al. 2021, Conceptual 12M (github.com/google-research-datasets/conceptual-12m); cc12m.tsv",
        _IMG2DATASET.format(src="cc12m.tsv", fmt="tsv", url="url", cap="caption", extra="", name="cc12m"),
    ),
    (
        "redcaps",
        12_011_111,
        "RedCaps: image posts and their titles from 350 subreddits",
        "Desai et al. 2021, RedCaps (redcaps.xyz); the annotation json converted to a parquet of url and caption",
        _IMG2DATASET.format(src="redcaps.parquet", fmt="parquet", url="url", cap="caption", extra="", name="redcaps"),
    ),
    (
        "yfcc",
        14_829_396,
        "YFCC15M: the English-captioned subset of YFCC100M (titles and descriptions)",
        "Thomee et al. 2016, YFCC100M, and Radford et al. 2021's 15M subset (github.com/openai/CLIP, data/yfcc100m.md)",
        _IMG2DATASET.format(src="yfcc15m.parquet", fmt="parquet", url="url", cap="caption", extra="", name="yfcc"),
    ),
    (
        "laion",
        413_000_000,
        "LAION-400M: Common Crawl alt-texts kept where CLIP ViT-B/32 similarity >= 0.3",
        "Schuhmann et al. 2021, LAION-400M (laion.ai/blog/laion-400-open-dataset); the metadata parquets",
        _IMG2DATASET.format(
            src="laion400m-meta",
            fmt="parquet",
            url="URL",
            cap="TEXT",
            extra=' --save_additional_columns \'["similarity","NSFW","LICENSE"]\'',
            name="laion",
        ),
    ),
    (
        "wit",
        11_500_000,
        "WIT: Wikipedia images with reference, attribution and alt-text captions, 108 languages",
        "Srinivasan et al. 2021, WIT (github.com/google-research-datasets/wit); the tsv files",
        _IMG2DATASET.format(
            src="wit.tsv",
            fmt="tsv",
            url="image_url",
            cap="caption_reference_description",
            extra=" --save_additional_columns '[\"language\"]'",
            name="wit",
        ),
    ),
    (
        "shutterstock",
        15_000_000,
        "Shutterstock: stock photos and vector art with descriptive captions (licensed)",
        "Shutterstock image-caption pairs as used by Nguyen et al. 2022 and Entezari et al. 2023; not public, "
        "needs a license",
        _IMG2DATASET.format(
            src="shutterstock.parquet", fmt="parquet", url="url", cap="caption", extra="", name="shutterstock"
        ),
    ),
)


def _fill() -> None:
    # World descriptions come from the world's declarations so the two never drift apart.
    from curation.catalogue import SOURCE_DECLS

    for d in SOURCE_DECLS:
        _register(d.name, d.kind, d.description)
    for name, size, desc, origin, cmd in _REAL:
        REAL_SOURCES.register(
            f"real.{name}",
            SourceEntry(
                f"real.{name}",
                "image-text",
                desc,
                shards=f"{DATA_DIR_PLACEHOLDER}/{name}",
                size=size,
                origin=origin,
                hint=f"img2dataset webdataset shards in {DATA_DIR_PLACEHOLDER}/{name}/ (00000.tar with "
                f"00000_stats.json, ...; a sizes.json is used when present); produce them with: {cmd}",
            ),
        )
    REAL_SOURCES.register(
        "real.imagenet",
        SourceEntry(
            "real.imagenet",
            "labelled",
            "ImageNet-1k training set: 1.28M photographs, one of 1000 classes each",
            shards=f"{DATA_DIR_PLACEHOLDER}/imagenet/imagenet-train-*.tar",
            size=1_281_167,
            num_classes=1000,
            origin="Deng et al. 2009 / Russakovsky et al. 2015, ILSVRC-2012 (image-net.org; needs an account)",
            hint=f"webdataset shards imagenet-train-{{000000..001281}}.tar in {DATA_DIR_PLACEHOLDER}/imagenet/ with "
            f".jpg, .cls (the class index) and optionally .json per sample, as timm's webdataset layout "
            f"(e.g. the timm/imagenet-1k-wds shards, or timm's/webdataset's conversion scripts run over "
            f"ILSVRC2012_img_train)",
        ),
    )


_fill()


def _looks_like_location(s: str) -> bool:
    return (
        bool(_PROTOCOL.match(s))
        or any(c in s for c in "/\\{}*")
        or s.endswith(SHARD_SUFFIXES)
        or Path(s).expanduser().exists()
    )


def source_names() -> dict[str, list[str]]:
    """The registered names: ``{"world": [...], "real": [...]}``."""
    return {"world": SOURCES.names(), "real": REAL_SOURCES.names()}


def resolve_source(name_or_entry: str | SourceEntry, custom: Mapping[str, Any] | None = None) -> SourceEntry:
    """An entry passes through; a name is looked up in ``custom`` (name -> config or entry, from a
    spec), then among the world sources, then the real ones; a folder, pattern or URL becomes an
    ad-hoc entry (:meth:`SourceEntry.for_location`)."""
    if isinstance(name_or_entry, SourceEntry):
        return name_or_entry
    if isinstance(name_or_entry, os.PathLike):
        return SourceEntry.for_location(name_or_entry)
    name = name_or_entry
    if not isinstance(name, str) or not name:
        raise SourceConfigError(
            f"a source is a registered name, a declared name, or a location of shards; got {name!r}"
        )
    if custom and name in custom:
        cfg = custom[name]
        return cfg if isinstance(cfg, SourceEntry) else SourceEntry.from_config(name, cfg)
    if name in SOURCES:
        return SOURCES.get(name)
    if name in REAL_SOURCES:
        return REAL_SOURCES.get(name)
    if _looks_like_location(name):
        return SourceEntry.for_location(name)
    declared = sorted(custom or ())
    everything = SOURCES.names() + REAL_SOURCES.names() + declared
    close = difflib.get_close_matches(name, everything, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(
        f"unknown source {name!r}.{hint} Valid: world sources {', '.join(SOURCES.names())}; real sources "
        f"{', '.join(REAL_SOURCES.names())}"
        + (f"; declared {', '.join(declared)}" if declared else "")
        + "; or a folder, a brace pattern (dir/{00000..00009}.tar), a glob or a URL of .tar shards"
    )


# ------------------------------------------------------------------------------------ helpers


def _has_braces(s: str) -> bool:
    return "{" in s or "}" in s


def _basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


def _parse_sizes(text: str, where: str, name: str) -> dict[str, int]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceFormatError(
            f"source {name!r}: {where} is not valid JSON ({e}); it must map shard file names "
            f'to sample counts, e.g. {{"00000.tar": 10000}}'
        ) from None
    if not isinstance(raw, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw.values()
    ):
        raise SourceFormatError(
            f"source {name!r}: {where} must map shard file names to non-negative sample "
            f'counts, e.g. {{"00000.tar": 10000}}'
        )
    return {str(k): int(v) for k, v in raw.items()}


class _Fs:
    """Listing, existence and reading, locally through pathlib or remotely through fsspec."""

    def __init__(self, protocol: str | None, fs: Any = None):
        self.protocol, self.fs = protocol, fs

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def url(self, path: str) -> str:
        return self.fs.unstrip_protocol(path) if self.remote else path

    def listdir(self, d: str) -> set[str] | None:
        """Base names in folder ``d``; None if it cannot be listed (missing, or http)."""
        if not self.remote:
            try:
                return set(os.listdir(d))
            except OSError:
                return None
        if self.protocol in ("http", "https"):
            return None
        try:
            return {_basename(p) for p in self.fs.ls(d, detail=False)}
        except (OSError, ValueError):
            return None

    def isdir(self, p: str) -> bool:
        return Path(p).is_dir() if not self.remote else bool(self.fs.isdir(p))

    def exists(self, p: str) -> bool:
        return Path(p).exists() if not self.remote else bool(self.fs.exists(p))

    def isfile(self, p: str) -> bool:
        if not self.remote:
            return Path(p).is_file()
        try:
            return bool(self.fs.isfile(p))
        except (OSError, ValueError):
            return False

    def glob(self, pattern: str) -> list[str]:
        if not self.remote:
            import glob as _glob

            return sorted(_glob.glob(pattern))
        return sorted(self.url(p) for p in self.fs.glob(pattern))

    def read_text(self, p: str) -> str:
        if not self.remote:
            return Path(p).read_text()
        return self.fs.cat_file(p).decode()


def _filesystem(entry: SourceEntry, loc: str, data_dir: Any) -> _Fs:
    m = _PROTOCOL.match(loc)
    if not m:
        return _Fs(None)
    protocol = m.group(1).lower()
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with datasets
        raise SourceError(f"source {entry.name!r}: reading {loc} needs fsspec (pip install fsspec)") from None
    try:
        fs = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as e:
        pkg = _FS_PACKAGES.get(protocol)
        install = f"install {pkg} (pip install {pkg})" if pkg else "install the fsspec implementation for it"
        raise SourceError(
            f"source {entry.name!r}: cannot read {loc}: fsspec has no usable filesystem for {protocol}:// ({e}); "
            f"{install}, or copy the shards to a local folder and point the source there"
            + _hint_suffix(entry, data_dir)
        ) from None
    return _Fs(protocol, fs)


def _hint_suffix(entry: SourceEntry, data_dir: Any) -> str:
    h = entry.hint_text(data_dir)
    return f". Expected: {h}" if h else ""


def _expand(entry: SourceEntry, loc: str, fs: _Fs, data_dir: Any) -> list[str]:
    """The shard URLs a location stands for, in order."""
    who = f"source {entry.name!r}"
    hint = _hint_suffix(entry, data_dir)
    if _has_braces(loc):
        import braceexpand

        try:
            urls = list(braceexpand.braceexpand(loc))
        except braceexpand.UnbalancedBracesError:
            raise SourceFormatError(
                f"{who}: bad shard pattern {loc!r}: unbalanced braces; a valid pattern looks like "
                f"'dir/{{00000..00099}}.tar' (zero-padded range) or 'dir/{{a,b}}.tar'" + hint
            ) from None
        left = [u for u in urls if _has_braces(u)]
        if left:
            m = re.search(r"\{[^{}]*\}", left[0])
            what = m.group(0) if m else left[0]
            raise SourceFormatError(
                f"{who}: bad shard pattern {loc!r}: {what} is neither a range ({{00000..00099}}) nor a list "
                f"({{a,b}}); the only placeholder is {DATA_DIR_PLACEHOLDER}" + hint
            )
    elif "*" in loc:
        urls = fs.glob(loc)
        if not urls:
            raise SourceNotFoundError(f"{who}: no shards match {loc}" + hint)
    elif fs.isdir(loc):
        names = fs.listdir(loc) or set()
        urls = [f"{loc.rstrip('/')}/{n}" for n in sorted(names) if n.endswith(SHARD_SUFFIXES)]
        if not urls:
            raise SourceNotFoundError(f"{who}: no .tar shards in the folder {loc}" + hint)
    elif loc.endswith(SHARD_SUFFIXES):
        urls = [loc]
    else:
        parent = _parent(loc)
        why = "does not exist" if not fs.exists(loc) else "is not a folder or a .tar shard"
        extra = "" if fs.remote or Path(parent).is_dir() else f" (nor does {parent})"
        raise SourceNotFoundError(f"{who}: {loc} {why}{extra}" + hint)
    bad = [u for u in urls if not u.endswith(SHARD_SUFFIXES)]
    if bad:
        raise SourceFormatError(
            f"{who}: shard pattern {loc!r} expands to {bad[0]!r}, which is not a shard; shards "
            f"are tar files ({', '.join(SHARD_SUFFIXES)})" + hint
        )
    if not fs.remote:
        urls = [str(Path(u).absolute()) for u in urls]
    return urls


def _check_reachable(
    entry: SourceEntry, loc: str, urls: list[str], fs: _Fs, data_dir: Any
) -> dict[str, set[str] | None]:
    """Raise unless every shard exists; returns the listing of each shard folder (None: not listable)."""
    listings: dict[str, set[str] | None] = {}
    missing: list[str] = []
    missing_dirs: set[str] = set()
    for u in urls:
        d = _parent(u)
        if d not in listings:
            listings[d] = fs.listdir(d)
            if listings[d] is None and not fs.remote and not Path(d).is_dir():
                missing_dirs.add(d)
        names = listings[d]
        ok = (_basename(u) in names) if names is not None else (d not in missing_dirs and fs.isfile(u))
        if not ok:
            missing.append(u)
    if missing:
        where = f" (the folder {sorted(missing_dirs)[0]} does not exist)" if missing_dirs else ""
        raise SourceNotFoundError(
            f"source {entry.name!r}: {len(missing)} of {len(urls)} shard(s) of {loc} not found{where}: "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" + _hint_suffix(entry, data_dir)
        )
    return listings


# ------------------------------------------------------------------------------------ tar reading


class _ShardBroken(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _raw_samples(url: str, counter: Counter | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one shard, in order (read by :func:`tar_samples`, which
    counts repeated members into ``counter``); a broken shard raises _ShardBroken after the samples
    read before the break (the sample being read when it broke is dropped)."""
    import fsspec

    try:
        f = fsspec.open(url, "rb").open()
    except Exception as e:  # noqa: BLE001 - any failure to open is reported as unreadable
        raise _ShardBroken("unreadable_shard", f"cannot open: {e}") from None
    on_duplicate = None if counter is None else (lambda key, ext: counter.update(duplicate_member=1))
    with f:
        try:
            yield from tar_samples(f, on_duplicate=on_duplicate)
        except UnreadableTar as e:
            raise _ShardBroken("unreadable_shard", e.detail) from None
        except TruncatedTar as e:
            raise _ShardBroken("truncated_shard", e.detail) from None


def _image_ext(entry: SourceEntry, group: Mapping[str, bytes]) -> str | None:
    for e in entry.image_exts:
        if e in group:
            return e
    return None


def _count_shard(url: str) -> tuple[int, _ShardBroken | None]:
    """Samples in a shard by scanning; (count, why it stopped early or None)."""
    n = 0
    try:
        for _ in _raw_samples(url):
            n += 1
    except _ShardBroken as e:
        return n, e
    return n, None


# ------------------------------------------------------------------------------------ opened sources


@dataclass
class OpenedSource:
    """A validated source: its shards, their sample counts, and iteration over normalised samples.

    ``sizes`` maps each shard URL to its sample count; ``counted_by`` says where the counts came
    from (``sizes.json``, img2dataset ``stats``, or a ``scan`` of the shards); ``fields`` is each
    field's coverage (image, txt, json, cls) in the probed samples. While iterating, ``skipped``
    counts what was skipped by reason (see ``SKIP_REASONS``) and ``seen`` counts the raw samples
    read and how many carried each field.
    """

    entry: SourceEntry
    location: str
    urls: list[str]
    sizes: dict[str, int]
    num_samples: int
    counted_by: str
    fields: dict[str, float]
    probed: int = 0
    skipped: Counter = field(default_factory=Counter)
    seen: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def kind(self) -> str:
        return self.entry.kind

    @property
    def num_shards(self) -> int:
        return len(self.urls)

    def normalise(self, key: str, url: str, group: Mapping[str, bytes]) -> tuple[dict[str, Any] | None, str | None]:
        """A raw sample as ``{key, url, image, image_ext, txt, json, cls}``, or (None, skip reason)."""
        e = self.entry
        ext = _image_ext(e, group)
        if ext is None:
            return None, "no_image"
        txt = None
        if e.caption_key in group:
            txt = group[e.caption_key].decode("utf-8", "replace").strip()
        if e.kind == "image-text" and not txt:
            return None, "no_caption"
        meta: dict[str, Any] = {}
        if e.meta_key in group:
            try:
                meta = json.loads(group[e.meta_key].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return None, "bad_json"
            if not isinstance(meta, dict):
                return None, "bad_json"
        cls = None
        if e.label_key in group:
            try:
                cls = int(group[e.label_key].decode("utf-8").strip())
            except (UnicodeDecodeError, ValueError):
                if e.kind == "labelled":
                    return None, "bad_cls"
                cls = None  # an image-text source does not use its classes
            if e.kind == "labelled" and (cls < 0 or (e.num_classes is not None and cls >= e.num_classes)):
                return None, "label_out_of_range"
        elif e.kind == "labelled":
            return None, "no_label"
        return {
            "key": key,
            "url": url,
            "image": group[ext],
            "image_ext": ext,
            "txt": txt,
            "json": meta,
            "cls": cls,
        }, None

    def iter_shard(self, url: str) -> Iterator[dict[str, Any]]:
        """The normalised samples of one shard; bad samples and a broken shard are skipped and counted."""
        e = self.entry
        before = Counter(self.skipped)
        n = 0
        try:
            for key, group in _raw_samples(url, self.skipped):
                n += 1
                self.seen["samples"] += 1
                for fld, present in _presence(e, group).items():
                    self.seen[fld] += present
                sample, why = self.normalise(key, url, group)
                if sample is None:
                    self.skipped[why] += 1
                    continue
                yield sample
        except _ShardBroken as b:
            self.skipped[b.reason] += 1
            logger.warning(
                "source %r: shard %s %s after %d sample(s): %s; skipping the rest of it",
                self.name,
                url,
                "is unreadable" if b.reason == "unreadable_shard" else "ends early",
                n,
                b.detail,
            )
        else:
            expected = self.sizes.get(url)
            if expected is not None and n < expected and self.counted_by != "scan":
                self.skipped["truncated_shard"] += 1
                logger.warning(
                    "source %r: shard %s holds %d sample(s), %s says %d: truncated?",
                    self.name,
                    url,
                    n,
                    self.counted_by,
                    expected,
                )
        new = self.skipped - before
        bad = {k: v for k, v in new.items() if k not in NOT_SAMPLE_REASONS}
        if bad:
            logger.warning(
                "source %r: skipped %d bad sample(s) in %s: %s",
                self.name,
                sum(bad.values()),
                url,
                ", ".join(f"{k} {v}" for k, v in sorted(bad.items())),
            )

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """Every shard's normalised samples, in shard order."""
        for url in self.urls:
            yield from self.iter_shard(url)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "kind": self.kind,
            "location": self.location,
            "shards": self.num_shards,
            "num_samples": self.num_samples,
            "counted_by": self.counted_by,
            "fields": dict(self.fields),
            "probed": self.probed,
            "skipped": dict(self.skipped),
            "notes": list(self.notes),
        }


def _presence(entry: SourceEntry, group: Mapping[str, bytes]) -> dict[str, bool]:
    return {
        "image": _image_ext(entry, group) is not None,
        "txt": entry.caption_key in group,
        "json": entry.meta_key in group,
        "cls": entry.label_key in group,
    }


def _counts(
    entry: SourceEntry,
    urls: list[str],
    listings: Mapping[str, set[str] | None],
    fs: _Fs,
    notes: list[str],
    data_dir: Any,
) -> tuple[dict[str, int], str]:
    """Per-shard sample counts and how they were found."""
    sizes_by_dir: dict[str, dict[str, int]] = {}
    for d, names in listings.items():
        p = f"{d}/{SIZES_FILE}"
        if (SIZES_FILE in names) if names is not None else fs.isfile(p):
            sizes_by_dir[d] = _parse_sizes(fs.read_text(p), fs.url(p), entry.name)
    out: dict[str, int] = {}
    how: set[str] = set()
    to_scan: list[str] = []
    for u in urls:
        d, base = _parent(u), _basename(u)
        if base in sizes_by_dir.get(d, {}):
            out[u] = sizes_by_dir[d][base]
            how.add("sizes.json")
            continue
        stem = base
        for suf in SHARD_SUFFIXES:
            if stem.endswith(suf):
                stem = stem[: -len(suf)]
                break
        sp = f"{d}/{stem}{STATS_SUFFIX}"
        names = listings.get(d)
        if (f"{stem}{STATS_SUFFIX}" in names) if names is not None else fs.isfile(sp):
            try:
                stats = json.loads(fs.read_text(sp))
                out[u] = int(stats["successes"])
                if out[u] < 0:
                    raise ValueError("negative")
                how.add("stats")
                continue
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.warning(
                    "source %r: %s has no usable 'successes' (%s); counting %s by scanning it",
                    entry.name,
                    fs.url(sp),
                    e,
                    u,
                )
        to_scan.append(u)
    if to_scan:
        logger.info(
            "source %r: counting the samples of %d shard(s) by scanning them (no %s or *%s)",
            entry.name,
            len(to_scan),
            SIZES_FILE,
            STATS_SUFFIX,
        )
        for u in to_scan:
            n, broke = _count_shard(u)
            out[u] = n
            if broke is not None and broke.reason == "unreadable_shard":
                raise SourceFormatError(
                    f"source {entry.name!r}: shard {u} cannot be read as a tar archive "
                    f"({broke.detail}); shards must be webdataset tar files" + _hint_suffix(entry, data_dir)
                )
            if broke is not None:
                notes.append(f"{u}: {broke.reason} ({broke.detail}); counted the {n} sample(s) before the break")
        how.add("scan")
        notes.append(
            f"counted {len(to_scan)} of {len(urls)} shard(s) by scanning: no {SIZES_FILE} or "
            f"img2dataset *{STATS_SUFFIX} for them"
        )
    counted_by = "scan" if "scan" in how else ("stats" if "stats" in how else "sizes.json")
    return out, counted_by


def _probe(
    entry: SourceEntry, urls: list[str], sizes: Mapping[str, int], probe: int, data_dir: Any
) -> tuple[SourceEntry, dict[str, float], int]:
    """Read the first ``probe`` samples and check the kind's fields; returns the entry (kind decided
    for an ad-hoc one), each field's coverage and the number of samples probed."""
    who = f"source {entry.name!r}"
    groups: list[dict[str, bytes]] = []
    first_error = None
    for u in urls:
        if sizes.get(u) == 0:
            continue
        try:
            for _, g in _raw_samples(u):
                groups.append(g)
                if len(groups) >= probe:
                    break
        except _ShardBroken as b:
            if not groups:
                first_error = (u, b)
                break
        if len(groups) >= probe:
            break
    if not groups:
        if first_error is not None:
            u, b = first_error
            what = "cannot be read as a tar archive" if b.reason == "unreadable_shard" else "is truncated"
            raise SourceFormatError(
                f"{who}: could not read a sample: shard {u} {what} ({b.detail}); shards must be "
                "webdataset tar files" + _hint_suffix(entry, data_dir)
            )
        raise SourceFormatError(f"{who}: its shards hold no samples (first: {urls[0]})" + _hint_suffix(entry, data_dir))
    if entry.kind == AUTO:  # every probed sample has a class: labelled (captions or not)
        kind = "labelled" if all(entry.label_key in g for g in groups) else "image-text"
        entry = dataclasses.replace(entry, kind=kind)
    pres = [_presence(entry, g) for g in groups]
    fields = {f: sum(p[f] for p in pres) / len(pres) for f in ("image", "txt", "json", "cls")}
    for f in entry.required_fields:
        if fields[f] > 0:
            continue
        found = sorted({e for g in groups for e in g})
        member = {
            "image": f"an image (one of .{', .'.join(entry.image_exts)})",
            "txt": f"a caption (.{entry.caption_key})",
            "json": f"metadata (.{entry.meta_key})",
            "cls": f"an integer class (.{entry.label_key})",
        }[f]
        raise SourceFormatError(
            f"{who}: none of the first {len(groups)} sample(s) of {urls[0]} has {member}, which {entry.kind} "
            f"sources need; members found: {', '.join('.' + e for e in found) or 'none'}; every sample needs "
            + ", ".join(
                {
                    "image": "an image",
                    "txt": f".{entry.caption_key}",
                    "json": f".{entry.meta_key}",
                    "cls": f".{entry.label_key}",
                }[x]
                for x in entry.required_fields
            )
            + _hint_suffix(entry, data_dir)
        )
    return entry, fields, len(groups)


def open_source(
    entry_or_name: str | SourceEntry,
    *,
    world_root: str | Path | None = None,
    data_dir: str | Path | None = None,
    custom: Mapping[str, Any] | None = None,
    probe: int = 4,
) -> OpenedSource:
    """Resolve, locate, validate and count a source (see the module docstring).

    ``world_root`` is where the embedded world lives (world sources only); ``data_dir`` replaces
    ``{data_dir}`` (default ``$TBENCH_DATA``, else ``~/tbench-data``); ``custom`` holds a spec's
    declared sources; ``probe`` samples of the first shard are read to check the fields (0: none).
    """
    entry = resolve_source(entry_or_name, custom)
    if isinstance(probe, bool) or not isinstance(probe, int) or probe < 0:
        raise ValueError(f"probe must be a non-negative integer, got {probe!r}")
    if entry.is_world:
        loc = entry.location(world_root=world_root)
        if not Path(loc).is_dir():
            raise SourceNotFoundError(
                f"source {entry.name!r}: no shards at {loc}; write the embedded world with "
                f"`tbench world --out {world_root}` (or give the world root it was written to)"
            )
    else:
        loc = entry.location(data_dir=data_dir)
    fs = _filesystem(entry, loc, data_dir)
    urls = _expand(entry, loc, fs, data_dir)
    listings = _check_reachable(entry, loc, urls, fs, data_dir)
    notes: list[str] = []
    sizes, counted_by = _counts(entry, urls, listings, fs, notes, data_dir)
    fields: dict[str, float] = {}
    n_probed = 0
    if probe:
        entry, fields, n_probed = _probe(entry, urls, sizes, probe, data_dir)
    elif entry.kind == AUTO:
        entry = dataclasses.replace(entry, kind="image-text")
    opened = OpenedSource(
        entry=entry,
        location=loc,
        urls=urls,
        sizes=sizes,
        num_samples=sum(sizes.values()),
        counted_by=counted_by,
        fields=fields,
        probed=n_probed,
        notes=notes,
    )
    logger.info(
        "source %r: %d shard(s), %d sample(s) (counted by %s) at %s",
        entry.name,
        len(urls),
        opened.num_samples,
        counted_by,
        loc,
    )
    return opened
