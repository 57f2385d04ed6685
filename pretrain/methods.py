"""Pre-training methods: one registry entry per objective, one training loop for all of them.

A method says how to build the trainable model around an encoder from
:func:`pretrain.models.build_encoder`, which sample pipeline it reads (see
:data:`pretrain.data.PIPELINES`), whether the view must carry labels, and its loss. The loss
takes the (possibly DDP-wrapped) model and a batch from the pipeline and returns a dict with the
scalar ``loss`` to back-propagate plus any metrics to log. Metrics are detached scalar tensors
(or floats): the loop averages them over the epoch and syncs them to the host once, so a method
never forces a device sync per step.

Whatever a method builds, ``model.encoder`` is the image encoder that is checkpointed and
transferred; heads and projections stay behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from harness.registry import Registry
from pretrain.models import build_encoder

Batch = Mapping[str, Any]
LossFn = Callable[[nn.Module, Batch], dict[str, Any]]


@dataclass(frozen=True)
class Method:
    """A registered pre-training method.

    ``build(backbone, image_size, num_classes, **hparams)`` returns an ``nn.Module`` with an
    ``.encoder`` attribute; ``hparams`` are the method-specific settings the loop hands over
    (``label_smoothing`` for now), and a builder ignores the ones it has no use for.
    """

    build: Callable[..., nn.Module]
    loss: LossFn
    pipeline: str
    needs_labels: bool
    description: str = ""


METHODS: Registry[Method] = Registry("pre-training method")


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP (or ``torch.compile``) wrapper, to reach its attributes."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# --------------------------------------------------------------------------- supervised


class SupervisedClassifier(nn.Module):
    """An encoder and a linear classifier on its pooled features; ``forward`` returns logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)
        self.label_smoothing = float(label_smoothing)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def build_supervised(
    backbone: str, image_size: int, num_classes: int, *, label_smoothing: float = 0.0, **_: Any
) -> SupervisedClassifier:
    if num_classes < 2:
        raise ValueError(f"supervised pre-training needs num_classes >= 2, got {num_classes}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return SupervisedClassifier(build_encoder(backbone, image_size), num_classes, label_smoothing)


def supervised_loss(model: nn.Module, batch: Batch) -> dict[str, Any]:
    """Cross-entropy on the view's ``cls`` labels (with the model's label smoothing) and top-1."""
    logits = model(batch["image"])
    labels = batch["label"]
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=unwrap(model).label_smoothing)
    acc = (logits.detach().argmax(dim=-1) == labels).float().mean()
    return {"loss": loss, "acc": acc}


METHODS.register(
    "supervised",
    Method(
        build=build_supervised,
        loss=supervised_loss,
        pipeline="image_label",
        needs_labels=True,
        description="cross-entropy on the view's class labels (optionally label-smoothed)",
    ),
)
