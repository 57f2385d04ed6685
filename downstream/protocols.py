"""Evaluation protocols: how an encoder (or its cached features) is turned into downstream scores.

A protocol takes one :class:`EvalRequest` (a checkpoint or its cached features, a downstream set,
shot counts and seeds) and returns one :class:`EvalResult` per (shots, seed), in the order
``for shots in request.shots: for seed in request.seeds``. Every choice of hyper-parameter is
made on the set's full validation split; test is scored once per result, with the selection.

- ``linear``: a multinomial logistic-regression probe on frozen features read from
  ``features_dir`` (written by :func:`downstream.features.extract_features`), L2 strength chosen
  on validation (:mod:`downstream.probe`).
- ``finetune``: the whole encoder plus a new linear head, learning rate and epoch chosen on
  validation (:mod:`downstream.finetune`).

k-shot training sets are drawn by :func:`downstream.fewshot.sample_shots` (nested across k for a
seed; ``shots=None`` is the full training split).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from downstream.features import default_device, downstream_sets, load_class_names, load_features, torch_threads
from downstream.fewshot import sample_shots
from downstream.finetune import FinetuneConfig, finetune
from downstream.metrics import chance_level, check_metric
from downstream.probe import DEFAULT_L2_GRID, fit_probe
from harness.registry import Registry
from pretrain.models import load_encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalRequest:
    set_name: str
    data_root: Path
    checkpoint: Path
    features_dir: Path | None
    shots: tuple[int | None, ...]  # None = the full training split
    seeds: tuple[int, ...]
    epochs: int = 5  # fine-tuning style protocols
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    num_threads: int = 1


@dataclass
class EvalResult:
    shots: int | None
    eval_seed: int
    top1: float
    balanced_acc: float
    score: float  # the set's headline metric on test
    loss: float  # test cross-entropy
    val_score: float  # headline metric on validation at the selected hyper-parameters
    num_classes: int
    metric: str
    chance: float
    train_seconds: float
    eval_seconds: float
    hparams: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ProtocolEntry:
    needs_features: bool
    run: Callable[[EvalRequest], list[EvalResult]]
    description: str


PROTOCOLS: Registry[ProtocolEntry] = Registry("protocol")


def _check_request(req: EvalRequest) -> None:
    if not req.shots:
        raise ValueError("EvalRequest.shots is empty; give shot counts (positive integers) or None for the full set")
    if not req.seeds:
        raise ValueError("EvalRequest.seeds is empty; give at least one evaluation seed")
    for k in req.shots:
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"EvalRequest.shots entries must be positive integers or None (full set), got {k!r}")


def _headline_metric(set_name: str) -> str:
    return check_metric(downstream_sets().DOWNSTREAM.get(set_name).metric)


def run_linear(req: EvalRequest) -> list[EvalResult]:
    """Linear probe on cached features, one result per (shots, seed)."""
    _check_request(req)
    if req.features_dir is None:
        raise ValueError(f"protocol 'linear' reads cached features, but EvalRequest.features_dir is None "
                         f"(set {req.set_name!r}); run extract_features first and pass its out_dir")
    metric = _headline_metric(req.set_name)
    X_train, y_train = load_features(req.features_dir, "train")
    X_val, y_val = load_features(req.features_dir, "validation")
    X_test, y_test = load_features(req.features_dir, "test")
    num_classes = len(load_class_names(req.features_dir)) or int(max(y_train.max(), y_val.max(), y_test.max()) + 1)
    chance = chance_level(metric, num_classes)

    results: list[EvalResult] = []
    fits: dict[str, tuple[Any, float]] = {}  # identical training subsets (e.g. the full set) are fitted once
    with torch_threads(req.num_threads):
        for shots in req.shots:
            for seed in req.seeds:
                idx = sample_shots(y_train, shots, seed)
                key = hashlib.sha1(idx.tobytes()).hexdigest()
                reused = key in fits
                if not reused:
                    t0 = time.perf_counter()
                    probe = fit_probe(X_train[idx], y_train[idx], X_val, y_val, num_classes=num_classes, metric=metric,
                                      l2_grid=DEFAULT_L2_GRID)
                    fits[key] = (probe, time.perf_counter() - t0)
                probe, train_seconds = fits[key]
                t0 = time.perf_counter()
                test = probe.evaluate(X_test, y_test)
                eval_seconds = time.perf_counter() - t0
                hparams = {"l2": probe.l2, "l2_grid": list(DEFAULT_L2_GRID), "solver": "lbfgs",
                           "num_train": int(len(idx)), "feature_dim": int(X_train.shape[1]),
                           "sweep": probe.sweep, "reused_fit": reused}
                results.append(EvalResult(shots=shots, eval_seed=int(seed), top1=test["top1"],
                                          balanced_acc=test["balanced_acc"], score=test["score"], loss=test["loss"],
                                          val_score=probe.val_score, num_classes=num_classes, metric=metric,
                                          chance=chance, train_seconds=train_seconds, eval_seconds=eval_seconds,
                                          hparams=hparams, curve=[]))
                log.info("linear %s shots=%s seed=%d: val %.4f test %s %.4f (l2=%g, n=%d)", req.set_name,
                         shots, seed, probe.val_score, metric, test["score"], probe.l2, len(idx))
    return results


def run_finetune(req: EvalRequest) -> list[EvalResult]:
    """Full fine-tuning from ``checkpoint`` on raw images, one result per (shots, seed)."""
    _check_request(req)
    metric = _headline_metric(req.set_name)
    sets = downstream_sets()
    train = sets.load_split(req.set_name, "train", req.data_root)
    val = sets.load_split(req.set_name, "validation", req.data_root)
    test = sets.load_split(req.set_name, "test", req.data_root)
    num_classes = len(train.class_names)
    chance = chance_level(metric, num_classes)
    train_labels = np.asarray(train.labels, dtype=np.int64)
    device = default_device()

    results: list[EvalResult] = []
    with torch_threads(req.num_threads):
        encoder, meta = load_encoder(req.checkpoint, map_location="cpu")
        for shots in req.shots:
            for seed in req.seeds:
                idx = sample_shots(train_labels, shots, seed)
                cfg = FinetuneConfig(epochs=int(req.epochs), lrs=tuple(float(v) for v in req.lrs), seed=int(seed))
                out = finetune(encoder, meta, (train.images[idx], train_labels[idx]),
                               (val.images, np.asarray(val.labels, dtype=np.int64)),
                               (test.images, np.asarray(test.labels, dtype=np.int64)),
                               num_classes=num_classes, metric=metric, config=cfg, device=device,
                               num_threads=req.num_threads)
                results.append(EvalResult(shots=shots, eval_seed=int(seed), top1=out.test["top1"],
                                          balanced_acc=out.test["balanced_acc"], score=out.test["score"],
                                          loss=out.test["loss"], val_score=out.val_score, num_classes=num_classes,
                                          metric=metric, chance=chance, train_seconds=out.train_seconds,
                                          eval_seconds=out.eval_seconds, hparams=out.hparams, curve=out.curve))
                log.info("finetune %s shots=%s seed=%d: lr=%g epoch %d, val %.4f test %s %.4f", req.set_name,
                         shots, seed, out.lr, out.epoch, out.val_score, metric, out.test["score"])
    return results


PROTOCOLS.register("linear", ProtocolEntry(
    needs_features=True, run=run_linear,
    description="multinomial logistic regression on frozen features; L2 strength chosen on validation"))
PROTOCOLS.register("finetune", ProtocolEntry(
    needs_features=False, run=run_finetune,
    description="whole encoder + new linear head, AdamW wd 0.1, cosine; lr and epoch chosen on validation"))
