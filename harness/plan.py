"""The planner: a spec expanded into a graph of jobs, each with a content key.

Job kinds, in dependency order:

- ``world``    writes the embedded world (sources as webdataset shards, downstream sets on disk);
- ``view``     builds the exact pre-training data of a run (curation, labels, noise, size, mixture);
- ``pretrain`` trains a method on a view and saves checkpoints at the requested epochs (one run per
               backbone of the block: ``grids[].backbones``, else ``pretrain.backbone``); its budget
               is ``epochs`` or ``samples_seen`` (the config holds the one given: a run's epochs
               under ``samples_seen`` depend on its view's size, so its last checkpoint is
               :data:`pretrain.budget.LAST`, its epoch filled into rows when evaluated);
- ``init``     a randomly initialised encoder, one per (backbone the grid trains, pre-training seed
               it uses): the `linear` floor every transfer number is read against, with as many
               initialisations as the configurations have seeds; the first per backbone is where
               `scratch` starts (it draws its weights from the eval seed, so it runs once);
- ``model``    an existing model (the spec's ``models:``) loaded through its framework and written as
               a harness checkpoint (pretrain/existing.py); its key holds the weights' content hash,
               so :func:`make_plan` reads (hashes) local weight files, the one I/O it does;
- ``features`` extracts an encoder's features once per (checkpoint epoch, downstream set);
- ``eval``     one protocol on one set for one checkpoint, every shot count and seed
               (``zeroshot`` only on checkpoints with a text tower, ``scratch`` only from ``init``).

Combinations that make no sense are pruned with the reason kept, so ``tbench plan`` can show it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from harness.core.artifacts import content_key, is_done, job_dir
from harness.core.jobs import (
    EvalConfig,
    FeaturesConfig,
    InitConfig,
    ModelJobConfig,
    OptimJobConfig,
    PretrainJobConfig,
    ViewJobConfig,
    WorldConfig,
    config_of,
    selection_setting,
)
from harness.spec import FULL, Spec
from pretrain.budget import LAST
from pretrain.existing import DEFAULT_METHOD, IMPORTED, ExistingModel, weights_identity

KINDS = ("world", "view", "pretrain", "init", "model", "features", "eval")


@dataclass(frozen=True)
class Job:
    """One node of the job graph."""

    kind: str
    key: str
    config: dict[str, Any]
    deps: tuple[str, ...] = ()
    coords: dict[str, Any] = field(default_factory=dict)  # results coordinates carried into rows
    resources: dict[str, float] = field(default_factory=dict)
    rows: int = 0  # result rows this job writes to the `runs` table

    @property
    def label(self) -> str:
        c = self.coords
        if self.kind == "view":
            return f"view {c['source']}/{c['curation']}/n={c['requested_size']}/noise={c['label_noise']}"
        if self.kind == "pretrain":
            cfg = PretrainJobConfig.from_dict(self.config)
            budget = f"{cfg.epochs} epochs" if cfg.epochs is not None else f"{cfg.samples_seen} samples seen"
            return (
                f"pretrain {c['method']}/{c['backbone']} on {c['source']}/{c['curation']}/n={c['requested_size']} "
                f"seed={c['pretrain_seed']} · {budget}"
            )
        if self.kind in ("features", "eval"):
            cfg = config_of(self)  # a FeaturesConfig or an EvalConfig
            what, epoch = getattr(cfg, "protocol", "features"), cfg.epoch
            if c.get("model") is not None:
                return f"{what} {c['downstream']} ← model {c['model']} ({c['framework']}:{c['arch']})"
            return f"{what} {c['downstream']} ← {c['method']}/{c['backbone']}:{c['source']} " + (
                "last" if epoch == LAST else f"ep{epoch}"
            )
        if self.kind == "model":
            return f"model {c['model']} ({c['framework']}:{c['arch']}, {c['weights']})"
        return f"{self.kind} {self.key[:8]}"


@dataclass
class Plan:
    spec: Spec
    jobs: dict[str, Job]  # in dependency order
    pruned: list[tuple[str, str]]  # (what, why)

    def counts(self) -> Counter:
        return Counter(j.kind for j in self.jobs.values())

    def planned_rows(self) -> int:
        return sum(j.rows for j in self.jobs.values())

    def of_kind(self, kind: str) -> list[Job]:
        return [j for j in self.jobs.values() if j.kind == kind]

    def expected_rows(self) -> list[dict[str, Any]]:
        """Every `runs` row the plan will write, one per (evaluation job, shots, seed): its row
        key and coordinates (the report lists those missing from the store)."""
        out = []
        for job in self.of_kind("eval"):
            c, cfg = job.coords, EvalConfig.from_dict(job.config)
            for shots in cfg.shots:
                for seed in cfg.seeds:
                    out.append(
                        {
                            "key": row_key(job.key, shots, seed),
                            "job_key": job.key,
                            "label": job.label,
                            "protocol": cfg.protocol,
                            "downstream": c.get("downstream"),
                            "shots": shots,
                            "eval_seed": seed,
                            "method": c.get("method"),
                            "source": c.get("source"),
                            "checkpoint_epoch": c.get("checkpoint_epoch"),
                        }
                    )
        return out

    def done_keys(self, workdir: Path, store_keys: set[str] | None = None) -> set[str]:
        """Keys of finished jobs: marker present (and, for evals, their part in the store)."""
        done = set()
        for job in self.jobs.values():
            if not is_done(job_dir(workdir, job.kind, job.key)):
                continue
            if job.kind == "eval" and store_keys is not None and job.key not in store_keys:
                continue
            done.add(job.key)
        return done


def row_key(job_key: str, shots: int | None, seed: int) -> str:
    """The key of the `runs` row an evaluation job writes for one (shots, seed)."""
    return content_key("row", {"job": job_key, "shots": shots, "seed": seed})


def _shots_value(s: int | str) -> int | None:
    return None if s == FULL else int(s)


def _as_list(against: Any, all_sets: list[str]) -> list[str]:
    if not against:
        return []
    if against == "all":
        return list(all_sets)
    return [against] if isinstance(against, str) else list(against)


def model_job(model: ExistingModel) -> Job:
    """The job importing an existing model. Its key holds the framework, architecture, the weights as
    given and their content hash (read here: :class:`pretrain.existing.ModelError` if they are missing),
    the name and ``describes``: two files never share rows, and rows carry the spec's provenance."""
    ident = weights_identity(model)
    described = {k: v for k, v in model.describes.items() if v is not None}
    cfg = ModelJobConfig(
        name=model.name,
        framework=model.framework,
        arch=model.arch,
        weights=model.weights,
        sha256=ident["sha256"],
        describes=described,
        image_size=model.image_size,
    ).to_dict()
    coords = {
        "source": described.get("source", model.name),
        "curation": "none",
        "requested_size": described.get("pretrain_size"),
        "label_noise": 0.0,
        "method": described.get("method", DEFAULT_METHOD),
        "backbone": model.arch,
        "pretrain_seed": 0,
        "pretrain_epochs": None,
        "samples_budget": None,
        "view_key": None,
        "model": model.name,
        "framework": model.framework,
        "arch": model.arch,
        "weights": model.weights,
        "weights_sha256": ident["sha256"],
    }
    return Job("model", content_key("model", cfg), cfg, (), coords, {"num_cpus": 1})


def make_plan(spec: Spec) -> Plan:
    """Expand ``spec`` into its job graph (a pure function of the spec; its only I/O hashes the
    weight files of existing models, see :func:`model_job`).

    One phase per job kind, in dependency order, each adding its jobs to a shared
    :class:`_Planning`: the world, views and their pre-training runs (each run's evaluated
    epochs become checkpoints), existing models, random-init floors, then features and
    evaluations per (checkpoint, downstream set)."""
    st = _Planning(spec)
    _plan_world(st)
    _plan_views_and_runs(st)
    _plan_models(st)
    _plan_floors(st)
    _plan_evaluations(st)
    return Plan(spec, st.jobs, st.pruned)


@dataclass
class _Planning:
    """What the planning phases share: the jobs so far (in dependency order), pruned combinations
    and the checkpoints evaluations are planned on."""

    spec: Spec
    jobs: dict[str, Job] = field(default_factory=dict)
    pruned: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    world: Job | None = None
    checkpoints: list[tuple[Job, int | str]] = field(default_factory=list)  # (job providing encoders, epoch or LAST)
    # keys of the random-init jobs: one per (backbone the grid trains, pre-training seed it uses)
    floors: set[str] = field(default_factory=set)
    scratch_floors: set[str] = field(default_factory=set)  # the one per backbone `scratch` starts from

    def add(self, job: Job) -> Job:
        """``job``, or the job already planned under its key."""
        self.jobs.setdefault(job.key, job)
        return self.jobs[job.key]

    def prune_once(self, what: str, why: str) -> None:
        if (what, why) not in self.pruned:
            self.pruned.append((what, why))


def _plan_world(st: _Planning) -> None:
    from curation.world import WORLD_VERSION

    spec = st.spec
    world_cfg = WorldConfig(seed=spec.world.seed, scale=spec.world.scale, version=WORLD_VERSION).to_dict()
    st.world = st.add(Job("world", content_key("world", world_cfg), world_cfg, resources={"num_cpus": 1}))


# ------------------------------------------------------------------------------- views and pre-training


def _plan_views_and_runs(st: _Planning) -> None:
    """Per grid block: one view per (source, curation, method's labels, noise, size), and on it one
    pre-training run per (backbone, seed); noise on a method without labels is pruned."""
    from pretrain.methods import METHODS

    pt = st.spec.pretrain
    for grid in pt.grids:
        for source, curation, method, noise in product(grid.sources, grid.curation, grid.methods, grid.label_noise):
            needs_labels = METHODS.get(method).needs_labels
            if noise > 0 and not needs_labels:
                st.pruned.append(
                    (
                        f"{method} on {source}/{curation} with label noise {noise}",
                        f"label noise applies to methods trained on labels; {method} uses none",
                    )
                )
                continue
            for size in grid.sizes:
                view = _plan_view(st, grid, source, curation, noise, size, needs_labels)
                for backbone, seed in ((b, sd) for b in pt.backbones_for(grid) for sd in grid.seeds):
                    _plan_run(st, grid, view, method, backbone, seed)


def _view_config(
    spec: Spec,
    grid: Any,
    source: str,
    curation: str,
    noise: float,
    size: int,
    needs_labels: bool,
    embedders: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The view job's config; ``embedders`` are the variant's dedup models (:func:`_dedup_models`)."""
    pt = spec.pretrain
    mixtures = {m.name: m.weights for m in pt.mixtures}
    steps = spec.curation[curation]
    declared = {n: spec.sources[n] for n in (mixtures.get(source) or {source: 1}) if n in spec.sources}
    dedups = [st for st in steps if st.step == "dedup"]
    against = sorted({a for st in dedups for a in _as_list(st.params.get("against"), spec.downstream.sets)})
    custom = {a: spec.downstream.set_config(a) for a in against if spec.downstream.set_config(a) is not None}
    # Settings added later join the key only when not at their default (None: left out of the
    # dict), so the keys (and finished views) of older specs stay.
    return ViewJobConfig(
        source=None if source in mixtures else source,
        mixture=dict(sorted(mixtures[source].items())) if source in mixtures else None,
        curation_name=curation,
        curation=tuple(s.model_dump() for s in steps),
        size=size,
        label_noise=noise,
        needs_labels=needs_labels,
        seed=pt.data_seed,
        noise_model=grid.noise_model if grid.noise_model != "symmetric" and noise > 0 else None,
        materialize=pt.view_format if pt.view_format != "shards" else None,
        sources=declared or None,
        against=tuple(sorted(spec.downstream.sets))
        if any(st.params.get("against") == "all" for st in dedups)
        else None,
        sets_config=custom or None,
        # the embedding models' identities (a declared model's key, a file's sha256) key the view
        dedup_models={n: e["identity"] for n, e in embedders.items()} or None,
    ).to_dict()


def _dedup_models(spec: Spec, curation: str) -> dict[str, dict[str, Any]]:
    """The embedding models of variant ``curation``'s ``dedup`` steps: model -> {"identity", "job"}:
    a declared model's import job (its key holds the weights' hash), or a harness checkpoint file's
    path and sha256 (job None)."""
    from pretrain.existing import sha256_file

    declared = {m.name: m for m in spec.existing_models()}
    out: dict[str, dict[str, Any]] = {}
    for step in spec.curation[curation]:
        name = step.params.get("model") if step.step == "dedup" else None
        if name is None or name in out:
            continue
        if name in declared:
            job = model_job(declared[name])
            out[name] = {"identity": {"model_key": job.key}, "job": job}
        else:
            path = Path(name).expanduser().absolute()
            out[name] = {"identity": {"path": str(path), "sha256": sha256_file(path)}, "job": None}
    return out


def _plan_view(
    st: _Planning, grid: Any, source: str, curation: str, noise: float, size: int, needs_labels: bool
) -> Job:
    embedders = _dedup_models(st.spec, curation)  # once per view: it builds model jobs and hashes files
    cfg = _view_config(st.spec, grid, source, curation, noise, size, needs_labels, embedders)
    coords = {"source": source, "curation": curation, "requested_size": size, "label_noise": noise}
    r = st.spec.resources.view
    deps = (st.world.key,) + tuple(st.add(e["job"]).key for e in embedders.values() if e["job"])
    return st.add(
        Job(
            "view",
            content_key("view", cfg, [st.world.key]),
            cfg,
            deps,
            coords,
            {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "engine": r.engine},
        )
    )


def _pretrain_config(pt: Any, grid: Any, method: str, backbone: str, seed: int, decode: str) -> dict[str, Any]:
    epochs, samples_seen = pt.budget(grid)  # exactly one is not None
    # Only non-default training settings join the key (None: left out of the dict), so
    # adding a setting later keeps the keys (and finished runs) of older specs.
    return PretrainJobConfig(
        method=method,
        backbone=backbone,
        image_size=pt.image_size,
        epochs=epochs if samples_seen is None else None,
        samples_seen=samples_seen,
        # LAST (a samples_seen run's end) is always kept: not listed
        save_epochs=tuple(e for e in pt.saved_epochs(epochs, grid) if e != LAST),
        batch_size=pt.batch_size,
        optim=OptimJobConfig(**pt.optim.model_dump()),  # an unset warmup_fraction stays out of the key
        seed=seed,
        hparams=pt.args_for(method) or None,
        grad_accum=pt.grad_accum if pt.grad_accum != 1 else None,
        precision=pt.precision if pt.precision != "auto" else None,
        # device decoding gives other (not bit-identical) images: a different run
        decode=decode if decode != "cpu" else None,
    ).to_dict()


def _plan_run(st: _Planning, grid: Any, view: Job, method: str, backbone: str, seed: int) -> None:
    """One pre-training run on ``view``; each epoch it is evaluated at becomes a checkpoint."""
    pt = st.spec.pretrain
    epochs, samples_seen = pt.budget(grid)
    r = st.spec.resources.pretrain
    cfg = _pretrain_config(pt, grid, method, backbone, seed, r.decode)
    # pretrain_epochs of a samples_seen run is known once it ran (rows
    # read it from the checkpoint); samples_budget is None for epochs
    coords = {
        **view.coords,
        "method": method,
        "backbone": backbone,
        "pretrain_seed": seed,
        "pretrain_epochs": epochs,
        "samples_budget": samples_seen,
        "view_key": view.key,
    }
    job = st.add(
        Job(
            "pretrain",
            content_key("pretrain", cfg, [view.key]),
            cfg,
            (view.key,),
            coords,
            {
                "num_workers": r.num_workers,
                "cpus_per_worker": r.cpus_per_worker,
                "gpus_per_worker": r.gpus_per_worker,
                "loader_workers": r.loader_workers,
            },
        )
    )
    for epoch in st.spec.eval_epochs(epochs, grid):
        st.checkpoints.append((job, epoch))


# ------------------------------------------------------------------------------- other encoders


def _plan_models(st: _Planning) -> None:
    for model in st.spec.existing_models():
        st.checkpoints.append((st.add(model_job(model)), IMPORTED))


def _plan_floors(st: _Planning) -> None:
    """Random-init encoders, when the floor or `scratch` asks for them: one per backbone the grid
    trains and pre-training seed its blocks use, so the floor has as many initialisations as the
    configurations it is compared with have pre-training seeds, and every interval on a gain over
    it covers the initialisation's variance too. `scratch` draws its own initialisation from the
    eval seed, so it starts from the first seed's job only."""
    spec = st.spec
    wants_scratch = any(p.name == "scratch" for p in spec.downstream.protocols)
    if not (spec.downstream.random_init_floor or wants_scratch):
        return
    for backbone in spec.pretrain.all_backbones():
        seeds = spec.pretrain.seeds_for_backbone(backbone) if spec.downstream.random_init_floor else [0]
        for seed in seeds:
            cfg = InitConfig(backbone=backbone, image_size=spec.pretrain.image_size, seed=seed).to_dict()
            coords = {
                "source": "none",
                "curation": "none",
                "requested_size": 0,
                "label_noise": 0.0,
                "method": "none",
                "backbone": backbone,
                "pretrain_seed": seed,
                "pretrain_epochs": 0,
                "view_key": None,
            }
            floor = st.add(Job("init", content_key("init", cfg), cfg, (), coords, {"num_cpus": 1}))
            st.floors.add(floor.key)
            if seed == seeds[0]:
                st.scratch_floors.add(floor.key)
            st.checkpoints.append((floor, 0))


# ------------------------------------------------------------------------------- features and evaluations


def _plan_evaluations(st: _Planning) -> None:
    """Per (checkpoint, downstream set): the protocols that apply, their shared features job (when
    one needs features) and one evaluation job each."""
    from downstream.protocols import PROTOCOLS

    spec = st.spec
    for src, epoch in st.checkpoints:
        has_text = _has_text_tower(src)
        for set_name in spec.downstream.sets:
            protocols = _protocols_on(st, src, set_name, has_text)
            if not protocols:
                continue
            base = {
                **src.coords,
                "pretrain_key": src.key,
                "downstream": set_name,
                # LAST's epoch is known once trained; an existing model has none
                "checkpoint_epoch": None if epoch in (LAST, IMPORTED) else epoch,
            }
            feats = None
            if any(PROTOCOLS.get(p.name).needs_features for p in protocols):
                feats = _plan_features(st, src, epoch, set_name, base)
            for proto in protocols:
                _plan_eval(st, src, epoch, set_name, proto, base, feats, has_text)


def _has_text_tower(src: Job) -> bool:
    from pretrain.methods import METHODS

    if src.kind == "model":  # an open_clip model carries its text tower; a timm model has none
        return ModelJobConfig.from_dict(src.config).framework == "open_clip"
    method = src.coords["method"]
    return method != "none" and METHODS.get(method).zero_shot


def _protocols_on(st: _Planning, src: Job, set_name: str, has_text: bool) -> list[Any]:
    """The set's protocols that apply to the checkpoints of ``src``; the others are pruned with the reason."""
    from downstream.protocols import PROTOCOLS

    spec = st.spec
    method = src.coords["method"]
    protocols = []
    for p in spec.downstream.protocols_for(set_name):
        entry = PROTOCOLS.get(p.name)
        if src.key in st.floors:
            if (entry.from_scratch and src.key in st.scratch_floors) or (
                p.name == "linear" and spec.downstream.random_init_floor
            ):
                protocols.append(p)
            else:
                st.prune_once(
                    f"{p.name} from the random-init encoder",
                    "the random-init job serves `scratch` (trained from random weights) and the "
                    "`linear` floor (random_init_floor); other protocols need a pre-trained checkpoint",
                )
            continue
        if entry.from_scratch:
            st.prune_once(
                f"{p.name} on pre-trained checkpoints",
                "scratch ignores pre-trained weights: it runs once per backbone, from the first random-init job",
            )
        elif p.runs is not None and not p.runs.matches(src.coords):
            st.prune_once(
                f"{p.name} on runs outside its `runs` filter",
                "downstream.protocols[].runs limits the protocol to the listed pre-training runs",
            )
        elif (entry.needs_text_tower or p.head_init == "zeroshot") and not has_text:
            st.prune_once(
                f"{p.name}{' (head_init: zeroshot)' if p.head_init == 'zeroshot' else ''} on {method} checkpoints",
                f"needs a text tower; method {method!r} has none (CLIP does)",
            )
        else:
            protocols.append(p)
    return protocols


def _eval_resources(spec: Spec) -> dict[str, float]:
    return {"num_cpus": spec.resources.eval.num_cpus, "num_gpus": spec.resources.eval.num_gpus}


def _plan_features(st: _Planning, src: Job, epoch: int | str, set_name: str, base: dict[str, Any]) -> Job:
    cfg = FeaturesConfig(downstream=set_name, epoch=epoch, set_config=st.spec.downstream.set_config(set_name)).to_dict()
    deps = (src.key, st.world.key)
    return st.add(Job("features", content_key("features", cfg, list(deps)), cfg, deps, base, _eval_resources(st.spec)))


def _eval_config(spec: Spec, epoch: int | str, set_name: str, proto: Any, has_text: bool) -> EvalConfig:
    from downstream.protocols import PROTOCOLS

    entry = PROTOCOLS.get(proto.name)
    shots = tuple(_shots_value(s) for s in proto.shots)
    seeds = tuple(proto.seeds if proto.seeds is not None else spec.downstream.eval_seeds)
    if entry.needs_text_tower:
        seeds = seeds[:1]  # zero-shot draws nothing: one seed says it all
    # recipe 2 (protocols that train): min_steps, BatchNorm handling, the starting point as a candidate;
    # recipe 3: the starting point is left only for a significant gain on validation (finetune.start_alpha)
    trains = (
        dict(
            epochs=proto.epochs,
            lrs=tuple(proto.lrs),
            batch_size=proto.batch_size,
            min_steps=proto.min_steps,
            bn=proto.bn,
            selection=selection_setting(proto.start_alpha),
            recipe=3,
        )
        if entry.trains
        else {}
    )
    head_init = proto.head_init
    if head_init == "auto":
        head_init = "zeroshot" if has_text else "zero"
    return EvalConfig(
        downstream=set_name,
        epoch=epoch,
        protocol=proto.name,
        shots=shots,
        seeds=seeds,
        **trains,
        head_init=head_init if head_init != "zero" else None,  # only non-default settings join the key
        set_config=spec.downstream.set_config(set_name),
    )


def _plan_eval(
    st: _Planning,
    src: Job,
    epoch: int | str,
    set_name: str,
    proto: Any,
    base: dict[str, Any],
    feats: Job | None,
    has_text: bool,
) -> None:
    from downstream.protocols import PROTOCOLS

    entry = PROTOCOLS.get(proto.name)
    typed = _eval_config(st.spec, epoch, set_name, proto, has_text)
    cfg = typed.to_dict()
    deps = (src.key, st.world.key) + ((feats.key,) if entry.needs_features and feats else ())
    eres = _eval_resources(st.spec)
    # a probe on cached features is a CPU task: it holds no GPU (resources are not in the key)
    res = {**eres, "num_gpus": 0} if entry.runs_on_cpu else eres
    st.add(
        Job(
            "eval",
            content_key("eval", cfg, list(deps)),
            cfg,
            deps,
            {**base, "protocol": proto.name},
            res,
            rows=len(typed.shots) * len(typed.seeds),
        )
    )
