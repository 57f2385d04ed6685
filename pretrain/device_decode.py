"""The optional device decode path (``resources.pretrain.decode: device``): whole batches decoded
and augmented in the training process, on its device.

The loader ships each sample's encoded image (``pretrain.data.ENCODED_KEY``: ``uint8`` bytes,
header checked, variable length); :class:`DeviceDecode` turns a batch of them into the
pipeline's ``uint8`` image keys:

- JPEGs in one batched ``torchvision.io.decode_jpeg(list, device=...)`` call (nvJPEG on CUDA; the
  same call runs libjpeg-turbo on the CPU), anything else per sample with
  ``pretrain.data.decode_image`` and then moved to the device;
- the random resized crop per image (each has its own box, drawn as :class:`TrainTransform`
  draws it), the flip and SimCLR's colour distortion batch-wise with tensor ops on the device.

Random numbers come from one CPU ``torch.Generator`` seeded by (seed, epoch, rank), so a run
replays exactly on the same device; the output is not bit-identical to the CPU path (the order
of draws and the float colour arithmetic differ), which is why ``decode: device`` joins the run's key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from pretrain.data import ENCODED_KEY, SimCLRTransform, TrainTransform, _crop_box, decode_image, mix_seed

#: The first bytes of a JPEG file (SOI marker).
JPEG_MAGIC = (0xFF, 0xD8)

logger = logging.getLogger(__name__)


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and (int(data[0]), int(data[1])) == JPEG_MAGIC


def decode_batch(encoded: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Encoded images (``uint8`` CPU tensors) -> ``uint8 [3, H, W]`` RGB tensors on ``device``:
    JPEGs in one batched ``decode_jpeg`` call, the rest per sample with ``decode_image``."""
    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpeg = [i for i, data in enumerate(encoded) if is_jpeg(data)]
    if jpeg:
        decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(jpeg, decoded):
            out[i] = image
    for i, data in enumerate(encoded):
        if out[i] is None:
            out[i] = decode_image(data.numpy().tobytes()).to(device, non_blocking=True)
    return out  # type: ignore[return-value]


def crop_flip(images: Sequence[torch.Tensor], transform: TrainTransform, gen: torch.Generator) -> torch.Tensor:
    """:class:`TrainTransform`'s random resized crop (a box per image, drawn from ``gen``) and
    horizontal flip, for a batch of decoded images of any sizes -> ``uint8 [B, 3, S, S]``."""
    boxes = [_crop_box(img.shape[-2], img.shape[-1], transform.scale, transform.ratio, gen) for img in images]
    crops = torch.stack(
        [TF.resized_crop(img, i, j, h, w, transform.size, antialias=True) for img, (i, j, h, w) in zip(images, boxes)]
    )
    flip = (torch.rand(len(images), generator=gen) < transform.hflip).to(crops.device)
    return torch.where(flip.view(-1, 1, 1, 1), crops.flip(-1), crops)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of float ``[B, 3, H, W]`` -> ``[B, 1, H, W]`` (torchvision's weights)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float ``[B, 3, H, W]`` in [0, 1] by ``shift`` (turns, per image), via HSV."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))

    def channel(n: int) -> torch.Tensor:  # HSV -> RGB, per channel (n = 5, 3, 1 for R, G, B)
        k = (n + h * 6) % 6
        return maxc - maxc * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)

    return torch.stack([channel(5), channel(3), channel(1)], 1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return x * f.view(-1, 1, 1, 1)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return torch.lerp(_gray(x).mean((1, 2, 3), keepdim=True).expand_as(x), x, f.view(-1, 1, 1, 1))


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return torch.lerp(_gray(x).expand_as(x), x, f.view(-1, 1, 1, 1))


#: Brightness, contrast, saturation and hue on float ``[B, 3, H, W]`` in [0, 1], a factor per image:
#: torchvision's ``adjust_brightness``/``adjust_contrast``/``adjust_saturation``/``adjust_hue``, batch-wise.
COLOUR_OPS = (_brightness, _contrast, _saturation, _hue)


def colour(images: torch.Tensor, transform: SimCLRTransform, gen: torch.Generator) -> torch.Tensor:
    """SimCLR's colour distortion batch-wise: per image, with probability ``p_jitter``, brightness,
    contrast, saturation and hue by factors drawn as :class:`SimCLRTransform` draws them, in a
    random order per image; then grayscale with probability ``p_gray``. ``uint8`` in and out."""
    n, dev, s = images.shape[0], images.device, transform.strength
    u = torch.rand(n, 6, generator=gen)
    order = torch.stack([torch.randperm(4, generator=gen) for _ in range(n)]).to(dev)
    factors = torch.stack(
        [
            1 + (2 * u[:, 1] - 1) * 0.8 * s,
            1 + (2 * u[:, 2] - 1) * 0.8 * s,
            1 + (2 * u[:, 3] - 1) * 0.8 * s,
            (2 * u[:, 4] - 1) * 0.2 * s,
        ],
        1,
    ).to(dev)
    jitter, gray = (u[:, 0] < transform.p_jitter).to(dev), (u[:, 5] < transform.p_gray).to(dev)
    x = images.float() / 255.0
    for step in range(4):  # each op on the images whose step-th op it is (not on the whole batch, four times)
        for k, op in enumerate(COLOUR_OPS):
            idx = torch.nonzero(jitter & (order[:, step] == k)).squeeze(1)
            if idx.numel():
                x[idx] = op(x[idx], factors[idx, k]).clamp(0, 1)
    x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    return x.mul(255.0).round_().to(torch.uint8)


def augment_batch(images: Sequence[torch.Tensor], transform: TrainTransform, gen: torch.Generator) -> torch.Tensor:
    """The batch-wise counterpart of ``transform`` (a :class:`TrainTransform` or :class:`SimCLRTransform`)."""
    out = crop_flip(images, transform, gen)
    return colour(out, transform, gen) if isinstance(transform, SimCLRTransform) else out


class DeviceDecode:
    """A loader batch's :data:`~pretrain.data.ENCODED_KEY` -> the pipeline's ``image_keys`` on
    ``device`` (each key an independent augmentation of the decoded images, e.g. SimCLR's two views).

    Call :meth:`set_epoch` before each epoch: the generator is reseeded by (seed, epoch, rank).
    """

    def __init__(
        self, transform: TrainTransform, image_keys: Sequence[str], device: torch.device | str, *, seed: int, rank: int
    ):
        self.transform, self.image_keys = transform, tuple(image_keys)
        self.device = torch.device(device)
        self.seed, self.rank = seed, rank
        self.gen = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.gen.manual_seed(mix_seed("device-augment", self.seed, epoch, self.rank))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its images decoded and augmented; ``replaced`` counts samples whose image
        passed the loader's header check but did not decode (see :func:`replace_undecodable`)."""
        out = dict(batch)
        encoded = out.pop(ENCODED_KEY)
        try:
            images, out["replaced"] = decode_batch(encoded, self.device), 0
        except RuntimeError:
            images, out = replace_undecodable(encoded, out, self.device)
        for key in self.image_keys:
            out[key] = augment_batch(images, self.transform, self.gen)
        return out


def replace_undecodable(
    encoded: Sequence[torch.Tensor], batch: dict[str, Any], device: torch.device
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Decode one by one after a batch failed; a sample that does not decode is logged and replaced,
    with all its fields, by the batch's first good one (the batch keeps its size, as DDP and the
    contrastive losses need), and counted in ``replaced`` (the loader adds it to ``skipped``)."""
    n, keys = len(encoded), batch.get("__key__") or [None] * len(encoded)
    images: list[torch.Tensor | None] = []
    for i, data in enumerate(encoded):
        try:
            images.append(decode_batch([data], device)[0])
        except RuntimeError as exn:
            logger.warning("sample %r does not decode, replaced in its batch: %s", keys[i], str(exn).splitlines()[0])
            images.append(None)
    good = [i for i, image in enumerate(images) if image is not None]
    if not good:
        raise ValueError(f"no image of the batch decodes (samples {list(keys)})")
    keep = [i if images[i] is not None else good[0] for i in range(n)]
    out = {
        k: (
            v[keep]
            if isinstance(v, torch.Tensor) and v.shape[:1] == (n,)
            else [v[i] for i in keep]
            if isinstance(v, list) and len(v) == n
            else v
        )
        for k, v in batch.items()
    }
    out["replaced"] = n - len(good)
    return [images[i] for i in keep], out  # type: ignore[misc]


def for_device(device: torch.device | str) -> Callable[..., DeviceDecode]:
    """``make_train_loader``'s ``batch_decode`` for ``device``: builds the :class:`DeviceDecode` of a
    sample function made with ``encoded=True`` (it holds the pipeline's transform)."""

    def build(sample_fn: Any, image_keys: Sequence[str], *, seed: int, rank: int) -> DeviceDecode:
        transform = getattr(sample_fn, "transform", None)
        if not isinstance(transform, TrainTransform):
            raise ValueError(
                f"decode: device needs a sample pipeline with a TrainTransform, got {type(sample_fn).__name__}"
            )
        return DeviceDecode(transform, image_keys, device, seed=seed, rank=rank)

    return build
