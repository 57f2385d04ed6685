"""Webdataset pipelines for pre-training: a view folder in, per-rank batches out.

A view folder holds ``shards/*.tar`` (webdataset samples with ``png``, ``txt``, ``json`` and,
for labelled views, ``cls``) and ``sizes.json`` mapping each shard's file name to its sample
count. The pipeline is a list of stages, as in open_clip's ``get_wds_dataset``:

    shards (deterministic (seed, epoch) order, repeated, split by rank then loader worker)
    -> tar samples -> [sample split, when there are fewer shards than readers]
    -> deterministic shuffle buffer -> decode + augment (method's sample pipeline)
    -> batch (counting skipped samples) -> ``with_epoch``

Every rank yields exactly the same number of batches per epoch, computed from ``sizes.json`` and
the global batch, so DDP never waits on a rank that ran out of data; a reader whose shards run
dry starts over on them (in a fresh order) rather than stopping early. Bad samples (unreadable
PNG, missing field, a class outside ``[0, num_classes)``, broken tar member) are logged, counted
and skipped; the count travels with the batches, so it is correct with loader workers in other processes.
A reader that cannot produce a batch at all (two passes over its shards without a sample, or two
passes' worth of bad samples in a row) raises :class:`ReaderStalled` naming its shards instead of
looping forever; the loop makes every DDP rank stop with it (``pretrain.loop.agreed_batches``).

Rank and world size are passed in, never read from ``torch.distributed`` globals.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

try:
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as decode_image_tv
except ImportError:  # a torchvision without its decoders: PIL does it all
    ImageReadMode, decode_image_tv = None, None
from torchvision.transforms.v2 import functional as TF

from harness.core.layout import INDEX_FILE, SHARDS_DIR, SIZES_FILE
from harness.core.registry import Registry

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the view on disk


@dataclass(frozen=True)
class ViewShards:
    """The shards of a view folder and their sample counts (from ``sizes.json``).

    An index view (``index.parquet``, see :mod:`curation.views`) reads the source's own shards:
    ``shards`` are their URLs and ``index`` maps each to the kept keys and their labels.
    """

    root: Path
    shards: tuple[Path | str, ...]
    sizes: Mapping[str, int]
    index: Mapping[str, Mapping[str, int | None]] | None = None

    @property
    def num_samples(self) -> int:
        if self.index is not None:
            return sum(len(v) for v in self.index.values())
        return sum(self.sizes[p.name] for p in self.shards)


def read_index(view_dir: str | Path) -> dict[str, dict[str, int | None]]:
    """An index view's (written by :mod:`curation.views`) kept samples.

    Shard URL -> {key: label (None when unlabelled)}.
    """
    import pyarrow.parquet as pq

    t = pq.read_table(Path(view_dir) / INDEX_FILE).to_pydict()
    out: dict[str, dict[str, int | None]] = {}
    for url, key, label in zip(t["url"], t["key"], t["label"]):
        out.setdefault(url, {})[key] = label
    return out


def read_view(view_dir: str | Path) -> ViewShards:
    """List ``<view_dir>/shards/*.tar`` and check them against ``<view_dir>/sizes.json``
    (or, for an index view, read ``index.parquet``)."""
    root = Path(view_dir)
    sizes_path = root / SIZES_FILE
    if not sizes_path.is_file():
        raise FileNotFoundError(f"{sizes_path} not found: a view folder needs {SIZES_FILE} and {SHARDS_DIR}/*.tar")
    if (root / INDEX_FILE).is_file():
        index = read_index(root)
        if not index:
            raise FileNotFoundError(f"{root / INDEX_FILE} keeps no samples")
        sizes = {u: len(k) for u, k in index.items()}
        return ViewShards(root, tuple(sorted(index)), sizes, index)
    raw = json.loads(sizes_path.read_text())
    if not isinstance(raw, dict) or not all(isinstance(v, int) and v >= 0 for v in raw.values()):
        raise ValueError(f"{sizes_path} must map shard file names to sample counts (non-negative ints)")
    # Tolerate keys written as paths relative to the view ("shards/x.tar") as well as bare names.
    sizes = {Path(k).name: v for k, v in raw.items()}
    shards = tuple(sorted((root / SHARDS_DIR).glob("*.tar")))
    if not shards:
        raise FileNotFoundError(f"no shards in {root / SHARDS_DIR} (expected *.tar)")
    missing = [p.name for p in shards if p.name not in sizes]
    if missing:
        raise ValueError(f"{sizes_path} has no count for shard(s) {missing}")
    absent = sorted(set(sizes) - {p.name for p in shards})
    if absent:
        raise ValueError(f"{sizes_path} lists shard(s) {absent} that are not in {root / SHARDS_DIR}")
    return ViewShards(root, shards, sizes)


def steps_per_epoch(num_samples: int, global_batch_size: int) -> int:
    """Optimizer steps per epoch: whole global batches in the view (the remainder is dropped)."""
    steps = num_samples // global_batch_size
    if steps < 1:
        raise ValueError(
            f"the view has {num_samples} samples, fewer than one global batch of {global_batch_size}; "
            "lower batch_size or use a bigger view"
        )
    return steps


# --------------------------------------------------------------------------- determinism helpers


def mix_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from ``parts`` (the same on every machine and Python run)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SharedEpoch:
    """The current epoch, shared with persistent loader workers (open_clip's ``SharedEpoch``)."""

    def __init__(self, epoch: int = 0):
        self.value = mp.Value("i", epoch)

    def set_value(self, epoch: int) -> None:
        self.value.value = epoch

    def get_value(self) -> int:
        return self.value.value


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ReaderStalled(RuntimeError):
    """A reader cannot produce a batch: its shards hold no sample, or only bad ones."""


#: The fewest consecutive bad samples that stop a reader (its limit is two passes' worth, at least this).
MIN_BAD_RUN = 100


class SkipCounter:
    """A webdataset handler: log the bad sample, count it, carry on, up to a point.

    Each loader worker holds its own copy; :class:`Batcher` moves the worker's count into the
    next batch so the main process can total it. ``run`` counts bad samples since the last good
    one (:meth:`good`); once it reaches ``limit`` (set per pass by :class:`ShardStream`: two
    passes' worth of this reader's samples plus its shuffle buffer) the reader raises
    :class:`ReaderStalled` naming its ``shards``. ``raw`` counts samples read from the shards.
    """

    def __init__(self, max_logged: int = 20):
        self.count = 0
        self.max_logged = max_logged
        self.run, self.raw = 0, 0
        self.limit: int | None = None
        self.shards: Sequence[str] = ()

    def __call__(self, exn: BaseException) -> bool:
        self.count += 1
        self.run += 1
        if self.count <= self.max_logged:
            logger.warning("skipping a bad sample: %s: %s", type(exn).__name__, exn)
        elif self.count == self.max_logged + 1:
            logger.warning("more bad samples; further skips in this reader are counted, not logged")
        if self.limit is not None and self.run >= self.limit:
            raise ReaderStalled(
                f"{self.run} bad samples in a row (two passes' worth) and none good in shard(s) "
                f"{sorted(self.shards)}; last error: {type(exn).__name__}: {exn}"
            )
        return True  # continue

    def good(self) -> None:
        self.run = 0

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


# --------------------------------------------------------------------------- stages


class ShardStream(wds.PipelineStage):
    """An endless stream of ``{"url": shard}`` for this reader (rank x loader worker).

    Each pass over the shards uses a fresh order seeded by (seed, epoch, pass); all ranks draw
    the same order and take disjoint slices. With fewer shards than readers, every reader gets
    every shard and :class:`SampleSplit` divides the samples instead.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        seed: int,
        epoch: SharedEpoch,
        rank: int,
        world_size: int,
        split_shards: bool,
        counter: SkipCounter | None = None,
        sizes: Mapping[str, int] | None = None,
        bufsize: int = 0,
    ):
        self.urls = list(urls)
        self.seed, self.epoch = seed, epoch
        self.rank, self.world_size = rank, world_size
        self.split_shards = split_shards
        self.counter, self.sizes, self.bufsize = counter, dict(sizes or {}), bufsize

    def run(self) -> Iterator[dict[str, str]]:
        worker, num_workers = _worker()
        epoch = self.epoch.get_value()
        raw_at: list[int] = []  # samples read (counter.raw) when each pass began
        for rep in range(1 << 62):
            order = list(self.urls)
            random.Random(mix_seed("shards", self.seed, epoch, rep)).shuffle(order)
            mine = order[self.rank :: self.world_size][worker::num_workers] if self.split_shards else order
            if not mine:
                raise RuntimeError(
                    f"reader rank={self.rank} worker={worker} got no shards (split_shards with too few shards)"
                )
            if self.counter is not None:
                self._check(rep, raw_at, mine, worker)
            for url in mine:
                yield {"url": url}

    def _check(self, rep: int, raw_at: list[int], mine: Sequence[str], worker: int) -> None:
        """Stop a reader whose last two passes read no sample (a sample may lag one shard behind)."""
        counter = self.counter
        raw_at.append(counter.raw)
        if rep >= 2 and counter.raw == raw_at[rep - 2]:
            raise ReaderStalled(
                f"reader rank={self.rank} worker={worker} read no sample in two passes over shard(s) "
                f"{sorted(set(self.urls if not self.split_shards else mine))}: empty, unreadable or "
                "not tar files (check the view's shards and sizes.json)"
            )
        per_pass = sum(self.sizes.get(u, 0) for u in mine)
        if not self.split_shards:  # SampleSplit keeps one sample in (ranks x workers) for this reader
            per_pass = -(-per_pass // (self.world_size * max(_worker()[1], 1)))
        counter.shards = mine
        counter.limit = max(MIN_BAD_RUN, 2 * (per_pass + self.bufsize))


class CountRaw(wds.PipelineStage):
    """Count the samples read from the shards (``counter.raw``), for :class:`ShardStream`'s check."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def run(self, src: Iterator[dict]) -> Iterator[dict]:
        for sample in src:
            self.counter.raw += 1
            yield sample


class SampleSplit(wds.PipelineStage):
    """Keep every n-th sample for this reader (used only when shards are fewer than readers)."""

    def __init__(self, *, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def run(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, num_workers = _worker()
        readers = self.world_size * num_workers
        return islice(src, self.rank * num_workers + worker, None, readers)


class FieldFilter:
    """Read only the tar members a pipeline uses (e.g. skip ``txt``/``json`` for ``image_label``); images always."""

    def __init__(self, fields: Sequence[str]):
        self.suffixes = tuple(f".{f}" for f in (*IMAGE_FIELDS, *fields))

    def __call__(self, fname: str) -> bool:
        return fname.endswith(self.suffixes)


class IndexSelect(wds.PipelineStage):
    """An index view's filter: keep the indexed keys of each shard and give them the view's label."""

    def __init__(self, index: Mapping[str, Mapping[str, int | None]]):
        self.index = index

    def run(self, src: Iterator[dict]) -> Iterator[dict]:
        for sample in src:
            keep = self.index.get(sample.get("__url__"), {})
            key = sample.get("__key__")
            if key not in keep:
                continue
            label = keep[key]
            if label is not None:
                sample["cls"] = str(int(label)).encode()
            yield sample


class DetShuffle(wds.PipelineStage):
    """A shuffle buffer seeded by (seed, epoch, reader), so an epoch replays exactly."""

    def __init__(self, bufsize: int, initial: int, *, seed: int, epoch: SharedEpoch, rank: int):
        self.bufsize, self.initial = bufsize, initial
        self.seed, self.epoch, self.rank = seed, epoch, rank

    def run(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, _ = _worker()
        rng = random.Random(mix_seed("samples", self.seed, self.epoch.get_value(), self.rank, worker))
        return wds.shuffle(self.bufsize, self.initial, rng=rng)(src)


class Decode(wds.PipelineStage):
    """Turn raw samples into tensors with the pipeline's sample function; bad samples go to ``handler``.

    The augmentation draws from a ``torch.Generator`` seeded by (seed, epoch, reader), not from
    the global RNG, so results do not depend on how many loader workers there are in the main
    process or what else consumed random numbers.
    """

    def __init__(
        self,
        fn: Callable[[dict, torch.Generator], dict],
        *,
        seed: int,
        epoch: SharedEpoch,
        rank: int,
        handler: Callable,
    ):
        self.fn = fn
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.handler = handler

    def run(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, _ = _worker()
        gen = torch.Generator().manual_seed(mix_seed("augment", self.seed, self.epoch.get_value(), self.rank, worker))

        good = getattr(self.handler, "good", None)  # a SkipCounter: reset its run of bad samples

        def decode(sample: dict) -> dict:
            out = self.fn(sample, gen)
            if good is not None:
                good()
            return out

        return wds.map(decode, handler=self.handler)(src)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, tensorise ints and floats, keep anything else as a list."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == ENCODED_KEY:  # encoded image bytes (decode: device): ragged, kept as a list
            out[key] = values
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class Batcher(wds.PipelineStage):
    """Collate fixed-size batches and attach ``skipped``: bad samples this reader dropped since its last batch.

    Skips after a reader's last batch of an epoch are not counted (that batch is never built).
    """

    def __init__(self, batch_size: int, counter: SkipCounter):
        self.batch_size, self.counter = batch_size, counter

    def run(self, src: Iterator[dict]) -> Iterator[dict]:
        buf: list[dict] = []
        for sample in src:
            buf.append(sample)
            if len(buf) == self.batch_size:
                batch = collate(buf)
                batch["skipped"] = self.counter.take()
                yield batch
                buf = []


# --------------------------------------------------------------------------- decoding and augmentation

#: Image fields a sample may carry, in order of preference: what the view builder writes (``png``)
#: and what img2dataset writes for real sources (``jpg``; ``webp`` and ``jpeg`` on request).
IMAGE_FIELDS = ("png", "jpg", "jpeg", "webp")


# torchvision 0.29 marks its decoders deprecated in favour of TorchCodec (not a dependency here)
# and warns on every call; the pinned torchvision keeps them. When the pin moves past their
# removal, decode_image falls back to PIL (see below) until it is ported to TorchCodec.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision are deprecated",
    category=DeprecationWarning,
)


def decode_image(data: bytes) -> torch.Tensor:
    """Image bytes -> ``uint8`` tensor ``[3, H, W]`` (RGB).

    PNG, JPEG and WebP go through torchvision's decoders (libpng/libjpeg-turbo/libwebp, straight
    into a tensor: 40-45% faster than PIL + numpy per image, measured in
    ``bench/loader_throughput.py --breakdown``); anything else PIL reads falls back to PIL.
    """
    if decode_image_tv is not None:
        try:
            return decode_image_tv(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # not a format torchvision decodes (or broken): let PIL try, and name the error
    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def image_bytes(sample: dict) -> bytes:
    """The encoded image of a raw webdataset sample, whichever of :data:`IMAGE_FIELDS` it uses."""
    for field in IMAGE_FIELDS:
        if field in sample:
            return sample[field]
    raise KeyError(
        f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has no image (looked for "
        f"{', '.join(IMAGE_FIELDS)})"
    )


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` -> float, scaled to [0, 1] and standardised per channel.

    The loop calls this on the device, after the copy: the loader ships ``uint8`` (a quarter of
    the bytes of float32) and the GPU does the arithmetic, as timm's prefetcher does.
    """
    return (images.float().div_(255.0) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``, drawing from ``gen``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=gen).tolist()
        target_area = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            j = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return i, j, h, w
    return 0, 0, height, width  # fall back to the whole image


class TrainTransform:
    """Random resized crop + horizontal flip on a ``uint8`` image; the output stays ``uint8``.

    The crop keeps at least ``scale[0]`` of the area: timm's ImageNet default of 0.08 would leave
    a handful of pixels of a 32x32 image. Normalisation happens on the device (:func:`normalize`).
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
    ):
        self.size = [int(image_size), int(image_size)]
        self.scale, self.ratio, self.hflip = scale, ratio, hflip

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        i, j, h, w = _crop_box(img.shape[-2], img.shape[-1], self.scale, self.ratio, gen)
        img = TF.resized_crop(img, i, j, h, w, self.size, antialias=True)
        if float(torch.rand(1, generator=gen)) < self.hflip:
            img = TF.horizontal_flip(img)
        return img


class SimCLRTransform(TrainTransform):
    """SimCLR's augmentation (Chen et al. 2020, appendix A), drawn from ``gen``; ``uint8`` out.

    Random resized crop and flip, then colour distortion with probability 0.8 (brightness,
    contrast and saturation by up to ``0.8 * strength``, hue by up to ``0.2 * strength``, in a
    random order) and grayscale with probability 0.2. Gaussian blur is left out, as the paper does
    for CIFAR-sized images.
    """

    def __init__(
        self,
        image_size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        strength: float = 0.5,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
    ):
        super().__init__(image_size, scale=scale)
        self.strength, self.p_jitter, self.p_gray = strength, p_jitter, p_gray

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        img = super().__call__(img, gen)
        u = torch.rand(6, generator=gen).tolist()
        if u[0] < self.p_jitter:
            s = self.strength
            factors = [
                1 + (2 * u[1] - 1) * 0.8 * s,
                1 + (2 * u[2] - 1) * 0.8 * s,
                1 + (2 * u[3] - 1) * 0.8 * s,
                (2 * u[4] - 1) * 0.2 * s,
            ]
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            for k in torch.randperm(4, generator=gen).tolist():
                img = ops[k](img, factors[k])
        if u[5] < self.p_gray:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        return img


# --------------------------------------------------------------------------- sample pipelines per method


@dataclass(frozen=True)
class SamplePipeline:
    """How raw webdataset samples become model inputs for one kind of method.

    ``make(image_size, **options)`` returns ``fn(sample, generator) -> dict``: it gets the raw
    sample (bytes per field) and returns tensors/ints, raising on a bad sample (the handler counts
    and skips it). ``fields`` are the non-image tar members it reads; ``image_keys`` the outputs
    that hold ``uint8`` images, which the loop normalises on the device.
    """

    make: Callable[..., Callable[[dict, torch.Generator], dict[str, Any]]]
    fields: tuple[str, ...]
    image_keys: tuple[str, ...] = ("image",)
    description: str = ""


PIPELINES: Registry[SamplePipeline] = Registry("sample pipeline")


def _named(sample: dict, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn``; a failure names the sample (the handler only sees the exception)."""
    try:
        return fn()
    except Exception as exn:
        raise ValueError(
            f"sample {sample.get('__key__')!r} in {sample.get('__url__')}: {type(exn).__name__}: {exn}"
        ) from exn


def _require(sample: dict, fields: Sequence[str]) -> None:
    missing = [f for f in fields if f not in sample]
    if missing:
        raise KeyError(f"sample {sample.get('__key__')!r} in {sample.get('__url__')} lacks field(s) {missing}")


#: The key of a sample's encoded image (``uint8`` bytes) when the training process decodes (``decode="device"``).
ENCODED_KEY = "encoded"

#: Where the images are decoded and augmented: in the loader (``cpu``), batch-wise in the
#: training process on its device (``device``), or once for the whole run, the view held in memory
#: (``memory``: :mod:`pretrain.memory_view`).
DECODE_MODES = ("cpu", "device", "memory")


def check_header(data: bytes) -> None:
    """Raise unless ``data`` starts like an image PIL can open (header only: cheap, nothing is decoded)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.width < 1 or img.height < 1:
            raise ValueError(f"image of size {img.width}x{img.height}")


class _Encodable:
    """A sample pipeline that, with ``encoded=True``, ships the checked image bytes as
    :data:`ENCODED_KEY` (``uint8``, variable length) instead of its augmented images; the training
    process decodes and augments them batch-wise with :class:`DeviceDecode` and ``self.transform``."""

    transform: TrainTransform
    encoded: bool = False

    def _images(self, data: bytes, keys: Sequence[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
        if self.encoded:
            check_header(data)
            return {ENCODED_KEY: torch.frombuffer(bytearray(data), dtype=torch.uint8)}
        image = decode_image(data)
        return {k: self.transform(image, gen) for k in keys}


class ImageLabel(_Encodable):
    """An augmented image and its integer class (``cls``).

    With ``num_classes``, a class outside ``[0, num_classes)`` is a bad sample (skipped and counted
    like an image that does not decode) rather than an index error in the loss.
    """

    def __init__(self, image_size: int, num_classes: int | None = None, encoded: bool = False, **_: Any):
        self.transform = TrainTransform(image_size)
        self.num_classes = int(num_classes) if num_classes else None
        self.encoded = encoded

    def __call__(self, sample: dict, gen: torch.Generator) -> dict[str, Any]:
        _require(sample, ("cls",))
        data = image_bytes(sample)

        def make() -> dict[str, Any]:
            label = int(sample["cls"])
            if label < 0 or (self.num_classes is not None and label >= self.num_classes):
                raise ValueError(f"class {label} outside [0, {self.num_classes if self.num_classes else 'inf'})")
            return {**self._images(data, ("image",), gen), "label": label}

        return _named(sample, make)


class ImageText(_Encodable):
    """An augmented image and its caption (``txt``) as token ids from ``tokenizer``.

    ``tokenizer`` maps a list of strings to a ``[n, context_length]`` tensor, as open_clip's
    tokenizers do; tokenising in the loader workers keeps it off the training step.
    """

    def __init__(
        self,
        image_size: int,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        encoded: bool = False,
        **_: Any,
    ):
        if tokenizer is None:
            raise ValueError("the image_text pipeline needs a tokenizer")
        self.transform = TrainTransform(image_size, scale=(0.5, 1.0))
        self.tokenizer, self.encoded = tokenizer, encoded

    def __call__(self, sample: dict, gen: torch.Generator) -> dict[str, Any]:
        _require(sample, ("txt",))
        data = image_bytes(sample)

        def make() -> dict[str, Any]:
            caption = sample["txt"].decode("utf-8") if isinstance(sample["txt"], bytes) else str(sample["txt"])
            if not caption.strip():
                raise ValueError("empty caption")
            return {**self._images(data, ("image",), gen), "text": self.tokenizer([caption])[0]}

        return _named(sample, make)


class TwoViews(_Encodable):
    """Two independent SimCLR augmentations of one image (``view1``, ``view2``)."""

    def __init__(self, image_size: int, strength: float = 0.5, encoded: bool = False, **_: Any):
        self.transform = SimCLRTransform(image_size, strength=strength)
        self.encoded = encoded

    def __call__(self, sample: dict, gen: torch.Generator) -> dict[str, Any]:
        data = image_bytes(sample)

        def make() -> dict[str, Any]:
            return self._images(data, ("view1", "view2"), gen)

        return _named(sample, make)


PIPELINES.register(
    "image_label",
    SamplePipeline(ImageLabel, ("cls",), ("image",), "augmented image and its integer class (in [0, num_classes))"),
)
PIPELINES.register(
    "image_text", SamplePipeline(ImageText, ("txt",), ("image",), "augmented image and its tokenised caption")
)
PIPELINES.register(
    "two_views", SamplePipeline(TwoViews, (), ("view1", "view2"), "two SimCLR augmentations of one image")
)


# --------------------------------------------------------------------------- the loader


class TrainLoader:
    """Per-rank training batches: exactly ``num_batches`` per epoch; call ``set_epoch`` first.

    Loader workers persist across epochs and read the epoch from shared memory, as in open_clip.
    ``skipped`` totals the bad samples dropped so far (across workers).
    """

    def __init__(
        self,
        pipeline: wds.DataPipeline,
        *,
        num_batches: int,
        num_workers: int,
        shared_epoch: SharedEpoch,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        device_decode: Any = None,
    ):
        self.num_batches = num_batches
        self.shared_epoch = shared_epoch
        self.device_decode = device_decode  # a pretrain.device_decode.DeviceDecode (decode: device), else None
        self.skipped = 0
        self.loader = DataLoader(
            pipeline,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
        )

    def set_epoch(self, epoch: int) -> None:
        self.shared_epoch.set_value(epoch)
        if self.device_decode is not None:
            self.device_decode.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in islice(self.loader, self.num_batches):
            self.skipped += int(batch.pop("skipped"))
            if self.device_decode is not None:
                batch = self.device_decode(batch)
                self.skipped += int(batch.pop("replaced"))
            yield batch


def _split_shards(n_shards: int, world_size: int, num_workers: int) -> bool:
    """Whether every reader (a rank's loader worker) can get shards of its own.

    With fewer shards than readers, every reader scans all shards and keeps every ``readers``-th
    sample instead; that reads more, so it is logged.
    """
    readers = world_size * max(num_workers, 1)
    split = n_shards >= readers
    if not split:
        logger.info(
            "%d shard(s) for %d readers (ranks x loader workers): every reader scans all shards and keeps every "
            "%d-th sample",
            n_shards,
            readers,
            readers,
        )
    return split


def _shuffle_bufsize(batch_size: int, num_batches: int, num_workers: int, shuffle_buffer: int) -> int:
    """The shuffle buffer's size for one reader: ``shuffle_buffer``, capped.

    The buffer reads two samples per output until full and is dropped at the epoch's end, so
    keep it to a quarter of what a reader yields per epoch: at most 25% extra reading.
    """
    per_reader = batch_size * math.ceil(num_batches / max(num_workers, 1))
    return max(1, min(shuffle_buffer, per_reader // 4))


def make_train_loader(
    view_dir: str | Path,
    *,
    pipeline: str,
    batch_size: int,
    num_batches: int,
    image_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    shuffle_buffer: int = 1000,
    pipeline_options: Mapping[str, Any] | None = None,
    batch_decode: Callable[..., Any] | None = None,
) -> TrainLoader:
    """The training loader for one rank.

    ``batch_size`` is this rank's (micro-)batch; ``num_batches`` how many of them this rank yields
    per epoch (the same on every rank). ``pipeline_options`` go to the sample pipeline's ``make``
    (e.g. the tokenizer for ``image_text``). Images come out ``uint8``; see :func:`normalize`.
    ``batch_decode`` (``decode: device``, e.g. ``pretrain.device_decode.for_device(device)``): the
    loader ships encoded images and ``batch_decode(sample_fn, image_keys, seed=, rank=)`` builds what
    decodes and augments each batch in this process; None (default) decodes in the loader.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
    sample_pipeline = PIPELINES.get(pipeline)
    view = read_view(view_dir)
    split_shards = _split_shards(len(view.shards), world_size, num_workers)
    bufsize = _shuffle_bufsize(batch_size, num_batches, num_workers, shuffle_buffer)
    epoch = SharedEpoch(0)
    counter = SkipCounter()
    options = dict(pipeline_options or {}, **({"encoded": True} if batch_decode is not None else {}))
    sample_fn = sample_pipeline.make(image_size, **options)
    device_decode = None
    if batch_decode is not None:
        device_decode = batch_decode(sample_fn, sample_pipeline.image_keys, seed=seed, rank=rank)
    urls = [str(p) for p in view.shards]
    sizes = {u: view.sizes[Path(u).name if view.index is None else u] for u in urls}
    dataset = wds.DataPipeline(
        ShardStream(
            urls,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            split_shards=split_shards,
            counter=counter,
            sizes=sizes,
            bufsize=bufsize,
        ),
        wds.tarfile_to_samples(handler=counter, select_files=FieldFilter(sample_pipeline.fields)),
        None if view.index is None else IndexSelect(view.index),
        None if split_shards else SampleSplit(rank=rank, world_size=world_size),
        CountRaw(counter),
        DetShuffle(bufsize, min(bufsize, 100), seed=seed, epoch=epoch, rank=rank),
        Decode(sample_fn, seed=seed, epoch=epoch, rank=rank, handler=counter),
        Batcher(batch_size, counter),
    )
    # Each worker yields its share (rounded up); TrainLoader cuts the epoch at num_batches.
    dataset = dataset.with_epoch(math.ceil(num_batches / max(num_workers, 1)))
    return TrainLoader(
        dataset,
        num_batches=num_batches,
        num_workers=num_workers,
        shared_epoch=epoch,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        device_decode=device_decode,
    )
