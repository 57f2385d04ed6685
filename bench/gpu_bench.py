"""What one GPU does with this harness: pre-training, fine-tuning and feature extraction rates.

Run by ``bench/gpu.sh`` (which finds an interpreter and installs missing wheels from
``bench/wheels/``); see ``bench/README.md``. Measured, in one process:

- **pre-training samples/s per GPU** for supervised ResNet-50 at 224 px and for CLIP and SimCLR
  with a ViT-B/32-sized image tower, each (a) reading real JPEG shards written here (synthetic
  content: world images upscaled with 1/f detail, ``bench/_common.py``) through
  ``pretrain.data.make_train_loader`` and (b) fed the same decoded batches from memory;
  ``ratio = real / in-memory`` is the loader's efficiency (``bench/pretrain_throughput.py``'s
  ``bench_method`` does both, with the loop's own step);
- mean GPU utilisation while each method ran (``torch.cuda.utilization`` or ``nvidia-smi``) and
  its peak memory;
- fine-tuning images/s (``downstream.finetune.finetune``, one epoch, one learning rate, ResNet-50)
  and feature-extraction images/s (``downstream.features.encode``).

``--cpu`` runs the same measurements with tiny models at 32 px and a few steps on the CPU, so
the script is known to work before a GPU is at hand. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench import _common as C

#: open_clip's published ViT-B/32 training rate (LAION-400M runs: ~790 samples/s per A100).
OPEN_CLIP_VIT_B32_A100 = 790.0
RATIO_TARGET = 0.9

# (backbone, image size, batch) per method; the CPU setting is tiny so a run ends in seconds.
GPU_SETTING = {"supervised": ("resnet50", 224, 256), "clip": ("vit_b32", 224, 256), "simclr": ("vit_b32", 224, 256)}
CPU_SETTING = {"supervised": ("test_resnet", 32, 16), "clip": ("test_vit", 32, 16), "simclr": ("test_vit", 32, 16)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny models, 32 px, a few steps, on the CPU (< 1 min)")
    p.add_argument("--methods", default="supervised,clip,simclr")
    p.add_argument(
        "--loader-workers",
        type=int,
        default=None,
        help="decoding processes (default: the harness's auto rule, min(8, CPUs - 1) on a GPU; 1 with --cpu)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per phase (default 30; 3 with --cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per phase (default 5; 2 with --cpu)")
    p.add_argument("--samples", type=int, default=None, help="synthetic JPEG samples (default 4096; 256 with --cpu)")
    p.add_argument(
        "--no-decode-device",
        dest="decode_device",
        action="store_false",
        help="skip the second real-shards measurement with decode=device (batched decode_jpeg on the device)",
    )
    p.add_argument("--cache-dir", default=str(C.DEFAULT_CACHE))
    p.add_argument("--json", default=None, metavar="PATH", help="also write the JSON here")
    return p.parse_args(argv)


class GpuUtilisation:
    """Mean GPU utilisation (%) sampled every 0.2 s in a thread while the block runs (None on a CPU)."""

    def __init__(self, device: torch.device):
        self.device, self.samples = device, []
        self._stop = threading.Event()
        self._read = self._reader() if device.type == "cuda" else None

    def _reader(self):
        try:
            torch.cuda.utilization(self.device)  # needs pynvml / amdsmi
            return lambda: float(torch.cuda.utilization(self.device))
        except Exception:
            smi = shutil.which("nvidia-smi")
            if smi is None:
                return None
            index = str(self.device.index or 0)

            def read() -> float:
                out = subprocess.run(
                    [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", index],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                return float(out.stdout.strip().splitlines()[0])

            return read

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append(self._read())
            except Exception:
                return

    def __enter__(self) -> GpuUtilisation:
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._read is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def pretrain_rate(
    method: str, view: Path, setting: tuple[str, int, int], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """``bench/pretrain_throughput.py``'s real-vs-memory measurement of one method, with utilisation,
    then (``--decode-device``, default on) the real rate again with ``decode=device``: the loader ships
    the JPEG bytes and the training process decodes and augments whole batches on the device."""
    from bench import pretrain_throughput as PT

    backbone, size, batch = setting
    argv = [
        "--methods",
        method,
        "--backbone",
        backbone,
        "--image-size",
        str(size),
        "--batch-size",
        str(batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--loader-workers",
        str(args.loader_workers),
        "--memory-batches",
        str(args.warmup),
        "--device",
        str(device),
    ]
    with GpuUtilisation(device) as util:
        res = PT.bench_method(method, view, PT.parse_args(argv), device)
    keep = (
        "real_samples_per_s",
        "memory_samples_per_s",
        "ratio",
        "params",
        "clip_model",
        "skipped",
        "queue_ran_dry_in_warmup",
        "max_memory_gib",
    )
    out = {
        "backbone": backbone,
        "image_size": size,
        "batch_size": batch,
        **{k: res.get(k) for k in keep},
        "gpu_util_pct": util.mean,
    }
    if args.decode_device:
        with GpuUtilisation(device) as util:
            dev = PT.bench_method(method, view, PT.parse_args([*argv, "--decode", "device"]), device)
        out["decode_device"] = {
            "real_samples_per_s": dev["real_samples_per_s"],
            "ratio": dev["ratio"],
            "vs_cpu_decode": dev["real_samples_per_s"] / res["real_samples_per_s"],
            "skipped": dev["skipped"],
            "max_memory_gib": dev.get("max_memory_gib"),
            "gpu_util_pct": util.mean,
        }
    return out


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def finetune_rate(backbone: str, size: int, n: int, batch: int, device: torch.device) -> dict[str, Any]:
    """Fine-tuning images/s: one epoch at one learning rate (validation kept small and counted out)."""
    from downstream.finetune import FinetuneConfig, finetune
    from pretrain.models import build_encoder, encoder_meta

    encoder = build_encoder(backbone, size)
    meta = encoder_meta(encoder, backbone, size)
    classes = 10
    y = np.arange(n) % classes
    small = (_images(2 * classes, size, 1), np.arange(2 * classes) % classes)
    cfg = FinetuneConfig(epochs=2, lrs=(1e-3,), batch_size=batch, warmup_steps=1)
    with GpuUtilisation(device) as util:
        res = finetune(
            encoder,
            meta,
            (_images(n, size), y),
            small,
            small,
            num_classes=classes,
            config=cfg,
            device=device,
            num_threads=max(1, torch.get_num_threads()),
        )
    epoch2 = res.curve[-1]["seconds"] if res.curve else res.train_seconds  # the second epoch: warm kernels
    return {
        "backbone": backbone,
        "image_size": size,
        "batch_size": batch,
        "images": n,
        "images_per_s": n / epoch2,
        "gpu_util_pct": util.mean,
    }


def features_rate(backbone: str, size: int, n: int, batch: int, device: torch.device) -> dict[str, Any]:
    """Feature-extraction images/s of ``downstream.features.encode`` (after one warm-up pass)."""
    from downstream import accel
    from downstream.features import encode, prepare_images
    from pretrain.models import build_encoder, encoder_meta

    encoder = accel.prepare_model(build_encoder(backbone, size), device)
    meta = encoder_meta(encoder, backbone, size)
    images = prepare_images(_images(n, size, 2), size)
    encode(encoder, images[:batch], meta, batch_size=batch, device=device)
    C.synchronize(device)
    with GpuUtilisation(device) as util:
        t0 = time.perf_counter()
        encode(encoder, images, meta, batch_size=batch, device=device)  # ends with the copy to the host
        seconds = time.perf_counter() - t0
    return {
        "backbone": backbone,
        "image_size": size,
        "batch_size": batch,
        "images": n,
        "images_per_s": n / seconds,
        "gpu_util_pct": util.mean,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device("cpu") if args.cpu else torch.device("cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch: run `bash bench/gpu.sh --cpu` for the CPU setting")
    cpu = args.cpu
    if args.loader_workers is None:
        from pretrain.loop import loader_workers_for

        args.loader_workers = 1 if cpu else loader_workers_for("auto", os.cpu_count() or 1, 1)
    args.steps = args.steps or (3 if cpu else 30)
    args.warmup = args.warmup or (2 if cpu else 5)
    n = args.samples or (256 if cpu else 4096)
    settings = CPU_SETTING if cpu else GPU_SETTING
    cache = Path(args.cache_dir)
    # The shards first: the writer forks, which must happen before CUDA is initialised.
    view = C.write_synthetic_shards(n, cache, size=48 if cpu else 256, shard_size=64 if cpu else 256)
    if cpu:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.loader_workers))
    env = C.environment(device)
    C.log(
        f"device: {env['device']}; torch {env['torch']}, torchvision {env['torchvision']}, {env['cpu_count']} CPUs; "
        f"{args.loader_workers} loader workers, {args.warmup} + {args.steps} steps per phase"
    )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    pretrain = {m: pretrain_rate(m, view, settings[m], args, device) for m in methods}
    ft_backbone, ft_size, _ = settings["supervised"]
    finetuning = finetune_rate(ft_backbone, ft_size, 64 if cpu else 2048, 16 if cpu else 128, device)
    features = features_rate(ft_backbone, ft_size, 128 if cpu else 8192, 32 if cpu else 256, device)
    out = {
        "bench": "gpu",
        "mode": "cpu" if cpu else "gpu",
        "device": env["device"],
        "environment": env,
        "loader_workers": args.loader_workers,
        "steps": args.steps,
        "warmup": args.warmup,
        "shards": {"samples": n, "jpeg": C.synthetic_info(view)},
        "pretrain_samples_per_s_per_gpu": pretrain,
        "finetune": finetuning,
        "features": features,
        "ratio_target": RATIO_TARGET,
        "baseline": f"open_clip ViT-B/32: ~{OPEN_CLIP_VIT_B32_A100:.0f} samples/s per A100 (published)",
        "clip_vs_open_clip_a100": (
            pretrain["clip"]["real_samples_per_s"] / OPEN_CLIP_VIT_B32_A100 if "clip" in pretrain and not cpu else None
        ),
        "seconds": time.perf_counter() - t_start,
    }
    C.log("\nsummary")
    for m, r in pretrain.items():
        C.log(
            f"  {m:<10} {r['backbone']:<12} real {r['real_samples_per_s']:9.1f}/s  in-memory "
            f"{r['memory_samples_per_s']:9.1f}/s  ratio {r['ratio']:.2f}  util {r['gpu_util_pct']}"
        )
        if "decode_device" in r:
            d = r["decode_device"]
            C.log(
                f"  {'':<10} {'':<12} decode=device {d['real_samples_per_s']:9.1f}/s  ratio {d['ratio']:.2f}  "
                f"x{d['vs_cpu_decode']:.2f} of decode=cpu  util {d['gpu_util_pct']}"
            )
    C.log(f"  fine-tuning {finetuning['images_per_s']:.1f} images/s; features {features['images_per_s']:.1f} images/s")
    if args.json:
        C.write_json(args.json, out)
    import json

    print(json.dumps(out, default=str), flush=True)
    return out


if __name__ == "__main__":
    main()
