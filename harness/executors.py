"""What each kind of job does, as plain functions of (job, context).

These run inside Ray tasks but know nothing of Ray themselves (pre-training reaches Ray Train
through :mod:`harness.train_ray`). Each writes only under its own ``<workdir>/<kind>/<key>/``
and marks itself done last; evaluation jobs instead return their rows, which the driver writes
to the results store before marking them done, so a row exists exactly when its marker does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.core.artifacts import content_key, is_done, job_dir, mark_done, read_done
from harness.core.jobs import (
    EvalConfig,
    FeaturesConfig,
    InitConfig,
    ModelJobConfig,
    PretrainJobConfig,
    ViewJobConfig,
    WorldConfig,
    config_of,
    selection_alpha,
)
from harness.core.registry import Registry
from harness.plan import Job, row_key
from pretrain.budget import LAST, checkpoint_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """Plain values every job needs; built once by the driver and shipped to tasks."""

    spec_name: str
    workdir: Path
    world_dir: Path
    code_version: str
    num_threads: int = 1
    data_dir: Path | None = None  # real and spec-declared sets with relative paths
    run_id: str = ""  # the driver run this task belongs to (attempt records carry it)
    # A workdir on object storage (a harness.workdir.Workdir; None when the workdir is a local or
    # shared folder): ``workdir`` is then this process's local cache of it, inputs are pulled into
    # it before a job runs and its outputs pushed after (see stage_inputs and publish).
    remote: Any = None
    world_key: str | None = None  # the world job's key when the world lives in the workdir
    inputs: tuple[tuple[str, str], ...] = ()  # (kind, key) of each job the job reads
    cpu_only: bool = False  # no GPU anywhere: GPU asks are dropped and everything runs on CPU


Executor = Callable[[Job, RunContext], dict[str, Any]]
EXECUTORS: Registry[Executor] = Registry("job kind")


def out_dir(job: Job, ctx: RunContext) -> Path:
    if job.kind == "world":
        return ctx.world_dir
    return job_dir(ctx.workdir, job.kind, job.key)


def checkpoint_path(ctx: RunContext, pretrain_key: str, epoch: int | str) -> Path:
    """Where the encoder of a pre-training (or init) job for ``epoch`` (or ``LAST``) lives; the
    checkpoint of an existing model's job for ``pretrain.existing.IMPORTED``."""
    from pretrain.existing import CHECKPOINT, IMPORTED

    if epoch == IMPORTED:
        return job_dir(ctx.workdir, "model", pretrain_key) / "checkpoints" / CHECKPOINT
    kind = "init" if epoch == 0 else "pretrain"
    return job_dir(ctx.workdir, kind, pretrain_key) / "checkpoints" / checkpoint_name(epoch)


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def execute(job: Job, ctx: RunContext) -> dict[str, Any]:
    """Run ``job`` unless it is already finished; returns its summary (or rows for evals)."""
    import torch

    torch.set_num_threads(max(1, ctx.num_threads))
    d = out_dir(job, ctx)
    if job.kind != "eval" and is_done(d):
        return read_done(d)
    return EXECUTORS.get(job.kind)(job, ctx)


@EXECUTORS.register("world")
def _world(job: Job, ctx: RunContext) -> dict[str, Any]:
    from curation.world import build_world

    c = WorldConfig.from_dict(job.config)
    t0 = time.perf_counter()
    info = build_world(ctx.world_dir, seed=c.seed, scale=c.scale)
    summary = {"seconds": time.perf_counter() - t0, "version": info.get("version")}
    mark_done(ctx.world_dir, summary)
    return summary


@EXECUTORS.register("view")
def _view(job: Job, ctx: RunContext) -> dict[str, Any]:
    from curation.views import build_view
    from pretrain.existing import IMPORTED

    c = ViewJobConfig.from_dict(job.config)
    cfg = view_config(c)
    d = out_dir(job, ctx)
    t0 = time.perf_counter()
    checkpoints = {
        name: str(checkpoint_path(ctx, ident["model_key"], IMPORTED))  # declared models' imports
        for name, ident in (c.dedup_models or {}).items()
        if "model_key" in ident
    }
    manifest = build_view(
        cfg,
        ctx.world_dir,
        d,
        engine=job.resources.get("engine", "auto"),
        data_dir=ctx.data_dir,
        sets_config=c.sets_config,
        checkpoints=checkpoints,
    )
    summary = {"seconds": time.perf_counter() - t0, "size": manifest["size"], "engine": manifest.get("engine")}
    mark_done(d, summary)
    return summary


def _given(value: Any, default: Any) -> Any:
    """A job config's optional setting, or its default where the key leaves it out."""
    return default if value is None else value


def view_config(c: ViewJobConfig):
    """The :class:`curation.views.ViewConfig` of a view job's config."""
    from curation.views import ViewConfig

    return ViewConfig(
        source=c.source,
        mixture=c.mixture,
        curation_name=c.curation_name,
        curation=tuple((s["step"], {k: v for k, v in s.items() if k != "step"}) for s in c.curation),
        size=c.size,
        label_noise=c.label_noise,
        needs_labels=c.needs_labels,
        seed=c.seed,
        noise_model=_given(c.noise_model, "symmetric"),
        materialize=_given(c.materialize, "shards"),
        sources=c.sources,
        against=_given(c.against, ()),
    )


@EXECUTORS.register("pretrain")
def _pretrain(job: Job, ctx: RunContext) -> dict[str, Any]:
    from harness.train_ray import run_pretrain
    from pretrain.loop import TrainConfig, loader_workers_for

    c, r = PretrainJobConfig.from_dict(job.config), job.resources
    manifest_bytes = (job_dir(ctx.workdir, "view", job.deps[0]) / "manifest.json").read_bytes()
    view = json.loads(manifest_bytes)
    cfg = TrainConfig(
        method=c.method,
        backbone=c.backbone,
        image_size=c.image_size,
        epochs=c.epochs,  # the budget: epochs, or samples_seen (epochs then follow from the view's size)
        samples_seen=c.samples_seen,
        save_epochs=c.save_epochs,
        batch_size=c.batch_size,
        lr=c.optim.lr,
        weight_decay=c.optim.weight_decay,
        warmup_epochs=c.optim.warmup_epochs,
        warmup_fraction=c.optim.warmup_fraction,
        label_smoothing=c.optim.label_smoothing,
        seed=c.seed,
        num_classes=int(view["num_classes"] or 0),
        grad_accum=int(_given(c.grad_accum, 1)),
        precision=_given(c.precision, "auto"),
        decode=_given(c.decode, "cpu"),
        hparams=dict(c.hparams or {}),
        num_workers_loader=loader_workers_for(
            r.get("loader_workers", "auto"),
            float(r.get("cpus_per_worker", 1)),
            0.0 if ctx.cpu_only else float(r.get("gpus_per_worker", 0)),
        ),
        extra={
            "pretrain_key": job.key,
            "view_key": job.deps[0],
            "view_size": int(view["size"]),
            # the exact data: a resumed run refuses a view rebuilt with other samples
            "view_manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        },
    )
    d = out_dir(job, ctx)
    num_workers = int(r.get("num_workers", 1))
    summary = run_pretrain(
        cfg,
        job_dir(ctx.workdir, "view", job.deps[0]),
        d,
        num_workers=num_workers,
        cpus_per_worker=float(r.get("cpus_per_worker", 1)),
        gpus_per_worker=0.0 if ctx.cpu_only else float(r.get("gpus_per_worker", 0)),
        sync=(ctx.remote, job.key, job.deps[0]) if ctx.remote is not None else None,
        # one worker: the runner's task for this job holds the run's resources (harness.runner)
        launcher="in_process" if num_workers == 1 else "ray_train",
    )
    summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool, type(None)))}
    mark_done(d, summary)
    return summary


@EXECUTORS.register("init")
def _init(job: Job, ctx: RunContext) -> dict[str, Any]:
    import torch

    from pretrain.models import build_encoder, encoder_meta, save_encoder

    c = InitConfig.from_dict(job.config)
    torch.manual_seed(c.seed)
    encoder = build_encoder(c.backbone, c.image_size)
    meta = encoder_meta(encoder, c.backbone, c.image_size, method="none", epoch=0, samples_seen=0, pretrain_key=job.key)
    d = out_dir(job, ctx)
    save_encoder(d / "checkpoints" / "epoch_000.pt", encoder, meta)
    summary = {"feature_dim": meta["feature_dim"]}
    mark_done(d, summary)
    return summary


@EXECUTORS.register("model")
def _model(job: Job, ctx: RunContext) -> dict[str, Any]:
    """An existing model loaded through its framework, written as a harness checkpoint."""
    from pretrain.existing import IMPORTED, ExistingModel, import_model

    c = ModelJobConfig.from_dict(job.config)
    d = out_dir(job, ctx)
    model = ExistingModel(c.name, c.framework, c.arch, c.weights, c.image_size, dict(c.describes))
    summary = import_model(model, checkpoint_path(ctx, job.key, IMPORTED))
    if summary["sha256"] != c.sha256:  # the file changed between planning and now: its rows would lie
        raise ValueError(
            f"model {c.name!r}: {c.weights} changed since the plan hashed it "
            f"(sha256 {summary['sha256']} now, {c.sha256} planned); run again"
        )
    mark_done(d, summary)
    return summary


@EXECUTORS.register("features")
def _features(job: Job, ctx: RunContext) -> dict[str, Any]:
    from downstream.features import extract_features

    c = FeaturesConfig.from_dict(job.config)
    d = out_dir(job, ctx)
    ckpt = checkpoint_path(ctx, job.deps[0], c.epoch)
    summary = extract_features(
        ckpt,
        c.downstream,
        ctx.world_dir,
        d,
        num_threads=ctx.num_threads,
        set_config=c.set_config,
        data_dir=ctx.data_dir,
    )
    epoch = None
    if c.epoch == LAST:  # a samples_seen run's end: its epoch is in the checkpoint
        import torch

        epoch = int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["meta"]["epoch"])
    write_spectra(d, checkpoint_epoch=epoch)
    summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool, type(None)))}
    mark_done(d, summary)
    return summary


SPECTRA_FILE = "spectra.json"


def write_spectra(features_dir: Path, checkpoint_epoch: int | None = None) -> dict[str, Any]:
    """The singular-value spectrum of every cached split's features, saved beside them (with the
    checkpoint's epoch where the plan does not know it: the end of a samples_seen run)."""
    from downstream.features import SPLITS, load_features
    from downstream.spectra import summarise

    out = {split: summarise(load_features(features_dir, split)[0]) for split in SPLITS}
    if checkpoint_epoch is not None:
        for spec in out.values():
            spec["checkpoint_epoch"] = checkpoint_epoch
    tmp = features_dir / f".{SPECTRA_FILE}.tmp"
    tmp.write_text(json.dumps(out))
    tmp.replace(features_dir / SPECTRA_FILE)
    return out


def spectra_rows(job: Job, ctx: RunContext) -> list[dict[str, Any]]:
    """The `spectra` rows of a finished features job (computing its spectra if an older run did not)."""
    d = out_dir(job, ctx)
    path = d / SPECTRA_FILE
    data = json.loads(path.read_text()) if path.is_file() else write_spectra(d)
    c = job.coords
    rows = []
    for split, spec in data.items():
        key = content_key("spectrum", {"features": job.key, "split": split})
        for i, value in enumerate(spec["singular_values"], start=1):
            rows.append(
                {
                    "key": key,
                    "job_key": job.key,
                    "pretrain_key": c["pretrain_key"],
                    "checkpoint_epoch": spec.get("checkpoint_epoch", c["checkpoint_epoch"]),
                    "downstream": c["downstream"],
                    "split": split,
                    "rank_index": i,
                    "singular_value": float(value),
                    "k80": int(spec["k80"]),
                    "effective_rank": float(spec["effective_rank"]),
                    "num_examples": int(spec["n"]),
                    "feature_dim": int(spec["dim"]),
                    "method": c["method"],
                    "source": c["source"],
                }
            )
    return rows


def _eval_request(job: Job, ctx: RunContext, c: EvalConfig, ckpt: Path, needs_features: bool) -> Any:
    """The protocol's request for an eval job: its settings, the recipe's defaults where the key omits them."""
    from downstream.protocols import EvalRequest

    return EvalRequest(
        set_name=c.downstream,
        data_root=ctx.world_dir,
        checkpoint=ckpt,
        features_dir=job_dir(ctx.workdir, "features", job.deps[2]) if needs_features else None,
        shots=c.shots,
        seeds=c.seeds,
        epochs=_given(c.epochs, 5),
        lrs=_given(c.lrs, (1e-3,)),
        num_threads=ctx.num_threads,
        set_config=c.set_config,
        data_dir=ctx.data_dir,
        head_init=_given(c.head_init, "zero"),
        batch_size=int(_given(c.batch_size, 128)),
        min_steps=int(_given(c.min_steps, 0)),
        bn=_given(c.bn, "auto"),
        start_alpha=selection_alpha(c.selection),
    )


@EXECUTORS.register("eval")
def _eval(job: Job, ctx: RunContext) -> dict[str, Any]:
    """Run one protocol; return ``{"runs": rows, "curves": rows}`` for the driver to store."""
    import torch

    from downstream.protocols import PROTOCOLS

    c = EvalConfig.from_dict(job.config)
    ckpt = checkpoint_path(ctx, job.deps[0], c.epoch)
    meta = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["meta"]
    entry = PROTOCOLS.get(c.protocol)
    results = entry.run(_eval_request(job, ctx, c, ckpt, entry.needs_features))
    pretrain_size = int(meta.get("view_size", 0)) if job.coords["method"] != "none" else 0
    seen = meta.get("samples_seen", 0)
    if job.coords.get("model") is not None:  # an existing model: its declared size, else unknown
        pretrain_size, seen = job.coords.get("requested_size"), None
    base = base_row(
        job,
        ctx,
        pretrain_size=pretrain_size,
        samples_seen=None if seen is None else int(seen),
        image_size=int(meta["image_size"]),
        checkpoint_epoch=meta.get("epoch"),
        pretrain_epochs=meta.get("epochs") if job.coords["method"] != "none" else None,
    )
    device = "cpu" if entry.runs_on_cpu else device_name()  # where the protocol ran (a probe: SciPy on the CPU)
    runs, curves = [], []
    for r in results:
        key = row_key(job.key, r.shots, r.eval_seed)
        runs.append(
            {
                **base,
                "key": key,
                "status": "ok",
                "error": None,
                "shots": r.shots,
                "eval_seed": r.eval_seed,
                "num_classes": r.num_classes,
                "metric": r.metric,
                "chance": r.chance,
                "top1": r.top1,
                "balanced_acc": r.balanced_acc,
                "score": r.score,
                "loss": r.loss,
                "val_score": r.val_score,
                "train_seconds": r.train_seconds,
                "eval_seconds": r.eval_seconds,
                "device": device,
                "hparams": json.dumps(r.hparams, sort_keys=True, default=str),
            }
        )
        for point in r.curve:
            curves.append(
                {
                    "key": key,
                    "job_key": job.key,
                    "protocol": c.protocol,
                    "downstream": c.downstream,
                    "shots": r.shots,
                    "eval_seed": r.eval_seed,
                    **point,
                }
            )
    return {"runs": runs, "curves": curves}


_SIMILARITY: dict[str, dict[str, dict[str, float]]] = {}


def declared_similarity(world_dir: str) -> dict[str, dict[str, float]]:
    """``similarity[source][set]`` from the world's world.json, read once per world and process
    ({} where there is no world yet, or the file is not a world's; not remembered, so a world
    written later is read then)."""
    if world_dir not in _SIMILARITY:
        from curation.world import WORLD_FILE

        try:
            declared = json.loads((Path(world_dir) / WORLD_FILE).read_text()).get("similarity", {})
        except (OSError, ValueError, AttributeError):
            return {}
        if not isinstance(declared, dict):
            return {}
        _SIMILARITY[world_dir] = declared
    return _SIMILARITY[world_dir]


def base_row(
    job: Job,
    ctx: RunContext,
    *,
    pretrain_size: int | None = None,
    samples_seen: int | None = None,
    image_size: int | None = None,
    checkpoint_epoch: int | None = None,
    pretrain_epochs: int | None = None,
) -> dict[str, Any]:
    """The coordinates every row of an evaluation job shares. The checkpoint's own ``epoch`` and its
    run's ``epochs`` (from its meta) replace the planned ones when given: a samples_seen run's epochs
    are known only once it ran. ``samples_seen`` is what the checkpoint saw; ``samples_budget`` the
    run's budget in samples (None for a budget in epochs). ``declared_similarity`` is the world's
    ``similarity[source][set]`` from its world.json (None off the world: real, package or
    declared sets, random init, mixtures)."""
    c = job.coords
    similarity = declared_similarity(str(ctx.world_dir)).get(c["source"], {}).get(c["downstream"])
    return {
        "spec": ctx.spec_name,
        "created_at": datetime.now(UTC),
        "code_version": ctx.code_version,
        "job_key": job.key,
        "pretrain_key": c["pretrain_key"],
        "view_key": c.get("view_key"),
        "source": c["source"],
        "curation": c["curation"],
        "label_noise": c["label_noise"],
        "pretrain_size": pretrain_size,
        "method": c["method"],
        "backbone": c["backbone"],
        "pretrain_epochs": c["pretrain_epochs"] if pretrain_epochs is None else int(pretrain_epochs),
        "checkpoint_epoch": c["checkpoint_epoch"] if checkpoint_epoch is None else int(checkpoint_epoch),
        "pretrain_seed": c["pretrain_seed"],
        "samples_seen": samples_seen,
        "samples_budget": c.get("samples_budget"),
        "downstream": c["downstream"],
        "protocol": c["protocol"],
        "image_size": image_size,
        "declared_similarity": float(similarity) if isinstance(similarity, (int, float)) else None,
        # an existing model's provenance (pretrain/existing.py); None on grid rows
        **{k: c.get(k) for k in ("model", "framework", "arch", "weights", "weights_sha256")},
    }


def failed_rows(job: Job, ctx: RunContext, error: str) -> list[dict[str, Any]]:
    """One `failed` row per (shots, seed) of an evaluation that could not produce results."""
    base = base_row(job, ctx)
    c = EvalConfig.from_dict(job.config)
    return [
        {
            **base,
            "key": row_key(job.key, s, seed),
            "status": "failed",
            "error": error[-4000:],
            "shots": s,
            "eval_seed": seed,
        }
        for s in c.shots
        for seed in c.seeds
    ]


def stage_inputs(job: Job, ctx: RunContext) -> RunContext:
    """For a workdir on object storage: this process's context (its own cache as ``workdir``)
    with every input the job reads pulled into the cache: the world, views, feature caches,
    and of a pre-training run only the checkpoint the job evaluates (which may be a mid-training
    one of a run still training). A pre-training job pulls its own earlier uploads in the Ray
    Train worker (see harness.train_ray). Returns ``ctx`` unchanged for a local workdir."""
    import dataclasses

    wd = ctx.remote
    if wd is None:
        return ctx
    world_dir = wd.dir("world", ctx.world_key) if ctx.world_key else ctx.world_dir
    ctx = dataclasses.replace(ctx, workdir=wd.local, world_dir=world_dir)
    for kind, key in ctx.inputs:
        if kind == "world":
            if key == ctx.world_key:
                wd.pull("world", key)
        elif kind == "pretrain":
            epoch = getattr(config_of(job), "epoch", None)  # the checkpoint a features or eval job reads
            rel = checkpoint_path(ctx, key, epoch).relative_to(wd.dir(kind, key)).as_posix()
            wd.pull(kind, key, only=[rel], allow_partial=True)
        else:
            wd.pull(kind, key)
    return ctx


def publish(job: Job, ctx: RunContext) -> None:
    """For a workdir on object storage: upload a finished job's folder, its marker last (an
    evaluation's marker is the driver's, after its rows are stored)."""
    wd = ctx.remote
    if wd is None or job.kind == "eval":
        return
    if job.kind == "world":
        if ctx.world_key:
            wd.push("world", ctx.world_key)
        return
    wd.push(job.kind, job.key, exclude=("ray",))


def clean_unfinished(job: Job, ctx: RunContext) -> None:
    """Remove a half-written output folder of a non-resumable job before it is redone."""
    d = out_dir(job, ctx)
    if job.kind in ("view", "features", "init") and d.exists() and not is_done(d):
        shutil.rmtree(d, ignore_errors=True)
