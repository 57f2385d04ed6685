"""Pre-training methods: one registry entry per objective, one training loop for all of them.

A method is one :class:`Method`: how to build the trainable model around an image encoder, which
sample pipeline it reads (see :data:`pretrain.data.PIPELINES`), whether the view must carry
labels, its settings with their defaults, and its loss. The loss takes the (possibly DDP-wrapped)
model, a batch from the pipeline and a :class:`LossContext` (rank and world size, for losses that
gather across workers) and returns a dict with the scalar ``loss`` to back-propagate plus any
metrics to log. Metrics are detached scalar tensors (or floats): the loop averages them over the
epoch and syncs them to the host once, so a method never forces a device sync per step.

Whatever a method builds, ``model.encoder`` is the image encoder that is checkpointed and
transferred; heads, projections and (for CLIP) the text tower stay behind, except what
``export`` puts into the checkpoint for evaluations that need it (CLIP's zero-shot).

Registered here: ``supervised`` (cross-entropy), ``clip`` (open_clip's image-text contrastive
model and loss, in :mod:`pretrain.clip`) and ``simclr`` (two views, projection MLP, NT-Xent).
A new objective is one more ``METHODS.register`` call, from any module imported before planning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from harness.core.registry import Registry
from pretrain.models import build_encoder, encoder_meta

Batch = Mapping[str, Any]


@dataclass(frozen=True)
class LossContext:
    """Where the loss runs: this process's rank among ``world_size`` (plain values, no globals)."""

    rank: int = 0
    world_size: int = 1


LossFn = Callable[[nn.Module, Batch, LossContext], dict[str, Any]]


def _default_meta(model: nn.Module, backbone: str, image_size: int) -> dict[str, Any]:
    return encoder_meta(model.encoder, backbone, image_size)


@dataclass(frozen=True)
class Method:
    """A registered pre-training method.

    - ``build(backbone, image_size, num_classes, **hparams)`` returns an ``nn.Module`` with an
      ``.encoder`` attribute (the part to transfer);
    - ``loss(model, batch, ctx)`` returns ``{"loss": scalar, **metrics}``;
    - ``hparams``: the method's settings and their defaults; a spec's ``pretrain.method_args``
      overrides them by name and unknown names are an error;
    - ``pipeline_options(model, hparams)``: extra arguments for the sample pipeline (a tokenizer);
    - ``meta(model, backbone, image_size)``: the checkpoint metadata evaluations need;
    - ``export(model)``: extra tensors saved beside the encoder (CLIP's text tower);
    - ``after_step(model)``: called after each optimizer step (CLIP clamps its temperature);
    - ``sync_batchnorm``: convert BatchNorm to SyncBatchNorm when training on several GPUs, so
      batch statistics span the global batch (SimCLR's "global BN");
    - ``zero_shot``: its checkpoints carry a text tower, so the ``zeroshot`` protocol (and a
      fine-tuning head started from zero-shot weights) applies to them.
    """

    build: Callable[..., nn.Module]
    loss: LossFn
    pipeline: str
    needs_labels: bool
    description: str = ""
    hparams: Mapping[str, Any] = field(default_factory=dict)
    pipeline_options: Callable[[nn.Module, Mapping[str, Any]], dict[str, Any]] = lambda model, hp: {}
    meta: Callable[[nn.Module, str, int], dict[str, Any]] = _default_meta
    export: Callable[[nn.Module], dict[str, Any]] = lambda model: {}
    after_step: Callable[[nn.Module], None] | None = None
    sync_batchnorm: bool = False
    zero_shot: bool = False

    def resolve(self, given: Mapping[str, Any] | None, name: str = "method") -> dict[str, Any]:
        """The method's settings: defaults overridden by ``given``; unknown names raise."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.hparams))
        if unknown:
            valid = ", ".join(sorted(self.hparams)) or "(none)"
            raise ValueError(f"unknown setting(s) {unknown} for method {name!r}; valid: {valid}")
        return {**self.hparams, **given}


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


def gather_with_grad(x: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order; gradients flow back to each rank's own rows.

    ``torch.distributed.nn.all_gather`` is autograd-aware: its backward sums the gradients that
    every rank computed for a block and hands each rank the sum for its own block.
    """
    if ctx.world_size == 1:
        return x
    import torch.distributed.nn as dist_nn

    if not torch_dist.is_initialized():
        raise RuntimeError(f"world_size={ctx.world_size} but no process group: initialise torch.distributed first")
    return torch.cat(dist_nn.all_gather(x.contiguous()), dim=0)


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


def supervised_loss(model: nn.Module, batch: Batch, ctx: LossContext = LossContext()) -> dict[str, Any]:
    """Cross-entropy on the view's ``cls`` labels (with the model's label smoothing) and top-1.

    Each rank averages over its own samples and DDP averages the gradients, which equals the
    global-batch mean because every rank holds the same number of samples.
    """
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


# --------------------------------------------------------------------------- SimCLR


class SimCLRModel(nn.Module):
    """Encoder + SimCLR's projection MLP (Linear, ReLU, Linear); ``forward`` returns unit-norm projections."""

    def __init__(
        self, encoder: nn.Module, proj_dim: int = 128, hidden_dim: int | None = None, temperature: float = 0.5
    ):
        super().__init__()
        self.encoder = encoder
        self.temperature = float(temperature)
        width = int(encoder.num_features)
        hidden = int(hidden_dim or width)
        self.projector = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.encoder(images)).float(), dim=-1)


def build_simclr(
    backbone: str,
    image_size: int,
    num_classes: int = 0,
    *,
    proj_dim: int = 128,
    hidden_dim: int | None = None,
    temperature: float = 0.5,
    **_: Any,
) -> SimCLRModel:
    if proj_dim < 1:
        raise ValueError(f"simclr proj_dim must be >= 1, got {proj_dim}")
    if not temperature > 0:
        raise ValueError(f"simclr temperature must be > 0, got {temperature}")
    return SimCLRModel(build_encoder(backbone, image_size), proj_dim, hidden_dim, temperature)


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, ctx: LossContext = LossContext()
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent loss for this rank's pairs, with negatives from every rank.

    ``z1``, ``z2``: this rank's unit-norm projections of the two views, ``[n, d]`` each. Every
    local anchor (2n of them) is scored against all 2N = 2 n world_size projections except itself;
    its positive is the other view of the same image. Returns (loss averaged over local anchors,
    top-1 accuracy of finding the positive). Ranks hold equal n, so the mean over ranks of the
    loss (and, through DDP's gradient averaging, of its gradient) is the single-process loss on
    the global batch: the gather's backward returns every rank's gradient for the local rows.
    """
    n = z1.shape[0]
    all1, all2 = gather_with_grad(z1, ctx), gather_with_grad(z2, ctx)
    big_n = all1.shape[0]
    keys = torch.cat([all1, all2])  # [2N, d]
    queries = torch.cat([z1, z2])  # [2n, d]
    logits = queries @ keys.T / temperature  # [2n, 2N]
    local = torch.arange(n, device=z1.device) + ctx.rank * n
    self_idx = torch.cat([local, local + big_n])
    positive = torch.cat([local + big_n, local])
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.index_put((rows, self_idx), torch.tensor(float("-inf"), device=z1.device, dtype=logits.dtype))
    loss = F.cross_entropy(logits, positive)
    acc = (logits.detach().argmax(dim=-1) == positive).float().mean()
    return loss, acc


def simclr_loss(model: nn.Module, batch: Batch, ctx: LossContext = LossContext()) -> dict[str, Any]:
    """Both views through the model in one pass (BatchNorm sees the pair), then NT-Xent."""
    z = model(torch.cat([batch["view1"], batch["view2"]]))
    z1, z2 = z.chunk(2)
    loss, acc = nt_xent(z1, z2, float(unwrap(model).temperature), ctx)
    return {"loss": loss, "acc": acc}


METHODS.register(
    "simclr",
    Method(
        build=build_simclr,
        loss=simclr_loss,
        pipeline="two_views",
        needs_labels=False,
        description="SimCLR: two augmented views, projection MLP, NT-Xent with negatives from all workers",
        hparams={"temperature": 0.5, "proj_dim": 128, "hidden_dim": None, "strength": 0.5},
        pipeline_options=lambda model, hp: {"strength": float(hp["strength"])},
        sync_batchnorm=True,
    ),
)


# --------------------------------------------------------------------------- CLIP


def _clip_loss(model: nn.Module, batch: Batch, ctx: LossContext = LossContext()) -> dict[str, Any]:
    from pretrain.clip import clip_loss

    return clip_loss(model, batch, ctx)


def _build_clip(backbone: str, image_size: int, num_classes: int = 0, **hp: Any) -> nn.Module:
    from pretrain.clip import build_clip_pretrainer

    return build_clip_pretrainer(backbone, image_size, **hp)


def _clip_options(model: nn.Module, hp: Mapping[str, Any]) -> dict[str, Any]:
    return {"tokenizer": unwrap(model).tokenizer}


def _clip_meta(model: nn.Module, backbone: str, image_size: int) -> dict[str, Any]:
    return unwrap(model).encoder_meta(backbone, image_size)


def _clip_export(model: nn.Module) -> dict[str, Any]:
    return unwrap(model).export()


def _clip_after_step(model: nn.Module) -> None:
    with torch.no_grad():  # open_clip's training clamps the learned temperature to at most 100
        unwrap(model).clip.logit_scale.clamp_(0, math.log(100))


METHODS.register(
    "clip",
    Method(
        build=_build_clip,
        loss=_clip_loss,
        pipeline="image_text",
        needs_labels=False,
        description=(
            "CLIP: open_clip image and text towers, contrastive loss with a learned temperature, "
            "gathered across workers"
        ),
        hparams={"model": None, "context_length": None},
        pipeline_options=_clip_options,
        meta=_clip_meta,
        export=_clip_export,
        after_step=_clip_after_step,
        zero_shot=True,
    ),
)
