"""Pre-training throughput per method: real webdataset shards vs the same batches already in memory.

For each method (``supervised``, ``clip``, ``simclr``) the bench builds the model, AdamW and the
training step as :func:`pretrain.loop.train_loop` does (``uint8`` batches copied to the device and
normalised there, channels-last and bf16 autocast on CUDA, the method's loss with a
``LossContext()``, AdamW step, cosine schedule step, ``after_step``), then times two things in the
same process:

(a) **real**: batches from :func:`pretrain.data.make_train_loader` with the method's sample
    pipeline, reading shards and decoding + augmenting in ``--loader-workers`` worker processes
    (pinned memory on CUDA, as the loop sets it);
(b) **in-memory**: the same model and optimizer step fed batches that are already decoded: the
    first ``--memory-batches`` batches the loader produced during the warm-up of (a), kept in host
    memory (pinned on CUDA) and cycled, so the host-to-device copy and normalisation stay in the
    step (``--memory-on-device`` keeps them on the device instead: the model alone).

and prints, per method, samples/s of each and ``real / in-memory``: the fraction of the model's
speed the data pipeline lets training reach (1.0: the loader keeps up). Each phase runs
``--warmup`` untimed steps, then ``--steps`` timed steps between two ``torch.cuda.synchronize``
calls. The loader keeps up to ``2 x --loader-workers`` batches prefetched, which would flatter a
loader-bound rate if the timed window began with that backlog: (a) therefore continues its
warm-up (by at most that many steps) until a batch has to be waited for (``--drain-wait-ms``),
and reports whether that happened (loader-bound) or not (model-bound: the queue stays full).
``--loader-alone`` adds (c): the loader iterated with no training, its own ceiling. The machine's
CPUs serve both the loader workers and (on CPU) the model; ``--threads`` defaults there to the
cores the workers leave.

Data: the embedded world's ``imagenet`` source (it has ``cls``) for supervised and ``laion`` for
clip and simclr, 32x32 PNGs written into ``tbench-out/bench`` on first use (``--world-dir`` reads
an existing world instead). For realistic decode costs, ``--synthetic-shards N`` writes N
img2dataset-like samples (256x256 JPEG at quality 95, caption, class; see
``bench/_common.py``) and every method reads them.

Run from the repository root:

    .venv/bin/python bench/pretrain_throughput.py                       # CPU, test_resnet, 32 px, ~1 min
    .venv/bin/python bench/pretrain_throughput.py --backbone resnet50 --image-size 224 \\
        --batch-size 256 --loader-workers 12 --synthetic-shards 20000 --warmup 10 --steps 100 \\
        --loader-alone --json tbench-out/bench/pretrain_resnet50.json    # a GPU machine
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import _common as C
from pretrain.data import PIPELINES, make_train_loader
from pretrain.device_decode import for_device
from pretrain.loop import ToDevice, amp_dtype_for
from pretrain.methods import METHODS, LossContext
from pretrain.models import BACKBONES
from pretrain.optim import adamw_kwargs, cosine_with_warmup, param_groups

ALL_METHODS = ("supervised", "clip", "simclr")
WORLD_SOURCE = {"supervised": "imagenet", "clip": "laion", "simclr": "laion"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for what is measured.",
    )
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated methods (default: %(default)s)")
    p.add_argument("--backbone", default="test_resnet", help="a pretrain.models backbone (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--steps", type=int, default=12, help="timed steps per phase, after the warm-up (default: %(default)s)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each phase (default: %(default)s)")
    p.add_argument(
        "--loader-workers", type=int, default=2, help="loader worker processes for (a) (default: %(default)s)"
    )
    p.add_argument(
        "--memory-batches",
        type=int,
        default=8,
        help="distinct pre-decoded batches cycled in (b), taken from the warm-up of (a) (default: %(default)s)",
    )
    p.add_argument(
        "--memory-on-device",
        action="store_true",
        help="keep (b)'s batches on the device (no host-to-device copy): the model alone",
    )
    p.add_argument(
        "--drain-wait-ms",
        type=float,
        default=5.0,
        help="a wait for a batch this long in the extra warm-up of (a) means the loader's queue ran dry "
        "(default: %(default)s)",
    )
    p.add_argument("--loader-alone", action="store_true", help="also time (c): the loader with no training")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--decode",
        default="cpu",
        choices=("cpu", "device"),
        help="where (a) and (c) decode: in the loader workers, or batch-wise on --device "
        "(resources.pretrain.decode: device; pretrain.device_decode) (default: %(default)s)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp16", "fp32"),
        help="as TrainConfig.precision: auto = bf16 autocast on CUDA, fp32 on CPU",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads in the main process (default: on CPU, the cores left after the loader workers, at "
        "least 1: an OpenMP team sharing cores with busy workers spin-waits; on CUDA, torch's choice)",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument(
        "--num-classes", type=int, default=0, help="supervised head width (default: the world's 30 concepts)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--world-dir",
        default=None,
        help="an existing world folder (sources/<name>/); default: write the needed sources into the cache",
    )
    p.add_argument(
        "--world-scale",
        type=float,
        default=C.DEFAULT_WORLD_SCALE,
        help="scale of the sources written into the cache (default: %(default)s)",
    )
    p.add_argument(
        "--synthetic-shards",
        type=int,
        default=0,
        metavar="N",
        help="write (once, cached) and read N synthetic 256px JPEG samples instead of the world's PNGs",
    )
    p.add_argument("--synthetic-size", type=int, default=256, help="side of the synthetic JPEGs (default: %(default)s)")
    p.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE), help="where data is written (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        METHODS.get(m)  # unknown names raise with the valid ones
    BACKBONES.get(args.backbone)
    if args.warmup < 1 or args.steps < 1 or args.batch_size < 1 or args.memory_batches < 1:
        p.error("--warmup, --steps, --batch-size and --memory-batches must be >= 1")
    if args.loader_workers < 0:
        p.error("--loader-workers must be >= 0")
    return args


# --------------------------------------------------------------------------- the training step


class Trainer:
    """The model, optimizer and step of one method, built as ``train_loop`` builds them (single process)."""

    def __init__(self, method_name: str, args: argparse.Namespace, device: torch.device, total_steps: int):
        self.name = method_name
        self.method = METHODS.get(method_name)
        self.device = device
        self.on_cuda = device.type == "cuda"
        self.hparams = self.method.resolve({}, method_name)
        num_classes = (args.num_classes or _world_classes()) if self.method.needs_labels else 0
        torch.manual_seed(args.seed)
        self.model = self.method.build(args.backbone, args.image_size, num_classes, **self.hparams)
        meta = self.method.meta(self.model, args.backbone, args.image_size)
        self.model.to(device).to(memory_format=torch.channels_last)  # as the loop does, on every device
        if self.on_cuda:
            torch.backends.cudnn.benchmark = True  # as the loop sets it on CUDA
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.model.train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999), **adamw_kwargs(device)
        )  # fused on CUDA, as the loop's
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(max(1, total_steps // 10), total_steps)
        )
        self.amp_dtype = amp_dtype_for(args.precision, self.on_cuda)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.pipeline = PIPELINES.get(self.method.pipeline)
        self.to_device = ToDevice(self.pipeline.image_keys, meta["mean"], meta["std"], device)
        self.loss_ctx = LossContext()
        self.sums: dict[str, torch.Tensor] = {}
        self.steps_done = 0

    def pipeline_options(self) -> dict[str, Any]:
        return self.method.pipeline_options(self.model, self.hparams)

    def step(self, batch: dict[str, Any]) -> None:
        """One optimizer step as in the loop (grad_accum 1), metrics summed on the device without a sync."""
        batch = self.to_device(batch)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.method.loss(self.model, batch, self.loss_ctx)
        self.scaler.scale(out["loss"]).backward()
        for k, v in out.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=self.device)
            self.sums[k] = self.sums.get(k, 0) + v
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.method.after_step is not None:
            self.method.after_step(self.model)
        self.steps_done += 1

    def mean_loss(self) -> float:
        return float(self.sums["loss"]) / max(1, self.steps_done) if "loss" in self.sums else math.nan


def _world_classes() -> int:
    from curation import render

    return len(render.CONCEPT_NAMES)


def batch_samples(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    raise ValueError("batch holds no tensor")


def timed(device: torch.device, n_steps: int, fn: Callable[[], None]) -> float:
    """Seconds for ``n_steps`` calls of ``fn``, device work included (synchronised before both clock reads)."""
    C.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        fn()
    C.synchronize(device)
    return time.perf_counter() - t0


def shutdown_loader(loader: Any) -> None:
    """Stop the loader's persistent workers now (they would otherwise prefetch during phase (b))."""
    it = getattr(getattr(loader, "loader", None), "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    gc.collect()


# --------------------------------------------------------------------------- one method


def batch_decode(args: argparse.Namespace, device: torch.device) -> Any:
    """``make_train_loader``'s ``batch_decode`` for ``--decode``: None (the loader decodes) or the device decoder."""
    return for_device(device) if getattr(args, "decode", "cpu") == "device" else None


def bench_method(name: str, view: Path, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    warmup, steps, bs = args.warmup, args.steps, args.batch_size
    t_build = time.perf_counter()
    trainer = Trainer(name, args, device, total_steps=2 * (warmup + steps))
    build_s = time.perf_counter() - t_build
    n_mem = min(args.memory_batches, warmup)
    C.log(
        f"\n[{name}] {args.backbone} ({trainer.params / 1e6:.2f}M "
        f"params{', open_clip ' + trainer.model.name if name == 'clip' else ''}), "
        f"pipeline {trainer.method.pipeline}, view {view} ({C.view_size(view)} samples); built in {build_s:.1f}s"
    )

    # (a) real: the method's loader, decode + augment in worker processes. After the fixed warm-up,
    # up to one prefetch depth of extra warm-up steps run until a batch had to be waited for (the
    # queue ran dry: the loader is the bottleneck and the timed window starts with an empty queue,
    # not with a backlog that would flatter it); a model-bound run never waits and keeps a full
    # queue at both ends of the window, which is unbiased too.
    extra_max = 2 * args.loader_workers
    loader = make_train_loader(
        view,
        pipeline=trainer.method.pipeline,
        batch_size=bs,
        num_batches=warmup + extra_max + steps,
        image_size=args.image_size,
        seed=args.seed,
        num_workers=args.loader_workers,
        pin_memory=trainer.on_cuda,
        pipeline_options=trainer.pipeline_options(),
        batch_decode=batch_decode(args, device),
    )
    loader.set_epoch(1)
    it = iter(loader)
    kept: list[dict[str, Any]] = []
    drained = False
    warm_steps = 0
    t0 = time.perf_counter()
    for i in range(warmup + extra_max):
        t_wait = time.perf_counter()
        batch = next(it)
        waited_ms = 1e3 * (time.perf_counter() - t_wait)
        if len(kept) < n_mem:
            kept.append(batch)
        trainer.step(batch)
        warm_steps += 1
        if i >= warmup and waited_ms >= args.drain_wait_ms:
            drained = True
            break
    C.synchronize(device)
    warm_real_s = time.perf_counter() - t0
    real_s = timed(device, steps, lambda: trainer.step(next(it)))  # noqa: F821  (pyflakes: `del trainer` below)
    skipped = loader.skipped
    shutdown_loader(loader)  # batches left over from the extra warm-up allowance are dropped
    del loader, it

    shapes = {
        k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in kept[0].items()
        if isinstance(v, torch.Tensor)
    }
    if args.memory_on_device:
        kept = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in kept]
    elif trainer.on_cuda:
        kept = [
            {k: v.pin_memory() if isinstance(v, torch.Tensor) and not v.is_pinned() else v for k, v in b.items()}
            for b in kept
        ]

    # (b) in-memory: the same step on the kept batches, cycled.
    cursor = [0]

    def memory_step() -> None:
        trainer.step(kept[cursor[0] % len(kept)])  # noqa: F821  (pyflakes: `del trainer, kept` below; called before it)
        cursor[0] += 1

    for _ in range(warmup):
        memory_step()
    memory_s = timed(device, steps, memory_step)

    # (c) optionally the loader on its own.
    alone_s = None
    if args.loader_alone:
        loader = make_train_loader(
            view,
            pipeline=trainer.method.pipeline,
            batch_size=bs,
            num_batches=warmup + steps,
            image_size=args.image_size,
            seed=args.seed,
            num_workers=args.loader_workers,
            pin_memory=trainer.on_cuda,
            pipeline_options=trainer.pipeline_options(),
            batch_decode=batch_decode(args, device),
        )
        loader.set_epoch(2)
        it = iter(loader)
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        alone_s = time.perf_counter() - t0
        shutdown_loader(loader)
        del loader, it

    samples = steps * bs
    res = {
        "method": name,
        "decode": getattr(args, "decode", "cpu"),
        "pipeline": trainer.method.pipeline,
        "view": str(view),
        "params": trainer.params,
        "clip_model": getattr(trainer.model, "name", None) if name == "clip" else None,
        "batch_shapes": {k: [list(s), d] for k, (s, d) in shapes.items()},
        "memory_batches": len(kept),
        "warmup_real_seconds": warm_real_s,
        "warmup_real_steps": warm_steps,
        "queue_ran_dry_in_warmup": drained,
        "real_seconds": real_s,
        "memory_seconds": memory_s,
        "real_samples_per_s": samples / real_s,
        "memory_samples_per_s": samples / memory_s,
        "ratio": (samples / real_s) / (samples / memory_s),
        "real_ms_per_step": 1e3 * real_s / steps,
        "memory_ms_per_step": 1e3 * memory_s / steps,
        "loader_alone_samples_per_s": samples / alone_s if alone_s else None,
        "skipped": skipped,
        "mean_loss": trainer.mean_loss(),
    }
    if device.type == "cuda":
        res["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    C.log(f"[{name}] batch {', '.join(f'{k} {list(s)} {d}' for k, (s, d) in shapes.items())}")
    extra = f", loader alone {res['loader_alone_samples_per_s']:.0f}/s" if alone_s else ""
    C.log(
        f"[{name}] real {res['real_samples_per_s']:.1f} samples/s ({res['real_ms_per_step']:.1f} ms/step), "
        f"in-memory {res['memory_samples_per_s']:.1f} samples/s ({res['memory_ms_per_step']:.1f} ms/step), "
        f"real/in-memory {res['ratio']:.2f}{extra}; skipped {skipped}, mean loss {res['mean_loss']:.3f}"
    )
    C.log(
        f"[{name}] real warm-up {warm_steps} steps "
        f"({'loader queue ran dry: loader-bound' if drained else 'never waited for a batch: model-bound or balanced'})"
    )
    del trainer, kept
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return res


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cache = Path(args.cache_dir)
    # Data first: the synthetic writer forks, which must happen before CUDA is initialised.
    if args.synthetic_shards:
        synthetic = C.write_synthetic_shards(args.synthetic_shards, cache, args.world_dir, size=args.synthetic_size)
        views = {m: synthetic for m in args.methods}
    else:
        views = {m: C.source_view(WORLD_SOURCE[m], args.world_dir, cache, args.world_scale) for m in args.methods}
    for m, v in views.items():
        per_reader = math.ceil((args.warmup + args.steps) / max(args.loader_workers, 1)) * args.batch_size
        if C.view_size(v) < per_reader:
            C.log(
                f"note: {m}'s view has {C.view_size(v)} samples, fewer than a reader's {per_reader}: readers start "
                "over on it"
            )

    device = C.pick_device(args.device)
    if not args.threads and device.type == "cpu":
        args.threads = max(1, (os.cpu_count() or 1) - args.loader_workers)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = C.environment(device)
    C.log(f"device: {env['device']}")
    C.log(
        f"torch {env['torch']}, torchvision {env['torchvision']}, webdataset {env.get('webdataset')}, python "
        f"{env['python']}, "
        f"{env['cpu_count']} CPUs"
    )
    C.log(
        f"backbone {args.backbone}, {args.image_size}px, batch {args.batch_size}, {args.warmup} warm-up + "
        f"{args.steps} timed steps "
        f"per phase, {args.loader_workers} loader workers, precision {args.precision} "
        f"(autocast {amp_dtype_for(args.precision, device.type == 'cuda')})"
    )

    results = []
    for m in args.methods:
        results.append(bench_method(m, views[m], args, device))

    C.log("\nsummary (samples/s; ratio = real / in-memory, the data pipeline's efficiency)")
    C.log(
        f"  {'method':<11} {'real':>10} {'in-memory':>10} {'ratio':>6}"
        + (f" {'loader':>10}" if args.loader_alone else "")
    )
    for r in results:
        line = f"  {r['method']:<11} {r['real_samples_per_s']:>10.1f} {r['memory_samples_per_s']:>10.1f}"
        line += f" {r['ratio']:>6.2f}"
        if args.loader_alone:
            line += f" {r['loader_alone_samples_per_s']:>10.1f}"
        C.log(line)
    out = {
        "benchmark": "pretrain_throughput",
        "environment": env,
        "args": {k: v for k, v in vars(args).items()},
        "synthetic": C.synthetic_info(views[args.methods[0]]) if args.synthetic_shards else None,
        "results": results,
    }
    if args.json:
        C.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
