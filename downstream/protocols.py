"""Evaluation protocols: how an encoder (or its cached features) is turned into downstream scores.

A protocol takes one :class:`EvalRequest` (a checkpoint or its cached features, a downstream set,
shot counts and seeds) and returns one :class:`EvalResult` per (shots, seed), in the order
``for shots in request.shots: for seed in request.seeds``. Every choice of hyper-parameter is
made on the set's validation split; test is scored once per result, with the selection. No
protocol passes test data to anything that selects.

- ``linear``: a multinomial logistic-regression probe on frozen features read from
  ``features_dir`` (written by :func:`downstream.features.extract_features`), L2 strength chosen
  on validation (:mod:`downstream.probe`).
- ``finetune``: the whole encoder plus a new linear head, learning rate and epoch chosen on
  validation (:mod:`downstream.finetune`); the head starts at zero, or, for a CLIP checkpoint
  with ``head_init: zeroshot``, at the zero-shot classifier (:mod:`downstream.zeroshot`).
- ``lp_ft``: a linear probe first (as ``linear``, on the cached features), then fine-tuning of
  the whole network with the head started from the probe (Kumar et al., 2022).
- ``zeroshot``: CLIP checkpoints only; class-name prompts through the text tower, shots = 0.
- ``scratch``: the same backbone from random initialisation (seeded by the evaluation seed)
  with the fine-tuning recipe: the baseline every fine-tuning number is read against.

Where the set's headline metric is balanced accuracy, probes and fine-tuning weight classes
equally in their loss (``class_weight="balanced"``).

k-shot training sets are drawn by :func:`downstream.fewshot.sample_shots` (nested across k for a
seed; ``shots=None`` is the full training split).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from downstream import accel
from downstream.features import (
    default_device,
    downstream_sets,
    load_class_names,
    load_features,
    prepare_images,
    resize_options,
    torch_threads,
)
from downstream.fewshot import sample_shots
from downstream.finetune import FinetuneConfig, FinetuneResult, finetune
from downstream.metrics import all_metrics, chance_level, check_metric
from downstream.probe import DEFAULT_L2_GRID, fit_probe
from harness.core.jobs import DEFAULT_START_ALPHA
from harness.core.registry import Registry

log = logging.getLogger(__name__)

HEAD_INITS = ("zero", "zeroshot")


@dataclass(frozen=True)
class EvalRequest:
    set_name: str
    data_root: Path
    checkpoint: Path
    features_dir: Path | None
    shots: tuple[int | None, ...]  # None = the full training split, 0 = zero-shot
    seeds: tuple[int, ...]
    epochs: int = 5  # fine-tuning style protocols
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    num_threads: int = 1
    set_config: Mapping[str, Any] | None = None  # a set declared in the spec travels as its config
    data_dir: Path | None = None  # where real and spec-declared sets with relative paths live
    head_init: str = "zero"  # finetune: "zero" or "zeroshot" (CLIP checkpoints)
    batch_size: int = 128  # fine-tuning style protocols (the core study's)
    min_steps: int = 0  # fine-tuning style protocols: at least this many steps per learning rate
    bn: str = "auto"  # fine-tuning style protocols: BatchNorm statistics (downstream.finetune.BN_MODES)
    start_alpha: float | None = DEFAULT_START_ALPHA  # leaving a given start: its test's level (None: no test)


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
    run: Callable[[EvalRequest], list[EvalResult]]
    description: str
    needs_features: bool = False  # reads the (checkpoint, set) feature cache
    trains: bool = False  # a fine-tuning recipe: takes epochs and a learning-rate grid, records curves
    needs_text_tower: bool = False  # only for checkpoints of methods with a text tower (zero-shot)
    from_scratch: bool = False  # ignores the checkpoint's weights: evaluated once per backbone

    @property
    def runs_on_cpu(self) -> bool:
        """Fits on cached features without training a network (the linear probe: SciPy on the CPU),
        so its job needs no GPU whatever the spec gives evaluations."""
        return self.needs_features and not self.trains


PROTOCOLS: Registry[ProtocolEntry] = Registry("protocol")


# ------------------------------------------------------------------------------------------ helpers


def _entry(req: EvalRequest):
    sets = downstream_sets()
    custom = {req.set_name: dict(req.set_config)} if req.set_config else None
    return sets.resolve_set(req.set_name, custom)


def _split(req: EvalRequest, split: str, image_size: int | None = None, resize: dict[str, Any] | None = None):
    """Split ``split`` of the request's set; ``resize`` is the checkpoint's own (features.resize_options)."""
    return downstream_sets().load_split(
        _entry(req), split, req.data_root, data_dir=req.data_dir, image_size=image_size, **(resize or {})
    )


def _headline_metric(req: EvalRequest) -> str:
    return check_metric(_entry(req).metric)


def _class_weight(metric: str) -> str | None:
    return "balanced" if metric == "balanced_acc" else None


def _check_request(req: EvalRequest, *, zero_shot: bool = False) -> None:
    if not req.shots:
        raise ValueError("EvalRequest.shots is empty; give shot counts (positive integers) or None for the full set")
    if not req.seeds:
        raise ValueError("EvalRequest.seeds is empty; give at least one evaluation seed")
    for k in req.shots:
        if zero_shot:
            if k != 0:
                raise ValueError(f"protocol 'zeroshot' takes shots 0 only, got {k!r}")
        elif k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"EvalRequest.shots entries must be positive integers or None (full set), got {k!r}")
    if req.head_init not in HEAD_INITS:
        raise ValueError(f"head_init {req.head_init!r} is not valid; valid: {', '.join(HEAD_INITS)}")


@dataclass
class _Images:
    train: Any
    val: Any
    test: Any
    num_classes: int
    provenance: dict[str, Any]


def _load_images(req: EvalRequest, image_size: int, resize: dict[str, Any] | None = None) -> _Images:
    train = _split(req, "train", image_size, resize)
    val = _split(req, "validation", image_size, resize)
    test = _split(req, "test", image_size, resize)
    info = dict(getattr(train, "info", {}) or {})
    return _Images(train, val, test, len(train.class_names), info)


def _labels(split) -> np.ndarray:
    return np.asarray(split.labels, dtype=np.int64)


# ------------------------------------------------------------------------------------------ linear


def _subset_key(idx: np.ndarray) -> str:
    """Identifies a training subset: seeds that draw the same examples share one probe."""
    return hashlib.sha1(idx.tobytes()).hexdigest()


def _probe_on(idx: np.ndarray, metric: str, X_train, y_train, X_val, y_val, num_classes: int):
    """The protocol's linear probe on the training examples ``idx`` (L2 chosen on validation)."""
    return fit_probe(
        X_train[idx],
        y_train[idx],
        X_val,
        y_val,
        num_classes=num_classes,
        metric=metric,
        l2_grid=DEFAULT_L2_GRID,
        class_weight=_class_weight(metric),
    )


def _fit_probes(req: EvalRequest, metric: str, X_train, y_train, X_val, y_val, num_classes: int):
    """One probe per (shots, seed), fitted on the k-shot subset; identical subsets are fitted once."""
    fits: dict[str, tuple[Any, float]] = {}
    for shots in req.shots:
        for seed in req.seeds:
            idx = sample_shots(y_train, shots, seed)
            key = _subset_key(idx)
            reused = key in fits
            if not reused:
                t0 = time.perf_counter()
                probe = _probe_on(idx, metric, X_train, y_train, X_val, y_val, num_classes)
                fits[key] = (probe, time.perf_counter() - t0)
            probe, seconds = fits[key]
            yield shots, seed, idx, probe, seconds, reused


def _cached_train_val(req: EvalRequest, protocol: str):
    """``(metric, X_train, y_train, X_val, y_val, num_classes)`` from the feature cache (never test)."""
    _check_request(req)
    if req.features_dir is None:
        raise ValueError(
            f"protocol {protocol!r} reads cached features, but EvalRequest.features_dir is None "
            f"(set {req.set_name!r}); run extract_features first and pass its out_dir"
        )
    X_train, y_train = load_features(req.features_dir, "train")
    X_val, y_val = load_features(req.features_dir, "validation")
    num_classes = len(load_class_names(req.features_dir)) or int(max(y_train.max(), y_val.max()) + 1)
    return _headline_metric(req), X_train, y_train, X_val, y_val, num_classes


def run_linear(req: EvalRequest) -> list[EvalResult]:
    """Linear probe on cached features, one result per (shots, seed)."""
    metric, X_train, y_train, X_val, y_val, num_classes = _cached_train_val(req, "linear")
    chance = chance_level(metric, num_classes)

    results: list[EvalResult] = []
    with torch_threads(req.num_threads):
        fitted = list(_fit_probes(req, metric, X_train, y_train, X_val, y_val, num_classes))
        X_test, y_test = load_features(req.features_dir, "test")  # read only after every choice is made
        for shots, seed, idx, probe, train_seconds, reused in fitted:
            t0 = time.perf_counter()
            test = probe.evaluate(X_test, y_test)
            eval_seconds = time.perf_counter() - t0
            hparams = {
                "l2": probe.l2,
                "l2_grid": list(DEFAULT_L2_GRID),
                "solver": "lbfgs",
                "num_train": int(len(idx)),
                "feature_dim": int(X_train.shape[1]),
                "class_weight": _class_weight(metric),
                "sweep": probe.sweep,
                "reused_fit": reused,
            }
            results.append(
                EvalResult(
                    shots=shots,
                    eval_seed=int(seed),
                    top1=test["top1"],
                    balanced_acc=test["balanced_acc"],
                    score=test["score"],
                    loss=test["loss"],
                    val_score=probe.val_score,
                    num_classes=num_classes,
                    metric=metric,
                    chance=chance,
                    train_seconds=train_seconds,
                    eval_seconds=eval_seconds,
                    hparams=hparams,
                    curve=[],
                )
            )
            log.info(
                "linear %s shots=%s seed=%d: val %.4f test %s %.4f (l2=%g, n=%d)",
                req.set_name,
                shots,
                seed,
                probe.val_score,
                metric,
                test["score"],
                probe.l2,
                len(idx),
            )
    return results


# ------------------------------------------------------------------------------------------ fine-tuning


def _finetune_runs(
    req: EvalRequest,
    protocol: str,
    make_encoder: Callable[[int], tuple[Any, dict, dict]],
    image_size: int,
    head_for: Callable[[int, np.ndarray], tuple[Any, dict]] | None = None,
    pretrained: bool = True,
    resize: dict[str, Any] | None = None,
) -> list[EvalResult]:
    """The shared body of finetune, lp_ft and scratch.

    ``make_encoder(seed)`` gives ``(encoder, meta, extra)`` where ``extra`` may hold
    ``feature_dim`` and ``head_init``; ``head_for(seed, idx)`` gives ``(head_init, hparams)``
    for a k-shot subset (LP-FT's probe); ``resize`` is the checkpoint's own resizing
    (:func:`downstream.features.resize_options`; empty for the harness's checkpoints).
    """
    metric = _headline_metric(req)
    data = _load_images(req, image_size, resize)
    num_classes = data.num_classes
    chance = chance_level(metric, num_classes)
    y_train, y_val, y_test = _labels(data.train), _labels(data.val), _labels(data.test)
    device = default_device()
    results: list[EvalResult] = []
    with torch_threads(req.num_threads):
        for shots in req.shots:
            for seed in req.seeds:
                idx = sample_shots(y_train, shots, seed)
                encoder, meta, extra = make_encoder(int(seed))
                head_init, head_hparams = (extra.get("head_init"), {})
                if head_for is not None:
                    head_init, head_hparams = head_for(int(seed), idx)
                out = finetune(
                    encoder,
                    meta,
                    (data.train.images[idx], y_train[idx]),
                    (data.val.images, y_val),
                    (data.test.images, y_test),
                    num_classes=num_classes,
                    metric=metric,
                    config=_finetune_config(req, int(seed)),
                    device=device,
                    num_threads=req.num_threads,
                    head_init=head_init,
                    feature_dim=extra.get("feature_dim"),
                    class_weight=_class_weight(metric),
                    pretrained=pretrained,
                )
                hparams = {**out.hparams, **head_hparams, **extra.get("hparams", {})}
                if data.provenance:
                    hparams["data"] = data.provenance
                results.append(_finetune_result(out, shots, int(seed), metric, num_classes, chance, hparams))
                log.info(
                    "%s %s shots=%s seed=%d: lr=%g epoch %d, val %.4f test %s %.4f",
                    protocol,
                    req.set_name,
                    shots,
                    seed,
                    out.lr,
                    out.epoch,
                    out.val_score,
                    metric,
                    out.test["score"],
                )
    return results


def _finetune_config(req: EvalRequest, seed: int) -> FinetuneConfig:
    """The fine-tuning recipe the request asks for, seeded by the evaluation seed (shuffling, augmentation)."""
    return FinetuneConfig(
        epochs=int(req.epochs),
        lrs=tuple(float(v) for v in req.lrs),
        seed=int(seed),
        batch_size=int(req.batch_size),
        min_steps=int(req.min_steps),
        bn=req.bn,
        start_alpha=req.start_alpha,
    )


def _finetune_result(
    out: FinetuneResult,
    shots: int | None,
    seed: int,
    metric: str,
    num_classes: int,
    chance: float,
    hparams: dict[str, Any],
) -> EvalResult:
    """One (shots, seed) row from a fine-tuning run: its test metrics, selection score, timings and curve."""
    return EvalResult(
        shots=shots,
        eval_seed=seed,
        top1=out.test["top1"],
        balanced_acc=out.test["balanced_acc"],
        score=out.test["score"],
        loss=out.test["loss"],
        val_score=out.val_score,
        num_classes=num_classes,
        metric=metric,
        chance=chance,
        train_seconds=out.train_seconds,
        eval_seconds=out.eval_seconds,
        hparams=hparams,
        curve=out.curve,
    )


def run_finetune(req: EvalRequest) -> list[EvalResult]:
    """Full fine-tuning from ``checkpoint`` on raw images, one result per (shots, seed)."""
    _check_request(req)
    from pretrain.models import load_encoder

    if req.head_init == "zeroshot":
        from downstream.zeroshot import (
            ClipImageFeatures,
            class_weights,
            load_zeroshot_model,
            templates_for,
            zeroshot_head,
        )

        model, tokenizer, meta = load_zeroshot_model(req.checkpoint)
        names = _split(req, "train", int(meta["image_size"]), resize_options(meta)).class_names
        templates = templates_for(req.set_name)
        with torch_threads(req.num_threads):
            head = zeroshot_head(model, class_weights(model, tokenizer, names, templates))
        encoder = ClipImageFeatures(model.visual)
        extra = {
            "feature_dim": int(head[0].shape[1]),
            "head_init": head,
            "hparams": {"head_init": "zeroshot", "templates": list(templates)},
        }
        return _finetune_runs(
            req, "finetune", lambda seed: (encoder, meta, extra), int(meta["image_size"]), resize=resize_options(meta)
        )

    encoder, meta = load_encoder(req.checkpoint, map_location="cpu")
    return _finetune_runs(
        req, "finetune", lambda seed: (encoder, meta, {}), int(meta["image_size"]), resize=resize_options(meta)
    )


def run_lp_ft(req: EvalRequest) -> list[EvalResult]:
    """Linear probe on cached features, then fine-tuning with the head started from the probe."""
    from downstream.probe import probe_to_linear
    from pretrain.models import load_encoder

    metric, X_train, y_train, X_val, y_val, num_classes = _cached_train_val(req, "lp_ft")
    encoder, meta = load_encoder(req.checkpoint, map_location="cpu")
    probes: dict[str, Any] = {}

    def head_for(seed: int, idx: np.ndarray):
        key = _subset_key(idx)
        if key not in probes:
            with torch_threads(req.num_threads):
                probes[key] = _probe_on(idx, metric, X_train, y_train, X_val, y_val, num_classes)
        probe = probes[key]
        return probe_to_linear(probe), {"head_init": "probe", "probe_l2": probe.l2, "probe_val_score": probe.val_score}

    return _finetune_runs(
        req, "lp_ft", lambda seed: (encoder, meta, {}), int(meta["image_size"]), head_for, resize=resize_options(meta)
    )


def run_scratch(req: EvalRequest) -> list[EvalResult]:
    """The checkpoint's backbone from random initialisation, fine-tuned with the same recipe."""
    _check_request(req)
    import torch

    from pretrain.models import build_encoder, encoder_meta

    meta0 = torch.load(req.checkpoint, map_location="cpu", weights_only=True, mmap=True)["meta"]
    backbone, size = meta0["backbone"], int(meta0["image_size"])

    def make(seed: int):
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            encoder = build_encoder(backbone, size)
        finally:
            torch.random.set_rng_state(state)
        meta = encoder_meta(encoder, backbone, size, method="none")
        return encoder, meta, {"hparams": {"init": "random", "init_seed": seed}}

    return _finetune_runs(req, "scratch", make, size, pretrained=False)


# ------------------------------------------------------------------------------------------ zero-shot


def run_zeroshot(req: EvalRequest) -> list[EvalResult]:
    """CLIP zero-shot: one result per seed (all identical: nothing is drawn), shots = 0."""
    _check_request(req, zero_shot=True)
    import torch
    import torch.nn.functional as F

    from downstream.zeroshot import class_weights, load_zeroshot_model, templates_for, zeroshot_logits

    metric = _headline_metric(req)
    model, tokenizer, meta = load_zeroshot_model(req.checkpoint)
    size = int(meta["image_size"])
    device = default_device()
    templates = templates_for(req.set_name)
    with torch_threads(req.num_threads):
        accel.prepare_model(model, device)  # channels-last on a GPU
        resize = resize_options(meta)
        val = _split(req, "validation", size, resize)
        names = list(val.class_names)
        t0 = time.perf_counter()
        weights = class_weights(model, tokenizer, names, templates, device=device)
        val_logits = zeroshot_logits(model, prepare_images(val.images, size, **resize), weights, meta, device=device)
        build_seconds = time.perf_counter() - t0
        val_metrics = all_metrics(_labels(val), val_logits.argmax(1).numpy())
        test = _split(req, "test", size, resize)
        t0 = time.perf_counter()
        logits = zeroshot_logits(model, prepare_images(test.images, size, **resize), weights, meta, device=device)
        y = torch.from_numpy(_labels(test))
        scores = all_metrics(_labels(test), logits.argmax(1).numpy())
        loss = float(F.cross_entropy(logits, y))
        eval_seconds = time.perf_counter() - t0
    num_classes = len(names)
    hparams = {
        "templates": list(templates),
        "class_prompts": [n.replace("_", " ") for n in names],
        "logit_scale": float(model.logit_scale.detach().exp()),
    }
    log.info("zeroshot %s: test %s %.4f (chance %.4f)", req.set_name, metric, scores[metric], 1 / num_classes)
    return [
        EvalResult(
            shots=0,
            eval_seed=int(seed),
            top1=scores["top1"],
            balanced_acc=scores["balanced_acc"],
            score=scores[metric],
            loss=loss,
            val_score=val_metrics[metric],
            num_classes=num_classes,
            metric=metric,
            chance=chance_level(metric, num_classes),
            train_seconds=build_seconds,
            eval_seconds=eval_seconds,
            hparams=hparams,
            curve=[],
        )
        for seed in req.seeds
    ]


PROTOCOLS.register(
    "linear",
    ProtocolEntry(
        run=run_linear,
        needs_features=True,
        description="multinomial logistic regression on frozen features; L2 strength chosen on validation",
    ),
)
PROTOCOLS.register(
    "finetune",
    ProtocolEntry(
        run=run_finetune,
        trains=True,
        description="whole encoder + new linear head (zero, or CLIP's zero-shot classifier), AdamW wd 0.1, cosine; "
        "lr and epoch chosen on validation",
    ),
)
PROTOCOLS.register(
    "lp_ft",
    ProtocolEntry(
        run=run_lp_ft,
        needs_features=True,
        trains=True,
        description="linear probe on frozen features, then fine-tuning of the whole network from it",
    ),
)
PROTOCOLS.register(
    "zeroshot",
    ProtocolEntry(
        run=run_zeroshot,
        needs_text_tower=True,
        description="CLIP checkpoints: class-name prompts through the text tower (shots 0)",
    ),
)
PROTOCOLS.register(
    "scratch",
    ProtocolEntry(
        run=run_scratch,
        trains=True,
        from_scratch=True,
        description="the same backbone from random initialisation, fine-tuned with the same recipe",
    ),
)
