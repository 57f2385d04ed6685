"""Loader throughput: webdataset shards through our training loader vs a folder of image files.

Measures images per second decoded and augmented to ``uint8 [3, S, S]`` batches by

- **webdataset**: :func:`pretrain.data.make_train_loader` with the ``image_label`` pipeline (what
  supervised pre-training reads: tar shards, deterministic shuffle buffer, PNG/JPEG decode,
  random resized crop + flip on the ``uint8`` tensor, batching inside the workers);
- **imagefolder**: the same images written once as files (the original PNG/JPEG bytes, not
  re-encoded) in ``<class>/<key>.<ext>`` folders, read with ``torchvision.datasets.ImageFolder``
  (PIL loader) and the standard transforms ``RandomResizedCrop(S, scale=(0.35, 1))``,
  ``RandomHorizontalFlip()``, ``PILToTensor()`` (the crop scale our ``TrainTransform`` uses),
  shuffled with a ``RandomSampler``, collated by the ``DataLoader``;
- **plain_wds** (optional, ``--variants``): the textbook webdataset pipeline on the same shards
  (``WebDataset(...).shuffle(1000).decode("pil").to_tuple(image, "cls")`` + the imagefolder's
  transforms + ``.batched``), to separate what the tar format buys from what our pipeline costs,

all through a ``torch.utils.data.DataLoader`` with the same ``--workers`` and ``--batch-size``
and the same number of images (``--images``, rounded down to whole batches), no pinned memory.
Each repeat builds fresh loaders (worker start-up included in ``total``; ``steady`` counts from
the first batch's arrival), variants interleaved so a busy machine affects them alike; the
median over ``--repeats`` is reported with the ratio webdataset / imagefolder.

``--breakdown`` adds a single-process profile of where a sample's time goes in each path
(tar parsing, decode, crop, collate vs file open, PIL decode, transforms), in microseconds per
image.

Data: the embedded world's ``imagenet`` source (32x32 PNG, ``cls``), written into
``tbench-out/bench`` on first use; ``--jpeg`` uses the synthetic img2dataset-like shards of
256x256 JPEGs instead (see ``bench/_common.py``), with ``--image-size`` 224 by default.

Run from the repository root:

    .venv/bin/python bench/loader_throughput.py                        # 32 px PNGs, ~1 min on 2 cores
    .venv/bin/python bench/loader_throughput.py --jpeg --images 2048 --workers 2 --breakdown
    .venv/bin/python bench/loader_throughput.py --jpeg --images 20000 --workers 12 --batch-size 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils.data import DataLoader, RandomSampler

from bench import _common as C
from pretrain.data import make_train_loader, read_view

VARIANTS = ("webdataset", "imagefolder", "plain_wds")
CROP_SCALE = (0.35, 1.0)  # pretrain.data.TrainTransform's default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured.",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for every variant (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--images", type=int, default=3000, help="images per measurement, whole batches (default: %(default)s)"
    )
    p.add_argument("--image-size", type=int, default=None, help="output side (default: 32, or 224 with --jpeg)")
    p.add_argument(
        "--repeats", type=int, default=2, help="measurements per variant; the median is reported (default: %(default)s)"
    )
    p.add_argument(
        "--variants",
        default="webdataset,imagefolder",
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: %(default)s)",
    )
    p.add_argument("--jpeg", action="store_true", help="read synthetic 256px JPEG shards (and a folder of JPEGs)")
    p.add_argument(
        "--jpeg-samples", type=int, default=0, help="samples in the synthetic shards (default: --images, at least 2000)"
    )
    p.add_argument("--breakdown", action="store_true", help="also profile each path's per-image stages in one process")
    p.add_argument("--breakdown-images", type=int, default=500)
    p.add_argument(
        "--breakdown-reps", type=int, default=3, help="runs per stage; the minimum is reported (default: %(default)s)"
    )
    p.add_argument("--world-dir", default=None, help="an existing world folder (sources/imagenet); default: the cache")
    p.add_argument("--world-scale", type=float, default=C.DEFAULT_WORLD_SCALE)
    p.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="where data is written (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    if args.image_size is None:
        args.image_size = 224 if args.jpeg else 32
    if args.images < args.batch_size or args.workers < 0 or args.repeats < 1:
        p.error("need --images >= --batch-size, --workers >= 0, --repeats >= 1")
    return args


# --------------------------------------------------------------------------- data


def image_folder_from_view(view: Path, cache_dir: Path) -> tuple[Path, int]:
    """``<cache>/imagefolder/<view name>/<cls:04d>/<key>.<ext>``: the view's images as files, original bytes.

    Cached: a second call with the same view reuses the files.
    """
    from bench._common import _read_samples

    view = Path(view).resolve()
    shards = read_view(view)
    out = cache_dir / "imagefolder" / view.name
    marker = out / "imagefolder.json"
    want = {"view": str(view), "num_samples": shards.num_samples}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return out, shards.num_samples
    C._rmtree(out)
    t0 = time.perf_counter()
    n = 0
    for shard in shards.shards:
        for s in _read_samples(shard):
            ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in s), None)
            if ext is None or "cls" not in s:
                continue
            d = out / f"{int(s['cls']):04d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{s['__key__']}.{ext}").write_bytes(s[ext])
            n += 1
    marker.write_text(json.dumps(want))
    C.log(f"wrote {n} image files to {out} in {time.perf_counter() - t0:.1f}s")
    return out, n


def folder_transform(size: int):
    from torchvision import transforms as T

    return T.Compose(
        [T.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor()]
    )


# --------------------------------------------------------------------------- loaders


def webdataset_loader(view: Path, args: argparse.Namespace, num_batches: int, epoch: int) -> Iterable[dict]:
    loader = make_train_loader(
        view,
        pipeline="image_label",
        batch_size=args.batch_size,
        num_batches=num_batches,
        image_size=args.image_size,
        seed=args.seed,
        num_workers=args.workers,
    )
    loader.set_epoch(epoch)
    return loader


def imagefolder_loader(folder: Path, args: argparse.Namespace, num_batches: int, epoch: int) -> Iterable:
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(folder), transform=folder_transform(args.image_size))
    gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    sampler = RandomSampler(ds, num_samples=num_batches * args.batch_size, generator=gen)
    return DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True)


def plain_wds_loader(view: Path, args: argparse.Namespace, num_batches: int, epoch: int) -> Iterable:
    import webdataset as wds

    urls = [str(p) for p in read_view(view).shards]
    # Shards split over workers when there are enough of them, else every worker reads all of them
    # (the total is cut at num_batches either way; only throughput is measured).
    split = wds.split_by_worker if len(urls) >= max(1, args.workers) else wds.single_node_only
    ds = (
        wds.WebDataset(
            urls,
            repeat=True,
            shardshuffle=False,
            nodesplitter=wds.single_node_only,
            workersplitter=split,
            empty_check=False,
        )
        .shuffle(1000)
        .decode("pil")
        .to_tuple("png;jpg;jpeg;webp", "cls")
        .map_tuple(folder_transform(args.image_size), int)
        .batched(args.batch_size, partial=False)
    )
    per_worker = -(-num_batches // max(1, args.workers))
    ds = ds.with_epoch(per_worker)
    loader = DataLoader(ds, batch_size=None, num_workers=args.workers)
    return _take(loader, num_batches)


class _take:
    def __init__(self, it: Iterable, n: int):
        self.it, self.n = it, n

    def __iter__(self):
        for i, b in enumerate(self.it):
            if i >= self.n:
                break
            yield b


def _images_in(batch: Any) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch[0]


def measure(make: Callable[[], Iterable], expect: int) -> dict[str, float]:
    """Wall-clock of one pass: ``total`` from creating the loader, ``steady`` from the first batch's arrival."""
    t0 = time.perf_counter()
    loader = make()
    t_first = None
    n = n_first = 0
    shape = None
    for batch in loader:
        images = _images_in(batch)
        if t_first is None:
            t_first, n_first, shape = time.perf_counter(), images.shape[0], (tuple(images.shape), images.dtype)
        n += images.shape[0]
    t1 = time.perf_counter()
    inner = getattr(loader, "loader", None)  # our TrainLoader: stop its persistent workers now
    it = getattr(inner, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    del loader
    if n != expect:
        raise RuntimeError(f"expected {expect} images, got {n}")
    steady_n = n - n_first
    return {
        "images": n,
        "total_s": t1 - t0,
        "first_batch_s": t_first - t0,
        "total_images_per_s": n / (t1 - t0),
        "steady_images_per_s": steady_n / (t1 - t_first) if steady_n and t1 > t_first else float("nan"),
        "batch_shape": list(shape[0]),
        "dtype": str(shape[1]).replace("torch.", ""),
    }


# --------------------------------------------------------------------------- breakdown (single process)


def _per_image(fn: Callable[[], int], reps: int) -> float:
    """Microseconds per image of ``fn`` (which returns how many images it handled): the minimum over
    ``reps`` runs, the usual estimate of a cost on a machine where other work adds noise."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, 1e6 * (time.perf_counter() - t0) / max(n, 1))
    return best


def breakdown(view: Path, folder: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Microseconds per image of each stage, in this process (no workers, one thread), on ``--breakdown-images`` images.

    Each stage is timed alone on inputs prepared by the previous one (minimum of
    ``--breakdown-reps`` runs); ``whole loader`` rows run the complete loader with 0 workers.
    """
    import webdataset as wds
    from PIL import Image
    from torch.utils.data import default_collate
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode_image

    from pretrain.data import (
        PIPELINES,
        DetShuffle,
        FieldFilter,
        ShardStream,
        SharedEpoch,
        SkipCounter,
        TrainTransform,
        collate,
        decode_image,
        image_bytes,
    )

    m, reps, bs = args.breakdown_images, args.breakdown_reps, args.batch_size
    nb = max(1, m // bs)
    shards = [str(p) for p in read_view(view).shards]
    counter = SkipCounter()

    def tar_samples() -> list[dict]:
        out: list[dict] = []
        while len(out) < m:
            for s in wds.tarfile_to_samples(handler=counter, select_files=FieldFilter(("cls",)))(
                [{"url": u} for u in shards]
            ):
                out.append(s)
                if len(out) >= m:
                    break
        return out

    def stages_before_decode() -> int:
        # The loader's own stages up to (not including) Decode, with the shuffle buffer make_train_loader
        # sizes for the whole-loader row: what reading a sample costs before any pixel is touched.
        bufsize = max(1, min(1000, nb * bs // 4))
        epoch = SharedEpoch(1)
        pipe = wds.DataPipeline(
            ShardStream(shards, seed=args.seed, epoch=epoch, rank=0, world_size=1, split_shards=True),
            wds.tarfile_to_samples(handler=counter, select_files=FieldFilter(("cls",))),
            DetShuffle(bufsize, min(bufsize, 100), seed=args.seed, epoch=epoch, rank=0),
        )
        n = 0
        for _ in pipe:
            n += 1
            if n >= nb * bs:
                break
        return n

    def full_ours() -> int:
        ld = make_train_loader(
            view,
            pipeline="image_label",
            batch_size=bs,
            num_batches=nb,
            image_size=args.image_size,
            seed=args.seed,
            num_workers=0,
        )
        ld.set_epoch(1)
        return sum(b["image"].shape[0] for b in ld)

    samples = tar_samples()
    images = [decode_image(image_bytes(s)) for s in samples]
    gen = torch.Generator().manual_seed(0)
    tf = TrainTransform(args.image_size)
    fn = PIPELINES.get("image_label").make(args.image_size)
    outs = [fn(s, gen) for s in samples]

    def batches(items: list, coll: Callable) -> int:
        n = 0
        for i in range(0, len(items) - bs + 1, bs):
            coll(items[i : i + bs])
            n += bs
        return n

    ours = {
        "tar: tarfile_to_samples (read + group members)": _per_image(lambda: len(tar_samples()), reps),
        "ShardStream + tar + DetShuffle (stages before Decode)": _per_image(stages_before_decode, reps),
        "decode_image (PIL -> numpy -> copy -> tensor)": _per_image(
            lambda: len([decode_image(image_bytes(s)) for s in samples]), reps
        ),
        "(alternative) torchvision.io.decode_image": _per_image(
            lambda: len(
                [
                    tv_decode_image(
                        torch.frombuffer(bytearray(image_bytes(s)), dtype=torch.uint8), mode=ImageReadMode.RGB
                    )
                    for s in samples
                ]
            ),
            reps,
        ),
        "TrainTransform (crop box + resized_crop + flip)": _per_image(lambda: len([tf(x, gen) for x in images]), reps),
        "ImageLabel sample fn (decode + transform + checks)": _per_image(
            lambda: len([fn(s, gen) for s in samples]), reps
        ),
        "collate": _per_image(lambda: batches(outs, collate), reps),
        "whole loader, 0 workers": _per_image(full_ours, reps),
    }

    folder_ds = ImageFolder(str(folder))
    paths = [p for p, _ in folder_ds.samples[:m]]

    def pil_load(p: str) -> Any:
        with open(p, "rb") as f:
            return Image.open(f).convert("RGB")

    pils = [pil_load(p) for p in paths]
    t = folder_transform(args.image_size)
    tensors = [(t(x), 0) for x in pils]

    def full_folder() -> int:
        ds = ImageFolder(str(folder), transform=t)
        ld = DataLoader(
            ds, batch_size=bs, sampler=RandomSampler(ds, num_samples=nb * bs), num_workers=0, drop_last=True
        )
        return sum(b[0].shape[0] for b in ld)

    theirs = {
        "file open + read": _per_image(lambda: len([Path(p).read_bytes() for p in paths]), reps),
        "PIL loader (open + decode + convert)": _per_image(lambda: len([pil_load(p) for p in paths]), reps),
        "transforms (RandomResizedCrop + flip + PILToTensor)": _per_image(lambda: len([t(x) for x in pils]), reps),
        "collate": _per_image(lambda: batches(tensors, default_collate), reps),
        "whole loader, 0 workers": _per_image(full_folder, reps),
    }
    return {"webdataset": ours, "imagefolder": theirs}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cache = Path(args.cache_dir)
    if args.jpeg:
        view = C.write_synthetic_shards(args.jpeg_samples or max(args.images, 2000), cache, args.world_dir)
    else:
        view = C.source_view("imagenet", args.world_dir, cache, args.world_scale)
    folder, n_files = image_folder_from_view(view, cache)
    num_batches = args.images // args.batch_size
    images = num_batches * args.batch_size
    n_shards = len(read_view(view).shards)
    env = C.environment(torch.device("cpu"))
    C.log(f"device: {env['device']}")
    C.log(
        f"torch {env['torch']}, torchvision {env['torchvision']}, webdataset {env.get('webdataset')}, pillow "
        f"{env.get('pillow')}, "
        f"python {env['python']}"
    )
    kind = "synthetic 256px JPEG" if args.jpeg else "world 32px PNG"
    C.log(f"{kind}: {view} ({n_files} images in {n_shards} shard(s)), folder {folder}")
    C.log(
        f"{images} images per pass ({num_batches} batches of {args.batch_size}) -> uint8 {args.image_size}px, "
        f"{args.workers} workers, {args.repeats} repeat(s), variants {', '.join(args.variants)}"
    )
    if n_shards < max(1, args.workers):
        C.log(
            f"note: {n_shards} shard(s) for {args.workers} workers: our loader makes every worker read all shards "
            "and keep every n-th sample (SampleSplit); more shards than workers is the intended layout"
        )

    makers = {
        "webdataset": lambda e: webdataset_loader(view, args, num_batches, e),
        "imagefolder": lambda e: imagefolder_loader(folder, args, num_batches, e),
        "plain_wds": lambda e: plain_wds_loader(view, args, num_batches, e),
    }
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    for r in range(args.repeats):
        for v in args.variants:
            res = measure(lambda v=v, r=r: makers[v](r + 1), images)
            runs[v].append(res)
            C.log(
                f"  repeat {r + 1} {v:<12} {res['steady_images_per_s']:9.1f} img/s steady, "
                f"{res['total_images_per_s']:9.1f} img/s "
                f"total ({res['total_s']:.2f}s, first batch {res['first_batch_s']:.2f}s)"
            )
    summary = {
        v: {
            "steady_images_per_s": statistics.median(x["steady_images_per_s"] for x in rs),
            "total_images_per_s": statistics.median(x["total_images_per_s"] for x in rs),
            "batch_shape": rs[0]["batch_shape"],
            "dtype": rs[0]["dtype"],
        }
        for v, rs in runs.items()
    }
    C.log(f"\nsummary (median of {args.repeats}; images/s)")
    C.log(f"  {'variant':<12} {'steady':>10} {'total':>10}   batch")
    for v, s in summary.items():
        C.log(
            f"  {v:<12} {s['steady_images_per_s']:>10.1f} {s['total_images_per_s']:>10.1f}   {s['batch_shape']} "
            f"{s['dtype']}"
        )
    ratios = {}
    if "webdataset" in summary and "imagefolder" in summary:
        for k in ("steady", "total"):
            ratios[k] = summary["webdataset"][f"{k}_images_per_s"] / summary["imagefolder"][f"{k}_images_per_s"]
        C.log(f"  webdataset / imagefolder: {ratios['steady']:.2f} steady, {ratios['total']:.2f} total (target >= 3)")
    if "plain_wds" in summary and "imagefolder" in summary:
        C.log(
            "  plain_wds / imagefolder: "
            f"{summary['plain_wds']['steady_images_per_s'] / summary['imagefolder']['steady_images_per_s']:.2f} steady"
        )

    bd = None
    if args.breakdown:
        torch.set_num_threads(1)  # a loader worker runs with one thread
        bd = breakdown(view, folder, args)
        C.log(
            f"\nbreakdown: microseconds per image, one process, one thread, {args.breakdown_images} images, "
            f"min of {args.breakdown_reps} runs"
        )
        for side, stages in bd.items():
            C.log(f"  {side}")
            for name, us in stages.items():
                C.log(f"    {name:<52} {us:9.1f}")
    out = {
        "benchmark": "loader_throughput",
        "environment": env,
        "args": vars(args),
        "view": str(view),
        "folder": str(folder),
        "images": images,
        "runs": runs,
        "summary": summary,
        "ratio_webdataset_over_imagefolder": ratios,
        "synthetic": C.synthetic_info(view) if args.jpeg else None,
        "breakdown": bd,
    }
    if args.json:
        C.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
