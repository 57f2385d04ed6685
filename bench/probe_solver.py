"""The linear probe's solver against scikit-learn's ``LogisticRegression(solver="lbfgs")``.

Both sides fit the same thing: multinomial logistic regression on the same cached features,
standardised with the training mean and standard deviation, for every L2 strength of
``DEFAULT_L2_GRID`` (``lam``; scikit-learn's ``C = 1 / (lam * n_train)``, the same objective up to
a constant factor), the strength chosen on the validation split's headline metric with ties going
to the stronger regularisation, then scored once on test. Sets whose headline metric is balanced
accuracy are fitted with ``class_weight="balanced"`` on both sides (as the linear protocol does).

(a) ours: :func:`downstream.probe.fit_probe` over the whole sweep (standardisation, the row-space
    basis, warm starts along the path, validation scoring: all inside the timed call);
(b) baseline: for each strength, ``LogisticRegression(solver="lbfgs", C=1/(lam*n), tol=1e-4,
    max_iter=--max-iter)`` fitted from scratch on the standardised features (scikit-learn's
    default usage: no warm start), and its validation predictions. The features are standardised
    once, outside (b)'s clock, with the same mean and scale, and passed as float32 like the cached
    features (what ``StandardScaler`` returns for them; scikit-learn's lbfgs then computes in
    float32, about 20% faster than in float64).

Both stop on the same test (largest gradient entry <= 1e-4 on the same objective, in the
standardised feature coordinates) or after ``--max-iter`` iterations per strength (100 on both).
As well as time, the bench reports how well each side solved the problem: the objective each
side reached at every strength, evaluated by the same float64 code, and whether scikit-learn
stopped at its iteration limit. Both are also compared with a reference: the same sweep solved to a
gradient of 1e-6 (ours at ``tol=1e-6``, untimed), the answer both approximate.

Features: the embedded world's downstream sets (the nine world sets and the two package sets,
written into ``tbench-out/bench/downstream-sets`` on first use with the world's own writers, or read
from ``--world-dir``), encoded by a frozen ``--backbone`` (randomly initialised, seeded) or by the
encoder in ``--checkpoint``, through :func:`downstream.features.extract_features` (cached). The
few-shot grid: shots ``1,5,10,20,full`` x ``--seeds`` seeds drawn by
:func:`downstream.fewshot.sample_shots`; identical training subsets (the full set, whatever the
seed) are fitted once, as the linear protocol does.

Both sides run under the same thread limits (``--threads``, applied to torch and every BLAS/OpenMP
pool through threadpoolctl, as ``downstream.features.torch_threads`` does). The ratio is total
baseline time / total time of ours. Run from the repository root:

    .venv/bin/python bench/probe_solver.py --quick          # 3 sets, 2 seeds, about a minute on 2 cores
    .venv/bin/python bench/probe_solver.py                  # 11 sets, 3 seeds
    .venv/bin/python bench/probe_solver.py \\
        --checkpoint tbench-out/quickstart/work/pretrain/<key>/checkpoints/epoch_005.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench import _common as C
from downstream.fewshot import sample_shots
from downstream.metrics import headline
from downstream.probe import DEFAULT_L2_GRID, fit_probe, sample_weights
from pretrain.models import BACKBONES

TARGET_RATIO = 10.0
TARGET_POINTS = 0.5
SK_TOL = 1e-4
REF_TOL = 1e-6  # the reference: the same sweep solved this tightly
REF_MAX_ITER = 3000
QUICK_SETS = ("cifar100", "cameratraps", "dtd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured.",
    )
    p.add_argument(
        "--quick", action="store_true", help=f"sets {','.join(QUICK_SETS)} and 2 seeds (about a minute on 2 cores)"
    )
    p.add_argument(
        "--sets", default=None, help="comma-separated downstream sets (default: every world and package set)"
    )
    p.add_argument(
        "--shots",
        default="1,5,10,20,full",
        help="comma-separated shot counts, 'full' for the whole split (default: %(default)s)",
    )
    p.add_argument("--seeds", type=int, default=None, help="few-shot draws per shot count (default: 3, --quick 2)")
    p.add_argument(
        "--backbone",
        default="resnet18",
        help=f"a pretrain.models backbone, randomly initialised: {', '.join(BACKBONES.names())} (default: %(default)s)",
    )
    p.add_argument(
        "--image-size", type=int, default=32, help="encoder input size (default: %(default)s, the world's images)"
    )
    p.add_argument(
        "--encoder-seed", type=int, default=0, help="torch seed of the random encoder (default: %(default)s)"
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="an encoder checkpoint (pretrain.models.save_encoder) instead of a random encoder",
    )
    p.add_argument(
        "--max-iter", type=int, default=100, help="L-BFGS iterations per strength, both sides (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for both sides (torch, BLAS, OpenMP; default: %(default)s, as the linear protocol runs)",
    )
    p.add_argument(
        "--world-dir", default=None, help="an existing world folder (downstream/<set>/) instead of writing the sets"
    )
    p.add_argument(
        "--world-scale", type=float, default=1.0, help="scale of the sets written into the cache (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="device for feature extraction only (default: %(default)s)")
    p.add_argument(
        "--cache-dir", default=str(C.DEFAULT_CACHE), help="where data and features are written (default: %(default)s)"
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help=f"skip the untimed reference sweep (ours at tol {REF_TOL:g}) both sides are compared with",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    from downstream.sets import DOWNSTREAM

    local = [name for name, e in DOWNSTREAM.items() if e.origin in ("world", "package")]
    if args.sets:
        args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    else:
        args.sets = list(QUICK_SETS) if args.quick else local
    for s in args.sets:
        entry = DOWNSTREAM.get(s)  # unknown names raise with the valid ones
        if entry.origin not in ("world", "package"):
            p.error(
                f"--sets: {s!r} is a {entry.origin} set; this bench reads the embedded world's sets: {', '.join(local)}"
            )
    try:
        args.shots = [None if s.strip() == "full" else int(s) for s in args.shots.split(",") if s.strip()]
    except ValueError:
        p.error(f"--shots must be positive integers or 'full', got {args.shots!r}")
    if any(k is not None and k < 1 for k in args.shots) or not args.shots:
        p.error(f"--shots must be positive integers or 'full', got {args.shots!r}")
    if args.seeds is None:
        args.seeds = 2 if args.quick else 3
    if args.seeds < 1 or args.max_iter < 1 or args.threads < 1:
        p.error("--seeds, --max-iter and --threads must be >= 1")
    if args.checkpoint is None:
        BACKBONES.get(args.backbone)
    return args


# --------------------------------------------------------------------------- data and features


def cached_features(checkpoint: Path, name: str, data_root: Path, cache: Path, args: argparse.Namespace) -> Path:
    from downstream.features import extract_features

    st = checkpoint.stat()
    tag = hashlib.sha1(
        f"{checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}|{data_root.resolve()}".encode()
    ).hexdigest()[:12]
    out = cache / "probe" / "features" / tag / name
    marker = out / "bench_features.json"
    data_marker = data_root / "downstream" / name / "dataset_dict.json"
    want = {"checkpoint": str(checkpoint.resolve()), "set": name, "data_mtime_ns": data_marker.stat().st_mtime_ns}
    if (
        marker.is_file()
        and json.loads(marker.read_text()) == want
        and all((out / f"{s}.npz").is_file() for s in ("train", "validation", "test"))
    ):
        return out
    info = extract_features(checkpoint, name, data_root, out, num_threads=max(1, args.threads), device=args.device)
    marker.write_text(json.dumps(want))
    C.log(f"features {name}: {info['counts']} x {info['feature_dim']} ({info['backbone']}) in {info['seconds']:.1f}s")
    return out


# --------------------------------------------------------------------------- the two solvers


def objective(
    Z: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, lam: float, weights: np.ndarray | None
) -> float:
    """``sum_i s_i CE_i / n + lam/2 ||W||^2`` in float64 (the objective both sides minimise)."""
    logits = Z @ W.T + b
    top = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    ce = lse - logits[np.arange(len(y)), y]
    s = np.ones(len(y)) if weights is None else weights
    return float((s * ce).sum() / len(y) + 0.5 * lam * (W * W).sum())


def full_coef(model: Any, num_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's coefficients as ``[num_classes, D]`` and ``[num_classes]``.

    Classes absent from training get a -inf bias.
    """
    W = np.zeros((num_classes, dim))
    b = np.full(num_classes, -np.inf)
    W[model.classes_] = model.coef_
    b[model.classes_] = model.intercept_
    return W, b


def sklearn_sweep(
    Zt: np.ndarray,
    yt: np.ndarray,
    Zv: np.ndarray,
    yv: np.ndarray,
    *,
    metric: str,
    grid: list[float],
    class_weight: str | None,
    max_iter: int,
) -> tuple[float, list[dict[str, Any]], Any]:
    """The baseline's sweep: one LogisticRegression per strength (strongest first), choice on validation."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n = len(yt)
    best = None
    sweep = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for lam in grid:
            model = LogisticRegression(
                solver="lbfgs", C=1.0 / (lam * n), tol=SK_TOL, max_iter=max_iter, class_weight=class_weight
            ).fit(Zt, yt)
            score = headline(metric, yv, model.predict(Zv))
            sweep.append({"l2": lam, "val_score": score, "iterations": int(np.max(model.n_iter_)), "model": model})
            if best is None or score > best[1]:
                best = (lam, score, model)
    seconds = time.perf_counter() - t0
    return seconds, sweep, best


def compare_one(
    X_train,
    y_train,
    X_val,
    y_val,
    X_test,
    y_test,
    *,
    num_classes: int,
    metric: str,
    class_weight: str | None,
    grid: list[float],
    max_iter: int,
    reference: bool = True,
) -> dict[str, Any]:
    """Time both sides on one training subset; scores on test for each side's choice; solution quality."""
    # (a) ours, timed whole
    t0 = time.perf_counter()
    probe = fit_probe(
        X_train,
        y_train,
        X_val,
        y_val,
        num_classes=num_classes,
        metric=metric,
        l2_grid=grid,
        max_iter=max_iter,
        class_weight=class_weight,
    )
    ours_s = time.perf_counter() - t0
    # (b) the baseline on the same standardised features (the standardisation itself not timed), in
    # float32 like the cached features (what StandardScaler gives on them; scikit-learn's lbfgs keeps
    # float32 and is ~20% faster than on float64)
    Zt, Zv, Zs = (((X - probe.mean) / probe.scale).astype(np.float32) for X in (X_train, X_val, X_test))
    sk_s, sk_sweep, (sk_lam, sk_val, sk_model) = sklearn_sweep(
        Zt,
        y_train,
        Zv,
        y_val,
        metric=metric,
        grid=sorted(grid, reverse=True),
        class_weight=class_weight,
        max_iter=max_iter,
    )
    ours_test = probe.evaluate(X_test, y_test)
    sk_pred = sk_model.predict(Zs)
    sk_test = {"score": headline(metric, y_test, sk_pred), "top1": float(np.mean(sk_pred == y_test))}
    # solution quality at every strength: each side's point on the same float64 objective. Ours is
    # refitted (untimed) keeping every strength's weights, not only the chosen one's.
    weights = sample_weights(y_train, num_classes, class_weight)
    path = fit_probe(
        X_train,
        y_train,
        X_val,
        y_val,
        num_classes=num_classes,
        metric=metric,
        l2_grid=grid,
        max_iter=max_iter,
        class_weight=class_weight,
        keep_path=True,
    ).path
    gaps = []
    sk_capped = 0
    for point, (lam, W, b) in zip(sk_sweep, path):
        Wsk, bsk = full_coef(point["model"], num_classes, Zt.shape[1])
        Z64 = Zt.astype(np.float64)
        f_sk = objective(Z64, y_train, Wsk, bsk, lam, weights) if np.isfinite(bsk).all() else np.nan
        f_ours = objective(Z64, y_train, W, b, lam, weights)
        gaps.append((f_ours - f_sk) / max(abs(f_sk), 1e-12))
        sk_capped += int(point["iterations"] >= max_iter)
    return {
        "n_train": int(len(y_train)),
        "ours_seconds": ours_s,
        "sklearn_seconds": sk_s,
        "ours_l2": probe.l2,
        "sklearn_l2": sk_lam,
        "ours_val": probe.val_score,
        "sklearn_val": sk_val,
        "ours_test": ours_test["score"],
        "sklearn_test": sk_test["score"],
        "ours_top1": ours_test["top1"],
        "sklearn_top1": sk_test["top1"],
        "ours_iterations": [s["iterations"] for s in probe.sweep],
        "sklearn_iterations": [s["iterations"] for s in sk_sweep],
        "rank": probe.rank,
        "objective_gaps": gaps,
        "sklearn_capped": sk_capped,
        **(
            _reference(
                X_train,
                y_train,
                X_val,
                y_val,
                X_test,
                y_test,
                num_classes=num_classes,
                metric=metric,
                class_weight=class_weight,
                grid=grid,
            )
            if reference
            else {}
        ),
    }


# --------------------------------------------------------------------------- main


def _reference(
    X_train, y_train, X_val, y_val, X_test, y_test, *, num_classes, metric, class_weight, grid
) -> dict[str, Any]:
    """The same sweep solved to ``REF_TOL`` (untimed): what both sides approximate."""
    ref = fit_probe(
        X_train,
        y_train,
        X_val,
        y_val,
        num_classes=num_classes,
        metric=metric,
        l2_grid=grid,
        max_iter=REF_MAX_ITER,
        class_weight=class_weight,
        tol=REF_TOL,
    )
    return {
        "ref_l2": ref.l2,
        "ref_test": ref.evaluate(X_test, y_test)["score"],
        "ref_grad_max": max(s["grad_max"] for s in ref.sweep),
    }


def _points(a: float) -> float:
    return 100.0 * a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import scipy
    import sklearn

    from downstream.features import load_features, torch_threads
    from downstream.sets import DOWNSTREAM

    cache = Path(args.cache_dir)
    t_start = time.perf_counter()
    data_root = C.downstream_sets(args.sets, args.world_dir, cache, args.world_scale)
    checkpoint = C.encoder_checkpoint(args.checkpoint, args.backbone, args.image_size, cache, args.encoder_seed)
    feature_dirs = {name: cached_features(checkpoint, name, data_root, cache, args) for name in args.sets}
    grid = sorted({float(v) for v in DEFAULT_L2_GRID}, reverse=True)
    env = C.environment(torch.device("cpu"))
    C.log(
        f"device: {env['device']}; numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn "
        f"{sklearn.__version__}"
    )
    C.log(f"backbones available: {', '.join(BACKBONES.names())}")
    C.log(
        f"encoder {checkpoint}; sets {', '.join(args.sets)}; shots "
        f"{['full' if k is None else k for k in args.shots]} x "
        f"{args.seeds} seed(s); l2 grid {grid}; max_iter {args.max_iter}; {args.threads} thread(s) on both sides"
    )

    rows: list[dict[str, Any]] = []
    with torch_threads(args.threads):
        warm = True
        for name in args.sets:
            entry = DOWNSTREAM.get(name)
            metric = entry.metric
            class_weight = "balanced" if metric == "balanced_acc" else None
            X_train, y_train = load_features(feature_dirs[name], "train")
            X_val, y_val = load_features(feature_dirs[name], "validation")
            X_test, y_test = load_features(feature_dirs[name], "test")
            num_classes = int(max(y_train.max(), y_val.max(), y_test.max()) + 1)
            C.log(
                f"\n[{name}] {num_classes} classes, train/val/test {len(y_train)}/{len(y_val)}/{len(y_test)}, "
                f"{X_train.shape[1]} features, metric {metric}" + (", class_weight balanced" if class_weight else "")
            )
            if warm:  # first calls pay imports and allocator warm-up: not timed
                compare_one(
                    X_train[:50],
                    y_train[:50],
                    X_val,
                    y_val,
                    X_test,
                    y_test,
                    num_classes=num_classes,
                    metric=metric,
                    class_weight=class_weight,
                    grid=grid,
                    max_iter=5,
                    reference=False,
                )
                warm = False
            seen: set[str] = set()
            for shots in args.shots:
                for seed in range(args.seeds):
                    idx = sample_shots(y_train, shots, seed)
                    key = hashlib.sha1(idx.tobytes()).hexdigest()
                    if key in seen:  # the same subset (the full set): fitted once, as the protocol does
                        continue
                    seen.add(key)
                    if len(np.unique(y_train[idx])) < 2:
                        continue
                    r = compare_one(
                        X_train[idx],
                        y_train[idx],
                        X_val,
                        y_val,
                        X_test,
                        y_test,
                        num_classes=num_classes,
                        metric=metric,
                        class_weight=class_weight,
                        grid=grid,
                        max_iter=args.max_iter,
                        reference=not args.no_reference,
                    )
                    r.update(
                        set=name,
                        shots=shots,
                        seed=seed,
                        metric=metric,
                        feature_dim=int(X_train.shape[1]),
                        num_classes=num_classes,
                    )
                    rows.append(r)
                    C.log(
                        f"[{name}] shots {'full' if shots is None else shots:>4} seed {seed}: n {r['n_train']:>4} "
                        f"rank {r['rank']:>4} | "
                        f"ours {1e3 * r['ours_seconds']:7.1f} ms its {r['ours_iterations']} l2 {r['ours_l2']:g} test "
                        f"{_points(r['ours_test']):5.1f} | "
                        f"sklearn {1e3 * r['sklearn_seconds']:7.1f} ms its {r['sklearn_iterations']} l2 "
                        f"{r['sklearn_l2']:g} "
                        f"test {_points(r['sklearn_test']):5.1f} | x{r['sklearn_seconds'] / r['ours_seconds']:.1f}"
                    )

    ours_total = sum(r["ours_seconds"] for r in rows)
    sk_total = sum(r["sklearn_seconds"] for r in rows)
    ratio = sk_total / ours_total
    diffs = np.array([_points(r["ours_test"] - r["sklearn_test"]) for r in rows])
    diffs_top1 = np.array([_points(r["ours_top1"] - r["sklearn_top1"]) for r in rows])
    same_choice = float(np.mean([r["ours_l2"] == r["sklearn_l2"] for r in rows]))
    gaps = np.array([g for r in rows for g in r["objective_gaps"] if np.isfinite(g)])
    n_fits = len(gaps)
    capped = sum(r["sklearn_capped"] for r in rows)
    per_set = {}
    for name in args.sets:
        rs = [r for r in rows if r["set"] == name]
        if rs:
            per_set[name] = {
                "ours_seconds": sum(r["ours_seconds"] for r in rs),
                "sklearn_seconds": sum(r["sklearn_seconds"] for r in rs),
                "ratio": sum(r["sklearn_seconds"] for r in rs) / sum(r["ours_seconds"] for r in rs),
                "mean_abs_diff_points": float(
                    np.mean(np.abs([_points(r["ours_test"] - r["sklearn_test"]) for r in rs]))
                ),
            }
    per_shots = {}
    for shots in args.shots:
        rs = [r for r in rows if r["shots"] == shots]
        if rs:
            per_shots["full" if shots is None else str(shots)] = sum(r["sklearn_seconds"] for r in rs) / sum(
                r["ours_seconds"] for r in rs
            )

    C.log("\nper set (time ours / sklearn, ratio, mean |test difference| in points)")
    for name, v in per_set.items():
        C.log(
            f"  {name:<18} {v['ours_seconds']:7.2f}s / {v['sklearn_seconds']:7.2f}s  x{v['ratio']:5.1f}  "
            f"{v['mean_abs_diff_points']:.2f}"
        )
    C.log("per shot count (ratio): " + ", ".join(f"{k}: x{v:.1f}" for k, v in per_shots.items()))
    C.log(
        f"\n{len(rows)} fits of {len(grid)} strengths each: ours {ours_total:.2f}s, sklearn "
        f"LogisticRegression(lbfgs) {sk_total:.2f}s: "
        f"ratio {ratio:.1f} (target >= {TARGET_RATIO:g})"
    )
    C.log(
        f"test headline metric, ours - sklearn, in points: mean |diff| {np.mean(np.abs(diffs)):.3f}, max |diff| "
        f"{np.max(np.abs(diffs)):.2f}, mean {np.mean(diffs):+.3f} (target: mean |diff| within {TARGET_POINTS:g}); "
        "top-1: mean |diff| "
        f"{np.mean(np.abs(diffs_top1)):.3f}; same strength chosen in {100 * same_choice:.0f}% of fits"
    )
    C.log(
        f"objective reached (same float64 code, {n_fits} solves): ours lower or equal in "
        f"{100 * np.mean(gaps <= 1e-9):.0f}%, "
        f"median relative gap {np.median(gaps):+.2e}, largest gap against ours {np.max(gaps):+.2e}; sklearn stopped "
        "at max_iter "
        f"in {capped} of {n_fits} solves"
    )
    ref = {}
    if rows and "ref_test" in rows[0]:
        d_ours = np.array([_points(r["ours_test"] - r["ref_test"]) for r in rows])
        d_sk = np.array([_points(r["sklearn_test"] - r["ref_test"]) for r in rows])
        ref = {
            "ours_vs_reference_points": round(float(np.mean(np.abs(d_ours))), 3),
            "sklearn_vs_reference_points": round(float(np.mean(np.abs(d_sk))), 3),
            "ours_same_choice_as_reference": round(float(np.mean([r["ours_l2"] == r["ref_l2"] for r in rows])), 3),
            "sklearn_same_choice_as_reference": round(
                float(np.mean([r["sklearn_l2"] == r["ref_l2"] for r in rows])), 3
            ),
            "reference_converged_fraction": round(float(np.mean([r["ref_grad_max"] <= REF_TOL for r in rows])), 3),
        }
        C.log(
            f"against the reference (the same sweep solved to tol {REF_TOL:g}, untimed): mean |test difference| ours "
            f"{ref['ours_vs_reference_points']:.3f} points (max {np.max(np.abs(d_ours)):.2f}, same strength in "
            f"{100 * ref['ours_same_choice_as_reference']:.0f}%), sklearn {ref['sklearn_vs_reference_points']:.3f} "
            "points (max "
            f"{np.max(np.abs(d_sk)):.2f}, same strength in {100 * ref['sklearn_same_choice_as_reference']:.0f}%); "
            "the reference "
            f"reached its tolerance at every strength in {100 * ref['reference_converged_fraction']:.0f}% of fits"
        )
    met_speed, met_acc = ratio >= TARGET_RATIO, float(np.mean(np.abs(diffs))) <= TARGET_POINTS
    if met_speed and met_acc:
        C.log("targets met: speed ratio and accuracy difference")
    else:
        why = []
        if not met_speed:
            why.append(
                f"speed ratio {ratio:.1f} < {TARGET_RATIO:g}: see the per-shot ratios above. Fits with many training "
                "examples gain least: their row space is nearly the whole feature space, so an iteration costs the "
                "same "
                "matrix products as scikit-learn's, and what is left is fewer iterations (preconditioning, warm starts "
                "along the path) and less overhead per iteration"
            )
        if not met_acc:
            why.append(
                f"mean |test difference| {np.mean(np.abs(diffs)):.2f} > {TARGET_POINTS:g} points: the two sides stop "
                "at different "
                "points (see the objective gaps and sklearn's iteration caps) and pick strengths on small validation "
                "splits"
            )
        C.log("TARGET NOT MET: " + "; ".join(why))
    out = {
        "bench": "probe_solver",
        "ratio": round(ratio, 2),
        "target": TARGET_RATIO,
        "accuracy_diff_points": round(float(np.mean(np.abs(diffs))), 3),
        "accuracy_diff_max_points": round(float(np.max(np.abs(diffs))), 3),
        "accuracy_target_points": TARGET_POINTS,
        "baseline": "sklearn LogisticRegression(lbfgs)",
        "ours_seconds": round(ours_total, 3),
        "baseline_seconds": round(sk_total, 3),
        "fits": len(rows),
        "strengths": len(grid),
        "same_choice_fraction": round(same_choice, 3),
        "objective_ours_le_fraction": round(float(np.mean(gaps <= 1e-9)), 3),
        "objective_median_rel_gap": float(np.median(gaps)),
        "sklearn_capped_solves": int(capped),
        "solves": int(n_fits),
        "ratio_per_shots": {k: round(v, 2) for k, v in per_shots.items()},
        **ref,
        "sets": args.sets,
        "seeds": args.seeds,
        "threads": args.threads,
        "max_iter": args.max_iter,
        "encoder": str(checkpoint),
        "backbone": None if args.checkpoint else args.backbone,
        "feature_dim": int(rows[0]["feature_dim"]) if rows else None,
        "quick": bool(args.quick),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if args.json:
        C.write_json(args.json, {**out, "environment": env, "per_set": per_set, "rows": rows})
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
