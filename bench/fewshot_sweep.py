"""Few-shot sweep with the linear protocol: cached features versus re-extraction per run.

One checkpoint is evaluated on the nine world sets at shots {1, 5, 10, 20, full} x 3 seeds with
the ``linear`` protocol, two ways, in the same process:

(a) **the harness**: features are extracted once per set (:func:`downstream.features.extract_features`,
    every split), then every (shots, seed) probe reads the cache (:func:`downstream.protocols.run_linear`),
    exactly what a ``features`` job and its ``eval`` job do;
(b) **naive**: every (set, shots, seed) run loads the set, extracts its features and fits its probe
    on its own, as per-run fine-tuning scripts do (the in-process split cache is cleared before
    each run, so each one also decodes the set from disk, as a fresh script would).

Printed: the time of (a) split into its extraction pass and its probes, the time of (b), the
speed-up ``(b) / (a)``, and the sweep's cost as a multiple of one extraction pass
(``(a) / extraction``; the target is 1.3: the whole sweep should cost little more than reading
the features once). Both paths give the same scores (checked).

The checkpoint is ``--checkpoint`` (any encoder checkpoint the harness wrote), else a randomly
initialised ``--backbone`` at ``--image-size`` (timing does not depend on the weights). The world's
downstream sets are written under ``tbench-out/bench/downstream-sets`` on first use (``--world-dir``
reads an existing world).

    .venv/bin/python bench/fewshot_sweep.py                    # resnet18 at 64 px, 9 sets: ~20 min on 2 cores
    .venv/bin/python bench/fewshot_sweep.py --quick            # dtd and cassava: ~2 min
    .venv/bin/python bench/fewshot_sweep.py --sets cifar100 dtd caltech101   # ~6 min
    .venv/bin/python bench/fewshot_sweep.py --backbone test_resnet --image-size 32   # the quickstart's encoder
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import (  # puts the repository on sys.path
    DEFAULT_CACHE,
    downstream_sets,
    encoder_checkpoint,
    log,
    write_json,
)

from curation.catalogue import WORLD_SETS  # noqa: E402

SHOTS = (1, 5, 10, 20, None)
SEEDS = (0, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="an encoder checkpoint (default: a random-init --backbone)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--world-dir", type=Path, help="an existing world folder (with downstream/<set>/)")
    ap.add_argument("--scale", type=float, default=1.0, help="world scale for the sets written on first use")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    ap.add_argument(
        "--quick", action="store_true", help="the two smallest sets (dtd, cassava): about a minute on 2 cores"
    )
    ap.add_argument("--sets", nargs="+", choices=WORLD_SETS, help="a subset of the nine sets")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from downstream import sets
    from downstream.features import extract_features
    from downstream.protocols import EvalRequest, run_linear

    names = tuple(args.sets) if args.sets else ("dtd", "cassava") if args.quick else WORLD_SETS
    root = downstream_sets(names, args.world_dir, args.cache_dir, args.scale)
    ckpt = encoder_checkpoint(args.checkpoint, args.backbone, args.image_size, args.cache_dir)
    meta = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["meta"]
    runs = len(SHOTS) * len(SEEDS)
    log(
        f"checkpoint {ckpt.name}: {meta['backbone']} at {meta['image_size']} px, {meta['feature_dim']} features; "
        f"{len(names)} sets x shots {[s or 'full' for s in SHOTS]} x seeds {list(SEEDS)} = {len(names) * runs} runs; "
        f"{args.threads} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )

    work = Path(tempfile.mkdtemp(prefix="fewshot-", dir=args.cache_dir))
    try:
        # (a) the harness: one extraction pass, then every probe on the cache
        extract_s = probe_s = 0.0
        images = 0
        scores_a: dict[tuple, float] = {}
        for name in names:
            sets.clear_cache()
            t0 = time.perf_counter()
            info = extract_features(ckpt, name, root, work / "a" / name, num_threads=args.threads)
            t1 = time.perf_counter()
            res = run_linear(
                EvalRequest(
                    set_name=name,
                    data_root=root,
                    checkpoint=ckpt,
                    features_dir=work / "a" / name,
                    shots=SHOTS,
                    seeds=SEEDS,
                    num_threads=args.threads,
                )
            )
            t2 = time.perf_counter()
            extract_s += t1 - t0
            probe_s += t2 - t1
            images += sum(info["counts"].values())
            scores_a.update({(name, r.shots, r.eval_seed): r.score for r in res})
            log(
                f"  (a) {name:18s} extract {t1 - t0:6.2f}s ({sum(info['counts'].values())} images)  "
                f"{runs} probes {t2 - t1:6.2f}s"
            )
        sweep_s = extract_s + probe_s
        log(
            f"(a) harness: extraction pass {extract_s:.1f}s ({images / extract_s:.0f} images/s) + probes "
            f"{probe_s:.1f}s = {sweep_s:.1f}s"
        )

        # (b) naive: every run extracts its own features
        naive_s = 0.0
        scores_b: dict[tuple, float] = {}
        for name in names:
            t_set = time.perf_counter()
            for shots in SHOTS:
                for seed in SEEDS:
                    sets.clear_cache()
                    out = work / "b" / f"{name}-{shots}-{seed}"
                    extract_features(ckpt, name, root, out, num_threads=args.threads)
                    (r,) = run_linear(
                        EvalRequest(
                            set_name=name,
                            data_root=root,
                            checkpoint=ckpt,
                            features_dir=out,
                            shots=(shots,),
                            seeds=(seed,),
                            num_threads=args.threads,
                        )
                    )
                    scores_b[(name, shots, seed)] = r.score
                    shutil.rmtree(out, ignore_errors=True)
            dt = time.perf_counter() - t_set
            naive_s += dt
            log(f"  (b) {name:18s} {runs} runs {dt:6.2f}s")
        log(f"(b) naive: {naive_s:.1f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    same = all(np.isclose(scores_a[k], scores_b[k]) for k in scores_a)
    multiple = sweep_s / extract_s
    speedup = naive_s / sweep_s
    log(
        f"speed-up of the harness over naive: {speedup:.1f}x; sweep = {multiple:.2f} x one extraction pass "
        f"(target <= 1.3: {'met' if multiple <= 1.3 else 'NOT met'}); same scores: {same}"
    )
    if multiple > 1.3:
        log(
            f"  the probes ({probe_s:.1f}s) cost more than 30% of the extraction pass ({extract_s:.1f}s): "
            f"extraction is cheap for this encoder at {meta['image_size']} px"
        )
    figures = {
        "bench": "fewshot_sweep",
        "multiple_of_extraction": round(multiple, 3),
        "target": 1.3,
        "met": multiple <= 1.3,
        "speedup_vs_naive": round(speedup, 2),
        "baseline": "features re-extracted per run",
        "sweep_seconds": round(sweep_s, 2),
        "extraction_seconds": round(extract_s, 2),
        "probe_seconds": round(probe_s, 2),
        "naive_seconds": round(naive_s, 2),
        "sets": len(names),
        "runs": len(names) * runs,
        "images_per_pass": images,
        "backbone": meta["backbone"],
        "image_size": int(meta["image_size"]),
        "feature_dim": int(meta["feature_dim"]),
        "threads": args.threads,
        "same_scores": bool(same),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if args.json:
        write_json(args.json, figures)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
