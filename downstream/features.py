"""Cached features: run a frozen encoder once per (checkpoint, downstream set).

Every linear probe, shot count and seed reads the cache instead of the encoder. The cache is one
``.npz`` per split in the folder the runner hands us::

    out_dir/train.npz        features float32 [N, D], labels int64 [N], class_names str [C]
    out_dir/validation.npz
    out_dir/test.npz

Images are preprocessed exactly as the checkpoint's metadata says: resized to
``meta["image_size"]`` when they are not already that size (bilinear, antialiased; an existing
model's own ``interpolation`` and ``crop_pct`` where its meta records them, see
:func:`resize_options`), scaled to [0, 1] and normalised with ``meta["mean"]`` / ``meta["std"]``. Fine-tuning uses
the same preprocessing (:func:`prepare_images`, :func:`normalise`) so both protocols see the same pixels.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from downstream import accel
from harness.core.atomic import atomic_path
from harness.core.layout import SPLITS
from pretrain.models import load_encoder

log = logging.getLogger(__name__)

_RESIZE_CHUNK = 1024  # images resized at a time, to bound the float copy's memory


def downstream_sets():
    """The ``downstream.sets`` module, imported when first needed (and patchable in tests)."""
    return importlib.import_module("downstream.sets")


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Run the body with torch's and the BLAS libraries' thread pools limited to ``num_threads``.

    numpy's BLAS otherwise starts one thread per core in every process, and on a machine whose
    cores are shared by several Ray tasks small matrix products then slow down tenfold.
    """
    from threadpoolctl import threadpool_limits

    if int(num_threads) < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        with threadpool_limits(limits=int(num_threads)):
            yield
    finally:
        torch.set_num_threads(previous)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
"""Interpolations a checkpoint's meta may name (timm's and open_clip's configs use these)."""


def resize_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's own resizing, as keyword arguments of :func:`prepare_images` and
    ``downstream.sets.load_split``: ``interpolation`` and ``crop_pct`` where its meta records them
    (an existing model: timm's or open_clip's preprocessing config). Empty for the harness's own
    checkpoints, whose images are resized as they always were."""
    out: dict[str, Any] = {}
    if meta.get("interpolation") is not None:
        interpolation = str(meta["interpolation"])
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"checkpoint meta interpolation {interpolation!r} is not supported; valid: {', '.join(INTERPOLATIONS)}"
            )
        out["interpolation"] = interpolation
    if meta.get("crop_pct") is not None:
        crop_pct = float(meta["crop_pct"])
        if not 0 < crop_pct <= 1:
            raise ValueError(f"checkpoint meta crop_pct must be in (0, 1], got {meta['crop_pct']!r}")
        out["crop_pct"] = crop_pct
    return out


def _resize_as_model(x: torch.Tensor, image_size: int, interpolation: str, crop_pct: float) -> torch.Tensor:
    """float ``[B, 3, H, W]`` -> ``[B, 3, S, S]`` as a model's eval transform does: the shorter side
    to ``S`` (to ``floor(S / crop_pct)`` when the images are larger than ``S``), then the centre crop."""
    h, w = x.shape[-2:]
    scale = math.floor(image_size / crop_pct) if min(h, w) > image_size else image_size
    nh, nw = (scale, int(scale * w / h)) if h <= w else (int(scale * h / w), scale)
    mode = "nearest-exact" if interpolation == "nearest" else interpolation
    aa = {"antialias": True, "align_corners": False} if mode != "nearest-exact" else {}
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode=mode, **aa)
    top, left = int(round((nh - image_size) / 2.0)), int(round((nw - image_size) / 2.0))
    return x[..., top : top + image_size, left : left + image_size]


def prepare_images(
    images: np.ndarray, image_size: int, *, interpolation: str | None = None, crop_pct: float | None = None
) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` images -> uint8 ``[N, 3, S, S]`` tensor at ``S = image_size``.

    Images already at the target size are only transposed; others are resized and rounded back
    to uint8, so a split is held in memory at one byte a pixel. Without ``interpolation`` (the
    harness's own checkpoints) they are resized to S x S, bilinear and antialiased; with it (a
    model's own config, :func:`resize_options`) the shorter side goes to S with that
    interpolation (to ``floor(S / crop_pct)`` when the images are larger than S), then the
    centre S x S is cropped, as timm's and open_clip's eval transforms do.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 numpy array, got {type(images).__name__} {getattr(images, 'dtype', '')}"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [N, H, W, 3], got {images.shape}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not supported; valid: {', '.join(INTERPOLATIONS)}")
    with warnings.catch_warnings():  # cached splits are read-only; x is only read (copied below)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if images.shape[1:3] == (image_size, image_size):
        return x.contiguous()
    out = torch.empty((len(x), 3, image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(x), _RESIZE_CHUNK):
        chunk = x[start : start + _RESIZE_CHUNK].float()
        if interpolation is None:
            chunk = F.interpolate(
                chunk, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
            )
        else:
            chunk = _resize_as_model(chunk, image_size, interpolation, 1.0 if crop_pct is None else float(crop_pct))
        out[start : start + _RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> float32, scaled to [0, 1] then ``(x - mean) / std`` per channel."""
    return (x.float().div_(255.0) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def meta_stats(meta: dict[str, Any], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's normalisation as two float32 tensors of 3 values."""
    mean = torch.tensor([float(v) for v in meta["mean"]], dtype=torch.float32, device=device)
    std = torch.tensor([float(v) for v in meta["std"]], dtype=torch.float32, device=device)
    if mean.numel() != 3 or std.numel() != 3 or bool((std <= 0).any()):
        raise ValueError(f"checkpoint meta needs 3 means and 3 positive stds, got {meta['mean']} / {meta['std']}")
    return mean, std


_FLUSH_ROWS = 1 << 16  # features kept on the device before one copy to the host


@torch.inference_mode()
def encode(
    encoder: nn.Module,
    images: torch.Tensor,
    meta: dict[str, Any],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> np.ndarray:
    """Features (float32 ``[N, D]``) of prepared uint8 images from :func:`prepare_images`.

    ``precision`` (:mod:`downstream.accel`): ``auto`` is bf16 autocast on a GPU, fp32 on a CPU.
    Features stay on the device and cross to the host once per ``_FLUSH_ROWS`` rows, so the host
    does not wait on the device after every batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    accel.check_precision(precision)
    mean, std = meta_stats(meta, device)
    images = accel.pinned(images, device)  # once per split: every batch's copy is then asynchronous
    was_training = encoder.training
    encoder.eval()
    host, pending, rows = [], [], 0
    try:
        with accel.autocast(device, precision):
            for start in range(0, len(images), batch_size):
                xb = normalise(accel.to_device(images[start : start + batch_size], device), mean, std)
                pending.append(encoder(accel.images_layout(xb)).float())
                rows += len(xb)
                if rows >= _FLUSH_ROWS:
                    host.append(torch.cat(pending).cpu())
                    pending, rows = [], 0
        if pending:
            host.append(torch.cat(pending).cpu())
    finally:
        encoder.train(was_training)
    if not host:
        return np.zeros((0, int(meta["feature_dim"])), dtype=np.float32)
    return torch.cat(host).numpy().astype(np.float32, copy=False)


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz"
        np.savez(f, **arrays)


def extract_features(
    checkpoint: Path,
    set_name: str,
    data_root: Path,
    out_dir: Path,
    *,
    batch_size: int = 256,
    num_threads: int = 1,
    device: torch.device | str | None = None,
    set_config: dict[str, Any] | None = None,
    data_dir: Path | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Encode every split of ``set_name`` with the encoder in ``checkpoint``; write the cache.

    ``set_config`` is the definition of a set declared in a spec (see ``downstream.sets``);
    ``data_dir`` is where real and declared sets with relative paths live; ``precision`` is
    :mod:`downstream.accel`'s (bf16 autocast on a GPU by default, fp32 on a CPU).
    Returns a summary: set, checkpoint, backbone, image_size, feature_dim, num_classes,
    ``counts`` per split, ``seconds`` (total) and ``images_per_second``.
    """
    checkpoint, data_root, out_dir = Path(checkpoint), Path(data_root), Path(out_dir)
    sets = downstream_sets()
    entry = sets.resolve_set(set_name, {set_name: dict(set_config)} if set_config else None)
    device = torch.device(device) if device is not None else default_device()
    started = time.perf_counter()
    counts: dict[str, int] = {}
    class_names: list[str] | None = None
    encode_seconds = 0.0
    with torch_threads(num_threads):
        encoder, meta = load_encoder(checkpoint, map_location="cpu")
        accel.prepare_model(encoder, device)
        image_size = int(meta["image_size"])
        resize = resize_options(meta)
        for split in SPLITS:
            data = sets.load_split(entry, split, data_root, data_dir=data_dir, image_size=image_size, **resize)
            if class_names is None:
                class_names = [str(c) for c in data.class_names]
            elif list(map(str, data.class_names)) != class_names:
                raise ValueError(
                    f"downstream set {set_name!r}: split {split!r} has different class names from the train split"
                )
            labels = np.asarray(data.labels, dtype=np.int64)
            if len(labels) != len(data.images):
                raise ValueError(
                    f"downstream set {set_name!r} split {split!r}: {len(data.images)} images but {len(labels)} labels"
                )
            t0 = time.perf_counter()
            feats = encode(
                encoder,
                prepare_images(data.images, image_size, **resize),
                meta,
                batch_size=batch_size,
                device=device,
                precision=precision,
            )
            encode_seconds += time.perf_counter() - t0
            if feats.shape[1] != int(meta["feature_dim"]):
                raise ValueError(
                    f"{checkpoint}: encoder gives {feats.shape[1]} features, meta says {meta['feature_dim']}"
                )
            _atomic_savez(
                out_dir / f"{split}.npz", features=feats, labels=labels, class_names=np.asarray(class_names, dtype=str)
            )
            counts[split] = int(len(labels))
            log.info("features %s/%s: %d x %d", set_name, split, *feats.shape)
    seconds = time.perf_counter() - started
    total = sum(counts.values())
    return {
        "set": set_name,
        "checkpoint": str(checkpoint),
        "backbone": meta["backbone"],
        "image_size": image_size,
        "feature_dim": int(meta["feature_dim"]),
        "num_classes": len(class_names or []),
        "counts": counts,
        "seconds": seconds,
        "images_per_second": total / encode_seconds if encode_seconds > 0 else float("nan"),
    }


def _open(out_dir: Path, split: str):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    path = Path(out_dir) / f"{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no cached features at {path}; run extract_features first")
    return np.load(path, allow_pickle=False)


def load_features(out_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X float32 [N, D], y int64 [N])`` of one cached split."""
    with _open(out_dir, split) as z:
        return z["features"].astype(np.float32, copy=False), z["labels"].astype(np.int64, copy=False)


def load_class_names(out_dir: Path, split: str = "train") -> list[str]:
    """The class names stored with a cached split."""
    with _open(out_dir, split) as z:
        return [str(c) for c in z["class_names"]] if "class_names" in z.files else []
