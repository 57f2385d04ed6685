"""``decode: memory`` against the streaming loader (``decode: cpu``, the baseline), in whole training runs.

For each method (``supervised`` on the world's ``imagenet``, ``clip`` and ``simclr`` on ``laion``)
and two views of its source (``small``: its first ``--small`` samples, repeated many times under a
fixed budget, as the quickstart's n=300 views are; ``large``: the whole source), the bench runs
:func:`pretrain.loop.train_loop` with the same budget of samples seen, batch and seed, once per
decode mode, alternating the modes ``--repeats`` times. It prints each run's wall time (the loop's
own ``seconds``: set-up, every epoch and the checkpoint) and ``cpu / memory`` (the median of each
mode's runs; above 1: ``memory`` is faster). One torch thread, as a quickstart job has. The last
line is one JSON object.

    .venv/bin/python bench/memory_view.py [--samples-seen 4096] [--repeats 2] [--small 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import _common as C
from pretrain.loop import DistInfo, TrainConfig, train_loop

WORLD_SOURCE = {"supervised": "imagenet", "clip": "laion", "simclr": "laion"}
MODES = ("cpu", "memory")


def small_view(view: Path, out: Path, n: int) -> Path:
    """A view of the first ``n`` samples of ``view``'s first shard, rewritten as one shard."""
    import webdataset as wds

    first = sorted(json.loads((view / "sizes.json").read_text()))[0]
    (out / "shards").mkdir(parents=True, exist_ok=True)
    kept = 0
    with wds.TarWriter(str(out / "shards" / first), mtime=0) as sink:
        for sample in wds.WebDataset(str(view / "shards" / first), shardshuffle=False):
            if kept == n:
                break
            sink.write({k: v for k, v in sample.items() if k != "__url__" and not k.startswith("__local")})
            kept += 1
    (out / "sizes.json").write_text(json.dumps({first: kept}))
    return out


def one_run(method: str, view: Path, mode: str, args: argparse.Namespace, out: Path) -> float:
    cfg = TrainConfig(
        method=method,
        backbone="test_resnet",
        image_size=32,
        samples_seen=args.samples_seen,
        batch_size=args.batch_size,
        lr=0.006,
        warmup_fraction=0.05,
        seed=0,
        num_classes=30 if method == "supervised" else 0,
        decode=mode,
    )
    return float(train_loop(cfg, view, out, DistInfo(), lambda r: None)["seconds"])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="supervised,clip,simclr")
    p.add_argument("--samples-seen", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--small", type=int, default=300, help="samples in the small view (default: %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cache = C.DEFAULT_CACHE
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            large = C.source_view(WORLD_SOURCE[method], None, cache)
            small = small_view(large, Path(tmp) / f"{method}-small", args.small)
            for name, view in (("small", small), ("large", large)):
                secs: dict[str, list[float]] = {m: [] for m in MODES}
                for rep in range(args.repeats):
                    for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                        secs[mode].append(
                            one_run(method, view, mode, args, Path(tmp) / f"{method}-{name}-{mode}-{rep}")
                        )
                med = {m: statistics.median(v) for m, v in secs.items()}
                row = {"view_size": C.view_size(view), **{f"{m}_s": [round(s, 2) for s in v] for m, v in secs.items()}}
                row["cpu_over_memory"] = round(med["cpu"] / med["memory"], 2)
                results[f"{method}/{name}"] = row
                print(
                    f"{method:10s} {name:5s} n={row['view_size']:5d}  cpu {med['cpu']:6.1f} s  "
                    f"memory {med['memory']:6.1f} s  cpu/memory {row['cpu_over_memory']:.2f}",
                    flush=True,
                )
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    out = {
        "bench": "memory_view",
        "baseline": "decode: cpu",
        "samples_seen": args.samples_seen,
        "batch_size": args.batch_size,
        "load": load,
        "results": results,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
