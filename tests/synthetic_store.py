"""A synthetic results store that fills every section of the report (tests import it).

``build_synthetic_store(root)`` writes runs (several sources, methods, sizes, sets, shots and
seeds; a random-init floor; a failed row), views and the rest; the report tests and the browser
test render it.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from results.report import shots_label
from results.store import Store

SOURCES = ("laion", "cc12m")
METHODS = ("clip", "simclr")
SIZES = (1_000, 4_000, 16_000)
SETS = ("cifar100", "pets")
SHOTS = (1, 10, None)
SEEDS = (0, 1, 2)


def build_synthetic_store(root) -> Store:
    """2 sources x 2 methods x 3 sizes x 2 sets x 3 shots x 3 seeds, a floor, failures and views."""
    rng = np.random.default_rng(0)
    store = Store(root)
    now = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    for source in SOURCES:
        for method in METHODS:
            for size in SIZES:
                pkey = f"pt-{source}-{method}-{size}"
                rows = []
                for ds_name in SETS:
                    for shots in SHOTS:
                        for seed in SEEDS:
                            base = 0.2 + 0.1 * math.log10(size) + (0.05 if source == "laion" else 0.0)
                            base += 0.0 if shots is None else -0.1 / (shots**0.5)
                            rows.append(
                                {
                                    "key": f"{pkey}-{ds_name}-{shots_label(shots)}-{seed}",
                                    "job_key": f"ev-{pkey}-{ds_name}",
                                    "spec": "synthetic",
                                    "created_at": now,
                                    "status": "ok",
                                    "pretrain_key": pkey,
                                    "source": source,
                                    "curation": "none",
                                    "label_noise": 0.0,
                                    "pretrain_size": size,
                                    "method": method,
                                    "backbone": "resnet18",
                                    "checkpoint_epoch": 3,
                                    "pretrain_epochs": 3,
                                    "pretrain_seed": 0,
                                    "downstream": ds_name,
                                    "num_classes": 10,
                                    "metric": "top1",
                                    "chance": 0.1,
                                    "protocol": "linear",
                                    "shots": shots,
                                    "eval_seed": seed,
                                    "score": base + rng.normal(0, 0.02),
                                    "top1": base,
                                    "hparams": {"lr": 0.1},
                                }
                            )
                store.write_part("runs", f"ev-{pkey}", rows)
    floor = [
        {"key": f"floor-{d}-{shots_label(s)}-{seed}", "status": "ok", "method": "none", "source": "none",
         "protocol": "linear", "downstream": d, "shots": s, "eval_seed": seed, "score": 0.15, "chance": 0.1}
        for d in SETS for s in SHOTS for seed in SEEDS
    ]
    store.write_part("runs", "floor", floor)
    store.write_part("runs", "broken", [
        {"key": "bad-1", "status": "failed", "protocol": "finetune", "downstream": "pets", "source": "laion",
         "method": "clip", "error": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA <oom>"}
    ])
    store.write_part("views", "views-1", [
        {"view_key": "v-laion-1000", "source": "laion", "curation": "clip_score", "requested_size": 1000,
         "size": 1000, "label_noise": 0.0, "funnel": {"resolution": 12, "clip_score": 340}},
    ])
    return store


