"""What a plan costs before it runs: GPU-hours, CPU-hours and bytes on storage, per job and per kind.

:func:`estimate` turns a :class:`harness.plan.Plan` into an :class:`Estimate` (plain dataclasses;
the command line renders it, ``tbench plan`` and ``tbench submit --dry-run`` alike). Nothing is
run and nothing is downloaded; the only reads are of finished runs in the workdir (when one is
given), whose measured speeds replace the configured ones.

**Work** is counted from the plan itself: a pre-training run processes ``min(size, pool) x
epochs`` samples, or with a ``samples_seen`` budget ``samples_seen`` rounded up to whole global
batches, whatever the view's size (:mod:`pretrain.budget`); a view scans its whole source pool
(every view does: the size subset is taken after the scan); feature extraction decodes and
encodes every image of the set's train, validation and test splits; a fine-tuning style
evaluation (``finetune``, ``lp_ft``, ``scratch``) decodes the three splits once, then per
(shots, seed) and learning rate trains ``epochs`` passes over its ``k x classes`` (or full)
training examples and scores the whole validation split after every epoch, and scores test once;
a linear probe fits each distinct (shots, seed) subset once (full data: once for every seed);
zero-shot encodes test.

**Speeds** (figures) turn work into seconds. Each figure comes from one of three places, and
the estimate says which: ``measured`` (finished pre-training runs' ``metrics.json`` and
feature extractions' ``_DONE.json`` in the workdir, for the same backbone, method and image
size), ``spec`` (``resources.throughput``), or ``default`` (the tables below: each names its
basis; most are assumptions, labelled as such). GPU figures are per whole GPU at
:data:`REF_SIZE` px with bf16 autocast, for an A100-class GPU, and are scaled to other image
sizes by pixel count (an assumption). A job that asks for no GPU runs on CPUs: CPU figures
(per worker or task) apply, measured on the 2-core development machine for the test
backbones and 50x slower than the GPU figures otherwise (an assumption).

**Seconds to hours.** A pre-training run's GPU-seconds are its samples over the per-GPU figure
(linear scaling over its workers assumed); its wall-clock time is that over its GPUs. An
evaluation task holding ``g`` GPUs (a fraction, typically) runs its GPU work at ``g`` of a GPU
and its CPU work (decoding, probe fits) on its own cores while holding its share:
``wall = gpu_work / g + cpu_work`` and ``GPU-seconds = wall x g`` -- the GPU time the plan
reserves. CPU-hours are wall-clock times the CPUs each job asks for (views: the scan's
core-seconds).

**Storage**: view shards (kept samples x bytes per sample: ``resources.storage`` or
:data:`BYTES_PER_SAMPLE`; an ``index`` view writes about :data:`INDEX_BYTES` per sample),
checkpoints (each saved epoch holds the encoder, what the method exports beside it -- CLIP's
text tower -- and the resumable training state: the model and AdamW's two moments, all fp32;
plus one rolling training-state file per run), feature caches (examples x feature width x 4
bytes), results (about :data:`ROW_BYTES` per `runs` row and :data:`CURVE_BYTES` per curve
point) and the embedded world. The source shards a plan reads are listed apart (not written).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.jobs import (
    EvalConfig,
    FeaturesConfig,
    InitConfig,
    PretrainJobConfig,
    ViewJobConfig,
    WorldConfig,
    config_of,
)
from harness.core.registry import Registry
from harness.plan import KINDS, Job, Plan

REF_SIZE = 224  # the resolution the default GPU figures are for
GIB = 2**30

ROW_BYTES = 1_000  # one `runs` row in Parquet, hyper-parameters JSON included (assumption)
CURVE_BYTES = 100  # one (learning rate, epoch) point of a fine-tuning curve (assumption)
INDEX_BYTES = 64  # one kept sample of an `index` view: key, shard and label in index.parquet (assumption)
STATE_OVERHEAD = 3  # a training state holds the model and AdamW's two moments: 3 x the parameters
WORLD_BYTES_PER_SCALE = 208_000_000  # the embedded world at scale 1.0: 208 MB (measured: du of a quickstart world)
WORLD_CPU_S_PER_SCALE = 100.0  # its build at scale 1.0: 100 s in one process (measured: its _DONE.json)
INIT_CPU_S = 10.0  # building and saving a random-init encoder (assumption)
MODEL_FEATURE_DIM = 1024  # an existing model's feature width before it is loaded (assumption)


def _shape(src: Job) -> tuple[str, int]:
    """(backbone, image size) of the job providing an encoder: an existing model's arch at its spec's
    image_size, else at :data:`REF_SIZE` (its own is known once loaded)."""
    cfg = config_of(src)
    if src.kind == "model":
        return cfg.arch, int(cfg.image_size or REF_SIZE)
    return cfg.backbone, cfg.image_size


CPU_SLOWDOWN = 50.0  # CPU figure = GPU figure / this, where no CPU figure is known (assumption)
DEFAULT_CLASSES = 1000  # classes of a supervised head where the view's label count is not known


@dataclass(frozen=True)
class Default:
    """A configured speed: ``value`` at ``image_size`` px, and where the number comes from."""

    value: float
    image_size: int
    basis: str


_NVIDIA_RN50 = (
    "NVIDIA DeepLearningExamples ResNet-50 v1.5 (PyTorch, AMP, DALI loader): 16,621 img/s on "
    "8x A100-80GB = 2,078 per GPU; rounded down"
)
_OPENCLIP_B32 = (
    "OpenCLIP's ViT-B/32 on LAION-400M: 32 epochs (12.8B samples) in about 4,600 A100-40GB "
    "GPU-hours = about 775 samples/s per GPU, data loading and 128-GPU communication included"
)
_BENCH_CPU = (
    "measured: bench/pretrain_throughput.py on the 2-core development machine (test_resnet, 32 px, "
    "real shards; bench/README.md)"
)
_TEST_GPU = "assumption: a tiny model at 32 px is bound by its data loader on a GPU"

#: Pre-training samples/s per GPU, per (backbone, method).
GPU_PRETRAIN: dict[tuple[str, str], Default] = {
    ("resnet50", "supervised"): Default(2000, 224, _NVIDIA_RN50),
    ("resnet50", "simclr"): Default(
        1000, 224, "assumption: half the supervised ResNet-50 figure (two 224-px views per sample through the encoder)"
    ),
    ("resnet50", "clip"): Default(
        750,
        224,
        "assumption: about OpenCLIP's ViT-B/32 figure (the ResNet-50 tower "
        "costs about as many FLOPs per image; the same text tower)",
    ),
    ("vit_b32", "clip"): Default(775, 224, _OPENCLIP_B32),
    ("vit_b32", "supervised"): Default(
        2500,
        224,
        "assumption: ViT-B/32 (4.4 GFLOPs) trains somewhat faster than "
        "ResNet-50 (4.1 GFLOPs, less matmul-friendly) per GPU",
    ),
    ("vit_b32", "simclr"): Default(1200, 224, "assumption: half the supervised ViT-B/32 figure (two views)"),
    ("resnet18", "supervised"): Default(4000, 224, "assumption: twice the ResNet-50 figure (1.8 vs 4.1 GFLOPs)"),
    ("resnet18", "simclr"): Default(2000, 224, "assumption: half the supervised ResNet-18 figure (two views)"),
    ("resnet18", "clip"): Default(1000, 224, "assumption: bound by the CLIP text tower (as ViT-B/32's figure)"),
}
#: Forward passes (features, zero-shot, validation and test scoring), images/s per GPU.
GPU_INFERENCE: dict[str, Default] = {
    "resnet50": Default(
        6000,
        224,
        "assumption: 3x the training figure (a forward pass is about a third of a "
        "training step); decoding is counted apart, on CPUs",
    ),
    "vit_b32": Default(7500, 224, "assumption: 3x the supervised training figure"),
    "resnet18": Default(12000, 224, "assumption: 3x the supervised training figure"),
}
#: Fine-tuning training steps (forward and backward), images/s per GPU.
GPU_FINETUNE: dict[str, Default] = {
    "resnet50": Default(2000, 224, "assumption: as supervised ResNet-50 pre-training"),
    "vit_b32": Default(2500, 224, "assumption: as supervised pre-training"),
    "resnet18": Default(4000, 224, "assumption: as supervised pre-training"),
}
TEST_BACKBONES = ("test_resnet", "test_vit", "test_convnext")
for _b in TEST_BACKBONES:
    GPU_PRETRAIN[(_b, "supervised")] = Default(20000, 32, _TEST_GPU)
    GPU_PRETRAIN[(_b, "simclr")] = Default(10000, 32, _TEST_GPU)
    GPU_PRETRAIN[(_b, "clip")] = Default(10000, 32, _TEST_GPU)
    GPU_INFERENCE[_b] = Default(50000, 32, _TEST_GPU)
    GPU_FINETUNE[_b] = Default(20000, 32, _TEST_GPU)
#: CPU figures (per worker / per task) where one is known; others are the GPU figure / CPU_SLOWDOWN.
CPU_PRETRAIN: dict[tuple[str, str], Default] = {}
CPU_INFERENCE: dict[str, Default] = {}
CPU_FINETUNE: dict[str, Default] = {}
for _b in TEST_BACKBONES:
    CPU_PRETRAIN[(_b, "supervised")] = Default(686, 32, _BENCH_CPU)
    CPU_PRETRAIN[(_b, "clip")] = Default(359, 32, _BENCH_CPU)
    CPU_PRETRAIN[(_b, "simclr")] = Default(374, 32, _BENCH_CPU)
    CPU_INFERENCE[_b] = Default(
        2400,
        32,
        "measured: the quickstart's feature extractions on the 2-core development "
        "machine (test_resnet, 32 px, one thread)",
    )
    CPU_FINETUNE[_b] = Default(700, 32, "assumption: as supervised pre-training on a CPU")

DECODE_PER_CPU = Default(
    400,
    224,
    "measured: bench/loader_throughput.py, 256-px JPEG -> 224 px on 2 workers: 872 "
    "images/s (bench/README.md); larger downstream photos decode slower",
)
VIEW_SCAN_PER_CPU = Default(
    2000,
    0,
    "assumption: Python's tar parsing costs about 255 us per sample (bench/README.md), "
    "plus caption and metadata steps; object-storage reads not included",
)
VIEW_HASH_PER_CPU = Default(
    300, 0, "assumption: decoding a 256-px JPEG and its 64-bit perceptual hash (dedup) take about 3 ms on one core"
)
PROBE_EXAMPLES_PER_S = Default(
    2000,
    0,
    "assumption: examples/s of one probe fit over its whole L2 path at 2048-d "
    "features and 100 classes, scaled by width x classes",
)
PROBE_REF = 2048 * 100

#: Mean bytes of one sample in a source's shards; "default" for sources not listed.
BYTES_PER_SAMPLE: dict[str, tuple[int, str]] = {
    "real.imagenet": (110_000, "ILSVRC-2012's training tar: about 138 GB for 1,281,167 JPEGs"),
    "default": (
        40_000,
        "assumption: img2dataset at --image_size 256 --resize_mode keep_ratio (JPEG, caption, json); "
        "img2dataset's own LAION-400M example at 256x256 came to about 10 TB, ~28 KB a sample, and "
        "keep_ratio keeps the longer side",
    ),
    "world": (5_500, "measured: the embedded world's shards at scale 1.0 (175 MB for 32,000 samples)"),
}

#: Real downstream sets: (train, validation, test, classes, basis) as their usual copies come;
#: None: carved from train as the harness does (test 20% first, then validation 10%).
REAL_SET_SIZES: dict[str, tuple[int, int | None, int | None, int, str]] = {
    "real.cifar100": (50_000, None, 10_000, 100, "CIFAR-100 train/test"),
    "real.dtd": (3_760, None, 1_880, 47, "DTD split 1: train+val / test (the hub copy's layout)"),
    "real.caltech101": (8_677, None, None, 101, "Caltech-101 without the background class, train only"),
    "real.pets": (3_680, None, 3_669, 37, "Oxford-IIIT Pets trainval/test"),
    "real.domainnet_real": (120_906, None, 52_041, 345, "DomainNet real_train/real_test"),
    "real.domainnet_clipart": (33_525, None, 14_604, 345, "DomainNet clipart_train/clipart_test"),
    "real.eurosat": (16_200, 5_400, 5_400, 10, "EuroSAT RGB as timm/eurosat-rgb splits it"),
    "real.cameratraps": (
        13_553,
        3_484,
        15_827,
        15,
        "assumption: Caltech Camera Traps CCT-20 (train, cis val, cis test); your layout decides",
    ),
    "real.cassava": (21_397, None, None, 5, "Kaggle cassava-leaf-disease train images (test labels not public)"),
}
CUSTOM_SET_SIZE = (
    10_000,
    None,
    2_000,
    100,
    "assumption: a set declared in the spec (its size is not known before it is read)",
)

#: Parameters of the encoder (timm, no classifier), its feature width, and what each method adds
#: around it (CLIP: text tower and projections; SimCLR: projection MLP), computed once with timm
#: and open_clip on the meta device at 224 px (test backbones: 32 px). Other backbones are built
#: on the meta device (no memory, no download) when first needed.
ENCODER_PARAMS: dict[str, tuple[int, int]] = {
    "resnet18": (11_176_512, 512),
    "resnet50": (23_508_032, 2048),
    "vit_b32": (87_455_232, 768),
    "test_resnet": (372_688, 96),
    "test_vit": (257_856, 64),
    "test_convnext": (207_128, 64),
}
EXTRA_PARAMS: dict[tuple[str, str], int] = {
    ("resnet50", "clip"): 65_787_393,
    ("vit_b32", "clip"): 63_821_313,
    ("resnet18", "clip"): 17_603_841,
    ("resnet50", "simclr"): 4_458_624,
    ("vit_b32", "simclr"): 689_024,
    ("resnet18", "simclr"): 328_320,
    ("test_resnet", "clip"): 3_274_497,
    ("test_vit", "clip"): 3_272_449,
    ("test_convnext", "clip"): 3_272_449,
    ("test_resnet", "simclr"): 21_728,
    ("test_vit", "simclr"): 12_480,
    ("test_convnext", "simclr"): 12_480,
}


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Figure:
    """One speed the estimate used, and where it came from."""

    name: str  # e.g. "pretrain resnet50/clip @224px"
    value: float
    unit: str
    source: str  # "measured", "spec" or "default"
    basis: str


@dataclass
class JobCost:
    kind: str
    key: str
    gpu_seconds: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    bytes: int = 0


@dataclass
class KindCost:
    kind: str
    jobs: int = 0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    bytes: int = 0
    longest_hours: float = 0.0  # the longest single job's wall-clock time

    def add(self, c: JobCost) -> None:
        self.jobs += 1
        self.gpu_hours += c.gpu_seconds / 3600
        self.cpu_hours += c.cpu_seconds / 3600
        self.bytes += c.bytes
        self.longest_hours = max(self.longest_hours, c.wall_seconds / 3600)


@dataclass
class Estimate:
    """The cost of a plan: per kind, in total, the figures used and the assumptions made."""

    spec: str
    kinds: list[KindCost]
    total: KindCost
    figures: list[Figure]
    storage: list[tuple[str, int, str]]  # (what, bytes, how it was counted)
    inputs: list[tuple[str, int, int]]  # (source, samples, bytes) read by views, not written
    assumptions: list[str]
    jobs: dict[str, JobCost] = field(default_factory=dict)
    protocols: list[KindCost] = field(default_factory=list)  # the eval kind split by protocol

    @property
    def input_bytes(self) -> int:
        return sum(b for _, _, b in self.inputs)

    def kind(self, name: str) -> KindCost:
        for k in self.kinds:
            if k.kind == name:
                return k
        return KindCost(name)

    def figure_sources(self) -> dict[str, str]:
        return {f.name: f.source for f in self.figures}


@dataclass(frozen=True)
class SetSize:
    train: int
    validation: int
    test: int
    classes: int
    basis: str

    @property
    def total(self) -> int:
        return self.train + self.validation + self.test


# ------------------------------------------------------------------------------------------ lookups


def _carve(train: int, val: int | None, test: int | None, classes: int, basis: str) -> SetSize:
    if test is None:
        test = int(round(0.2 * train))
        train -= test
    if val is None:
        val = int(round(0.1 * train))
        train -= val
    return SetSize(train, val, test, classes, basis)


def set_size(name: str, spec) -> SetSize:
    """Split sizes of a downstream set: real sets from :data:`REAL_SET_SIZES`, world and package
    sets from the world's declarations at the spec's scale, declared sets an assumption."""
    if name in REAL_SET_SIZES:
        return _carve(*REAL_SET_SIZES[name])
    if name in spec.downstream.custom_sets:
        return _carve(*CUSTOM_SET_SIZE)
    from curation import world as W

    scale = spec.world.scale
    if name in W.SETS_BY_NAME:
        d = W.SETS_BY_NAME[name]
        counts = W._split_counts(len(d.classes), scale, d.class_weights)
        return SetSize(
            int(counts["train"].sum()),
            int(counts["validation"].sum()),
            int(counts["test"].sum()),
            len(d.classes),
            f"the embedded world at scale {scale:g}",
        )
    classes = len(getattr(W, "TEXTURE_PHOTOS", ())) if name == "textures" else 10
    per = {s: max(1, int(round(p * scale))) * classes for s, p in W.SPLIT_PER_CLASS.items()}
    return SetSize(per["train"], per["validation"], per["test"], classes, f"package set at world scale {scale:g}")


def source_pool(name: str, spec) -> tuple[int | None, str]:
    """Samples in a source's pool (what a view scans), and how that is known."""
    from curation import world as W
    from curation.sources import resolve_source

    if name in W.SOURCES_BY_NAME:
        return W._pool_size(W.SOURCES_BY_NAME[name], spec.world.scale), "world"
    try:
        entry = resolve_source(name, spec.sources)
    except (KeyError, ValueError):
        return None, "unknown"
    return entry.size, "declared" if entry.size is not None else "unknown"


def encoder_params(backbone: str, image_size: int) -> tuple[int, int]:
    """(parameters, feature width) of a backbone's encoder: the table, else timm on the meta device."""
    if backbone in ENCODER_PARAMS:
        return ENCODER_PARAMS[backbone]
    import torch

    from pretrain.models import build_encoder

    with torch.device("meta"):
        enc = build_encoder(backbone, image_size)
    ENCODER_PARAMS[backbone] = (sum(p.numel() for p in enc.parameters()), int(enc.num_features))
    return ENCODER_PARAMS[backbone]


def _clip_tower_dim(hparams: dict[str, Any]) -> int | None:
    """The feature width of a CLIP run whose transferred encoder is open_clip's whole image tower."""
    model = hparams.get("model")
    if not model or str(model).startswith("tbench-"):
        return None
    try:
        import open_clip

        cfg = open_clip.get_model_config(model)
        return None if cfg is None or "timm_model_name" in cfg.get("vision_cfg", {}) else int(cfg["embed_dim"])
    except (ImportError, KeyError, TypeError, ValueError):  # pragma: no cover - an open_clip without that config
        return None


class _Figures:
    """Looks speeds up (measured, then spec, then default) and remembers every one it handed out."""

    def __init__(self, spec, measured: dict[tuple, float]):
        self.tp = spec.resources.throughput
        self.measured = measured
        self.used: dict[str, Figure] = {}

    def _use(self, name: str, value: float, unit: str, source: str, basis: str) -> float:
        self.used.setdefault(name, Figure(name, value, unit, source, basis))
        return value

    @staticmethod
    def _scaled(d: Default, size: int) -> float:
        return d.value * (d.image_size / size) ** 2 if d.image_size and size else d.value

    def model(self, what: str, backbone: str, size: int, gpu: bool, method: str | None = None) -> float:
        """images (samples)/s per GPU (``gpu``) or per CPU worker of ``what`` in pretrain/inference/finetune."""
        dev = "GPU" if gpu else "CPU"
        label = f"{what} {backbone}{'/' + method if method else ''} @{size}px"
        unit = f"{'samples' if what == 'pretrain' else 'images'}/s per {'GPU' if gpu else 'CPU worker'}"
        mkey = (what, dev, backbone, method, size)
        if mkey in self.measured:
            return self._use(label, self.measured[mkey], unit, "measured", "finished runs in the workdir")
        given = {"pretrain": self.tp.pretrain, "inference": self.tp.inference, "finetune": self.tp.finetune}[what]
        for exact in (True, False):  # the spec's figure for this image size, else one for any size
            for r in given:
                if (
                    r.backbone == backbone
                    and getattr(r, "method", method) == method
                    and (r.image_size == size if exact else r.image_size is None)
                ):
                    v = r.samples_per_s if what == "pretrain" else r.images_per_s
                    return self._use(label, v, unit, "spec", f"resources.throughput.{what}")
        table = {
            "pretrain": (GPU_PRETRAIN, CPU_PRETRAIN),
            "inference": (GPU_INFERENCE, CPU_INFERENCE),
            "finetune": (GPU_FINETUNE, CPU_FINETUNE),
        }[what]
        key = (backbone, method) if what == "pretrain" else backbone
        if not gpu and key in table[1]:
            d = table[1][key]
            return self._use(label, self._scaled(d, size), unit, "default", self._basis(d, size))
        d = table[0].get(key)
        basis = None
        if d is None and what == "pretrain":  # a method without a figure: the backbone's supervised one, halved
            sup = table[0].get((backbone, "supervised"))
            if sup is not None:
                d = Default(
                    sup.value / 2,
                    sup.image_size,
                    f"assumption: half of {backbone}/supervised's figure (no figure for {method})",
                )
        if d is None:
            d = Default(1000, REF_SIZE, f"assumption: no figure for {backbone}; a generic 1,000 at {REF_SIZE} px")
        basis = self._basis(d, size)
        v = self._scaled(d, size)
        if not gpu:
            v /= CPU_SLOWDOWN
            basis = f"the GPU figure / {CPU_SLOWDOWN:g} (assumption); GPU: {basis}"
        return self._use(label, v, unit, "default", basis)

    def _basis(self, d: Default, size: int) -> str:
        scaled = (
            f" (given at {d.image_size} px, scaled by pixel count)" if d.image_size and size != d.image_size else ""
        )
        return d.basis + scaled

    def scalar(self, field_name: str, default: Default, label: str, unit: str) -> float:
        v = getattr(self.tp, field_name)
        if v is not None:
            return self._use(label, v, unit, "spec", f"resources.throughput.{field_name}")
        return self._use(label, default.value, unit, "default", default.basis)


# ------------------------------------------------------------------------------------------ measured


def measured_figures(plan: Plan, workdir: Path | None) -> dict[tuple, float]:
    """Speeds measured by the plan's finished runs in ``workdir``: pre-training (``metrics.json``'s
    per-epoch samples/s, else ``_DONE.json``'s totals) and feature extraction (``_DONE.json``'s
    images/s). Keys ``(what, "GPU"|"CPU", backbone, method|None, image_size)``; values per GPU (per
    worker on CPUs), pooled over runs weighted by time. The runs are assumed to have used the
    resources the spec asks for now (neither summary records its hardware)."""
    try:
        if workdir is None or not Path(workdir).is_dir():
            return {}
    except TypeError:  # not a local path (an object-store workdir): nothing measured here
        return {}
    from harness.core.artifacts import DONE, job_dir

    work: dict[tuple, list[float]] = {}  # key -> [items, device-seconds]
    for job in plan.of_kind("pretrain"):
        d = job_dir(Path(workdir), "pretrain", job.key)
        if not (d / DONE).is_file():
            continue
        r, cfg = job.resources, PretrainJobConfig.from_dict(job.config)
        gpus = r.get("num_workers", 1) * r.get("gpus_per_worker", 0)
        devices = gpus if gpus > 0 else r.get("num_workers", 1)
        samples = seconds = 0.0
        try:
            epochs = json.loads((d / "metrics.json").read_text()).get("epochs", [])
            for e in epochs:
                samples += float(e["samples_per_second"]) * float(e["seconds"])
                seconds += float(e["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            samples = seconds = 0.0
        if seconds <= 0:
            try:
                done = json.loads((d / DONE).read_text())
                samples = float(done["epochs_trained"]) * float(done["steps_per_epoch"]) * cfg.batch_size
                seconds = float(done["seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        if samples <= 0 or seconds <= 0:
            continue
        key = (
            "pretrain",
            "GPU" if gpus > 0 else "CPU",
            cfg.backbone,
            cfg.method,
            cfg.image_size,
        )
        acc = work.setdefault(key, [0.0, 0.0])
        acc[0] += samples
        acc[1] += seconds * devices
    for job in plan.of_kind("features"):
        d = job_dir(Path(workdir), "features", job.key)
        if not (d / DONE).is_file():
            continue
        try:
            done = json.loads((d / DONE).read_text())
            ips, backbone, size = float(done["images_per_second"]), done["backbone"], int(done["image_size"])
            images = float(sum((done.get("counts") or {}).values())) or ips * float(done["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not (ips > 0 and math.isfinite(ips)):
            continue
        # a task holding a fraction of a GPU measured its own pace: conservative as a per-GPU figure
        key = ("inference", "GPU" if job.resources.get("num_gpus", 0) > 0 else "CPU", backbone, None, size)
        acc = work.setdefault(key, [0.0, 0.0])
        acc[0] += images
        acc[1] += images / ips
    return {k: n / s for k, (n, s) in work.items() if s > 0}


# ------------------------------------------------------------------------------------------ the estimate


def _bytes_per_sample(source: str, spec) -> tuple[int, str]:
    given = spec.resources.storage.bytes_per_sample
    if source in given:
        return given[source], "resources.storage.bytes_per_sample"
    from curation import world as W

    if source in W.SOURCES_BY_NAME:
        return BYTES_PER_SAMPLE["world"]
    if "default" in given:
        return given["default"], "resources.storage.bytes_per_sample (default)"
    return BYTES_PER_SAMPLE.get(source, BYTES_PER_SAMPLE["default"])


def _pretrain_samples(cfg: PretrainJobConfig, view_size: int) -> int:
    """Samples a pre-training run processes: ``view_size x epochs``, or its ``samples_seen`` budget
    rounded up to whole global batches (:func:`pretrain.budget.run_length`; independent of the size)."""
    if cfg.samples_seen is not None:
        return math.ceil(cfg.samples_seen / cfg.batch_size) * cfg.batch_size
    return view_size * cfg.epochs


def _head_classes(source: str) -> int:
    """Classes of a supervised head: the world's concept vocabulary for world sources, else
    :data:`DEFAULT_CLASSES` (ImageNet's 1000; caption-derived vocabularies are not known ahead)."""
    from curation import world as W

    if source in W.SOURCES_BY_NAME:
        from curation import render as R

        return len(R.CONCEPTS)
    return DEFAULT_CLASSES


def _task(device_s: float, host_s: float, res: dict[str, Any], c: JobCost) -> None:
    g, cpus = float(res.get("num_gpus", 0) or 0), float(res.get("num_cpus", 1) or 1)
    wall = (device_s / g if g > 0 else device_s) + host_s
    c.wall_seconds, c.gpu_seconds, c.cpu_seconds = wall, wall * g, wall * cpus


@dataclass
class _Costing:
    """What the per-kind cost functions share while one plan is costed: the figures, the eval
    resources, and the tallies the estimate reports (storage by what, source inputs, pools kept)."""

    plan: Plan
    figs: _Figures
    assumptions: list[str] = field(default_factory=list)
    storage: dict[str, list] = field(default_factory=dict)  # what -> [bytes, how]
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (samples, bytes) read
    unknown_pools: set[str] = field(default_factory=set)
    pools: dict[str, int] = field(default_factory=dict)  # view key -> samples kept (for pre-training)
    tally: dict[str, float] = field(default_factory=lambda: {"few_train": 0.0, "few_val": 0.0})

    def __post_init__(self) -> None:
        spec = self.plan.spec
        self.eres = {"num_gpus": spec.resources.eval.num_gpus, "num_cpus": spec.resources.eval.num_cpus}
        self.gpu_eval = self.eres["num_gpus"] > 0
        self.decode = self.figs.scalar(
            "decode_per_cpu", DECODE_PER_CPU, "decode + resize downstream images", "images/s per CPU core"
        )
        self.probe_rate = self.figs.scalar(
            "probe_examples_per_s",
            PROBE_EXAMPLES_PER_S,
            "linear-probe fit (2048-d, 100 classes)",
            "examples/s per task",
        )

    @property
    def spec(self):
        return self.plan.spec

    def store(self, what: str, n: int, how: str) -> None:
        s = self.storage.setdefault(what, [0, how])
        s[0] += int(n)

    def note(self, said: str) -> None:
        self.assumptions.append(said)

    def feature_dim(self, src: Job) -> int:
        cfg = config_of(src)
        if src.kind == "pretrain" and cfg.method == "clip":
            dim = _clip_tower_dim(cfg.hparams or {})
            if dim is not None:
                return dim
        if src.kind == "model":  # an existing model's width is known once it is loaded
            return MODEL_FEATURE_DIM
        return encoder_params(cfg.backbone, cfg.image_size)[1]


CostFunction = Callable[[Job, _Costing], JobCost]
#: One cost function per job kind (:data:`harness.plan.KINDS`), as :data:`harness.executors.EXECUTORS`
#: holds one executor per kind; :func:`estimate` looks each job's up.
COSTS: Registry[CostFunction] = Registry("job kind")


def estimate(plan: Plan, workdir: Path | None = None) -> Estimate:
    """The cost of every job of ``plan``, per kind and in total (see the module docstring)."""
    spec = plan.spec
    cx = _Costing(plan, _Figures(spec, measured_figures(plan, workdir)))
    costs = {job.key: COSTS.get(job.kind)(job, cx) for job in plan.jobs.values()}
    kinds = []
    total = KindCost("total")
    for kind in KINDS:
        kc = KindCost(kind)
        for c in costs.values():
            if c.kind == kind:
                kc.add(c)
                total.add(c)
        if kc.jobs:
            kinds.append(kc)
    by_protocol: dict[str, KindCost] = {}
    for job in plan.of_kind("eval"):
        name = EvalConfig.from_dict(job.config).protocol
        by_protocol.setdefault(name, KindCost(name)).add(costs[job.key])
    _note_assumptions(cx)
    st = [(what, int(b), how) for what, (b, how) in cx.storage.items()]
    return Estimate(
        spec.name,
        kinds,
        total,
        list(cx.figs.used.values()),
        st,
        [(n, s, b) for n, (s, b) in sorted(cx.inputs.items())],
        cx.assumptions,
        costs,
        list(by_protocol.values()),
    )


def _note_assumptions(cx: _Costing) -> None:
    """What the figures and counts rest on, in words."""
    plan, spec, note = cx.plan, cx.spec, cx.note
    runs = [PretrainJobConfig.from_dict(j.config) for j in plan.of_kind("pretrain")]
    feature_sets = {FeaturesConfig.from_dict(j.config).downstream for j in plan.of_kind("features")}
    if spec.resources.pretrain.gpus_per_worker == 0 and plan.of_kind("pretrain"):
        note("pre-training asks for no GPU: CPU figures apply (per Ray Train worker)")
    if not cx.gpu_eval and (plan.of_kind("eval") or plan.of_kind("features")):
        note("evaluations ask for no GPU: CPU figures apply (per task)")
    note(
        "GPU figures are per A100-class GPU with bf16 autocast at 224 px unless measured; other resolutions "
        "scale by pixel count; a run's GPUs are assumed to scale linearly"
    )
    if any(r.epochs is not None for r in runs):
        note(
            "pre-training processes min(size, pool) x epochs samples; curation may keep fewer, so runs on curated "
            "views may be cheaper than shown"
        )
    if any(r.samples_seen is not None for r in runs):
        note(
            "a pre-training run with a samples_seen budget processes samples_seen rounded up to whole global "
            "batches, whatever its view's size"
        )
    note(
        "every view scans its source's whole pool, whatever its size (the size subset is taken after the scan); "
        "its CPU-hours are the scan's core-seconds, spread by Ray Data over the free cores (no wall-clock given)"
    )
    note("CPU-hours of the other jobs are the CPUs they ask for times their wall-clock time (reserved, not busy)")
    if cx.unknown_pools:
        note(
            f"pool size unknown for {', '.join(sorted(cx.unknown_pools))}: the requested size is used as the pool "
            "(declare `size` under `sources` to count the scan)"
        )
    if cx.gpu_eval:
        note(
            f"an evaluation task holds {cx.eres['num_gpus']:g} GPU while it decodes images and fits probes on its "
            f"{cx.eres['num_cpus']:g} CPU(s): that time counts as reserved GPU time"
        )
    few = cx.tally["few_train"] + cx.tally["few_val"]
    if few > 0:
        note(
            f"fine-tuning scores the whole validation split after every epoch of every learning rate: "
            f"{cx.tally['few_val'] / few:.0%} of the few-shot fine-tuning GPU work is that scoring"
        )
    if any(s in spec.downstream.custom_sets for s in feature_sets):
        note(
            f"declared sets are assumed to hold {CUSTOM_SET_SIZE[0]:,} training and {CUSTOM_SET_SIZE[2]:,} test "
            f"examples of {CUSTOM_SET_SIZE[3]} classes"
        )
    real_sets = sorted(feature_sets & set(REAL_SET_SIZES))
    if real_sets:
        note(
            "real downstream sets: split sizes of their usual copies ("
            + "; ".join(
                f"{s.removeprefix('real.')} {set_size(s, spec).train:,}/{set_size(s, spec).validation:,}/"
                f"{set_size(s, spec).test:,}"
                for s in real_sets
            )
            + " train/val/test after carving)"
        )
    if any(REAL_SET_SIZES[s][4].startswith("assumption") for s in real_sets):
        note("real.cameratraps has no standard copy: CCT-20's split sizes are assumed")
    if cx.inputs:
        note("source shards read by the views are listed apart: they are inputs, not written by the plan")


# ------------------------------------------------------------------------------------------ per job kind


@COSTS.register("world")
def _world_cost(job: Job, cx: _Costing) -> JobCost:
    c = JobCost(job.kind, job.key)
    scale = WorldConfig.from_dict(job.config).scale
    c.cpu_seconds = c.wall_seconds = WORLD_CPU_S_PER_SCALE * scale
    c.bytes = int(WORLD_BYTES_PER_SCALE * scale)
    cx.store("embedded world", c.bytes, "measured at scale 1.0, times the scale")
    return c


def _view_pool(cfg: ViewJobConfig, cx: _Costing) -> int:
    """Samples a view scans: its sources' pools (the requested size where a pool is unknown);
    records the source shards read as inputs."""
    pool = 0
    for n in list(cfg.mixture) if cfg.mixture else [cfg.source]:
        p, how = source_pool(n, cx.spec)
        if p is None:
            cx.unknown_pools.add(n)
            p = cfg.size
        pool += p
        if how != "world":
            bps, _ = _bytes_per_sample(n, cx.spec)
            cx.inputs[n] = (p, p * bps)
    return pool


@COSTS.register("view")
def _view_cost(job: Job, cx: _Costing) -> JobCost:
    c = JobCost(job.kind, job.key)
    cfg, figs = ViewJobConfig.from_dict(job.config), cx.figs
    pool = _view_pool(cfg, cx)
    kept = min(cfg.size, pool)
    cx.pools[job.key] = kept
    hashes = any(st["step"] == "dedup" for st in cfg.curation)
    rate = (
        figs.scalar(
            "view_hash_per_cpu", VIEW_HASH_PER_CPU, "view scan decoding images (dedup)", "samples/s per CPU core"
        )
        if hashes
        else figs.scalar(
            "view_scan_per_cpu", VIEW_SCAN_PER_CPU, "view scan (no image decoding)", "samples/s per CPU core"
        )
    )
    c.cpu_seconds = pool / rate  # core-seconds; Ray Data spreads them over the cluster's free cores,
    c.wall_seconds = 0.0  # so a view's wall-clock time depends on those and is not estimated
    c.gpu_seconds = (
        c.cpu_seconds * float(job.resources.get("num_gpus", 0) or 0) / float(job.resources.get("num_cpus", 1) or 1)
    )
    if cfg.materialize == "index":
        c.bytes = kept * INDEX_BYTES
        cx.store("views (index)", c.bytes, f"{INDEX_BYTES} B per kept sample")
    else:
        weights = cfg.mixture or {cfg.source: 1.0}
        total_w = sum(weights.values())
        bps = sum(_bytes_per_sample(n, cx.spec)[0] * w / total_w for n, w in weights.items())
        c.bytes = int(kept * bps)
        cx.store("views (shards)", c.bytes, "kept samples x bytes per sample of the source")
    return c


def _checkpoint_bytes(job: Job, cfg: PretrainJobConfig) -> int:
    """Per saved epoch: encoder + exported towers + model and AdamW moments (fp32); plus one
    rolling training state per run."""
    enc, dim = encoder_params(cfg.backbone, cfg.image_size)
    method = cfg.method
    if method == "supervised":
        classes = _head_classes(job.coords["source"])
        extra = dim * classes + classes
    else:
        extra = EXTRA_PARAMS.get((cfg.backbone, method), 0)
    exported = extra if method == "clip" else 0
    model = enc + extra
    per_ckpt = 4 * (enc + exported + STATE_OVERHEAD * model)
    kept = len(cfg.save_epochs) + (cfg.samples_seen is not None)  # + a samples_seen run's last.pt
    return per_ckpt * kept + 4 * STATE_OVERHEAD * model


@COSTS.register("pretrain")
def _pretrain_cost(job: Job, cx: _Costing) -> JobCost:
    c = JobCost(job.kind, job.key)
    cfg, r = PretrainJobConfig.from_dict(job.config), job.resources
    workers, gpw = r.get("num_workers", 1), r.get("gpus_per_worker", 0)
    cpw = r.get("cpus_per_worker", 1)
    samples = _pretrain_samples(cfg, cx.pools.get(job.deps[0], job.coords["requested_size"]))
    rate = cx.figs.model("pretrain", cfg.backbone, cfg.image_size, gpw > 0, cfg.method)
    if gpw > 0:
        c.gpu_seconds = samples / rate
        c.wall_seconds = c.gpu_seconds / (workers * gpw)
    else:
        c.wall_seconds = samples / (rate * workers)
    c.cpu_seconds = c.wall_seconds * workers * cpw
    c.bytes = _checkpoint_bytes(job, cfg)
    cx.store(
        "checkpoints",
        c.bytes,
        "per saved epoch: encoder + exported towers + model and AdamW moments "
        "(fp32); plus one rolling training state per run",
    )
    return c


@COSTS.register("init")
def _init_cost(job: Job, cx: _Costing) -> JobCost:
    c = JobCost(job.kind, job.key)
    cfg = InitConfig.from_dict(job.config)
    enc, _ = encoder_params(cfg.backbone, cfg.image_size)
    c.cpu_seconds = c.wall_seconds = INIT_CPU_S
    c.bytes = 4 * enc
    cx.store("checkpoints", c.bytes, "")
    return c


@COSTS.register("model")
def _model_cost(job: Job, cx: _Costing) -> JobCost:
    c = JobCost(job.kind, job.key)
    c.cpu_seconds = c.wall_seconds = INIT_CPU_S
    said = (
        f"existing models: loading and writing one takes {INIT_CPU_S:g} s, features {MODEL_FEATURE_DIM} "
        f"wide, {REF_SIZE} px unless the spec gives image_size (assumptions: known once loaded)"
    )
    if said not in cx.assumptions:
        cx.note(said)
    return c


@COSTS.register("features")
def _features_cost(job: Job, cx: _Costing) -> JobCost:
    c = JobCost(job.kind, job.key)
    src = cx.plan.jobs[job.deps[0]]
    sz = set_size(FeaturesConfig.from_dict(job.config).downstream, cx.spec)
    backbone, size = _shape(src)
    rate = cx.figs.model("inference", backbone, size, cx.gpu_eval)
    _task(sz.total / rate, sz.total / (cx.decode * cx.eres["num_cpus"]), cx.eres, c)
    c.bytes = sz.total * (cx.feature_dim(src) * 4 + 8)
    cx.store("feature caches", c.bytes, "examples x feature width x 4 bytes (float32) + labels")
    return c


@COSTS.register("eval")
def _eval_cost(job: Job, cx: _Costing) -> JobCost:
    c = JobCost(job.kind, job.key)
    src = cx.plan.jobs[job.deps[0]]
    cfg = EvalConfig.from_dict(job.config)
    sz = set_size(cfg.downstream, cx.spec)
    backbone, size = _shape(src)
    dim = cx.feature_dim(src)
    protocol = cfg.protocol
    shots, seeds = cfg.shots, cfg.seeds
    rows = len(shots) * len(seeds)

    def n_train(k: int | None) -> int:
        return sz.train if k is None else k * sz.classes

    def probes() -> float:  # identical subsets (full data across seeds) are fitted once
        return sum(
            n_train(k) / cx.probe_rate * (dim * sz.classes) / PROBE_REF * (1 if k is None else len(seeds))
            for k in shots
        )

    device = host = 0.0
    if protocol == "linear":
        host = probes()
    elif protocol == "zeroshot":
        device = sz.test / cx.figs.model("inference", backbone, size, cx.gpu_eval)
        host = sz.test / (cx.decode * cx.eres["num_cpus"])
    else:  # finetune, lp_ft, scratch
        device = _finetune_device_seconds(
            cfg,
            sz,
            cx.figs.model("finetune", backbone, size, cx.gpu_eval),
            cx.figs.model("inference", backbone, size, cx.gpu_eval),
            cx.tally,
        )
        host = sz.total / (cx.decode * cx.eres["num_cpus"])
        if protocol == "lp_ft":
            host += probes()
        c.bytes += rows * _lr_count(cfg) * (1 if cfg.epochs is None else cfg.epochs) * CURVE_BYTES
    _task(device, host, {**cx.eres, **job.resources}, c)  # a linear probe's job holds no GPU (harness.plan)
    c.bytes += rows * ROW_BYTES
    cx.store("results (runs, curves)", c.bytes, f"~{ROW_BYTES} B per row, ~{CURVE_BYTES} B per curve point")
    return c


def _lr_count(cfg: EvalConfig) -> int:
    """Learning rates an evaluation tries (1 for protocols that do not train)."""
    return 1 if cfg.lrs is None else len(cfg.lrs)


def _finetune_device_seconds(cfg: EvalConfig, sz: SetSize, ft: float, inf: float, tally: dict[str, float]) -> float:
    """GPU work of a fine-tuning style evaluation: per (shots, seed) and learning rate, ``epochs``
    passes over the training examples and a scoring of validation after each, then test once."""
    shots, seeds = cfg.shots, cfg.seeds
    lrs, epochs = _lr_count(cfg), 1 if cfg.epochs is None else cfg.epochs

    def n_train(k: int | None) -> int:
        return sz.train if k is None else k * sz.classes

    per_run = [lrs * epochs * (n_train(k) / ft + sz.validation / inf) + sz.test / inf for k in shots]
    for k in shots:
        if k is not None:  # few-shot: how much of the GPU work is scoring validation after each epoch
            tally["few_train"] += lrs * epochs * n_train(k) / ft * len(seeds)
            tally["few_val"] += lrs * epochs * sz.validation / inf * len(seeds)
    return sum(per_run) * len(seeds)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def human_hours(h: float) -> str:
    if h == 0:
        return "0"
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    if h < 0.1:
        return f"{h * 60:.1f} min"
    return f"{h:,.0f}" if h >= 100 else f"{h:,.1f}"
