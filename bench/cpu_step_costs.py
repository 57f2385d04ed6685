"""Two costs of a CPU pre-training step, each against the implementation it replaced, timed in the same run.

(a) **AdamW**: torch's default CPU implementation (a Python loop over tensors, the baseline) against
    the fused kernel (``fused=True``, what :func:`pretrain.optim.adamw_kwargs` asks for on CPU and
    CUDA), on each method's real parameter set (``test_resnet`` at 32 px: supervised, SimCLR, and
    CLIP, whose text tower's token table holds most of its 3.3M parameters), with the harness's
    parameter groups.
(b) **SimCLR's augmentation** of a batch: :class:`pretrain.data.SimCLRTransform` per image (the
    baseline: torchvision's per-image colour functions, as ``decode: memory`` drew it before)
    against :func:`pretrain.device_decode.augment_batch` (batch-wise colour distortion, what the
    memory and device paths draw now), on 32 px images of the world's ``laion`` source.

Each row prints milliseconds per step or batch and ``baseline / new`` (above 1: the new one is
faster). One torch thread, as a quickstart job has. The last line is one JSON object.

    .venv/bin/python bench/cpu_step_costs.py [--repeats 30] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import _common as C
from pretrain.data import SimCLRTransform, decode_image, image_bytes
from pretrain.device_decode import augment_batch
from pretrain.methods import METHODS
from pretrain.optim import param_groups


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def adamw_rows(repeats: int) -> list[dict]:
    rows = []
    for method in ("supervised", "simclr", "clip"):
        torch.manual_seed(0)
        model = METHODS.get(method).build("test_resnet", 32, 30)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        ms = {}
        for name, kw in (("default", {}), ("fused", {"fused": True})):
            opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, **kw)
            ms[name] = _median_ms(opt.step, repeats)
        rows.append(
            {
                "what": f"adamw {method}",
                "parameters": sum(p.numel() for p in params),
                "baseline_ms": round(ms["default"], 3),
                "new_ms": round(ms["fused"], 3),
                "ratio": round(ms["default"] / ms["fused"], 2),
            }
        )
    return rows


def augment_row(batch_size: int, repeats: int) -> dict:
    view = C.source_view("laion", None, Path(C.DEFAULT_CACHE))
    shard = sorted((view / "shards").glob("*.tar"))[0]
    images = [decode_image(image_bytes(sample)) for sample in C._read_samples(shard)[:batch_size]]
    transform = SimCLRTransform(32)
    gen = torch.Generator().manual_seed(0)
    per_image = _median_ms(lambda: torch.stack([transform(img, gen) for img in images]), repeats)
    batch = _median_ms(lambda: augment_batch(images, transform, gen), repeats)
    return {
        "what": f"simclr augmentation, batch of {len(images)}",
        "baseline_ms": round(per_image, 3),
        "new_ms": round(batch, 3),
        "ratio": round(per_image / batch, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = adamw_rows(args.repeats) + [augment_row(args.batch_size, args.repeats)]
    for r in rows:
        print(f"{r['what']:<36} baseline {r['baseline_ms']:8.2f} ms  new {r['new_ms']:8.2f} ms  x{r['ratio']:.2f}")
    print(json.dumps({"bench": "cpu_step_costs", "threads": 1, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
