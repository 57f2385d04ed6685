"""Near-duplicate detection (:mod:`curation.dedup`) on planted duplicates: recall, false removals, speed.

Originals: every sample of the embedded world's ``--sources`` (default laion, cc12m, shutterstock;
32x32 PNGs) at ``--scale`` (1.0: 14000 originals), written once into
``<cache-dir>/dedup/world/sources`` (or read from ``--world-dir``). A ``--fraction`` of them
(default 15%) get one planted copy each, the transformations taking turns:

- ``flip``: left-right mirror;  ``jpeg``: JPEG re-encode at quality U{60..90};
- ``crop``: 5-10% of the width and of the height cut (split at random between opposite sides) and
  resized back;  ``flip+jpeg``, ``crop+jpeg``: both.

Originals and copies are shuffled together, hashed (:func:`curation.dedup.hash_images`, timed:
hashes/s) and clustered by :func:`curation.dedup.near_duplicates` at every threshold of
``--thresholds``. Recall: planted pairs that end in one cluster. False removal: removed samples
that belong to no planted pair, over the originals; excess removal (stricter): all removals beyond
one per found pair, over the originals. The same figures for the textbook pHash (8x8 lowest DCT
frequencies of the same 32x32 grayscale, thresholded at their median, mirror by hashing the flipped
image) show why the module hashes differently.

Speed: the banded (multi-index) search against a brute-force all-pairs check of the same hashes at
``--threshold`` (same distance definition; the clusters must agree), both timed in this run; then
the banded search alone on ``--scale-test`` synthetic hash sets (every byte copied from a random
world hash, so bit statistics within bytes stay the world's), with the brute-force time
extrapolated from its measured cost per pair. ``--crop-sweep``: the share of crop-only copies within ``--threshold`` of
their original, per crop fraction. ``--jpeg-images N``: hashes/s on N synthetic 256 px JPEGs (the
loader bench's img2dataset-like shards).

The embedding method (``dedup`` with ``model`` and ``cosine``, :func:`curation.dedup.embed_images`
and :func:`curation.dedup.embedding_duplicates`) on the same shuffled set: the encoder of
``--checkpoint PATH`` (a harness encoder checkpoint: one the harness pre-trained, or an existing
model's imported ``checkpoints/model.pt``), by default a random-init ``test_resnet`` at 32 px
(seeded; no trained checkpoint ships, and the output says so). Embeddings are timed (images/s),
the all-pairs cosine similarities above the lowest of ``--cosines`` computed once, and recall per
transformation, false and excess removals scored at every cosine of the sweep (the clusters at
``--cosine`` checked against :func:`curation.dedup.embedding_duplicates`). The crop sweep also
gives the share of crop copies at cosine ``>= --cosine``. ``--no-embedding`` skips it.

    .venv/bin/python bench/dedup_quality.py                    # ~1 min on 2 cores (+25 s writing sources once)
    .venv/bin/python bench/dedup_quality.py --scale 0.25 --scale-test 100000
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.fft import dctn  # noqa: E402
from scipy.sparse import coo_matrix  # noqa: E402
from scipy.sparse.csgraph import connected_components  # noqa: E402

from bench import _common as C  # noqa: E402
from curation import dedup as D  # noqa: E402

TARGET_RECALL = 0.95
TARGET_FALSE_REMOVAL = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured.",
    )
    p.add_argument(
        "--sources", default="laion,cc12m,shutterstock", help="comma-separated world sources (default: %(default)s)"
    )
    p.add_argument("--scale", type=float, default=1.0, help="world scale of the sources (default: %(default)s)")
    p.add_argument(
        "--world-dir", default=None, help="an existing world folder (sources/<name>/) instead of writing the sources"
    )
    p.add_argument(
        "--cache-dir", default=str(C.DEFAULT_CACHE), help="where the sources are written (default: %(default)s)"
    )
    p.add_argument(
        "--fraction", type=float, default=0.15, help="share of originals given a planted copy (default: %(default)s)"
    )
    p.add_argument(
        "--transforms", default=",".join(D.TRANSFORMS), help="planted transformations, in turn (default: %(default)s)"
    )
    p.add_argument(
        "--threshold",
        type=int,
        default=D.DEFAULT_THRESHOLD,
        help="threshold of the headline figures (default: %(default)s)",
    )
    p.add_argument(
        "--thresholds", default="0-10", help="threshold sweep, 'a-b' or comma-separated (default: %(default)s)"
    )
    p.add_argument(
        "--crop-sweep", default="0.01,0.02,0.03,0.05,0.1", help="crop fractions for the crop sweep ('' to skip)"
    )
    p.add_argument(
        "--scale-test", default="100000,1000000", help="synthetic hash-set sizes for the search alone ('' to skip)"
    )
    p.add_argument(
        "--brute-max", type=int, default=40000, help="largest set checked by brute force (default: %(default)s)"
    )
    p.add_argument(
        "--jpeg-images", type=int, default=0, help="also time hashing N synthetic 256px JPEGs (default: off)"
    )
    p.add_argument("--no-embedding", action="store_true", help="measure the hash method only")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="harness encoder checkpoint of the embedding method (default: a random-init test_resnet, 32 px)",
    )
    p.add_argument(
        "--cosine", type=float, default=D.DEFAULT_COSINE, help="cosine of the headline figures (default: %(default)s)"
    )
    p.add_argument(
        "--cosines",
        default="0.9,0.95,0.98,0.99,0.995,0.998,0.999,0.9995,0.9998,0.9999",
        help="cosine sweep, comma-separated (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    args.transforms = [s.strip() for s in args.transforms.split(",") if s.strip()]
    if "-" in args.thresholds:
        a, b = args.thresholds.split("-")
        args.thresholds = list(range(int(a), int(b) + 1))
    else:
        args.thresholds = [int(x) for x in args.thresholds.split(",") if x.strip()]
    args.crop_sweep = [float(x) for x in args.crop_sweep.split(",") if x.strip()]
    args.scale_test = [int(float(x)) for x in args.scale_test.split(",") if x.strip()]
    args.cosines = sorted({float(x) for x in args.cosines.split(",") if x.strip()} | {args.cosine})
    if not all(0 < c <= 1 for c in args.cosines):
        p.error(f"--cosine/--cosines must lie in (0, 1], got {args.cosines}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        p.error(
            f"--checkpoint {args.checkpoint}: no such file (give a harness encoder checkpoint, e.g. "
            "<workdir>/pretrain/<key>/checkpoints/last.pt)"
        )
    if not 0 < args.fraction <= 1 or not args.sources or not args.transforms:
        p.error("--fraction must be in (0, 1]; --sources and --transforms must not be empty")
    return args


def load_originals(args: argparse.Namespace) -> list[bytes]:
    images: list[bytes] = []
    for name in args.sources:
        src = C.world_source(name, args.world_dir, Path(args.cache_dir) / "dedup", args.scale, args.seed)
        n0 = len(images)
        for shard in sorted(src.glob("*.tar")):
            images.extend(s["png"] for s in C._read_samples(shard) if "png" in s)
        C.log(f"source {name}: {len(images) - n0} images from {src}")
    return images


def brute_force(hashes: np.ndarray, threshold: int, rows: int = 256) -> tuple[np.ndarray, int]:
    """Cluster ids (smallest member index) of all-pairs near-duplicates; and the pairs compared."""
    h, m = hashes[:, 0], hashes[:, 1]
    n = len(h)
    src, dst = [], []
    for i0 in range(0, n, rows):
        hi, mi = h[i0 : i0 + rows, None], m[i0 : i0 + rows, None]
        d = np.minimum(np.minimum(D.popcount(hi ^ h[None]), D.popcount(hi ^ m[None])), D.popcount(mi ^ h[None]))
        a, b = np.nonzero(d <= threshold)
        src.append(a + i0)
        dst.append(b)
    r, c = np.concatenate(src), np.concatenate(dst)
    comp = connected_components(coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n)), directed=False)[1]
    first = np.full(comp.max() + 1, n)
    np.minimum.at(first, comp, np.arange(n))
    return first[comp], n * n


def textbook_phash(images: list[bytes]) -> np.ndarray:
    """[n, 2]: the classic pHash (8x8 lowest DCT frequencies > their median) of each image and of its mirror."""
    g = np.stack([D.decode_gray(b, D.HASH_SIZE) for b in images]).astype(np.float64)
    w = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)
    out = []
    for x in (g, g[:, :, ::-1]):
        c = dctn(x, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(x), 64)
        out.append(((c > np.median(c, axis=1, keepdims=True)).astype(np.uint64) * w).sum(axis=1, dtype=np.uint64))
    return np.stack(out, axis=1)


def sweep(
    hashes: np.ndarray, twin: np.ndarray, kind: np.ndarray, kinds: list[str], thresholds: list[int]
) -> list[dict]:
    rows = []
    for t in thresholds:
        t0 = time.perf_counter()
        res = D.near_duplicates(hashes, t)
        dt = time.perf_counter() - t0
        s = D.score_planted(res, twin, kind, kinds)
        non_crop = [v for k, v in s["recall_per_transform"].items() if "crop" not in k and v is not None]
        rows.append(
            {
                "threshold": t,
                **s,
                "recall_without_crops": float(np.mean(non_crop)) if non_crop else None,
                "clusters": res.num_clusters,
                "pairs_checked": res.pairs_checked,
                "search_s": dt,
            }
        )
    return rows


def best_under(rows: list[dict], key: str, limit: float) -> dict | None:
    """The sweep row with the best ``key`` among those with excess removal below ``limit`` (key figures only)."""
    ok = [r for r in rows if r["excess_removal"] < limit and r[key] is not None]
    if not ok:
        return None
    r = max(ok, key=lambda r: (r[key], -r["threshold"]))
    return {
        k: r[k]
        for k in (
            "threshold",
            "recall",
            "recall_without_crops",
            "recall_per_transform",
            "false_removal",
            "excess_removal",
        )
    }


def synthetic_hashes(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n hashes whose every byte is copied from a random world hash (and their mirrors).

    Bit statistics within a byte stay the world's; the hashes are independent (almost none are
    near-duplicates). On the planted set itself, such hashes draw somewhat fewer candidates than
    the real ones (reported as ``candidates_real_over_synthetic``): the search cost is a little optimistic.
    """
    h = np.zeros(n, np.uint64)
    for s in range(0, 64, 8):
        h |= base[rng.integers(0, len(base), n), 0] & np.uint64(0xFF << s)
    return np.stack([h, h ^ np.uint64(D.MIRROR_MASK)], axis=1)


def random_encoder(cache_dir: Path, seed: int) -> Path:
    """A random-init test_resnet at 32 px (torch seed ``seed``), written once under ``cache_dir``."""
    import torch

    from pretrain.models import build_encoder, encoder_meta, save_encoder

    path = cache_dir / "dedup" / f"random_test_resnet_32_seed{seed}.pt"
    if not path.is_file():
        torch.manual_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        enc = build_encoder("test_resnet", 32)
        save_encoder(path, enc, encoder_meta(enc, "test_resnet", 32, method="none"))
    return path


def describe_encoder(path: Path, default: bool, seed: int) -> dict[str, Any]:
    """What the embedding method ran: the checkpoint and its meta (method, backbone, size, samples seen)."""
    import torch

    meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["meta"]
    out = {
        "checkpoint": str(path),
        **{k: meta.get(k) for k in ("method", "backbone", "image_size", "samples_seen", "view_size", "pretrain_key")},
    }
    if default:
        out["note"] = (
            f"random-init test_resnet (torch seed {seed}, 32 px): no trained checkpoint ships; "
            "pass --checkpoint PATH for a trained encoder"
        )
    return out


def cosine_pairs(emb: np.ndarray, lowest: float, rows: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of every pair i <= j of unit embeddings with cosine >= ``lowest``, computed once."""
    src, dst, sims = [], [], []
    for a in range(0, len(emb), rows):
        sim = emb[a : a + rows] @ emb[a:].T
        i, j = np.nonzero(sim >= lowest - 1e-6)
        src.append(i + a)
        dst.append(j + a)
        sims.append(sim[i, j])
    return np.concatenate(src), np.concatenate(dst), np.concatenate(sims)


def cluster_at(pairs: tuple[np.ndarray, np.ndarray, np.ndarray], cosine: float, n: int) -> D.DedupResult:
    """:func:`curation.dedup.embedding_duplicates`'s result at ``cosine`` from precomputed pairs."""
    i, j, sim = pairs
    keep = sim >= cosine - 1e-6
    comp = connected_components(
        coo_matrix((np.ones(int(keep.sum()), np.int8), (i[keep], j[keep])), shape=(n, n)), directed=False
    )[1]
    return D._keep_one(comp, np.arange(n), n * (n + 1) // 2)


def embedding_method(
    args: argparse.Namespace,
    items: list[bytes],
    twin: np.ndarray,
    kind: np.ndarray,
    originals: list[bytes],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The embedding method's figures: images/s, a cosine sweep, the headline at ``--cosine``, crops."""
    path = Path(args.checkpoint) if args.checkpoint else random_encoder(Path(args.cache_dir), args.seed)
    encoder = describe_encoder(path, args.checkpoint is None, args.seed)
    t0 = time.perf_counter()
    emb = D.embed_images(items, path)
    embed_s = time.perf_counter() - t0
    C.log(
        f"\nembedded {len(items)} images in {embed_s:.1f}s: {len(items) / embed_s:.0f} images/s "
        f"({encoder.get('note') or path}; dim {emb.shape[1]})"
    )
    t0 = time.perf_counter()
    pairs = cosine_pairs(emb, min(args.cosines))
    rows = []
    for c in args.cosines:
        s = D.score_planted(cluster_at(pairs, c, len(items)), twin, kind, args.transforms)
        rows.append(
            {
                "cosine": c,
                **{k: s[k] for k in ("recall", "recall_per_transform", "false_removal", "excess_removal", "removed")},
            }
        )
    search_s = time.perf_counter() - t0
    C.log(
        f"{'cos':>7} {'recall':>7} " + " ".join(f"{k:>9}" for k in args.transforms) + f" {'false_rm':>8} {'excess':>7}"
    )
    for r in rows:
        C.log(
            f"{r['cosine']:7.4f} {r['recall']:7.3f} "
            + " ".join(f"{r['recall_per_transform'][k]:9.3f}" for k in args.transforms)
            + f" {r['false_removal']:8.4f} {r['excess_removal']:7.4f}"
        )
    agree = bool(
        np.array_equal(
            D.embedding_duplicates(emb, args.cosine).cluster, cluster_at(pairs, args.cosine, len(items)).cluster
        )
    )
    if not agree:
        raise SystemExit("the cosine sweep's clusters disagree with curation.dedup.embedding_duplicates")
    head = next(r for r in rows if r["cosine"] == args.cosine)
    ok = [r for r in rows if r["excess_removal"] < TARGET_FALSE_REMOVAL]
    best = max(ok, key=lambda r: (r["recall"], r["cosine"])) if ok else None
    crops = []
    if args.crop_sweep:
        idx = rng.choice(len(originals), min(1000, len(originals)), replace=False)
        base = D.embed_images([originals[i] for i in idx], path)
        for f in args.crop_sweep:
            cp = D.embed_images([D.transform_image(originals[i], "crop", rng, crop=(f, f)) for i in idx], path)
            cos = (cp * base).sum(axis=1)
            crops.append(
                {
                    "crop": f,
                    "within_cosine": float((cos >= args.cosine - 1e-6).mean()),
                    "median_cosine": float(np.median(cos)),
                }
            )
        C.log(
            "embedding crop sweep (share of crop copies at cosine >= {}): {}".format(
                args.cosine,
                ", ".join(
                    f"{c['crop']:.0%}: {c['within_cosine']:.3f} (median {c['median_cosine']:.4f})" for c in crops
                ),
            )
        )
    return {
        "encoder": encoder,
        "embed_per_s": len(items) / embed_s,
        "dim": int(emb.shape[1]),
        "cosine": args.cosine,
        **{k: head[k] for k in ("recall", "recall_per_transform", "false_removal", "excess_removal")},
        "best_recall_excess_below_1pct": best,
        "sweep_s": search_s,
        "clusters_agree": agree,
        "crop_sweep": crops,
        "sweep": rows,
    }


def methods_summary(args: argparse.Namespace, head: dict, embedding: dict | None) -> dict[str, Any]:
    """Both methods side by side: recall per perturbation and removals at their headline settings."""
    keys = ("recall", "recall_per_transform", "false_removal", "excess_removal")
    out = {"hash": {"threshold": args.threshold, **{k: head[k] for k in keys}}}
    if embedding:
        out["embedding"] = {
            "cosine": args.cosine,
            **{k: embedding[k] for k in keys},
            "encoder": embedding["encoder"].get("note") or embedding["encoder"]["checkpoint"],
        }
    for name, m in out.items():
        C.log(
            f"{name:>9}: recall "
            + ", ".join(f"{k} {v:.3f}" for k, v in m["recall_per_transform"].items())
            + f"; false removal {m['false_removal']:.4f}, excess {m['excess_removal']:.4f}"
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    originals = load_originals(args)
    t0 = time.perf_counter()
    items, twin, kind = D.plant_duplicates(originals, args.fraction, args.transforms, seed=args.seed)
    C.log(
        f"{len(originals)} originals + {len(items) - len(originals)} planted copies ({', '.join(args.transforms)}) "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    t0 = time.perf_counter()
    hashes = D.hash_images(items)
    hash_s = time.perf_counter() - t0
    C.log(f"hashed {len(items)} images in {hash_s:.2f}s: {len(items) / hash_s:.0f} hashes/s (decode + DCT, 1 process)")

    rows = sweep(hashes, twin, kind, args.transforms, args.thresholds)
    C.log(
        f"\n{'t':>3} {'recall':>7} {'no-crop':>7} "
        + " ".join(f"{k:>9}" for k in args.transforms)
        + f" {'false_rm':>8} {'excess':>7} {'checked':>10} {'search_s':>8}"
    )
    for r in rows:
        per = " ".join(f"{r['recall_per_transform'][k]:9.3f}" for k in args.transforms)
        C.log(
            f"{r['threshold']:3d} {r['recall']:7.3f} {r['recall_without_crops']:7.3f} {per} "
            f"{r['false_removal']:8.4f} {r['excess_removal']:7.4f} {r['pairs_checked']:10d} {r['search_s']:8.3f}"
        )
    head = (
        next((r for r in rows if r["threshold"] == args.threshold), None)
        or sweep(hashes, twin, kind, args.transforms, [args.threshold])[0]
    )

    textbook = sweep(textbook_phash(items), twin, kind, args.transforms, args.thresholds)
    tb = {
        "best_recall_excess_below_1pct": best_under(textbook, "recall", 0.01),
        "best_recall_without_crops_excess_below_1pct": best_under(textbook, "recall_without_crops", 0.01),
    }
    for name, r in tb.items():
        if r:
            C.log(
                f"textbook pHash, {name}: t={r['threshold']} recall {r['recall']:.3f} (no crops "
                f"{r['recall_without_crops']:.3f}), "
                f"{r['recall_per_transform']}, excess removal {r['excess_removal']:.4f}"
            )

    speed: dict[str, Any] = {}
    if len(hashes) <= args.brute_max:
        t0 = time.perf_counter()
        banded = D.near_duplicates(hashes, args.threshold)
        banded_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        brute_cluster, brute_pairs = brute_force(hashes, args.threshold)
        brute_s = time.perf_counter() - t0
        agree = bool(np.array_equal(brute_cluster, banded.cluster))
        speed = {
            "n": len(hashes),
            "banded_s": banded_s,
            "brute_force_s": brute_s,
            "ratio": brute_s / banded_s,
            "banded_pairs_checked": banded.pairs_checked,
            "brute_force_pairs": brute_pairs,
            "clusters_agree": agree,
            "brute_ns_per_pair": brute_s / brute_pairs * 1e9,
        }
        C.log(
            f"\nsearch at t={args.threshold} on {len(hashes)} hashes: banded {banded_s:.3f}s "
            f"({banded.pairs_checked} candidates) vs brute force {brute_s:.2f}s ({brute_pairs} pairs x 3 distances): "
            f"{brute_s / banded_s:.0f}x; clusters agree: {agree}"
        )
        if not agree:
            raise SystemExit("banded search and brute force disagree")
    scale = []
    if args.scale_test:  # calibration: candidates drawn by real vs synthetic hashes of the same size
        syn = synthetic_hashes(hashes, len(hashes), rng)
        speed["candidates_real_over_synthetic"] = D.near_duplicates(hashes, args.threshold).pairs_checked / max(
            1, D.near_duplicates(syn, args.threshold).pairs_checked
        )
    for n in args.scale_test:
        syn = synthetic_hashes(hashes, n, rng)
        t0 = time.perf_counter()
        res = D.near_duplicates(syn, args.threshold)
        dt = time.perf_counter() - t0
        est = speed.get("brute_ns_per_pair", float("nan")) * n * n / 1e9
        scale.append(
            {
                "n": n,
                "plan": D._plan(n, n, args.threshold),
                "banded_s": dt,
                "pairs_checked": res.pairs_checked,
                "clusters": res.num_clusters,
                "brute_force_s_extrapolated": est,
                "ratio_extrapolated": est / dt,
            }
        )
        C.log(
            f"banded search on {n} synthetic hashes: {dt:.2f}s, {res.pairs_checked} candidates "
            f"({res.pairs_checked / (n * n):.2e} of all pairs); brute force ~{est:.0f}s (extrapolated)"
        )

    crops = []
    if args.crop_sweep:
        idx = rng.choice(len(originals), min(1000, len(originals)), replace=False)
        base = D.hash_images([originals[i] for i in idx])
        for f in args.crop_sweep:
            cp = D.hash_images([D.transform_image(originals[i], "crop", rng, crop=(f, f)) for i in idx])
            d = np.minimum(D.popcount(cp[:, 0] ^ base[:, 0]), D.popcount(cp[:, 0] ^ base[:, 1]))
            crops.append(
                {
                    "crop": f,
                    "within_threshold": float((d <= args.threshold).mean()),
                    "median_distance": float(np.median(d)),
                }
            )
        C.log(
            "crop sweep (share of crop copies within t={}): {}".format(
                args.threshold,
                ", ".join(
                    f"{c['crop']:.0%}: {c['within_threshold']:.3f} (median d {c['median_distance']:.0f})" for c in crops
                ),
            )
        )

    jpeg = None
    if args.jpeg_images:
        view = C.write_synthetic_shards(args.jpeg_images, Path(args.cache_dir))
        jpgs = [s["jpg"] for shard in sorted((view / "shards").glob("*.tar")) for s in C._read_samples(shard)]
        t0 = time.perf_counter()
        D.hash_images(jpgs)
        dt = time.perf_counter() - t0
        jpeg = {"images": len(jpgs), "hashes_per_s": len(jpgs) / dt, "size": Image.open(io.BytesIO(jpgs[0])).size[0]}
        C.log(f"hashed {len(jpgs)} synthetic {jpeg['size']}px JPEGs: {jpeg['hashes_per_s']:.0f} hashes/s")

    embedding = None if args.no_embedding else embedding_method(args, items, twin, kind, originals, rng)

    meets = head["recall"] >= TARGET_RECALL and head["false_removal"] < TARGET_FALSE_REMOVAL
    meets_nc = head["recall_without_crops"] >= TARGET_RECALL and head["false_removal"] < TARGET_FALSE_REMOVAL
    C.log(
        f"\nat t={args.threshold}: recall {head['recall']:.3f} (without crops {head['recall_without_crops']:.3f}), "
        f"false removal {head['false_removal']:.4f}, excess removal {head['excess_removal']:.4f}; "
        f"requirement (recall >= {TARGET_RECALL}, false removal < {TARGET_FALSE_REMOVAL}) met: {meets}; "
        f"without crops: {meets_nc}"
    )
    out = {
        "bench": "dedup_quality",
        "sources": args.sources,
        "scale": args.scale,
        "originals": len(originals),
        "planted": head["planted"],
        "threshold": args.threshold,
        "recall": head["recall"],
        "recall_without_crops": head["recall_without_crops"],
        "recall_per_transform": head["recall_per_transform"],
        "false_removal": head["false_removal"],
        "excess_removal": head["excess_removal"],
        "meets_requirement": meets,
        "meets_requirement_without_crops": meets_nc,
        "hashes_per_s": len(items) / hash_s,
        "search": speed,
        "scale_test": scale,
        "crop_sweep": crops,
        "jpeg_hashing": jpeg,
        "sweep": rows,
        "textbook_phash": tb,
        "embedding": embedding,
        "methods": methods_summary(args, head, embedding),
    }
    if args.json:
        C.write_json(args.json, out)
    last = {k: v for k, v in out.items() if k not in ("sweep",)}
    if embedding:
        last["embedding"] = {k: v for k, v in embedding.items() if k != "sweep"}
    print(json.dumps(last), flush=True)
    return out


if __name__ == "__main__":
    main()
