"""Curation throughput: the view filter chain as a Ray Data job against a single-process loop.

The scan phase of :mod:`curation.views` (read every sample of every shard, apply the per-sample
curation steps, read the CLIP score, hash the image for de-duplication, derive the label from
the caption) is what touches every sample of a pool; it runs once per shard. This bench runs the
same scan over the same world shards two ways, in one process:

(a) **single process**: ``scan(tasks, engine="local")``, a plain loop over the shards;
(b) **Ray Data**: ``scan(tasks, engine="ray")`` on a local Ray with ``--cpus`` CPUs, one
    block per shard, exactly what a view job does under ``tbench run``.

Printed: samples, seconds, samples/s and samples/s per core for each, the ratio (b)/(a) of
throughput, and whether both produced the same table. Ray's start-up (``ray.init`` and the
first, tiny Ray Data job that starts the worker processes) is timed separately and not counted:
it is paid once per run, not per view. The global select phase (ranking, dedup clustering,
subset, noise) is timed too; it works on the compact table and is not parallelised.

    .venv/bin/python bench/curation_throughput.py                 # 4 sources at scale 0.5: ~14,000 samples
    .venv/bin/python bench/curation_throughput.py --scale 0.25 --sources laion cc12m
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import DEFAULT_CACHE, log, world_source, write_json  # puts the repository on sys.path

CHAIN = (
    ("caption_length", {"min_words": 2}),
    ("caption_language", {}),
    ("min_resolution", {"min_side": 128}),
    ("aspect_ratio", {"max_ratio": 3.0}),
    ("clip_score", {"top_fraction": 0.7}),
    ("dedup", {}),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", nargs="+", default=["laion", "cc12m", "yfcc", "wit"])
    ap.add_argument("--scale", type=float, default=0.5, help="world scale of the sources written on first use")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from curation.filters import step_names, validate_steps
    from curation.views import ViewConfig, _scan_tasks, open_sources, scan, select

    tag = f"curation-{args.scale:g}"
    root = None
    for name in args.sources:
        folder = world_source(name, None, args.cache_dir / tag, scale=args.scale)
        root = folder.parent.parent
    cfg = ViewConfig(
        source=None,
        mixture={s: 1.0 for s in args.sources},
        curation_name="bench",
        curation=CHAIN,
        size=10**9,
        label_noise=0.0,
        needs_labels=False,
        seed=0,
    )
    steps = tuple((e.name, p) for e, p in validate_steps(cfg.curation))
    tasks = _scan_tasks(cfg, open_sources(cfg, root, None), steps, None)
    log(
        f"{len(tasks)} shards of {', '.join(args.sources)} (scale {args.scale:g}); chain: "
        f"{' -> '.join(n for n, _ in CHAIN)}"
    )

    scan(tasks[:1], "local")  # imports and first-use costs, outside both timings
    t0 = time.perf_counter()
    local = scan(tasks, "local")
    local_s = time.perf_counter() - t0
    n = len(local)
    log(f"(a) single process: {n} samples in {local_s:.2f}s = {n / local_s:.0f} samples/s (1 core)")

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        scan(tasks[:1], "ray")  # starts Ray Data's worker processes
        startup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        remote = scan(tasks, "ray")
        ray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    log(
        f"(b) Ray Data on {args.cpus} CPUs: {len(remote)} samples in {ray_s:.2f}s = {len(remote) / ray_s:.0f} "
        f"samples/s, {len(remote) / ray_s / args.cpus:.0f} per core (start-up {startup_s:.1f}s, not counted)"
    )

    key = ["source", "url", "key"]
    same = local.sort_values(key).reset_index(drop=True).equals(remote.sort_values(key).reset_index(drop=True))
    t0 = time.perf_counter()
    alive, funnel, _ = select(local, cfg, steps, step_names(cfg.curation))
    select_s = time.perf_counter() - t0
    log(f"select phase on the table: {select_s:.3f}s; funnel {funnel}; kept {int(alive.sum())}")
    ratio = (len(remote) / ray_s) / (n / local_s)
    log(
        f"Ray Data / single process throughput: {ratio:.2f}x on {args.cpus} CPUs "
        f"(per core {ratio / args.cpus:.2f}x); same table: {same}"
    )
    figures = {
        "bench": "curation_throughput",
        "samples": n,
        "shards": len(tasks),
        "cpus": args.cpus,
        "local_seconds": round(local_s, 3),
        "local_samples_per_s": round(n / local_s, 1),
        "ray_seconds": round(ray_s, 3),
        "ray_samples_per_s": round(len(remote) / ray_s, 1),
        "ray_samples_per_s_per_core": round(len(remote) / ray_s / args.cpus, 1),
        "ratio_vs_single_process": round(ratio, 3),
        "ray_startup_seconds": round(startup_s, 2),
        "select_seconds": round(select_s, 3),
        "same_table": bool(same),
        "chain": [n for n, _ in CHAIN],
        "baseline": "the same scan in one process",
    }
    if args.json:
        write_json(args.json, figures)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
