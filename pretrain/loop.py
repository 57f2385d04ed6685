"""The pre-training loop: one loop for every method, plain torch, resumable at epoch boundaries.

``train_loop`` is called once per rank (directly for a single process, or by the Ray edge in
``harness/train_ray.py``); the distributed context comes in as a :class:`DistInfo`, never from
globals. Outputs under ``out_dir``:

- ``checkpoints/epoch_{e:03d}.pt`` for each ``e`` in ``save_epochs`` (epoch 0 is the
  initialisation), and for a run whose budget is in samples seen also ``checkpoints/last.pt`` (its
  end, whatever its number of epochs; see :mod:`pretrain.budget`), written by
  :func:`pretrain.models.save_encoder`: the encoder and the metadata evaluations need (method,
  normalisation, resolution, feature width; CLIP's tokenizer and text tower; the run's ``epochs``
  and ``samples_budget``), plus under ``train`` the whole training state of that epoch, as below;
- ``state/last.pt``: the training state after the last finished epoch: the whole model (heads
  too), optimizer, schedule, gradient scaler, RNG state, epoch, data position and history (plain
  tensors and containers, loadable with ``weights_only=True``),
- ``metrics.json``: one record per epoch and the summary of the latest call.

Everything is written by rank 0, atomically. A call that finds ``state/last.pt`` resumes from it
and trains only the missing epochs; with ``num_workers_loader=0`` on CPU the result is bitwise the
same as an uninterrupted run. The data position is the epoch: an epoch's sample order and
augmentations are a function of (seed, epoch) alone (see :mod:`pretrain.data`), so a resumed run
reads exactly what the uninterrupted one would have.

Budget: ``epochs`` passes over the view, or ``samples_seen`` samples (:mod:`pretrain.budget`):
``ceil(samples_seen / batch_size)`` steps in as many passes as that takes, the last stopped
mid-pass; the learning-rate schedule spans the run's steps either way.

Precision: ``auto`` is bf16 autocast on a GPU (with channels-last memory) and fp32 on a CPU;
``fp16`` adds a gradient scaler (GPUs without bf16); ``fp32`` turns autocast off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from harness.core.atomic import atomic_write_text
from pretrain.budget import LAST, checkpoint_name, run_length
from pretrain.data import DECODE_MODES, PIPELINES, make_train_loader, normalize, read_view, steps_per_epoch
from pretrain.device_decode import for_device
from pretrain.memory_view import make_memory_loader
from pretrain.methods import METHODS, LossContext
from pretrain.models import BACKBONES, atomic_torch_save, save_encoder
from pretrain.optim import adamw_kwargs, cosine_with_warmup, param_groups

logger = logging.getLogger(__name__)

STATE_FORMAT = 2
# Fields that must match for a saved state to be resumed (the rest only changes outputs' metadata).
_RESUME_FIELDS = (
    "method",
    "backbone",
    "image_size",
    "epochs",
    "samples_seen",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "warmup_fraction",
    "label_smoothing",
    "seed",
    "num_classes",
    "grad_accum",
    "hparams",
    "precision",
)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a pre-training run (the harness hashes it into the run's key).

    ``batch_size`` is the global batch: per step, summed over ranks and accumulation micro-steps,
    whatever the number of workers. The budget is ``epochs`` or ``samples_seen`` (exactly one; see
    :mod:`pretrain.budget`). ``hparams`` are the method's own settings (see
    :attr:`pretrain.methods.Method.hparams`); contrastive methods draw negatives from one
    micro-batch across workers, so ``grad_accum > 1`` gives them fewer negatives. ``save_epochs``
    lists the epochs whose encoder is kept (0 = the initialisation); with ``samples_seen`` they must
    be whole epochs before the last (the number of epochs is known once the view is read), and the
    end is always kept as ``last.pt``. ``extra`` is stored in every checkpoint's meta (e.g. ``pretrain_key``);
    keep it to JSON-like values, as it is also written to ``metrics.json`` and the resumable state.
    """

    method: str
    backbone: str
    image_size: int
    epochs: int | None = None
    save_epochs: tuple[int, ...] = ()
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    warmup_fraction: float | None = None  # warm-up as a share of all steps (replaces warmup_epochs)
    label_smoothing: float = 0.0
    seed: int = 0
    num_classes: int = 0
    num_workers_loader: int = 0
    grad_accum: int = 1
    hparams: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"
    samples_seen: int | None = None  # a budget in samples seen instead of epochs
    extra: dict[str, Any] = field(default_factory=dict)
    decode: str = (
        "cpu"  # "device": the loader ships encoded images, decoded batch-wise on the device (pretrain.device_decode);
        # "memory": the view is decoded once and held in memory (pretrain.memory_view)
    )

    def __post_init__(self) -> None:
        method = METHODS.get(self.method)  # unknown names raise with the valid ones
        BACKBONES.get(self.backbone)
        object.__setattr__(self, "hparams", method.resolve(self.hparams, self.method))
        if self.decode not in DECODE_MODES:
            raise ValueError(f"TrainConfig.decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if (self.epochs is None) == (self.samples_seen is None):
            raise ValueError(
                "TrainConfig needs exactly one budget: epochs or samples_seen, got "
                f"epochs={self.epochs!r} and samples_seen={self.samples_seen!r}"
            )
        budget = "epochs" if self.samples_seen is None else "samples_seen"
        for name in ("image_size", budget, "batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers_loader < 0:
            raise ValueError(f"TrainConfig.num_workers_loader must be >= 0, got {self.num_workers_loader}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("TrainConfig needs lr > 0, weight_decay >= 0 and warmup_epochs >= 0")
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"TrainConfig.warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        save = tuple(sorted({int(e) for e in self.save_epochs}))
        bad = [e for e in save if e < 0 or (self.epochs is not None and e > self.epochs)]
        if bad:
            raise ValueError(
                f"TrainConfig.save_epochs {bad} outside 0..epochs={self.epochs}"
                if self.epochs is not None
                else f"TrainConfig.save_epochs {bad}: epochs are >= 0"
            )
        object.__setattr__(self, "save_epochs", save)
        if METHODS.get(self.method).needs_labels and self.num_classes < 2:
            raise ValueError(
                f"method {self.method!r} trains on labels: TrainConfig.num_classes must be >= 2, got {self.num_classes}"
            )


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: plain values read once at the edge."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# --------------------------------------------------------------------------- optimisation


# --------------------------------------------------------------------------- files


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def state_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "state" / "last.pt"


def checkpoint_path(out_dir: str | Path, epoch: int | str) -> Path:
    """The checkpoint of ``epoch`` (an int, or :data:`pretrain.budget.LAST`)."""
    return Path(out_dir) / "checkpoints" / checkpoint_name(epoch)


class ToDevice:
    """A loader batch onto the device: tensors copied (non-blocking), ``uint8`` images normalised there.

    Images cross the bus as ``uint8`` (a quarter of float32's bytes) and become float on the
    device, channels-last: the layout the convolutions run fastest in, on a GPU and on a CPU (a
    training step of ``test_resnet`` at 32 px, batch 64, one thread: 0.75 ms an image against 0.97).
    """

    def __init__(self, image_keys: tuple[str, ...], mean: list[float], std: list[float], device: torch.device):
        self.image_keys, self.device = tuple(image_keys), device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for k in self.image_keys:
            out[k] = normalize(out[k], self.mean, self.std).contiguous(memory_format=torch.channels_last)
        return out


#: Most loader processes ``auto`` gives a GPU worker (decoding beyond this rarely pays on one GPU).
MAX_AUTO_LOADER_WORKERS = 8


def loader_workers_for(setting: int | str, cpus_per_worker: float, gpus_per_worker: float) -> int:
    """Decoding processes per training worker: ``auto`` is ``min(8, cpus_per_worker - 1)`` for a
    worker holding a GPU (one CPU stays with the training process) and 0 on a CPU, where the
    loader shares the cores the model trains on; an int is taken as it is."""
    if setting == "auto":
        if gpus_per_worker <= 0:
            return 0
        return max(0, min(MAX_AUTO_LOADER_WORKERS, int(cpus_per_worker) - 1))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ValueError(f"loader_workers must be 'auto' or an int >= 0, got {setting!r}")
    return setting


def amp_dtype_for(precision: str, on_cuda: bool) -> torch.dtype | None:
    """The autocast dtype for a precision setting (``None``: no autocast)."""
    if precision == "auto":
        return torch.bfloat16 if on_cuda else None
    if precision == "fp16" and not on_cuda:
        raise ValueError("precision 'fp16' needs a GPU (its gradient scaler is CUDA's); use 'bf16' or 'fp32' on a CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def _load_state(path: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: unknown state format {state.get('format')!r} (expected {STATE_FORMAT})")
    saved, now = state["config"], asdict(cfg)
    diff = [k for k in _RESUME_FIELDS if saved.get(k) != now[k]]
    data = "view_manifest_sha256"
    saved_data = (saved.get("extra") or {}).get(data, now["extra"].get(data))
    if saved_data != now["extra"].get(data):
        raise ValueError(
            f"{path} was trained on another build of its view (manifest sha256 {saved_data} vs "
            f"{now['extra'].get(data)}: the view was rebuilt with other samples); use a fresh out_dir"
        )
    if diff:
        raise ValueError(
            f"{path} was written by a different run (fields {diff} differ: "
            f"{ {k: saved.get(k) for k in diff} } vs { {k: now[k] for k in diff} }); use a fresh out_dir"
        )
    return state


# --------------------------------------------------------------------------- the loop


def run_schedule(cfg: TrainConfig, num_samples: int) -> tuple[int, int, int]:
    """``(steps per epoch, total steps, epochs)`` of ``cfg`` on a view of ``num_samples`` samples.

    An epoch is a pass of whole global batches over the view; a ``samples_seen`` budget takes
    ``ceil(samples_seen / batch_size)`` steps, its last epoch possibly partial (:mod:`pretrain.budget`).
    """
    steps = steps_per_epoch(num_samples, cfg.batch_size)
    if cfg.samples_seen is None:
        return steps, steps * cfg.epochs, cfg.epochs
    total, epochs = run_length(cfg.samples_seen, steps, cfg.batch_size)
    late = [e for e in cfg.save_epochs if e >= epochs]
    if late:
        raise ValueError(
            f"save_epochs (checkpoint_epochs) {late} are not whole epochs before the end of this run: samples_seen="
            f"{cfg.samples_seen} at batch {cfg.batch_size} is {total} steps, {epochs} epoch(s) of at most {steps} "
            f"steps over this view of {num_samples} samples; give epochs below {epochs} (the end is always saved)"
        )
    return steps, total, epochs


@contextlib.contextmanager
def exclusive_out_dir(out_dir: Path, held: bool = True):
    """Hold an exclusive lock on ``out_dir`` (``fcntl.flock`` on ``out_dir/.train.lock``) while training.

    A driver killed mid-run can leave its Ray instance finishing the pre-training it had started;
    a new run of the same job must not train into the same folder at the same time. The second
    trainer waits here until the first ends (the lock dies with its process), then resumes from
    (or finds finished) what the first wrote. ``flock`` is advisory and node-local: on a shared
    file system across nodes it only protects trainers on the same node.
    """
    if not held:
        yield
        return
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".train.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another process is training into %s; waiting for it to finish", out_dir)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


TRAIN_LOG = "train_log.jsonl"


def log_event(out_dir: Path, event: str, **fields: Any) -> None:
    """Append one JSON line to ``out_dir/train_log.jsonl``: every start (with the epoch it resumes
    from) and every finished epoch of every attempt, so a run's history across restarts (a killed
    driver, a restored worker) can be read back; see :func:`read_train_log`."""
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), **fields})
    with open(Path(out_dir) / TRAIN_LOG, "a") as f:
        f.write(line + "\n")


def warmup_steps_for(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up steps: ``warmup_fraction`` of all steps when set (the same share of a
    samples_seen run whatever its view's size), else ``warmup_epochs`` passes over the view."""
    if cfg.warmup_fraction is not None:
        return round(cfg.warmup_fraction * total_steps)
    return min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)


def read_train_log(out_dir: str | Path) -> list[dict[str, Any]]:
    """The events of ``out_dir/train_log.jsonl`` (a torn last line from a killed process is dropped)."""
    path = Path(out_dir) / TRAIN_LOG
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


class RankFailed(RuntimeError):
    """Another rank's reader could not produce a batch; this rank stops with it."""


def agreed_batches(batches: Iterable[Any], rank: int, world_size: int, group: Any = None) -> Iterator[Any]:
    """Yield ``batches`` while every rank has one; a rank whose reader fails makes every rank raise.

    Before each step the ranks all-reduce one small CPU tensor of states (has a batch, ran out,
    failed) over ``group`` (a gloo group: no device synchronisation), ahead of the step's own
    collectives, so a rank whose reader raises (e.g. :class:`pretrain.data.ReaderStalled`) takes
    the others down with it instead of leaving them in an all-reduce until the NCCL timeout.
    With one process the batches pass straight through.
    """
    if world_size == 1:
        yield from batches
        return
    it = iter(batches)
    while True:
        state = torch.zeros(world_size, dtype=torch.int64)
        error: BaseException | None = None
        try:
            batch = next(it)
            state[rank] = 2
        except StopIteration:
            batch, state[rank] = None, 1
        except Exception as exn:  # the reader's error; re-raised after the others are told
            batch, error = None, exn
        torch_dist.all_reduce(state, group=group)
        if error is not None:
            raise error
        failed = [r for r in range(world_size) if state[r] == 0]
        if failed:
            raise RankFailed(
                f"rank {rank} stops: the reader of rank(s) {failed} could not produce a batch (see their error)"
            )
        if bool((state == 1).all()):
            return
        if bool((state == 1).any()):
            raise RankFailed(
                f"ranks disagree on the epoch's length: rank(s) {[r for r in range(world_size) if state[r] == 1]} "
                "ran out of batches before the others"
            )
        yield batch


def _flag_group(world_size: int, on_cuda: bool) -> Any:
    """The group :func:`agreed_batches` all-reduces over: the default one unless it is NCCL (then a gloo one)."""
    if world_size == 1:
        return None
    return torch_dist.new_group(backend="gloo") if on_cuda or torch_dist.get_backend() != "gloo" else None


def train_loop(
    cfg: TrainConfig,
    view_dir: str | Path,
    out_dir: str | Path,
    dist: DistInfo = DistInfo(),
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Pre-train ``cfg.method`` on the view at ``view_dir``; returns a summary of this call.

    With ``dist.world_size > 1`` the default process group must exist (Ray Train sets it up) or
    is created from the ``env://`` variables; the model is wrapped in DDP. ``report`` is called on
    every rank after every epoch with that epoch's metrics (averaged over ranks).
    """
    with exclusive_out_dir(Path(out_dir), dist.is_main):
        return _train_loop(cfg, view_dir, out_dir, dist, report)


@dataclass
class _Run:
    """What the phases of one call of the loop share: set-up (:func:`_set_up`), resume
    (:func:`_resume`), the data (:func:`_attach_data`), one epoch (:func:`_train_epoch`) and its
    save (:func:`_save_epoch`)."""

    cfg: TrainConfig
    dist: DistInfo
    out_dir: Path
    method: Any
    device: torch.device
    micro_batch: int
    steps: int  # per epoch
    total_steps: int
    epochs: int
    model: nn.Module
    meta_base: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp_dtype: torch.dtype | None
    start_epoch: int = 0
    samples_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    ddp_model: nn.Module | None = None
    loader: Any = None
    to_device: ToDevice | None = None
    flag_group: Any = None

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def meta(self, epoch: int, train_loss: float | None) -> dict[str, Any]:
        cfg = self.cfg
        return {
            **self.meta_base,
            "method": cfg.method,
            "epoch": epoch,
            "epochs": self.epochs,
            "samples_seen": self.samples_seen,
            "samples_budget": cfg.samples_seen,
            "train_loss": train_loss,
            "hparams": dict(cfg.hparams),
            **cfg.extra,
        }

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def _train_loop(
    cfg: TrainConfig,
    view_dir: str | Path,
    out_dir: str | Path,
    dist: DistInfo,
    report: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    run = _set_up(cfg, view_dir, Path(out_dir), dist)
    _resume(run)
    if run.start_epoch == 0 and 0 in cfg.save_epochs and dist.is_main:
        save_encoder(
            checkpoint_path(run.out_dir, 0), run.model.encoder, run.meta(0, None), **run.method.export(run.model)
        )
    _attach_data(run, view_dir)
    epoch_loss = float("nan")
    for epoch in range(run.start_epoch + 1, run.epochs + 1):
        record = _train_epoch(run, epoch)
        epoch_loss = record["loss"]
        if dist.is_main:
            _save_epoch(run, epoch, record)
        if report is not None:
            report(record)
    if run.history:
        epoch_loss = run.history[-1]["loss"]
    return _finish(run, epoch_loss, t_start)


def _set_up(cfg: TrainConfig, view_dir: str | Path, out_dir: Path, dist: DistInfo) -> _Run:
    """The device, the process group, the batch split and schedule over the view, and the model,
    optimizer, schedule and gradient scaler (seeded identically on every rank; DDP also broadcasts
    rank 0's weights)."""
    method = METHODS.get(cfg.method)
    device = torch.device(dist.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # for precision fp32
    if dist.world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if on_cuda else "gloo", rank=dist.rank, world_size=dist.world_size)

    # Batches: the global batch is fixed; ranks x accumulation steps share it evenly.
    shares = dist.world_size * cfg.grad_accum
    if cfg.batch_size % shares:
        raise ValueError(
            f"batch_size={cfg.batch_size} must divide evenly over world_size={dist.world_size} x "
            f"grad_accum={cfg.grad_accum}"
        )
    view = read_view(view_dir)
    steps, total_steps, epochs = run_schedule(cfg, view.num_samples)
    warmup_steps = warmup_steps_for(cfg, steps, total_steps)

    torch.manual_seed(cfg.seed)
    model = method.build(
        cfg.backbone, cfg.image_size, cfg.num_classes, label_smoothing=cfg.label_smoothing, **cfg.hparams
    )
    meta_base = method.meta(model, cfg.backbone, cfg.image_size)
    if dist.world_size > 1 and on_cuda and method.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device).to(memory_format=torch.channels_last)  # as ToDevice lays out the images
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), **adamw_kwargs(device)
    )  # fused on CUDA and CPU
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup_steps, total_steps))
    amp_dtype = amp_dtype_for(cfg.precision, on_cuda)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    return _Run(
        cfg,
        dist,
        out_dir,
        method,
        device,
        cfg.batch_size // shares,
        steps,
        total_steps,
        epochs,
        model,
        meta_base,
        optimizer,
        scheduler,
        scaler,
        amp_dtype,
    )


def _resume(run: _Run) -> None:
    """Load ``state/last.pt`` when there is one (model, optimizer, schedule, scaler, RNG, epoch,
    samples seen, history), then log the start (and, on rank 0, epochs saved but never logged)."""
    cfg, dist, out_dir = run.cfg, run.dist, run.out_dir
    state = _load_state(state_path(out_dir), cfg)
    if state is not None:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if run.on_cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], run.device)
        run.start_epoch, run.samples_seen = int(state["epoch"]), int(state["samples_seen"])
        run.history = list(state["history"])
        run.resumed_from = run.start_epoch
        if dist.is_main:
            logger.info(
                "resuming %s from epoch %d of %d (%s)", cfg.method, run.start_epoch, run.epochs, state_path(out_dir)
            )
    del state
    if dist.is_main:  # one line per start and per finished epoch: how a run went across restarts
        if run.resumed_from:  # a process killed between saving an epoch's state and logging it
            logged = {e.get("epoch") for e in read_train_log(out_dir) if e.get("event") == "epoch"}
            for e in range(1, run.start_epoch + 1):
                if e not in logged:
                    log_event(out_dir, "epoch", epoch=e, recovered=True)
        log_event(
            out_dir,
            "start",
            from_epoch=run.start_epoch,
            epochs=run.epochs,
            total_steps=run.total_steps,
            samples_budget=cfg.samples_seen,
        )


def _attach_data(run: _Run, view_dir: str | Path) -> None:
    """The DDP wrapper (several ranks), this rank's loader over the view, the batch's move to the
    device and the group ranks agree on each batch over."""
    dist, method, on_cuda = run.dist, run.method, run.on_cuda
    run.ddp_model = run.model
    if dist.world_size > 1:
        run.ddp_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.index is not None else None
        )
    pipeline = PIPELINES.get(method.pipeline)
    run.loader = _make_loader(run, view_dir)
    run.to_device = ToDevice(pipeline.image_keys, run.meta_base["mean"], run.meta_base["std"], run.device)
    run.flag_group = _flag_group(dist.world_size, on_cuda)


def _make_loader(run: _Run, view_dir: str | Path) -> Any:
    """This rank's loader: the view held in memory (``decode: memory``) or streamed from its shards
    (``cpu``, or ``device``: decoded batch-wise in this process)."""
    cfg, dist, method, on_cuda = run.cfg, run.dist, run.method, run.on_cuda
    common = {
        "pipeline": method.pipeline,
        "batch_size": run.micro_batch,
        "num_batches": run.steps * cfg.grad_accum,
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "rank": dist.rank,
        "world_size": dist.world_size,
        # num_classes: a label outside the classifier's range is a skipped bad sample, not an index error
        "pipeline_options": {"num_classes": cfg.num_classes or None, **method.pipeline_options(run.model, cfg.hparams)},
    }
    if cfg.decode == "memory":
        return make_memory_loader(view_dir, **common)
    return make_train_loader(
        view_dir,
        **common,
        num_workers=cfg.num_workers_loader,
        pin_memory=on_cuda,
        prefetch_factor=4 if on_cuda else None,  # batches each loader process keeps ready ahead of the GPU
        batch_decode=for_device(run.device) if cfg.decode == "device" else None,
    )


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train one epoch (the last of a samples_seen run may be partial); returns its record (metrics
    averaged over ranks), also appended to the history."""
    cfg, dist, loader = run.cfg, run.dist, run.loader
    t0 = time.perf_counter()
    run.ddp_model.train()
    loader.set_epoch(epoch)
    skipped_before = loader.skipped
    epoch_steps = min(run.steps, run.total_steps - (epoch - 1) * run.steps)
    n = epoch_steps * cfg.grad_accum  # micro-batches this epoch (every rank alike)
    sums = _run_steps(run, loader if n == len(loader) else islice(loader, n))
    means = torch.stack([sums[k] for k in sorted(sums)]) / n
    skipped = torch.tensor([float(loader.skipped - skipped_before)], device=run.device)
    if dist.world_size > 1:
        torch_dist.all_reduce(means)
        means /= dist.world_size
        torch_dist.all_reduce(skipped)
    values = dict(zip(sorted(sums), means.tolist()))
    epoch_loss = values["loss"]
    if not math.isfinite(epoch_loss):
        raise FloatingPointError(f"{cfg.method} loss is {epoch_loss} in epoch {epoch}; lower lr or check the data")
    run.samples_seen += epoch_steps * cfg.batch_size
    seconds = time.perf_counter() - t0
    record = {
        "epoch": epoch,
        **values,
        "lr": run.scheduler.get_last_lr()[0],
        "seconds": seconds,
        "samples_per_second": epoch_steps * cfg.batch_size / seconds,
        "steps": epoch_steps,
        "samples_seen": run.samples_seen,
        "skipped": int(skipped.item()),
    }
    run.history.append(record)
    return record


def _run_steps(run: _Run, batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """The epoch's optimisation steps over ``batches`` (micro-batches, ``grad_accum`` per step);
    returns the sums of the loss's outputs over micro-batches."""
    cfg, dist, model, ddp_model, method = run.cfg, run.dist, run.model, run.ddp_model, run.method
    loss_ctx = LossContext(rank=dist.rank, world_size=dist.world_size)
    sums: dict[str, torch.Tensor] = {}
    run.optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(agreed_batches(batches, dist.rank, dist.world_size, run.flag_group)):
        batch = run.to_device(batch)
        last_micro = (i + 1) % cfg.grad_accum == 0
        # Skip the gradient all-reduce on all but the last micro-step of an accumulation.
        sync = contextlib.nullcontext() if last_micro or ddp_model is model else ddp_model.no_sync()
        with sync:
            with run.autocast():
                out = method.loss(ddp_model, batch, loss_ctx)
            run.scaler.scale(out["loss"] / cfg.grad_accum).backward()
        for k, v in out.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=run.device)
            sums[k] = sums.get(k, 0) + v
        if last_micro:
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
            if method.after_step is not None:
                method.after_step(model)
    return sums


def _train_state(run: _Run, epoch: int) -> dict[str, Any]:
    """Everything a restart resumes from after ``epoch`` (plain tensors and containers)."""
    cfg = run.cfg
    rng = {"torch": torch.get_rng_state()}
    if run.on_cuda:
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    return {
        "format": STATE_FORMAT,
        "config": asdict(cfg),
        "epoch": epoch,
        "samples_seen": run.samples_seen,
        # Where the data stream stands: epoch e is finished; epoch e + 1 replays from (seed, e + 1).
        "data": {
            "seed": cfg.seed,
            "epochs_done": epoch,
            "steps_per_epoch": run.steps,
            "micro_batches_per_epoch": run.steps * cfg.grad_accum,
            "skipped": sum(r["skipped"] for r in run.history),
        },
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "rng": rng,
        "history": run.history,
    }


def _save_epoch(run: _Run, epoch: int, record: dict[str, Any]) -> None:
    """Rank 0 after an epoch: its checkpoints (a requested epoch; the end of a samples_seen run),
    the resumable state, ``metrics.json`` and the train log's line."""
    cfg, out_dir = run.cfg, run.out_dir
    logger.info(
        "%s epoch %d/%d: %s",
        cfg.method,
        epoch,
        run.epochs,
        {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()},
    )
    train_state = _train_state(run, epoch)
    kept: list[int | str] = [epoch] if epoch in cfg.save_epochs else []
    if cfg.samples_seen is not None and epoch == run.epochs:
        kept.append(LAST)  # the end of a samples_seen run, whatever its number of epochs
    for e in kept:
        save_encoder(
            checkpoint_path(out_dir, e),
            run.model.encoder,
            run.meta(epoch, record["loss"]),
            **run.method.export(run.model),
            train=train_state,
        )
    atomic_torch_save(train_state, state_path(out_dir))
    _write_json(out_dir / "metrics.json", {"config": asdict(cfg), "epochs": run.history})
    log_event(out_dir, "epoch", epoch=epoch, saved=bool(kept), steps=record["steps"], samples_seen=run.samples_seen)


def _finish(run: _Run, epoch_loss: float, t_start: float) -> dict[str, Any]:
    """The call's summary (also into ``metrics.json`` on rank 0)."""
    cfg = run.cfg
    summary = {
        "epochs_trained": run.epochs - run.start_epoch,
        "epochs": run.epochs,
        "total_steps": run.total_steps,
        "samples_budget": cfg.samples_seen,
        "final_loss": epoch_loss,
        "samples_seen": run.samples_seen,
        "seconds": time.perf_counter() - t_start,
        "resumed_from": run.resumed_from,
        "steps_per_epoch": run.steps,
        "skipped": sum(r.get("skipped", 0) for r in run.history),
        "checkpoints": [
            str(checkpoint_path(run.out_dir, e))
            for e in list(cfg.save_epochs) + ([LAST] if cfg.samples_seen is not None else [])
        ],
    }
    if run.dist.is_main:
        _write_json(run.out_dir / "metrics.json", {"config": asdict(cfg), "epochs": run.history, "summary": summary})
    return summary
