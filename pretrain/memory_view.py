"""The in-memory path (``resources.pretrain.decode: memory``): a view small enough to hold in
memory is read and decoded once; every epoch is a fresh permutation of the decoded images.

Why: the streaming loader (:func:`pretrain.data.make_train_loader`) reads and decodes every tar
member again in every epoch and restarts its shard stream and shuffle buffer at each epoch's
start. Under a fixed budget of samples seen (DataComp's rule) a small view is repeated many times:
a 300-sample view seen 20000 times is read 67 times. On a CPU that reading costs about a third of
a tiny network's training step per sample, and the restart about 0.1 s an epoch.

What stays the same as the streaming path: the method's own sample pipeline (its checks, labels,
tokenised captions) and its augmentation (:class:`pretrain.data.TrainTransform` or
:class:`~pretrain.data.SimCLRTransform`) drawn from a seeded ``torch.Generator``; bad samples are
counted in ``skipped``. What differs: the order is a full permutation per epoch instead of a shuffle
buffer, and the augmentation is drawn batch-wise (:func:`pretrain.device_decode.augment_batch`:
the same distributions as the per-sample transform, SimCLR's colour distortion as tensor ops over
the batch: 19 ms for a batch of 64 against 68 ms per image with torchvision's functions, on one
thread, ``bench/cpu_step_costs.py``), so a run is not bit-identical to ``decode: cpu`` (``decode``
is part of the run's key).

Order over ranks is ``torch.utils.data.DistributedSampler``'s: every rank holds the whole view and
takes a strided slice of one permutation seeded by ``(seed, epoch)``, so ranks see disjoint samples
within an epoch. The view must fit in :data:`MAX_BYTES` once decoded; a larger one is an error
that names the setting to use instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import webdataset as wds

from pretrain.data import (
    ENCODED_KEY,
    PIPELINES,
    CountRaw,
    Decode,
    FieldFilter,
    IndexSelect,
    SharedEpoch,
    SkipCounter,
    TrainTransform,
    collate,
    decode_image,
    mix_seed,
    read_view,
)
from pretrain.device_decode import augment_batch

logger = logging.getLogger(__name__)

#: The most decoded image bytes a view may hold in memory (per training process).
MAX_BYTES = 4 << 30


class ViewTooLarge(ValueError):
    """The view does not fit in memory decoded: use the streaming loader instead."""


def read_decoded(
    view_dir: str | Path, sample_fn: Any, fields: Sequence[str], counter: SkipCounter, max_bytes: int = MAX_BYTES
) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """Every good sample of the view, in shard order: its fields other than the image (labels,
    tokens) and its decoded ``uint8 [3, H, W]`` image. ``sample_fn`` is a pipeline's sample function
    made with ``encoded=True``; bad samples are counted by ``counter`` and left out."""
    view = read_view(view_dir)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList([str(p) for p in view.shards]),
        wds.tarfile_to_samples(handler=counter, select_files=FieldFilter(fields)),
        None if view.index is None else IndexSelect(view.index),
        CountRaw(counter),
        Decode(sample_fn, seed=0, epoch=SharedEpoch(0), rank=0, handler=counter),
    )
    samples: list[dict[str, Any]] = []
    images: list[torch.Tensor] = []
    held = 0
    for sample in pipeline:
        encoded = sample.pop(ENCODED_KEY)
        try:
            image = decode_image(encoded.numpy().tobytes())
        except Exception as exn:  # noqa: BLE001 - a sample that does not decode is skipped, as in the loader
            counter(exn)
            continue
        held += image.numel()
        if held > max_bytes:
            raise ViewTooLarge(
                f"view {view_dir}: more than {max_bytes / 2**30:.1f} GiB of decoded images; "
                "resources.pretrain.decode: memory is for views that fit in memory; use 'cpu' or 'device'"
            )
        samples.append(sample)
        images.append(image)
    if not samples:
        raise ValueError(f"view {view_dir}: no sample decodes ({counter.count} bad samples skipped)")
    return samples, images


class MemoryLoader:
    """Per-rank training batches from a decoded view: exactly ``num_batches`` per epoch; call
    ``set_epoch`` first. The same interface as :class:`pretrain.data.TrainLoader`."""

    def __init__(
        self,
        samples: list[dict[str, Any]],
        images: list[torch.Tensor],
        transform: TrainTransform,
        image_keys: Sequence[str],
        *,
        batch_size: int,
        num_batches: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        skipped: int = 0,
    ):
        if len(samples) != len(images) or not samples:
            raise ValueError(f"need as many samples as images, at least one; got {len(samples)} and {len(images)}")
        self.samples, self.images, self.transform = samples, images, transform
        self.image_keys = tuple(image_keys)
        self.batch_size, self.num_batches = batch_size, num_batches
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.skipped = 0  # bad samples so far: those found when the view was read, added in the first epoch
        self._unreported = skipped
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def order(self) -> torch.Tensor:
        """This rank's sample indices for the epoch: a strided slice of one permutation shared by
        all ranks, repeated (a fresh permutation each time) when the view is smaller than an epoch."""
        need = self.batch_size * self.num_batches * self.world_size
        gen = torch.Generator().manual_seed(mix_seed("memory-order", self.seed, self.epoch))
        n = len(self.samples)
        perm = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))])
        return perm[:need][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        gen = torch.Generator().manual_seed(mix_seed("memory-augment", self.seed, self.epoch, self.rank))
        idx = self.order().tolist()
        self.skipped, self._unreported = self.skipped + self._unreported, 0
        for b in range(self.num_batches):
            chosen = idx[b * self.batch_size : (b + 1) * self.batch_size]
            batch = collate([self.samples[i] for i in chosen])
            images = [self.images[i] for i in chosen]
            for key in self.image_keys:  # each key its own draw (SimCLR's two views)
                batch[key] = augment_batch(images, self.transform, gen)
            yield batch


def make_memory_loader(
    view_dir: str | Path,
    *,
    pipeline: str,
    batch_size: int,
    num_batches: int,
    image_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pipeline_options: Mapping[str, Any] | None = None,
    max_bytes: int = MAX_BYTES,
) -> MemoryLoader:
    """:func:`pretrain.data.make_train_loader`'s counterpart for ``decode: memory``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
    sample_pipeline = PIPELINES.get(pipeline)
    sample_fn = sample_pipeline.make(image_size, **dict(pipeline_options or {}), encoded=True)
    counter = SkipCounter()
    samples, images = read_decoded(view_dir, sample_fn, sample_pipeline.fields, counter, max_bytes)
    logger.info("view %s in memory: %d samples (%d bad ones skipped)", view_dir, len(samples), counter.count)
    return MemoryLoader(
        samples,
        images,
        sample_fn.transform,
        sample_pipeline.image_keys,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        rank=rank,
        world_size=world_size,
        skipped=counter.take(),
    )
