"""The planner: a spec expanded into a graph of jobs, each with a content key.

Job kinds, in dependency order:

- ``world``    writes the embedded world (sources as webdataset shards, downstream sets on disk);
- ``view``     builds the exact pre-training data of a run (curation, labels, noise, size, mixture);
- ``pretrain`` trains a method on a view and saves checkpoints at the requested epochs (one run per
               backbone of the block: ``grids[].backbones``, else ``pretrain.backbone``); its budget
               is ``epochs`` or ``samples_seen`` (the config holds the one given: a run's epochs
               under ``samples_seen`` depend on its view's size, so its last checkpoint is
               :data:`pretrain.budget.LAST`, its epoch filled into rows when evaluated);
- ``init``     a randomly initialised encoder, one per backbone the grid trains: the `linear` floor
               every transfer number is read against, and the start of every `scratch` run;
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
from pathlib import Path
from typing import Any

from harness.core.artifacts import content_key, is_done, job_dir
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
            budget = (f"{self.config['epochs']} epochs" if "epochs" in self.config
                      else f"{self.config['samples_seen']} samples seen")
            return (f"pretrain {c['method']}/{c['backbone']} on {c['source']}/{c['curation']}/n={c['requested_size']} "
                    f"seed={c['pretrain_seed']} · {budget}")
        if self.kind in ("features", "eval"):
            what = self.config.get("protocol", "features")
            epoch = self.config.get("epoch")
            if c.get("model") is not None:
                return f"{what} {c['downstream']} ← model {c['model']} ({c['framework']}:{c['arch']})"
            return f"{what} {c['downstream']} ← {c['method']}/{c['backbone']}:{c['source']} " + \
                ("last" if epoch == LAST else f"ep{epoch}")
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
            c = job.coords
            for shots in job.config["shots"]:
                for seed in job.config["seeds"]:
                    out.append({"key": row_key(job.key, shots, seed), "job_key": job.key, "label": job.label,
                                "protocol": job.config["protocol"], "downstream": c.get("downstream"),
                                "shots": shots, "eval_seed": seed, "method": c.get("method"),
                                "source": c.get("source"), "checkpoint_epoch": c.get("checkpoint_epoch")})
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
    cfg = {"name": model.name, "framework": model.framework, "arch": model.arch, "weights": model.weights,
           "sha256": ident["sha256"], "describes": described}
    if model.image_size is not None:
        cfg["image_size"] = model.image_size
    coords = {"source": described.get("source", model.name), "curation": "none",
              "requested_size": described.get("pretrain_size"), "label_noise": 0.0,
              "method": described.get("method", DEFAULT_METHOD), "backbone": model.arch, "pretrain_seed": 0,
              "pretrain_epochs": None, "samples_budget": None, "view_key": None,
              "model": model.name, "framework": model.framework, "arch": model.arch, "weights": model.weights,
              "weights_sha256": ident["sha256"]}
    return Job("model", content_key("model", cfg), cfg, (), coords, {"num_cpus": 1})


def make_plan(spec: Spec) -> Plan:
    """Expand ``spec`` into its job graph (a pure function of the spec; its only I/O hashes the
    weight files of existing models, see :func:`model_job`)."""
    from downstream.protocols import PROTOCOLS
    from pretrain.methods import METHODS

    jobs: dict[str, Job] = {}
    pruned: list[tuple[str, str]] = []

    def add(job: Job) -> Job:
        jobs.setdefault(job.key, job)
        return jobs[job.key]

    from curation.world import WORLD_VERSION

    res = spec.resources
    world_cfg = {"seed": spec.world.seed, "scale": spec.world.scale, "version": WORLD_VERSION}
    world = add(Job("world", content_key("world", world_cfg), world_cfg, resources={"num_cpus": 1}))

    mixtures = {m.name: m.weights for m in spec.pretrain.mixtures}
    pt = spec.pretrain
    checkpoints: list[tuple[Job, int | str]] = []  # (job providing encoders, epoch or LAST)

    for grid in pt.grids:
        epochs, samples_seen = pt.budget(grid)  # exactly one is not None
        for source in grid.sources:
            for curation in grid.curation:
                for method in grid.methods:
                    entry = METHODS.get(method)
                    for noise in grid.label_noise:
                        if noise > 0 and not entry.needs_labels:
                            pruned.append(
                                (f"{method} on {source}/{curation} with label noise {noise}",
                                 f"label noise applies to methods trained on labels; {method} uses none")
                            )
                            continue
                        for size in grid.sizes:
                            view_cfg = {
                                "source": None if source in mixtures else source,
                                "mixture": dict(sorted(mixtures[source].items())) if source in mixtures else None,
                                "curation_name": curation,
                                "curation": [s.model_dump() for s in spec.curation[curation]],
                                "size": size,
                                "label_noise": noise,
                                "needs_labels": entry.needs_labels,
                                "seed": pt.data_seed,
                            }
                            # Settings added later join the key only when not at their default,
                            # so the keys (and finished views) of older specs stay.
                            if grid.noise_model != "symmetric" and noise > 0:
                                view_cfg["noise_model"] = grid.noise_model
                            if pt.view_format != "shards":
                                view_cfg["materialize"] = pt.view_format
                            declared = {n: spec.sources[n] for n in (mixtures.get(source) or {source: 1})
                                        if n in spec.sources}
                            if declared:
                                view_cfg["sources"] = declared
                            if any(st.params.get("against") == "all" for st in spec.curation[curation]
                                   if st.step == "dedup"):
                                view_cfg["against"] = sorted(spec.downstream.sets)
                            against = sorted({a for st in spec.curation[curation] if st.step == "dedup"
                                              for a in _as_list(st.params.get("against"), spec.downstream.sets)})
                            custom = {a: spec.downstream.set_config(a) for a in against
                                      if spec.downstream.set_config(a) is not None}
                            if custom:
                                view_cfg["sets_config"] = custom
                            vcoords = {"source": source, "curation": curation, "requested_size": size,
                                       "label_noise": noise}
                            view = add(Job("view", content_key("view", view_cfg, [world.key]), view_cfg,
                                           (world.key,), vcoords, {"num_cpus": res.view.num_cpus,
                                                                   "num_gpus": res.view.num_gpus,
                                                                   "engine": res.view.engine}))
                            for backbone, seed in ((b, sd) for b in pt.backbones_for(grid) for sd in grid.seeds):
                                pcfg = {
                                    "method": method,
                                    "backbone": backbone,
                                    "image_size": pt.image_size,
                                    **({"epochs": epochs} if samples_seen is None else {"samples_seen": samples_seen}),
                                    # LAST (a samples_seen run's end) is always kept: not listed
                                    "save_epochs": [e for e in pt.saved_epochs(epochs, grid) if e != LAST],
                                    "batch_size": pt.batch_size,
                                    # unset settings stay out of the key (older runs keep theirs)
                                    "optim": pt.optim.model_dump(exclude_none=True),
                                    "seed": seed,
                                }
                                # Only non-default training settings join the key, so adding a
                                # setting later keeps the keys (and finished runs) of older specs.
                                if pt.args_for(method):
                                    pcfg["hparams"] = pt.args_for(method)
                                if pt.grad_accum != 1:
                                    pcfg["grad_accum"] = pt.grad_accum
                                if pt.precision != "auto":
                                    pcfg["precision"] = pt.precision
                                # pretrain_epochs of a samples_seen run is known once it ran (rows
                                # read it from the checkpoint); samples_budget is None for epochs
                                pcoords = {**vcoords, "method": method, "backbone": backbone,
                                           "pretrain_seed": seed, "pretrain_epochs": epochs,
                                           "samples_budget": samples_seen, "view_key": view.key}
                                pjob = add(Job("pretrain", content_key("pretrain", pcfg, [view.key]), pcfg,
                                               (view.key,), pcoords,
                                               {"num_workers": res.pretrain.num_workers,
                                                "cpus_per_worker": res.pretrain.cpus_per_worker,
                                                "gpus_per_worker": res.pretrain.gpus_per_worker,
                                                "loader_workers": res.pretrain.loader_workers}))
                                for epoch in spec.eval_epochs(epochs, grid):
                                    checkpoints.append((pjob, epoch))

    for model in spec.existing_models():
        checkpoints.append((add(model_job(model)), IMPORTED))

    wants_scratch = any(p.name == "scratch" for p in spec.downstream.protocols)
    floors: set[str] = set()  # keys of the random-init jobs: one per backbone the grid trains
    if spec.downstream.random_init_floor or wants_scratch:
        for backbone in pt.all_backbones():
            icfg = {"backbone": backbone, "image_size": pt.image_size, "seed": 0}
            icoords = {"source": "none", "curation": "none", "requested_size": 0, "label_noise": 0.0,
                       "method": "none", "backbone": backbone, "pretrain_seed": 0, "pretrain_epochs": 0,
                       "view_key": None}
            floor = add(Job("init", content_key("init", icfg), icfg, (), icoords, {"num_cpus": 1}))
            floors.add(floor.key)
            checkpoints.append((floor, 0))

    def prune(what: str, why: str) -> None:
        if (what, why) not in pruned:
            pruned.append((what, why))

    eres = {"num_cpus": res.eval.num_cpus, "num_gpus": res.eval.num_gpus}
    for src, epoch in checkpoints:
        method = src.coords["method"]
        if src.kind == "model":  # an open_clip model carries its text tower; a timm model has none
            has_text = src.config["framework"] == "open_clip"
        else:
            has_text = method != "none" and METHODS.get(method).zero_shot
        for set_name in spec.downstream.sets:
            protocols = []
            for p in spec.downstream.protocols_for(set_name):
                entry = PROTOCOLS.get(p.name)
                if src.key in floors:
                    if entry.from_scratch or (p.name == "linear" and spec.downstream.random_init_floor):
                        protocols.append(p)
                    else:
                        prune(f"{p.name} from the random-init encoder",
                              "the random-init job serves `scratch` (trained from random weights) and the "
                              "`linear` floor (random_init_floor); other protocols need a pre-trained checkpoint")
                    continue
                if entry.from_scratch:
                    prune(f"{p.name} on pre-trained checkpoints",
                          "scratch ignores pre-trained weights: it runs once per backbone, from the random-init job")
                elif p.runs is not None and not p.runs.matches(src.coords):
                    prune(f"{p.name} on runs outside its `runs` filter",
                          "downstream.protocols[].runs limits the protocol to the listed pre-training runs")
                elif (entry.needs_text_tower or p.head_init == "zeroshot") and not has_text:
                    prune(f"{p.name}{' (head_init: zeroshot)' if p.head_init == 'zeroshot' else ''} on {method} "
                          "checkpoints", f"needs a text tower; method {method!r} has none (CLIP does)")
                else:
                    protocols.append(p)
            if not protocols:
                continue
            base = {**src.coords, "pretrain_key": src.key, "downstream": set_name,
                    # LAST's epoch is known once trained; an existing model has none
                    "checkpoint_epoch": None if epoch in (LAST, IMPORTED) else epoch}
            set_cfg = spec.downstream.set_config(set_name)
            feats: Job | None = None
            if any(PROTOCOLS.get(p.name).needs_features for p in protocols):
                fcfg: dict[str, Any] = {"downstream": set_name, "epoch": epoch}
                if set_cfg is not None:
                    fcfg["set_config"] = set_cfg
                feats = add(Job("features", content_key("features", fcfg, [src.key, world.key]), fcfg,
                                (src.key, world.key), base, eres))
            for proto in protocols:
                pentry = PROTOCOLS.get(proto.name)
                shots = [_shots_value(s) for s in proto.shots]
                seeds = list(proto.seeds if proto.seeds is not None else spec.downstream.eval_seeds)
                if pentry.needs_text_tower:
                    seeds = seeds[:1]  # zero-shot draws nothing: one seed says it all
                ecfg: dict[str, Any] = {"downstream": set_name, "epoch": epoch, "protocol": proto.name,
                                        "shots": shots, "seeds": seeds}
                if pentry.trains:
                    # recipe 2: min_steps, BatchNorm handling, the starting point as a candidate
                    ecfg.update(epochs=proto.epochs, lrs=list(proto.lrs), batch_size=proto.batch_size,
                                min_steps=proto.min_steps, bn=proto.bn, recipe=2)
                head_init = proto.head_init
                if head_init == "auto":
                    head_init = "zeroshot" if has_text else "zero"
                if head_init != "zero":  # only non-default settings join the key
                    ecfg["head_init"] = head_init
                if set_cfg is not None:
                    ecfg["set_config"] = set_cfg
                deps = (src.key, world.key) + ((feats.key,) if pentry.needs_features and feats else ())
                # a probe on cached features is a CPU task: it holds no GPU (resources are not in the key)
                jres = {**eres, "num_gpus": 0} if pentry.runs_on_cpu else eres
                add(Job("eval", content_key("eval", ecfg, list(deps)), ecfg, deps,
                        {**base, "protocol": proto.name}, jres, rows=len(shots) * len(seeds)))

    return Plan(spec, jobs, pruned)
