"""Helpers shared by the benchmarks in ``bench/``: data locations, synthetic JPEG shards, timing.

Nothing here imports ``harness`` modules that pull in Ray (only ``curation.world``, which needs
``harness.core``), so the benchmarks run on a machine with torch and webdataset alone.

Data the benchmarks read, all cached under ``tbench-out/bench`` (``--cache-dir``):

- ``world/sources/<source>/``: sources of the embedded world (``shard-*.tar`` + ``sizes.json``,
  32x32 PNGs), written with :func:`curation.world.write_source` for just the sources a bench
  needs. A full world folder (``build_world``'s output, or any folder with
  ``sources/<source>/sizes.json``) can be passed instead with ``--world-dir``. Only the sources
  are written, not the whole world: ``build_world`` also renders eleven downstream sets and needs
  ``datasets``, scikit-learn and scikit-image, none of which a bench uses.
- ``views/<name>/``: a view folder (``shards/*.tar`` + ``sizes.json``, what
  :func:`pretrain.data.read_view` reads) of symlinks to a world source's shards; a world source
  has its shards at the top level, not under ``shards/``, so ``read_view`` does not take it as is.
- ``downstream-sets/downstream/<set>/``: downstream sets of the world (saved ``DatasetDict``s), written
  with the world's own writers by :func:`downstream_sets`; ``encoders/``: randomly initialised
  encoder checkpoints (:func:`encoder_checkpoint`).
- ``synthetic/<tag>/``: a view folder of synthetic img2dataset-like shards (``jpg`` 256x256 at
  quality 95, ``txt``, ``cls``, ``json``), made from world images upscaled and given natural-image
  (1/f) detail, so that JPEG sizes and decode times resemble real web images (see
  :func:`write_synthetic_shards`).
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_CACHE = REPO_ROOT / "tbench-out" / "bench"
DEFAULT_WORLD_SCALE = 0.25  # imagenet 1500 samples, laion 2000 (2 shards each)
SYNTHETIC_FORMAT = 1


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- world sources and views


def world_source(
    name: str,
    world_dir: str | Path | None = None,
    cache_dir: Path = DEFAULT_CACHE,
    scale: float = DEFAULT_WORLD_SCALE,
    seed: int = 0,
) -> Path:
    """The folder of world source ``name`` (``shard-*.tar`` + ``sizes.json``), written if absent.

    ``world_dir``: an existing world (``<world_dir>/sources/<name>``); it must hold the source.
    Without it, ``<cache_dir>/world/sources/<name>`` is written at ``scale`` (seconds).
    """
    if world_dir is not None:
        src = Path(world_dir) / "sources" / name
        if not (src / "sizes.json").is_file():
            raise FileNotFoundError(
                f"{src}/sizes.json not found: --world-dir must be a world folder holding source {name!r}"
            )
        return src
    src = cache_dir / "world" / "sources" / name
    marker = src / "bench_source.json"
    want = {"source": name, "scale": float(scale), "seed": int(seed)}
    if (src / "sizes.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == want:
        return src
    from curation.world import SOURCES_BY_NAME, write_source

    if name not in SOURCES_BY_NAME:
        raise ValueError(f"unknown world source {name!r}; known: {', '.join(SOURCES_BY_NAME)}")
    tmp = src.with_name(f".{name}.tmp-{os.getpid()}")
    if tmp.exists():
        _rmtree(tmp)
    t0 = time.perf_counter()
    res = write_source(SOURCES_BY_NAME[name], tmp, seed, scale)
    (tmp / "bench_source.json").write_text(json.dumps(want))
    if src.exists():
        _rmtree(src)
    src.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, src)
    log(
        f"wrote world source {name} ({res['num_samples']} samples, scale {scale}) to {src} in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    return src


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def as_view(folder: Path, views_dir: Path) -> Path:
    """A view folder for ``folder``: itself if it has ``shards/``, else a folder of symlinks to its shards."""
    folder = Path(folder).resolve()
    if (folder / "shards").is_dir() and (folder / "sizes.json").is_file():
        return folder
    shards = sorted(folder.glob("*.tar"))
    if not shards or not (folder / "sizes.json").is_file():
        raise FileNotFoundError(f"{folder} holds neither shards/*.tar nor *.tar with sizes.json")
    view = views_dir / folder.name
    sdir = view / "shards"
    sdir.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in shards}
    for old in sdir.iterdir():
        if old.name not in wanted or not old.exists() or old.resolve() != folder / old.name:
            old.unlink()
    for p in shards:
        link = sdir / p.name
        if not link.exists():
            link.symlink_to(p)
    (view / "sizes.json").write_text((folder / "sizes.json").read_text())
    return view


def source_view(name: str, world_dir: str | Path | None, cache_dir: Path, scale: float = DEFAULT_WORLD_SCALE) -> Path:
    """A view folder over world source ``name`` (written into the cache if needed)."""
    return as_view(world_source(name, world_dir, cache_dir, scale), cache_dir / "views")


def view_size(view: Path) -> int:
    return sum(json.loads((Path(view) / "sizes.json").read_text()).values())


# --------------------------------------------------------------------------- synthetic JPEG shards


def _pink_bank(n: int, size: int, alpha: float, seed: int) -> np.ndarray:
    """``n`` fields of 1/f^alpha noise, ``[n, size, size, 3]`` float32 with unit std."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    out = np.empty((n, size, size, 3), np.float32)
    for k in range(n):
        spec = (
            rng.standard_normal((3, size, size // 2 + 1)) + 1j * rng.standard_normal((3, size, size // 2 + 1))
        ) / f**alpha
        spec[:, 0, 0] = 0
        x = np.fft.irfft2(spec, s=(size, size))
        out[k] = (x / x.std()).transpose(1, 2, 0)
    return out


def _read_samples(shard: Path) -> list[dict[str, bytes]]:
    """The samples of a webdataset tar, grouped by key (the harness's one tar reader)."""
    from harness.core.tars import tar_samples

    with open(shard, "rb") as f:
        return [{"__key__": key, **group} for key, group in tar_samples(f)]


_BASE: list[dict[str, bytes]] = []  # the source samples, inherited by forked writer processes


def _write_synthetic_shard(args: tuple) -> tuple[str, int, int]:
    import webdataset as wds
    from PIL import Image

    path, start, count, size, quality, amplitude, alpha, seed = args
    base = _BASE
    rng = np.random.default_rng([seed, start])
    bank = _pink_bank(8, size, alpha, seed * 1000 + start)
    nbytes = 0
    with wds.TarWriter(str(path), encoder=False, mtime=0, format=tarfile.USTAR_FORMAT) as tw:
        for i in range(start, start + count):
            src = base[i % len(base)]
            img = Image.open(io.BytesIO(src["png"])).convert("RGB")
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            upscaled = np.asarray(img.resize((size, size), Image.BICUBIC), np.float32)
            noise = np.roll(bank[rng.integers(len(bank))], tuple(rng.integers(0, size, 2)), axis=(0, 1))
            pixels = np.clip(upscaled + amplitude * noise, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
            jpg = buf.getvalue()
            nbytes += len(jpg)
            meta = json.loads(src.get("json", b"{}") or b"{}")
            cls = int(meta.get("concept_id", rng.integers(0, 30)))
            meta.update(width=size, height=size, synthetic_from=src["__key__"])
            tw.write(
                {
                    "__key__": f"synthetic-{i:08d}",
                    "jpg": jpg,
                    "txt": src.get("txt", b"a photo"),
                    "cls": str(cls).encode(),
                    "json": json.dumps(meta, sort_keys=True).encode(),
                }
            )
    return Path(path).name, count, nbytes


def write_synthetic_shards(
    n: int,
    cache_dir: Path = DEFAULT_CACHE,
    world_dir: str | Path | None = None,
    *,
    size: int = 256,
    quality: int = 95,
    shard_size: int = 1000,
    amplitude: float = 15.0,
    alpha: float = 1.2,
    seed: int = 0,
    processes: int | None = None,
) -> Path:
    """A view folder of ``n`` img2dataset-like samples: ``jpg`` (``size`` px square), ``txt``, ``cls``, ``json``.

    Images are world ``laion`` images (32x32) upscaled bicubically to ``size`` plus 1/f^``alpha``
    noise of std ``amplitude``: a plain upscale is too smooth (JPEGs of ~16 KB that decode fast);
    with the default detail a 256 px JPEG at quality 95 is ~28 KB, as 256 px centre crops of
    scikit-image's photographs (astronaut, coffee, chelsea: 29-31 KB) are. Captions come from the
    world sample, ``cls`` is its concept id (30 classes). Cached by parameters; written in
    parallel, one process per shard.
    """
    tag = f"n{n}-s{size}-q{quality}-a{amplitude:g}-p{alpha:g}-seed{seed}"
    view = cache_dir / "synthetic" / tag
    params = {
        "format": SYNTHETIC_FORMAT,
        "n": n,
        "size": size,
        "quality": quality,
        "shard_size": shard_size,
        "amplitude": amplitude,
        "alpha": alpha,
        "seed": seed,
    }
    marker = view / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()).get("params") == params and (view / "sizes.json").is_file():
        return view
    base_dir = world_source("laion", world_dir, cache_dir)
    base = [s for shard in sorted(base_dir.glob("*.tar")) for s in _read_samples(shard) if "png" in s]
    _BASE[:] = base
    if not base:
        raise RuntimeError(f"no PNG samples in {base_dir}")
    _rmtree(view)
    (view / "shards").mkdir(parents=True)
    jobs = [
        (view / "shards" / f"synthetic-{k:06d}.tar", s0, min(shard_size, n - s0), size, quality, amplitude, alpha, seed)
        for k, s0 in enumerate(range(0, n, shard_size))
    ]
    procs = max(1, min(len(jobs), processes or os.cpu_count() or 1))
    t0 = time.perf_counter()
    log(f"writing {n} synthetic {size}px JPEG samples in {len(jobs)} shard(s) with {procs} process(es) to {view} ...")
    if procs == 1:
        results = [_write_synthetic_shard(j) for j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(procs) as pool:  # fork: the workers inherit _BASE
            results = pool.map(_write_synthetic_shard, jobs)
    sizes = {name: count for name, count, _ in results}
    total_bytes = sum(b for _, _, b in results)
    (view / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True))
    marker.write_text(json.dumps({"params": params, "mean_jpeg_bytes": total_bytes / n}, indent=1))
    log(f"  done in {time.perf_counter() - t0:.1f}s; mean JPEG {total_bytes / n / 1024:.1f} KiB")
    return view


def synthetic_info(view: Path) -> dict[str, Any]:
    marker = Path(view) / "synthetic.json"
    return json.loads(marker.read_text()) if marker.is_file() else {}


# --------------------------------------------------------------------------- devices and timing


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a host clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"cuda:{device.index or 0} {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
        )
    cores = f"{os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    return f"cpu {platform.processor() or platform.machine()} ({cores})"


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    info = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }
    try:
        import webdataset

        info["webdataset"] = getattr(webdataset, "__version__", "?")
    except ImportError:
        pass
    try:
        import PIL

        info["pillow"] = PIL.__version__
    except ImportError:
        pass
    return info


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str))
    log(f"wrote {path}")


# --------------------------------------------------------------------------- downstream sets and encoders

DOWNSTREAM_FORMAT = 1  # bump when the way the sets below are written changes


def downstream_sets(
    names: list[str] | tuple[str, ...],
    world_dir: str | Path | None = None,
    cache_dir: Path = DEFAULT_CACHE,
    scale: float = 1.0,
    seed: int = 0,
) -> Path:
    """A data root holding ``downstream/<name>/`` for every set in ``names`` (written if absent).

    ``world_dir``: an existing world folder (``tbench world --out DIR``) that must hold the sets.
    Otherwise each set is written once into ``<cache_dir>/downstream-sets`` with the world's own
    writers (nine world sets, ``digits``, ``textures``) and rewritten when the world version,
    scale or seed changes.
    """
    if world_dir is not None:
        root = Path(world_dir)
        for name in names:
            if not (root / "downstream" / name / "dataset_dict.json").is_file():
                raise FileNotFoundError(
                    f"{root}/downstream/{name}/dataset_dict.json not found: --world-dir must be a "
                    "world folder (tbench world --out DIR) holding the set"
                )
        return root
    from curation import world as W

    root = cache_dir / "downstream-sets"
    for name in names:
        out = root / "downstream" / name
        marker = out / "bench_set.json"
        want = {
            "set": name,
            "scale": float(scale),
            "seed": int(seed),
            "world_version": W.WORLD_VERSION,
            "format": DOWNSTREAM_FORMAT,
        }
        if (out / "dataset_dict.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == want:
            continue
        t0 = time.perf_counter()
        tmp = out.with_name(f".{name}.tmp")
        _rmtree(tmp)
        if name in W.SETS_BY_NAME:
            sizes = W.write_set(W.SETS_BY_NAME[name], tmp, seed, scale)
        elif name == "digits":
            sizes = W.write_digits(tmp, seed, scale)
        elif name == "textures":
            sizes = W.write_textures(tmp, seed, scale)
        else:
            raise ValueError(f"no writer for downstream set {name!r}")
        (tmp / "bench_set.json").write_text(json.dumps(want))
        _rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
        log(f"wrote downstream set {name} {sizes} (scale {scale}) to {out} in {time.perf_counter() - t0:.1f}s")
    return root


def encoder_checkpoint(
    checkpoint: str | Path | None, backbone: str, image_size: int, cache_dir: Path = DEFAULT_CACHE, seed: int = 0
) -> Path:
    """``checkpoint`` if given (it must exist), else a randomly initialised ``backbone`` saved once."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path} does not exist")
        return path
    from pretrain.models import build_encoder, encoder_meta, save_encoder

    path = cache_dir / "encoders" / f"{backbone}-{image_size}px-seed{seed}.pt"
    if not path.is_file():
        torch.manual_seed(seed)
        enc = build_encoder(backbone, image_size)
        save_encoder(path, enc, encoder_meta(enc, backbone, image_size, method="none", epoch=0))
        log(f"wrote a randomly initialised {backbone} encoder ({image_size}px) to {path}")
    return path
