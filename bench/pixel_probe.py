"""How far a linear probe gets on raw pixels, against the store's random-init floor and encoders.

Not a speed benchmark: a calibration of the world's downstream sets. For each world set, the
harness's own linear probe (``downstream.probe.fit_probe``: standardised features, its L2 grid and
class weighting chosen on validation, test scored once) is fitted on the training split's raw
pixels (3 x H x W values in [0, 1]) at full data, and its test score is printed beside chance, the
store's random-init floor (``method = 'none'``, the named baseline: mean over its initialisations
and eval seeds) and the best pre-trained configuration of the store (final checkpoints, mean over
pre-training and eval seeds; a maximum over configurations, so it is biased upwards).

It answers two questions a reader of the calibration asks: which sets no linear read-out of
pixels separates (a set at chance from pixels, from random features and from every encoder tells
about the set, not the sources), and where the random-init floor sits below a linear model of
the pixels themselves (a gain over that floor can still be below what the pixels give).

    .venv/bin/python bench/pixel_probe.py --store tbench-out/quickstart/store

The world is read from ``--world-dir``, by default the one world folder under the quickstart's
workdir (``tbench-out/quickstart/work/world/<key>/``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.catalogue import SETS_BY_NAME, WORLD_SETS  # noqa: E402
from downstream.probe import fit_probe  # noqa: E402
from downstream.sets import load_split  # noqa: E402
from results.plotting import FLOOR_METHOD, final_checkpoints  # noqa: E402
from results.store import load  # noqa: E402

CONFIG = ["source", "curation", "label_noise", "method", "backbone", "pretrain_size", "samples_budget"]


def pixels(images: np.ndarray) -> np.ndarray:
    """A batch of uint8 images (any channel layout) -> ``[n, 3 * H * W]`` float32 in [0, 1]."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images [n, H, W, C] or [n, C, H, W], got shape {x.shape}")
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


def pixel_score(name: str, world_dir: Path) -> dict:
    """The full-data linear probe on ``name``'s raw pixels: test score (the set's headline metric) and chance."""
    split = {s: load_split(name, s, world_dir) for s in ("train", "validation", "test")}
    probe = fit_probe(
        pixels(split["train"].images),
        np.array(split["train"].labels),
        pixels(split["validation"].images),
        np.array(split["validation"].labels),
        num_classes=split["train"].num_classes,
        metric=SETS_BY_NAME[name].metric,
    )
    test = probe.evaluate(pixels(split["test"].images), np.array(split["test"].labels))
    return {"pixels": float(test["score"]), "chance": 1.0 / split["train"].num_classes, "l2": probe.l2}


def store_scores(store: str | Path) -> tuple[dict[str, float], dict[str, tuple[str, float]]]:
    """Full-data linear scores per world set: the random-init floor, and the best configuration (label, score)."""
    runs = load(store)["runs"]
    lin = runs[(runs["status"] == "ok") & (runs["protocol"] == "linear") & runs["shots"].isna()]
    lin = lin[lin["downstream"].isin(WORLD_SETS)]
    floor = lin[lin["method"].astype(object) == FLOOR_METHOD].groupby("downstream")["score"].mean().to_dict()
    pre = final_checkpoints(lin[lin["method"].astype(object) != FLOOR_METHOD])
    cols = [c for c in CONFIG if c in pre.columns]
    pre = pre.assign(**{c: pre[c].astype(object).where(pre[c].notna(), "") for c in cols})  # NaN is no group key
    means = pre.groupby([*cols, "downstream"])["score"].mean()
    best = {}
    for ds, s in means.groupby(level="downstream"):
        idx = s.idxmax()
        best[ds] = (" ".join(str(v) for v in idx[:-1] if v != ""), float(s.max()))
    return floor, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="tbench-out/quickstart/store")
    ap.add_argument("--world-dir", default=None, help="a world folder (default: the quickstart workdir's)")
    args = ap.parse_args(argv)
    world = Path(args.world_dir) if args.world_dir else None
    if world is None:
        found = sorted(Path("tbench-out/quickstart/work/world").glob("*/world.json"))
        if not found:
            ap.error("no world under tbench-out/quickstart/work/world/: run `make demo` or pass --world-dir")
        world = found[-1].parent
    t0 = time.perf_counter()
    floor, best = store_scores(args.store)
    out = {}
    print(f"{'set':<18} {'chance':>6} {'pixels':>7} {'random init':>11} {'best encoder':>12}  (full data, x100)")
    for name in WORLD_SETS:
        r = pixel_score(name, world)
        f, (label, b) = floor.get(name, float("nan")), best.get(name, ("", float("nan")))
        out[name] = {
            k: (round(100 * v, 1) if np.isfinite(v) else None)  # None: the store has no such row
            for k, v in (("chance", r["chance"]), ("pixels", r["pixels"]), ("random_init", f), ("best", b))
        }
        out[name]["best_config"] = label
        print(f"{name:<18} {100 * r['chance']:6.1f} {100 * r['pixels']:7.1f} {100 * f:11.1f} {100 * b:12.1f}  {label}")
    near_chance = [s for s, v in out.items() if v["pixels"] - v["chance"] < 2.0]
    above_floor = [s for s, v in out.items() if v["random_init"] is not None and v["pixels"] > v["random_init"]]
    above_best = [s for s, v in out.items() if v["best"] is not None and v["pixels"] > v["best"]]
    print(f"pixels within 2 points of chance: {', '.join(near_chance) or 'none'}")
    print(f"pixels above the random-init floor: {', '.join(above_floor) or 'none'}")
    print(f"pixels above every encoder of the store: {', '.join(above_best) or 'none'}")
    print(
        json.dumps(
            {
                "bench": "pixel_probe",
                "baseline": "random-init floor (linear, full data)",
                "store": str(args.store),
                "world": str(world),
                "sets_pixels_above_floor": len(above_floor),
                "sets_pixels_near_chance": near_chance,
                "sets_pixels_above_best_encoder": above_best,
                "per_set": out,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
