"""Backbones and checkpoints: one builder for every image encoder, one checkpoint format.

An encoder is a timm model with its classifier removed (``num_classes=0``), so ``encoder(x)``
returns pooled features of width ``encoder.num_features``. A checkpoint carries the encoder's
weights and the metadata every evaluation needs (backbone, resolution, normalisation, feature
width, method, epoch, samples seen), so nothing downstream guesses how a model was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.atomic import atomic_path
from harness.core.registry import Registry

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Backbone:
    """A registered backbone: a timm model name and the keyword arguments it is built with."""

    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    takes_img_size: bool = False  # ViTs need the resolution at construction
    description: str = ""


BACKBONES: Registry[Backbone] = Registry("backbone")
BACKBONES.register(
    "test_resnet", Backbone("test_resnet", description="timm's ~0.37M-parameter ResNet for tests and CPU runs")
)
BACKBONES.register(
    "test_vit",
    Backbone(
        "test_vit", takes_img_size=True, kwargs={"patch_size": 4}, description="timm's ~0.3M-parameter ViT, 4x4 patches"
    ),
)
BACKBONES.register("test_convnext", Backbone("test_convnext", description="timm's ~0.2M-parameter ConvNeXt"))
BACKBONES.register("resnet18", Backbone("resnet18"))
BACKBONES.register("resnet50", Backbone("resnet50", description="the study's main backbone"))
BACKBONES.register("vit_b32", Backbone("vit_base_patch32_224", takes_img_size=True, description="ViT-B/32"))


def build_encoder(backbone: str, image_size: int) -> nn.Module:
    """A randomly initialised encoder (no classifier) for a registered backbone."""
    entry = BACKBONES.get(backbone)
    kwargs = dict(entry.kwargs)
    if entry.takes_img_size:
        kwargs["img_size"] = image_size
    import timm  # here, not at the top: validating a spec's backbone names should not pay timm's import (~4 s)

    return timm.create_model(entry.timm_name, pretrained=False, num_classes=0, **kwargs)


def encoder_meta(encoder: nn.Module, backbone: str, image_size: int, **extra: Any) -> dict[str, Any]:
    """The metadata an evaluation needs to use ``encoder``; ``extra`` adds method, epoch, ..."""
    cfg = getattr(encoder, "pretrained_cfg", {}) or {}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "arch": "timm",
        "backbone": backbone,
        "image_size": int(image_size),
        "mean": [float(x) for x in cfg.get("mean", (0.5, 0.5, 0.5))],
        "std": [float(x) for x in cfg.get("std", (0.5, 0.5, 0.5))],
        "feature_dim": int(encoder.num_features),
    }
    meta.update(extra)
    return meta


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_encoder(path: Path, encoder: nn.Module, meta: dict[str, Any], **extra: Any) -> None:
    """Write an encoder checkpoint: ``{"meta": ..., "state_dict": ..., **extra}`` (plain tensors and data).

    ``extra`` adds what some consumers need beyond the encoder: CLIP's text tower
    (``clip_state_dict``), the resumable training state (``train``). Readers load with
    ``mmap=True``, so an evaluation reads the encoder's bytes and not the rest.
    """
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    atomic_torch_save({"meta": dict(meta), "state_dict": state, **extra}, path)


def load_encoder(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an encoder from a checkpoint written by :func:`save_encoder` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no encoder checkpoint at {path}")
    blob = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not an encoder checkpoint (expected keys 'meta' and 'state_dict')")
    meta = blob["meta"]
    if meta.get("arch", "timm") == "open_clip":  # a CLIP image tower
        from pretrain.clip import visual_from_meta

        encoder = visual_from_meta(meta)
    elif "timm_model" in meta:  # an existing timm model (pretrain/existing.py), not a registered backbone
        import timm

        encoder = timm.create_model(meta["timm_model"], pretrained=False, num_classes=0, **meta.get("timm_kwargs", {}))
    else:
        encoder = build_encoder(meta["backbone"], meta["image_size"])
    encoder.load_state_dict(blob["state_dict"])
    encoder.eval()
    return encoder, meta
