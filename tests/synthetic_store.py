"""A synthetic results store that fills every section of the report (tests import it).

``build_synthetic_store(root)`` writes, with known ground truth:

- linear-probe rows for 2 sources x 2 methods (plus the labelled source under supervised
  training) at several sizes, 2 sets, 1/10/full shots, 2 pre-training seeds and 3 eval seeds,
  on curves ``score(n) = A - B * (n * efficiency) ** -C`` so that the data multiplier between
  two configurations is the ratio of their efficiencies (:data:`PLANTED_MULTIPLIER`);
- every row of a world source carries the world's ``declared_similarity`` (:data:`SIMILARITY`),
  and SimCLR scores rise with it by :data:`SIM_GAIN` per unit; four more sources under SimCLR
  at :data:`CALIBRATION_SIZE` make six sources at one size, method and budget: the
  calibration section's points, whose gain over random init ranks with the similarity;
- a random-init floor and a failed row;
- one pre-training run evaluated at 4 checkpoint epochs as a feature extractor (linear, peaks
  at epoch 2) and as a fine-tuning start (finetune, improves every epoch), with its spectra;
- fine-tuning and from-scratch rows with per-epoch curves (the convergence analysis);
- curated views with funnels.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from results.report import shots_label
from results.store import Store

SOURCES = ("laion", "cc12m")
METHODS = ("clip", "simclr")
SIZES = (1_000, 4_000, 16_000, 64_000)
SETS = ("cifar100", "pets")
SHOTS = (1, 10, None)
SEEDS = (0, 1, 2)
"""Eval seeds."""
PRETRAIN_SEEDS = (0, 1)
PRETRAIN_NOISE = 0.001
"""Standard deviation of the per-(configuration, pre-training seed) shift of every score."""
EPOCHS = 4
LABELLED = "imagenet"
LABELLED_SIZES = (500, 2_000, 8_000)

A, B, C = 0.9, 2.0, 0.3  # score(n) = A - B * n ** -C before per-set and per-shot offsets
CALIBRATION_SOURCES = ("yfcc", "redcaps", "wit", "cc3m")
"""Sources trained only at :data:`CALIBRATION_SIZE` under SimCLR."""
CALIBRATION_SIZE = 4_000
EFFICIENCY = {
    ("laion", "clip"): 1.0,
    ("laion", "simclr"): 0.5,
    ("cc12m", "clip"): 0.7,
    ("cc12m", "simclr"): 0.35,
    (LABELLED, "supervised"): 8.0,
    **{(s, "simclr"): 0.5 for s in CALIBRATION_SOURCES},
}
SIMILARITY = {
    "laion": {"cifar100": 0.55, "pets": 0.60},
    "cc12m": {"cifar100": 0.50, "pets": 0.45},
    "yfcc": {"cifar100": 0.35, "pets": 0.30},
    "redcaps": {"cifar100": 0.40, "pets": 0.70},
    "wit": {"cifar100": 0.25, "pets": 0.20},
    "cc3m": {"cifar100": 0.45, "pets": 0.50},
    LABELLED: {"cifar100": 0.70, "pets": 0.65},
}
"""The world's declared similarity[source][set] of the synthetic study."""
SIM_GAIN = 0.4
"""SimCLR scores rise by this much per unit of declared similarity (centred at 0.5)."""
PLANTED_MULTIPLIER = EFFICIENCY[(LABELLED, "supervised")] / EFFICIENCY[("laion", "clip")]
"""How many times more samples laion/clip needs than imagenet/supervised, at every shot count."""
SET_OFFSET = {"cifar100": -0.05, "pets": 0.05}
SEED_NOISE = 0.0015
"""Standard deviation of the per-seed noise on linear scores."""
MID_RUN = ("laion", "clip", 64_000)
"""The pre-training run evaluated at every checkpoint epoch."""
NOW = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def truth(n: float, source: str, method: str, ds_name: str, shots: int | None) -> float:
    """The planted score of a configuration (before seed noise)."""
    shot_penalty = 0.0 if shots is None else 0.1 / math.sqrt(shots)
    similar = SIM_GAIN * (SIMILARITY[source][ds_name] - 0.5) if method == "simclr" else 0.0
    return A - B * (n * EFFICIENCY[(source, method)]) ** -C + SET_OFFSET[ds_name] - shot_penalty + similar


def _row(pkey: str, source: str, method: str, size: int, epoch: int, seed: int = 0, **extra) -> dict:
    return {
        "spec": "synthetic",
        "created_at": NOW,
        "status": "ok",
        "pretrain_key": pkey,
        "source": source,
        "curation": "none",
        "label_noise": 0.0,
        "pretrain_size": size,
        "method": method,
        "backbone": "resnet18",
        "checkpoint_epoch": epoch,
        "pretrain_epochs": EPOCHS,
        "pretrain_seed": seed,
        "num_classes": 10,
        "metric": "top1",
        "chance": 0.1,
        "hparams": {"lr": 0.1},
        "declared_similarity": SIMILARITY.get(source, {}).get(extra.get("downstream")),
        **extra,
    }


def _curve(
    key: str,
    job_key: str,
    protocol: str,
    ds_name: str,
    start: float,
    end: float,
    rate: float,
    loss0: float,
    epochs: int = 5,
) -> list[dict]:
    """An exponential approach from ``start`` to ``end`` (validation score) and a falling loss."""
    out = []
    for e in range(1, epochs + 1):
        frac = 1 - math.exp(-rate * e)
        out.append(
            {
                "key": key,
                "job_key": job_key,
                "protocol": protocol,
                "downstream": ds_name,
                "shots": None,
                "eval_seed": 0,
                "epoch": e,
                "val_score": start + (end - start) * frac,
                "train_loss": loss0 * math.exp(-rate * e) + 0.1,
                "lr": 0.01,
            }
        )
    return out


def _spectrum(epoch: int, dim: int = 64) -> tuple[list[float], int, float]:
    """Singular values that flatten as pre-training goes on, with their k80 and effective rank."""
    alpha = 1.6 - 0.25 * epoch
    sv = np.arange(1, dim + 1, dtype=float) ** -alpha
    share = np.cumsum(sv) / sv.sum()
    k80 = int(np.searchsorted(share, 0.8) + 1)
    p = sv / sv.sum()
    return sv.tolist(), k80, float(np.exp(-(p * np.log(p)).sum()))


def build_synthetic_store(root) -> Store:
    """Write the synthetic study described in the module docstring into ``root``; return its store."""
    rng = np.random.default_rng(0)
    store = Store(root)
    configs = [(s, m, n) for s in SOURCES for m in METHODS for n in SIZES]
    configs += [(LABELLED, "supervised", n) for n in LABELLED_SIZES]
    configs += [(s, "simclr", CALIBRATION_SIZE) for s in CALIBRATION_SOURCES]
    for (source, method, size), pseed in ((c, p) for c in configs for p in PRETRAIN_SEEDS):
        pkey = f"pt-{source}-{method}-{size}" + (f"-s{pseed}" if pseed else "")
        shift = rng.normal(0, PRETRAIN_NOISE)  # this pre-training run's luck, shared by its sets and shots
        # the mid-training checkpoints, fine-tuning and spectra: pre-training seed 0 only
        first = pseed == PRETRAIN_SEEDS[0]
        epochs = range(1, EPOCHS + 1) if (source, method, size) == MID_RUN and first else (EPOCHS,)
        for epoch in epochs:
            rows, curves = [], []
            for ds_name in SETS:
                for shots in SHOTS:
                    for seed in SEEDS:
                        score = truth(size, source, method, ds_name, shots) + shift
                        score += 0.03 * ((EPOCHS - 2) ** 2 - (epoch - 2) ** 2)  # peaks at epoch 2, truth at the last
                        rows.append(
                            _row(
                                pkey,
                                source,
                                method,
                                size,
                                epoch,
                                pseed,
                                key=f"{pkey}-e{epoch}-{ds_name}-{shots_label(shots)}-{seed}",
                                job_key=f"ev-{pkey}-e{epoch}-{ds_name}",
                                downstream=ds_name,
                                protocol="linear",
                                shots=shots,
                                eval_seed=seed,
                                score=score + rng.normal(0, SEED_NOISE),
                                top1=score,
                            )
                        )
                if not first or source in CALIBRATION_SOURCES:
                    continue
                if size == max(SIZES) or (source, method) == (LABELLED, "supervised") and size == max(LABELLED_SIZES):
                    # fine-tuning from this checkpoint: better with every epoch of pre-training
                    ft = truth(size, source, method, ds_name, None) + 0.05 + 0.02 * epoch
                    key = f"{pkey}-e{epoch}-{ds_name}-ft"
                    rows.append(
                        _row(
                            pkey,
                            source,
                            method,
                            size,
                            epoch,
                            key=key,
                            job_key=f"ft-{pkey}-e{epoch}",
                            downstream=ds_name,
                            protocol="finetune",
                            shots=None,
                            eval_seed=0,
                            score=ft,
                            top1=ft,
                        )
                    )
                    curves += _curve(key, f"ft-{pkey}-e{epoch}", "finetune", ds_name, 0.3, ft, 1.2, 2.0)
            store.write_part("runs", f"ev-{pkey}-e{epoch}", rows)
            if curves:
                store.write_part("curves", f"ft-{pkey}-e{epoch}", curves)
            if (source, method, size) == MID_RUN and first:
                spectra = []
                sv, k80, erank = _spectrum(epoch)
                for ds_name in SETS:
                    spectra += [
                        {
                            "key": f"sp-{pkey}-e{epoch}-{ds_name}-{i}",
                            "job_key": f"fx-{pkey}-e{epoch}-{ds_name}",
                            "pretrain_key": pkey,
                            "checkpoint_epoch": epoch,
                            "downstream": ds_name,
                            "split": "train",
                            "rank_index": i,
                            "singular_value": v,
                            "k80": k80,
                            "effective_rank": erank,
                            "num_examples": 500,
                            "feature_dim": len(sv),
                            "method": method,
                            "source": source,
                        }
                        for i, v in enumerate(sv)
                    ]
                store.write_part("spectra", f"fx-{pkey}-e{epoch}", spectra)

    floor = [
        {
            "key": f"floor-{d}-{shots_label(s)}-{seed}",
            "status": "ok",
            "method": "none",
            "source": "none",
            "protocol": "linear",
            "downstream": d,
            "shots": s,
            "eval_seed": seed,
            "score": 0.15,
            "chance": 0.1,
            "backbone": "resnet18",
            "spec": "synthetic",
        }
        for d in SETS
        for s in SHOTS
        for seed in SEEDS
    ]
    store.write_part("runs", "floor", floor)
    scratch_rows, scratch_curves = [], []
    for ds_name in SETS:
        key = f"scratch-{ds_name}"
        scratch_rows.append(
            {
                "key": key,
                "job_key": "scratch",
                "status": "ok",
                "method": "none",
                "source": "none",
                "protocol": "scratch",
                "downstream": ds_name,
                "shots": None,
                "eval_seed": 0,
                "score": 0.35,
                "chance": 0.1,
                "backbone": "resnet18",
                "spec": "synthetic",
                "metric": "top1",
            }
        )
        scratch_curves += _curve(key, "scratch", "scratch", ds_name, 0.1, 0.35, 0.35, 2.4)
    store.write_part("runs", "scratch", scratch_rows)
    store.write_part("curves", "scratch", scratch_curves)
    store.write_part(
        "runs",
        "broken",
        [
            {
                "key": "bad-1",
                "job_key": "broken",
                "status": "failed",
                "protocol": "finetune",
                "downstream": "pets",
                "source": "laion",
                "method": "clip",
                "spec": "synthetic",
                "error": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA <oom>",
            }
        ],
    )
    store.write_part(
        "views",
        "views-1",
        [
            {
                "view_key": "v-laion-1000",
                "source": "laion",
                "curation": "clip_score",
                "requested_size": 1000,
                "size": 1000,
                "pool_size": 2000,
                "label_noise": 0.0,
                "achieved_noise": 0.0,
                "label_accuracy": 0.91,
                "num_classes": 10,
                "funnel": {"resolution": 12, "clip_score": 340, "labels": 48, "size": 600},
            },
            {
                "view_key": "v-laion-1000-noisy",
                "source": "laion",
                "curation": "clip_score",
                "requested_size": 1000,
                "size": 1000,
                "pool_size": 2000,
                "label_noise": 0.2,
                "achieved_noise": 0.2,
                "label_accuracy": 0.73,
                "num_classes": 10,
                "funnel": {"resolution": 12, "clip_score": 340, "labels": 48, "size": 600},
            },
            {
                "view_key": "v-cc12m-4000",
                "source": "cc12m",
                "curation": "none",
                "requested_size": 4000,
                "size": 3900,
                "pool_size": 5000,
                "label_noise": 0.0,
                "achieved_noise": 0.0,
                "label_accuracy": 0.66,
                "num_classes": 10,
                "funnel": {"labels": 1100},
            },
        ],
    )
    return store


def calibration_rows(
    similarity: dict[str, dict[str, float]],
    gain: dict[str, dict[str, float]],
    *,
    floor: float = 0.2,
    pretrain_seeds=(0, 1),
    eval_seeds=(0, 1, 2),
    shots=(10, None),
    pretrain_noise: float = 0.01,
    eval_noise: float = 0.01,
    size: int = 3_000,
    method: str = "simclr",
    seed: int = 0,
) -> list[dict]:
    """Linear rows of every source in ``similarity`` at one (size, method, budget) on every set, whose
    mean score is ``floor + gain[source][set]``, with per-(source, pre-training seed) and per-(set, eval
    seed) effects and noise, plus the random-init floor's rows (declared similarity as the world writes it)."""
    rng = np.random.default_rng(seed)
    sets = sorted({d for per in similarity.values() for d in per})
    luck = {(d, s, e): rng.normal(0, eval_noise) for d in sets for s in shots for e in eval_seeds}  # k-shot draw
    rows = []
    for source in similarity:
        for p in pretrain_seeds:
            shift = rng.normal(0, pretrain_noise)
            for d in sets:
                for s in shots:
                    for e in eval_seeds:
                        rows.append(
                            {
                                "key": f"{source}-{p}-{d}-{shots_label(s)}-{e}",
                                "status": "ok",
                                "source": source,
                                "method": method,
                                "curation": "none",
                                "label_noise": 0.0,
                                "pretrain_size": size,
                                "pretrain_epochs": 10,
                                "backbone": "resnet18",
                                "pretrain_seed": p,
                                "pretrain_key": f"pt-{source}-{p}",
                                "checkpoint_epoch": 10,
                                "protocol": "linear",
                                "downstream": d,
                                "shots": s,
                                "eval_seed": e,
                                "declared_similarity": similarity[source][d],
                                "metric": "top1",
                                "chance": 0.05,
                                "score": floor
                                + gain[source][d]
                                + shift
                                + luck[(d, s, e)]
                                + rng.normal(0, eval_noise / 3),
                            }
                        )
    for d in sets:
        for s in shots:
            for e in eval_seeds:
                rows.append(
                    {
                        "key": f"floor-{d}-{shots_label(s)}-{e}",
                        "status": "ok",
                        "source": "none",
                        "method": "none",
                        "curation": "none",
                        "label_noise": 0.0,
                        "pretrain_size": 0,
                        "backbone": "resnet18",
                        "pretrain_seed": 0,
                        "pretrain_key": "init",
                        "checkpoint_epoch": 0,
                        "protocol": "linear",
                        "downstream": d,
                        "shots": s,
                        "eval_seed": e,
                        "metric": "top1",
                        "chance": 0.05,
                        "score": floor + luck[(d, s, e)] + rng.normal(0, eval_noise / 3),
                    }
                )
    return rows
