"""Full fine-tuning: the whole encoder plus a new linear head, selected on validation.

For each learning rate of the grid, starting each time from the same pre-trained weights:

- a new linear head, zero-initialised (so every run starts from the same function and the
  encoder's first updates come through a head that has begun to fit) unless ``head_init``
  gives its starting weights: a fitted linear probe (LP-FT) or CLIP's zero-shot classifier;
- AdamW with weight decay 0.1 (as in the core study) on weight matrices and convolution
  kernels; biases and normalisation parameters (every 1-d parameter) are not decayed;
- a per-step schedule: linear warm-up over ``min(warmup_steps, warmup_fraction * total)`` steps
  (the study's 500 steps, capped so short runs are not all warm-up), then cosine decay to 0;
- gradient-norm clipping at 1.0;
- light augmentation for small images: a random crop after padding by ``image_size // 8``
  pixels (4 at 32x32, black padding) and a horizontal flip with probability 1/2;
- batches of ``batch_size`` (128, or the whole training set when it is smaller); an epoch splits
  a fresh permutation into ``ceil(N / batch_size)`` near-equal batches so every example is seen
  once per epoch and no batch is a lone leftover;
- the loss is cross-entropy; for a set whose headline metric is balanced accuracy
  (``class_weight="balanced"``) each class is weighted ``n / (C * n_c)`` over the training
  examples, so every class weighs the same in the loss as in the metric;
- after every epoch, the headline metric on the validation split.

- at least ``min_steps`` optimiser steps per learning rate (the epochs are stretched on small
  training sets; 0 keeps ``epochs`` exactly, as the core study's 128 epochs on real data);
- BatchNorm on its running statistics when starting from pre-trained weights (``bn="auto"``):
  fine-tuning batches of a few-shot set are too small and too few for new statistics, and a
  probe fitted on frozen features then stays exactly the function LP-FT starts from; from random
  initialisation BatchNorm trains on batch statistics.

The (learning rate, epoch) with the best validation score is selected (ties: the earlier
learning rate of the grid, then the earlier epoch). Where the head starts from given weights
(LP-FT's probe, CLIP's zero-shot head) the starting point itself, "epoch 0", is a candidate too,
and it is kept unless the best fine-tuned candidate beats it on validation significantly: a
one-sided test of the paired, per-example difference at level ``start_alpha`` (default 0.05),
Bonferroni-corrected for the ``K`` candidates the best was picked from (every lr and epoch), so
the gain must exceed ``z(1 - alpha / K)`` standard errors (2.3 for five candidates). The best of
a handful of candidates beats a start at chance by a few examples of a small validation split by
luck alone (the winner's curse); the test keeps such noise from replacing a probe whose test
score it then lowers. The selected weights are then scored on test once.
Shuffling and augmentation come from one generator seeded with ``seed`` (the same for every
learning rate, so the runs of a grid see the same batches), so a run is deterministic on CPU for a given seed and
thread count (on GPU, up to cuDNN's choice of kernels).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from downstream import accel
from downstream.features import default_device, meta_stats, normalise, prepare_images, resize_options, torch_threads
from downstream.metrics import all_metrics, check_metric, paired_gain
from harness.core.jobs import DEFAULT_START_ALPHA
from pretrain.optim import adamw_kwargs, cosine_with_warmup, param_groups

log = logging.getLogger(__name__)


BN_MODES = ("auto", "train", "frozen")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 5
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    batch_size: int = 128
    weight_decay: float = 0.1
    warmup_steps: int = 500
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    augment: bool = True
    eval_batch_size: int = 256
    seed: int = 0
    # At least this many optimiser steps per learning rate: on a small training set the epochs
    # are stretched (``ceil(min_steps / steps_per_epoch)``) so every shot count gets enough
    # optimisation; 0 keeps ``epochs`` exactly (the core study's recipe on real data).
    min_steps: int = 0
    # BatchNorm: "train" (batch statistics), "frozen" (running statistics kept, affine weights
    # trained) or "auto": frozen when starting from pre-trained weights (the statistics were
    # learnt on far more data than a fine-tuning batch holds, and a probe fitted on frozen
    # features stays the function LP-FT starts from), batch statistics from random init.
    bn: str = "auto"
    # The starting point (with ``head_init``) is left only for a candidate whose validation gain
    # over it is significant at this level (one-sided, Bonferroni over the candidates); None: any
    # gain at all (plain selection on validation).
    start_alpha: float | None = DEFAULT_START_ALPHA

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lrs or any(not (lr > 0) for lr in self.lrs):
            raise ValueError(f"lrs must be a non-empty list of positive learning rates, got {list(self.lrs)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch norm needs two examples), got {self.batch_size}")
        if self.weight_decay < 0 or self.grad_clip <= 0 or not 0 <= self.warmup_fraction <= 1:
            raise ValueError("weight_decay must be >= 0, grad_clip > 0 and warmup_fraction in [0, 1]")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {self.min_steps}")
        if self.start_alpha is not None and not 0 < self.start_alpha < 1:
            raise ValueError(f"start_alpha must be in (0, 1) or None, got {self.start_alpha}")
        if self.bn not in BN_MODES:
            raise ValueError(f"bn must be one of {', '.join(BN_MODES)}, got {self.bn!r}")

    def epochs_for(self, steps_per_epoch: int) -> int:
        """Epochs actually trained: ``epochs``, stretched to reach ``min_steps``."""
        return max(self.epochs, math.ceil(self.min_steps / max(1, steps_per_epoch)))


@dataclass
class FinetuneResult:
    lr: float  # selected learning rate
    epoch: int  # selected epoch (1-based)
    val_score: float  # validation headline metric at the selection
    test: dict[str, float]  # top1, balanced_acc, score, loss of the selected weights
    curve: list[
        dict[str, Any]
    ]  # per epoch of the selected lr: epoch, train_loss, val_score, val_loss, lr, last_lr, seconds
    per_lr: list[dict[str, Any]] = field(default_factory=list)  # lr, best_epoch, best_val_score
    train_seconds: float = 0.0  # every lr's training and validation
    eval_seconds: float = 0.0  # the one test evaluation
    hparams: dict[str, Any] = field(default_factory=dict)


def _check_split(name: str, data: tuple[np.ndarray, np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError(f"{name} split is empty")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} labels must be integers in [0, {num_classes})")
    return images, labels.astype(np.int64, copy=False)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    num = math.ceil(n / batch_size)
    if n // num < 2:  # never leave a batch of one (batch norm cannot train on it)
        num = max(1, n // 2)
    return list(torch.tensor_split(torch.randperm(n, generator=gen), num))


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Random crop after zero-padding by ``pad`` pixels, then a random horizontal flip (uint8 [B,3,S,S]).

    The whole batch at once, as tensor ops on ``x``'s device (the GPU's during fine-tuning there);
    the offsets and flips are drawn from the CPU generator ``gen``, so a seed gives the same
    crops and flips on every device.
    """
    b, _, s, _ = x.shape
    dev = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(dev)
        ar = torch.arange(s, device=dev)
        rows = (oy[:, None] + ar)[:, None, :, None]  # [B, 1, S, 1]
        cols = (ox[:, None] + ar)[:, None, None, :]  # [B, 1, 1, S]
        x = padded[
            torch.arange(b, device=dev)[:, None, None, None],
            torch.arange(3, device=dev)[None, :, None, None],
            rows,
            cols,
        ]
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _head(in_features: int, num_classes: int, init: tuple[np.ndarray, np.ndarray] | None = None) -> nn.Linear:
    """A linear head: zeros, or the given ``(W [C, D], b [C])``."""
    head = nn.utils.skip_init(nn.Linear, int(in_features), int(num_classes))  # leaves the global RNG alone
    with torch.no_grad():
        if init is None:
            head.weight.zero_()
            head.bias.zero_()
        else:
            W, b = (np.asarray(v, dtype=np.float32) for v in init)
            if W.shape != (num_classes, in_features) or b.shape != (num_classes,):
                raise ValueError(
                    f"head_init must be W [{num_classes}, {in_features}] and b [{num_classes}], "
                    f"got {W.shape} and {b.shape}"
                )
            head.weight.copy_(torch.from_numpy(W))
            head.bias.copy_(torch.from_numpy(b))
    return head


def loss_weights(labels: np.ndarray, num_classes: int, class_weight: str | None) -> torch.Tensor | None:
    """Per-class cross-entropy weights (the probe's: None, or ``n / (C_present * n_c)`` for "balanced")."""
    from downstream.probe import class_weights

    w = class_weights(labels, num_classes, class_weight)
    return None if w is None else torch.tensor(w, dtype=torch.float32)


@torch.inference_mode()
def _evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    metric: str,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    keep_pred: bool = False,
) -> dict[str, Any]:
    """Metrics of ``model`` on prepared images; logits stay on the device until one copy at the end.
    ``keep_pred`` adds the predicted classes (``pred``) for paired comparisons."""
    model.eval()
    with accel.autocast(device, precision):
        logits = torch.cat(
            [
                model(
                    accel.images_layout(normalise(accel.to_device(images[i : i + batch_size], device), mean, std))
                ).float()
                for i in range(0, len(images), batch_size)
            ]
        ).cpu()
    pred = logits.argmax(dim=1).numpy()
    out: dict[str, Any] = all_metrics(labels, pred)
    out["score"] = out[metric]
    out["loss"] = float(F.cross_entropy(logits, torch.from_numpy(labels)))
    if keep_pred:
        out["pred"] = pred
    return out


def _set_train(model: nn.Module, bn_frozen: bool) -> None:
    """Training mode, with BatchNorm layers kept on their running statistics when ``bn_frozen``."""
    model.train()
    if bn_frozen:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def finetune(
    encoder: nn.Module,
    meta: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    metric: str = "top1",
    config: FinetuneConfig = FinetuneConfig(),
    device: torch.device | str | None = None,
    num_threads: int = 1,
    head_init: tuple[np.ndarray, np.ndarray] | None = None,
    feature_dim: int | None = None,
    class_weight: str | None = None,
    pretrained: bool = True,
    precision: str = "auto",
) -> FinetuneResult:
    """Fine-tune ``encoder`` (left unmodified; each lr trains a copy) and score the selection on test.

    ``train``, ``validation`` and ``test`` are ``(images uint8 [N, H, W, 3], labels int64 [N])``;
    images are resized and normalised as ``meta`` says (see :mod:`downstream.features`).
    ``head_init`` starts the head from ``(W [C, D], b [C])`` instead of zeros; the starting
    point (encoder and that head, "epoch 0") is then itself a candidate of the selection, kept
    unless fine-tuning beats it on validation significantly (``config.start_alpha``), so the
    result is never worse on validation than where it started (LP-FT never falls below its probe
    on validation). ``feature_dim`` (default ``meta["feature_dim"]``) is the width of what
    ``encoder`` returns. ``pretrained`` says whether ``encoder`` holds learnt weights (BatchNorm
    handling under ``config.bn == "auto"``). ``precision`` is :mod:`downstream.accel`'s: bf16
    autocast on a GPU by default, fp32 on a CPU (where results are bitwise those of fp32).
    """
    train, validation, test = _check_inputs(metric, num_classes, train, validation, test)
    device = torch.device(device) if device is not None else default_device()
    cfg = config
    size = int(meta["image_size"])
    resize = resize_options(meta)  # the checkpoint's own interpolation/crop (none for the harness's own)
    feature_dim = int(feature_dim if feature_dim is not None else meta["feature_dim"])
    weights = loss_weights(train[1], num_classes, class_weight)
    bn_frozen = cfg.bn == "frozen" or (cfg.bn == "auto" and pretrained)
    accel.check_precision(precision)

    with torch_threads(num_threads):
        run = _set_up(
            encoder,
            meta,
            train,
            validation,
            cfg,
            device,
            weights,
            bn_frozen,
            size=size,
            resize=resize,
            precision=precision,
            metric=metric,
            num_classes=int(num_classes),
            head_init=head_init,
            feature_dim=feature_dim,
        )
        started = time.perf_counter()
        start_point, best, per_lr = _train_grid(run)
        train_seconds = time.perf_counter() - started

        t0 = time.perf_counter()
        test_metrics = _test_selected(run, best, test)
        eval_seconds = time.perf_counter() - t0

    hparams = _hparams(run, best, start_point, per_lr, class_weight)
    return FinetuneResult(
        lr=best["lr"],
        epoch=best["epoch"],
        val_score=best["val_score"],
        test=test_metrics,
        curve=best["curve"],
        per_lr=per_lr,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        hparams=hparams,
    )


def _check_inputs(
    metric: str,
    num_classes: int,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The metric, class count and the three splits checked (labels as int64), before any work starts."""
    check_metric(metric)
    if int(num_classes) < 2:
        raise ValueError(f"fine-tuning needs at least 2 classes, got num_classes={num_classes}")
    train = _check_split("train", train, num_classes)
    validation = _check_split("validation", validation, num_classes)
    test = _check_split("test", test, num_classes)
    if len(train[1]) < 2:
        raise ValueError("fine-tuning needs at least 2 training examples")
    return train, validation, test


def _hparams(
    run: _Tuning,
    best: dict[str, Any],
    start_point: dict[str, Any] | None,
    per_lr: list[dict[str, Any]],
    class_weight: str | None,
) -> dict[str, Any]:
    """The run's ``hparams``: the selection, the recipe as actually run (stretched epochs, capped
    warm-up, batch size) and what the grid gave per lr, so a result row says how it was obtained."""
    return {
        "lr": best["lr"],
        "epoch": best["epoch"],
        "lrs": [float(v) for v in run.cfg.lrs],
        "epochs": run.epochs,
        "epochs_requested": run.cfg.epochs,
        "min_steps": run.cfg.min_steps,
        "steps_per_epoch": run.steps_per_epoch,
        "batch_size": run.batch_size,
        "weight_decay": run.cfg.weight_decay,
        "warmup_steps": run.warmup,
        "total_steps": run.total_steps,
        "grad_clip": run.cfg.grad_clip,
        "augment": run.cfg.augment,
        "bn": "frozen" if run.bn_frozen else "train",
        "selected_start": best["epoch"] == 0,
        "start_val_score": None if start_point is None else start_point["val_score"],
        "start_alpha": None if start_point is None else run.cfg.start_alpha,
        "start_margin_se": best.get("start_margin_se"),
        "val_gain_over_start": best.get("val_gain_over_start"),
        "val_gain_se": best.get("val_gain_se"),
        "num_train": run.n,
        "per_lr": per_lr,
        "head_init": "zero" if run.head_init is None else "given",
        "class_weight": class_weight,
    }


@dataclass
class _Tuning:
    """What every lr's training shares: the prepared images, the schedule and the settings."""

    encoder: nn.Module
    cfg: FinetuneConfig
    device: torch.device
    precision: str
    metric: str
    num_classes: int
    feature_dim: int
    head_init: tuple[np.ndarray, np.ndarray] | None
    size: int
    resize: dict[str, Any]
    mean: torch.Tensor
    std: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    val_labels: np.ndarray
    weights: torch.Tensor | None
    bn_frozen: bool
    n: int
    batch_size: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup: int
    pad: int


def _set_up(
    encoder: nn.Module,
    meta: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    cfg: FinetuneConfig,
    device: torch.device,
    weights: torch.Tensor | None,
    bn_frozen: bool,
    **settings: Any,
) -> _Tuning:
    """Prepare the training and validation images on the device and derive the schedule."""
    size, resize = settings["size"], settings["resize"]
    mean, std = meta_stats(meta, device)
    # Training images stay on a GPU when they fit (batches are then indexed there), else pinned.
    x_train = accel.resident(prepare_images(train[0], size, **resize), device)
    x_val = accel.pinned(prepare_images(validation[0], size, **resize), device)
    y_train = torch.from_numpy(train[1]).to(device)
    if weights is not None:
        weights = weights.to(device)
    n = len(y_train)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = len(_batches(n, batch_size, torch.Generator().manual_seed(0)))
    epochs = cfg.epochs_for(steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    warmup = min(cfg.warmup_steps, math.ceil(cfg.warmup_fraction * total_steps))
    return _Tuning(
        encoder=encoder,
        cfg=cfg,
        device=device,
        mean=mean,
        std=std,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        val_labels=validation[1],
        weights=weights,
        bn_frozen=bn_frozen,
        n=n,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        total_steps=total_steps,
        warmup=warmup,
        pad=size // 8 if cfg.augment else 0,
        **settings,
    )


def _new_model(run: _Tuning, head_init: tuple[np.ndarray, np.ndarray] | None) -> nn.Module:
    """A copy of the encoder with a fresh head, on the device."""
    return accel.prepare_model(
        nn.Sequential(copy.deepcopy(run.encoder), _head(run.feature_dim, run.num_classes, head_init)), run.device
    )


def _validate(run: _Tuning, model: nn.Module) -> dict[str, float]:
    cfg = run.cfg
    return _evaluate(
        model,
        run.x_val,
        run.val_labels,
        run.mean,
        run.std,
        run.metric,
        cfg.eval_batch_size,
        run.device,
        run.precision,
        keep_pred=True,
    )


def _start_point(run: _Tuning) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """With ``head_init``, the starting point (epoch 0) as a curve row and the first candidate."""
    if run.head_init is None:
        return None, None
    # the starting point is a candidate: selection never falls below it
    model = _new_model(run, run.head_init)
    val = _validate(run, model)
    start_point = {
        "epoch": 0,
        "train_loss": float("nan"),
        "val_score": val["score"],
        "val_top1": val["top1"],
        "val_loss": val["loss"],
        "lr": 0.0,
        "last_lr": 0.0,
        "seconds": 0.0,
    }
    start = {"lr": 0.0, "epoch": 0, "val_score": val["score"], "pred": val["pred"], "state": _snapshot(model)}
    return start_point, start


def _train_grid(run: _Tuning) -> tuple[dict[str, Any] | None, dict[str, Any], list[dict[str, Any]]]:
    """Train every lr of the grid from the same start and select on validation.

    Returns ``(start_point, best, per_lr)``: the epoch-0 curve row (with ``head_init``, else
    None), the selected candidate (its lr, epoch, score, weights and curve) and each lr's best epoch.
    """
    start_point, start = _start_point(run)
    per_lr: list[dict[str, Any]] = []
    best = None
    for lr in run.cfg.lrs:
        best = _train_lr(run, float(lr), start_point, best, per_lr)
    if best is None:  # unreachable: at least one lr and one epoch ran
        raise RuntimeError("fine-tuning produced no candidate (empty lr grid or zero epochs)")
    best = _versus_start(run, start, best, per_lr)
    return start_point, best, [{k: v for k, v in r.items() if k != "curve"} for r in per_lr]


def _versus_start(
    run: _Tuning, start: dict[str, Any] | None, best: dict[str, Any], per_lr: list[dict[str, Any]]
) -> dict[str, Any]:
    """The selection: the best fine-tuned candidate, or the starting point unless that candidate's
    validation gain over it is significant (paired, per example; see the module's docstring)."""
    if start is None:
        return best
    gain, se = paired_gain(run.metric, run.val_labels, start["pred"], best["pred"])
    margin = start_margin(run.cfg.start_alpha, len(run.cfg.lrs) * run.epochs)
    test = {"val_gain_over_start": gain, "val_gain_se": se, "start_margin_se": margin}
    if gain > margin * se and gain > 0:
        return dict(best, **test)
    # the starting point stays: the curve shown is the first lr's (the start is its epoch 0)
    return dict(start, curve=per_lr[0]["curve"], **test)


def start_margin(alpha: float | None, candidates: int) -> float:
    """Standard errors a gain over the start must exceed: ``z(1 - alpha / candidates)``, 0 without a test."""
    return 0.0 if alpha is None else NormalDist().inv_cdf(1 - alpha / max(1, candidates))


def _train_lr(
    run: _Tuning,
    lr: float,
    start_point: dict[str, Any] | None,
    best: dict[str, Any] | None,
    per_lr: list[dict[str, Any]],
) -> dict[str, Any] | None:
    """Train one lr for every epoch, validating each; append its best epoch to ``per_lr`` and
    return the best candidate so far (``best`` or one of this lr's epochs)."""
    cfg = run.cfg
    gen = torch.Generator().manual_seed(int(cfg.seed))
    model = _new_model(run, run.head_init)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, **adamw_kwargs(run.device))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(run.warmup, run.total_steps))
    curve: list[dict[str, Any]] = [dict(start_point, lr=lr)] if start_point is not None else []
    lr_best: tuple[int, float] | None = None
    for epoch in range(1, run.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _train_epoch(run, model, opt, sched, gen)
        if not math.isfinite(train_loss):
            log.warning("fine-tuning diverged at lr=%g epoch %d (non-finite loss)", lr, epoch)
        val = _validate(run, model)
        curve.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_score": val["score"],
                "val_top1": val["top1"],
                "val_loss": val["loss"],
                "lr": lr,
                "last_lr": float(sched.get_last_lr()[0]),
                "seconds": time.perf_counter() - t0,
            }
        )
        log.debug(
            "finetune lr=%g epoch %d: train loss %.4f, val %s %.4f", lr, epoch, train_loss, run.metric, val["score"]
        )
        if lr_best is None or val["score"] > lr_best[1]:
            lr_best = (epoch, val["score"])
        if best is None or val["score"] > best["val_score"]:
            best = {"lr": lr, "epoch": epoch, "val_score": val["score"], "pred": val["pred"], "state": _snapshot(model)}
        if best["lr"] == lr:
            best["curve"] = curve
    per_lr.append({"lr": lr, "best_epoch": lr_best[0], "best_val_score": lr_best[1], "curve": curve})
    return best


def _train_epoch(
    run: _Tuning,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
) -> float:
    """One epoch of optimisation steps over shuffled (and augmented) batches; the mean train loss."""
    cfg, device = run.cfg, run.device
    _set_train(model, run.bn_frozen)
    loss_sum = torch.zeros((), device=device)
    for idx in _batches(run.n, run.batch_size, gen):
        xb = accel.to_device(run.x_train[idx.to(run.x_train.device)], device)
        if cfg.augment:
            xb = augment_batch(xb, gen, run.pad)  # on the device, the whole batch at once
        xb = accel.images_layout(normalise(xb, run.mean, run.std))
        yb = run.y_train[idx.to(device)]
        with accel.autocast(device, run.precision):
            loss = F.cross_entropy(model(xb).float(), yb, weight=run.weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        loss_sum += loss.detach() * len(idx)
    return float(loss_sum) / run.n  # one host sync per epoch, not per step


def _test_selected(run: _Tuning, best: dict[str, Any], test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """The selected weights' metrics on the test split."""
    model = _new_model(run, None)
    model.load_state_dict(best["state"])
    return _evaluate(
        model,
        prepare_images(test[0], run.size, **run.resize),
        test[1],
        run.mean,
        run.std,
        run.metric,
        run.cfg.eval_batch_size,
        run.device,
        run.precision,
    )
