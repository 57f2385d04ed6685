"""The experiment spec: YAML loaded with ``safe_load`` into validated, frozen pydantic models.

A spec declares the whole grid: pre-training sources (or weighted mixtures), curation variants,
label-noise rates, sizes, methods, backbones and seeds (as one or more grid blocks, each a cross
product); each run's budget (``epochs``, or ``samples_seen``: the same samples seen whatever the
view's size, see :mod:`pretrain.budget`); the backbone and optimisation recipe; the downstream
suite with protocols and shots;
resources per job, and the speeds and sizes the cost estimate uses (``resources.throughput``,
``resources.storage``; see harness/estimate.py); and where the work and the results store live.
An invalid spec fails before any work starts, with every error naming its field path and what would be valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from harness.core.jobs import DEFAULT_START_ALPHA
from pretrain.budget import LAST, epochs_for_size

FULL = "full"  # the spelling of "the whole training set" in a spec's shots list


class SpecError(ValueError):
    """An invalid spec; ``errors`` holds one ``(field path, message)`` per problem."""

    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        lines = [f"invalid spec {source}: {len(errors)} error(s)"]
        lines += [f"  - {path}: {msg}" for path, msg in errors]
        super().__init__("\n".join(lines))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_names(values: list[str], registry, kind: str) -> list[str]:
    bad = [v for v in values if v not in registry]
    if bad:
        raise ValueError("; ".join(registry.unknown_message(v) for v in bad))
    return values


def _backbone_name(v: str) -> str:
    """``v`` if it is a registered backbone, else an error naming the valid ones."""
    from pretrain.models import BACKBONES

    return _check_names([v], BACKBONES, "backbone")[0]


def _unknown_sources(names: list[str], info: ValidationInfo | None) -> list[str]:
    """Problems for names that are neither registered (world or real.*) nor declared under ``sources``."""
    from curation.sources import SOURCES, resolve_source

    declared = dict((info.context or {}).get("sources", {})) if info is not None else {}
    bad = []
    for name in names:
        if name in declared:
            continue
        try:
            resolve_source(name)
        except (KeyError, ValueError):
            extra = f"; declared under 'sources': {', '.join(sorted(declared))}" if declared else ""
            bad.append(SOURCES.unknown_message(name) + " (or a real.* source)" + extra)
    return bad


class Mixture(_Model):
    """A weighted mixture of sources, referred to by ``name`` in the grids."""

    name: str
    weights: dict[str, float]

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        bad = _unknown_sources(list(v), info)
        if bad:
            raise ValueError("; ".join(bad))
        if not v or any(w <= 0 for w in v.values()):
            raise ValueError("weights must be positive numbers, one per source")
        return v


def _is_checkpoint_file(path: str) -> bool:
    """Whether ``path`` is an existing ``.pt`` file (a harness checkpoint a ``dedup`` step may embed with)."""
    from pathlib import Path

    p = Path(path).expanduser()
    return p.suffix == ".pt" and p.is_file()


class CurationStep(_Model):
    """One curation step: a registered filter name and its parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    step: str

    @field_validator("step")
    @classmethod
    def _known(cls, v: str) -> str:
        from curation.filters import FILTERS

        return _check_names([v], FILTERS, "curation step")[0]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Optim(_Model):
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    # warm-up as a share of the run's optimiser steps, instead of warmup_epochs: with a
    # samples_seen budget, passes over the view differ with its size, and so would the warm-up
    warmup_fraction: float | None = Field(None, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class PretrainGrid(_Model):
    """One block of the pre-training grid: the cross product of its lists."""

    sources: list[str] = Field(min_length=1)
    sizes: list[int] = Field(min_length=1)
    methods: list[str] = Field(default_factory=lambda: ["supervised"], min_length=1)
    # the default `none` is validated too: a spec whose `curation:` has no `none` must name a variant
    curation: list[str] = Field(default_factory=lambda: ["none"], min_length=1, validate_default=True)
    label_noise: list[float] = Field(default_factory=lambda: [0.0], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # The block's budget, overriding pretrain's (either kind): `epochs` (e.g. longer contrastive
    # runs) or `samples_seen` (every size sees the same samples; smaller views are repeated).
    epochs: int | None = Field(None, ge=1)
    samples_seen: int | None = Field(None, ge=1, strict=True)
    # how label noise flips: to a uniformly drawn other class, or to the class's confusable partner
    noise_model: Literal["symmetric", "class_dependent"] = "symmetric"
    # checkpoints this block's runs save AND are evaluated at (the last epoch always), overriding
    # pretrain.checkpoint_epochs and downstream.checkpoint_epochs: mid-training checkpoints of a few runs
    checkpoint_epochs: Literal["last", "all"] | list[int] | None = None
    # backbones this block trains (one run per backbone), overriding pretrain.backbone; each backbone
    # used gets its own random-init job (the `linear` floor and `scratch`). There is no per-block
    # image size: pretrain.image_size applies to every backbone (the 2023 study trains ResNet-50
    # and ViT-B/32 alike at 224 px); a study at two resolutions is two specs.
    backbones: list[str] | None = Field(None, min_length=1)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(s <= 0 for s in v):
            raise ValueError(f"sizes must be positive sample counts, got {v}")
        return v

    @field_validator("label_noise")
    @classmethod
    def _noise(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= r < 1.0 for r in v):
            raise ValueError(f"label_noise rates must lie in [0, 1), got {v}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from pretrain.methods import METHODS

        return _check_names(v, METHODS, "method")

    @field_validator("backbones")
    @classmethod
    def _backbones(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        from pretrain.models import BACKBONES

        if len(set(v)) != len(v):
            raise ValueError(f"backbones lists a backbone twice: {v}")
        return _check_names(v, BACKBONES, "backbone")

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str], info: ValidationInfo) -> list[str]:
        mixtures = sorted((info.context or {}).get("mixtures", ()))
        bad = _unknown_sources([s for s in v if s not in mixtures], info)
        if bad:
            extra = f" (or a declared mixture: {', '.join(mixtures)})" if mixtures else ""
            raise ValueError("; ".join(b + extra for b in bad))
        return v

    @field_validator("curation")
    @classmethod
    def _curation(cls, v: list[str], info: ValidationInfo) -> list[str]:
        declared = sorted((info.context or {}).get("curation", ("none",)))
        bad = [c for c in v if c not in declared]
        if bad:
            default = " ('none' is the default of a block that names no curation)" if "none" in bad else ""
            raise ValueError(
                f"unknown curation variant(s) {bad}{default}; declared under 'curation': "
                f"{', '.join(declared) or '(none)'}; declare it (e.g. `none: []`) or list declared ones"
            )
        return v

    @field_validator("samples_seen")
    @classmethod
    def _one_budget(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("epochs") is not None:
            raise ValueError("give a block's budget as epochs or samples_seen, not both")
        return v


class Pretrain(_Model):
    backbone: str = "test_resnet"
    image_size: int = Field(32, ge=16)
    # The default budget of every block: `epochs` passes over the view, or `samples_seen` samples
    # (ceil(samples_seen / batch_size) steps, as many passes as that takes; see pretrain.budget).
    epochs: int = Field(3, ge=1)
    samples_seen: int | None = Field(None, ge=1, strict=True)
    # Checkpoints kept: 'last', 'all' or a list of epochs (the last always). With a samples_seen
    # budget the number of epochs depends on the view's size, so 'all' is refused and a list names
    # whole epochs before the end of every run of the block (below the epochs the budget gives a
    # view of the requested size); the end is saved as checkpoints/last.pt.
    checkpoint_epochs: Literal["last", "all"] | list[int] = "last"
    batch_size: int = Field(128, ge=1)
    data_seed: int = 0  # selects the view's samples; fixed across training seeds so sizes nest
    # a view is new shards (copies of the kept samples) or an index over the source's own shards
    view_format: Literal["shards", "index"] = "shards"
    optim: Optim = Optim()
    grad_accum: int = Field(1, ge=1)  # micro-batches per step; the global batch stays batch_size
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on a GPU, fp32 on a CPU
    method_args: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per method, e.g. clip: {model: ViT-B-32}
    # the grid blocks; none in a spec that only evaluates existing models (``models:``)
    grids: list[PretrainGrid] = Field(default_factory=list)
    mixtures: list[Mixture] = Field(default_factory=list)

    @field_validator("method_args")
    @classmethod
    def _method_args(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from pretrain.methods import METHODS

        problems = [METHODS.unknown_message(name) for name in v if name not in METHODS]
        for name, args in v.items():
            if name in METHODS:
                try:
                    METHODS.get(name).resolve(args, name)  # unknown settings raise, naming the valid ones
                except ValueError as exc:
                    problems.append(f"{name}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    def args_for(self, method: str) -> dict[str, Any]:
        """The spec's settings for ``method`` (only those given: defaults live with the method)."""
        return dict(sorted(self.method_args.get(method, {}).items()))

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        return _backbone_name(v)

    def budget(self, grid: PretrainGrid) -> tuple[int | None, int | None]:
        """``(epochs, samples_seen)`` of a block's runs, exactly one not None: the block's own budget
        (either kind), else pretrain's."""
        if grid.samples_seen is not None or grid.epochs is not None:
            return grid.epochs, grid.samples_seen
        return (None, self.samples_seen) if self.samples_seen is not None else (self.epochs, None)

    @model_validator(mode="after")
    def _epochs(self) -> Pretrain:
        if self.samples_seen is not None and "epochs" in self.model_fields_set:
            raise ValueError("samples_seen: give pretrain's default budget as epochs or samples_seen, not both")
        problems = [self._budget_checkpoints(i, g) for i, g in enumerate(self.grids)]
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("; ".join(problems))
        if isinstance(self.checkpoint_epochs, list):
            default = [("epochs", self.epochs)] if self.samples_seen is None else []  # else checked per block
            for where, epochs in default + [
                (f"grids.{i}.epochs", g.epochs) for i, g in enumerate(self.grids) if g.epochs is not None
            ]:
                bad = [e for e in self.checkpoint_epochs if not 1 <= e <= epochs]
                if bad:
                    raise ValueError(
                        f"checkpoint_epochs {bad} outside 1..{epochs} ({where}); "
                        "give epochs in that range, 'last' or 'all'"
                    )
        for i, g in enumerate(self.grids):
            if isinstance(g.checkpoint_epochs, list) and self.budget(g)[0] is not None:
                epochs = g.epochs or self.epochs
                bad = [e for e in g.checkpoint_epochs if not 1 <= e <= epochs]
                if bad:
                    raise ValueError(
                        f"grids.{i}.checkpoint_epochs {bad} outside 1..{epochs}; "
                        "give epochs in that range, 'last' or 'all'"
                    )
        return self

    def _budget_checkpoints(self, i: int, g: PretrainGrid) -> str | None:
        """Why block ``i``'s checkpoints cannot be honoured under its samples_seen budget (None if they can)."""
        samples = self.budget(g)[1]
        if samples is None:
            return None
        own = g.checkpoint_epochs is not None
        which, where = (
            (g.checkpoint_epochs, f"grids.{i}.checkpoint_epochs")
            if own
            else (self.checkpoint_epochs, "checkpoint_epochs")
        )
        budget = f"grids.{i} has samples_seen {samples}" + ("" if g.samples_seen else " (pretrain.samples_seen)")
        if which == "all":
            return (
                f"{where}: 'all' needs a fixed number of epochs, and {budget}: its epochs depend on the "
                f"view's size; give {'this block' if own else f'grids.{i}'} checkpoint_epochs 'last' or a "
                "list of epochs before the end"
            )
        if not isinstance(which, list):
            return None
        for size in g.sizes:
            epochs = epochs_for_size(samples, size, self.batch_size)
            bad = [e for e in which if epochs is not None and not 1 <= e < epochs]
            if bad:
                return (
                    f"{where}: epochs {bad} are not whole epochs before the end of every run of grids.{i}: "
                    f"{budget}, {epochs} epoch(s) over a view of {size} at batch {self.batch_size} (more if "
                    f"curation keeps fewer samples); give epochs in 1..{epochs - 1} or 'last' (the end is "
                    "always saved)"
                )
        return None

    def saved_epochs(self, epochs: int | None = None, grid: PretrainGrid | None = None) -> list[int | str]:
        """Checkpoints a run of ``epochs`` (default: ``pretrain.epochs``) keeps (``grid.checkpoint_epochs``
        when that block sets it, else ``pretrain.checkpoint_epochs``). For a block whose budget is
        ``samples_seen`` (``epochs`` is then ignored): the listed epochs, then :data:`LAST`, the end."""
        which = (
            grid.checkpoint_epochs
            if grid is not None and grid.checkpoint_epochs is not None
            else self.checkpoint_epochs
        )
        if grid is not None and self.budget(grid)[1] is not None:
            return (sorted(set(which)) if isinstance(which, list) else []) + [LAST]
        epochs = epochs or self.epochs
        if which == "last":
            return [epochs]
        if which == "all":
            return list(range(1, epochs + 1))
        return sorted(set(which) | {epochs})

    def all_epochs(self) -> list[int]:
        """Every run length in epochs in the grid (blocks whose budget is samples_seen have none)."""
        return sorted({e for e in (self.budget(g)[0] for g in self.grids) if e is not None})

    def backbones_for(self, grid: PretrainGrid) -> list[str]:
        """The backbones a grid block trains: its own ``backbones``, else ``pretrain.backbone``."""
        return list(grid.backbones) if grid.backbones else [self.backbone]

    def seeds_for_backbone(self, backbone: str) -> list[int]:
        """The pre-training seeds of the blocks that train ``backbone``, ascending (the random-init
        floor gets one initialisation per seed)."""
        return sorted({s for g in self.grids if backbone in self.backbones_for(g) for s in g.seeds})

    def all_backbones(self) -> list[str]:
        """Every backbone the grid trains, in order of first use (random-init jobs: one per seed each)."""
        return list(dict.fromkeys(b for g in self.grids for b in self.backbones_for(g)))


class RunFilter(_Model):
    """Which pre-trained checkpoints a protocol evaluates (every list optional; a checkpoint
    passes when its run matches every list given). The random-init job is not filtered."""

    sources: list[str] | None = None
    methods: list[str] | None = None
    sizes: list[int] | None = None  # requested view sizes
    curation: list[str] | None = None
    label_noise: list[float] | None = None
    seeds: list[int] | None = None  # pre-training seeds

    _COORDS: ClassVar[dict[str, str]] = {
        "sources": "source",
        "methods": "method",
        "sizes": "requested_size",
        "curation": "curation",
        "label_noise": "label_noise",
        "seeds": "pretrain_seed",
    }

    def matches(self, coords: dict[str, Any]) -> bool:
        return all(
            getattr(self, field) is None or coords.get(coord) in getattr(self, field)
            for field, coord in self._COORDS.items()
        )


class Protocol(_Model):
    """One evaluation protocol with its shot counts (``full`` = whole training set)."""

    name: str
    shots: list[int | Literal["full"]] = Field(default_factory=lambda: [FULL], min_length=1)
    sets: list[str] | None = None  # default: every set of the suite
    seeds: list[int] | None = None  # default: downstream.eval_seeds
    epochs: int = Field(5, ge=1)  # fine-tuning style protocols
    lrs: list[float] = Field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])  # the core study's grid
    batch_size: int = Field(128, ge=2)  # fine-tuning style protocols (the core study's 128)
    # fine-tuning style protocols: at least this many optimiser steps per learning rate (small
    # training sets get more epochs); 0 trains exactly ``epochs``
    min_steps: int = Field(0, ge=0)
    # fine-tuning style protocols: BatchNorm on batch statistics ("train"), on the checkpoint's
    # running statistics ("frozen"), or "auto": frozen from pre-trained weights, trained from scratch
    bn: Literal["auto", "train", "frozen"] = "auto"
    # lp_ft, and finetune with a zero-shot head: the starting point is left only for a fine-tuned
    # candidate significantly better on validation at this level (one-sided, Bonferroni over the
    # candidates); null: the best on validation, however small its lead (plain selection)
    start_alpha: float | None = Field(DEFAULT_START_ALPHA, gt=0, lt=1)
    # finetune: the head starts at zero, at CLIP's zero-shot classifier ("zeroshot": CLIP
    # checkpoints only), or "auto": zero-shot where the checkpoint has a text tower, else zero.
    head_init: Literal["zero", "zeroshot", "auto"] = "zero"
    # only the checkpoints of these pre-training runs (e.g. fine-tune the largest runs only)
    runs: RunFilter | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from downstream.protocols import PROTOCOLS

        return _check_names([v], PROTOCOLS, "protocol")[0]

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list) -> list:
        bad = [s for s in v if s != FULL and (not isinstance(s, int) or s < 0)]
        if bad:
            raise ValueError(f"shots must be non-negative integers or 'full', got {bad}")
        return v

    @field_validator("sets")
    @classmethod
    def _sets(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if v is None:
            return v
        return _check_sets(v, info)

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, v: list[float]) -> list[float]:
        if not v or any(not lr > 0 for lr in v):
            raise ValueError(f"lrs must be a non-empty list of positive learning rates, got {v}")
        return v

    @model_validator(mode="after")
    def _zero_shot(self) -> Protocol:
        if self.head_init != "zero" and self.name != "finetune":
            raise ValueError(f"head_init applies to protocol 'finetune' only, not {self.name!r}")
        if self.name != "zeroshot" and 0 in self.shots:
            raise ValueError(f"shots 0 is zero-shot; protocol {self.name!r} needs shots >= 1 or 'full'")
        if self.name == "zeroshot" and self.shots != [0]:
            raise ValueError("protocol 'zeroshot' takes shots [0]")
        return self


def _check_sets(v: list[str], info: ValidationInfo) -> list[str]:
    """Registered set names, or names declared under ``downstream.custom_sets``."""
    from downstream.sets import DOWNSTREAM

    declared = sorted((info.context or {}).get("custom_sets", ()))
    bad = [s for s in v if s not in DOWNSTREAM and s not in declared]
    if bad:
        extra = f" (or a set declared under downstream.custom_sets: {', '.join(declared)})" if declared else ""
        raise ValueError("; ".join(DOWNSTREAM.unknown_message(s) + extra for s in bad))
    return v


class Downstream(_Model):
    sets: list[str] = Field(min_length=1)
    protocols: list[Protocol] = Field(min_length=1)
    eval_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    checkpoint_epochs: Literal["last", "all"] | list[int] = "last"
    # evaluate `linear` on randomly initialised encoders too: one per pre-training seed the grid uses
    random_init_floor: bool = True
    # Sets of your own, by name: {format: hf_disk|hf_hub|imagefolder|wds, path: ..., metric: ...}
    # (see downstream.sets.DownstreamSet.from_config); list their names under `sets`.
    custom_sets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Where real sets (real.cifar100, ...) and custom sets with relative paths are read from;
    # default: $TBENCH_DATA, else ~/tbench-data.
    data_dir: str | None = None

    def protocols_for(self, set_name: str) -> list[Protocol]:
        return [p for p in self.protocols if p.sets is None or set_name in p.sets]

    def set_config(self, set_name: str) -> dict[str, Any] | None:
        """The canonical definition of a declared set (None for a registered one)."""
        if set_name not in self.custom_sets:
            return None
        from downstream.sets import DownstreamSet

        return DownstreamSet.from_config(set_name, self.custom_sets[set_name]).to_config(docs=False)

    @field_validator("sets")
    @classmethod
    def _sets(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return _check_sets(v, info)

    @field_validator("custom_sets")
    @classmethod
    def _custom(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from downstream.sets import DOWNSTREAM, DownstreamSet

        problems = []
        for name, cfg in v.items():
            if name in DOWNSTREAM:
                problems.append(f"{name!r} is already a registered set; give your set another name")
                continue
            if not isinstance(cfg, dict):
                problems.append(f"{name}: a set is a mapping of fields (format, path, ...), got {type(cfg).__name__}")
                continue
            try:
                DownstreamSet.from_config(name, cfg)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return v


class JobResources(_Model):
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)


class ViewResources(JobResources):
    # ray: scan and write shards as Ray Data jobs (the view task only coordinates); local: one
    # process; auto: ray under `tbench run`, local otherwise
    engine: Literal["auto", "ray", "local"] = "auto"


class PretrainResources(_Model):
    num_workers: int = Field(1, ge=1)  # DDP workers (Ray Train); the global batch does not change
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    # decoding processes per worker (0: decode in the training process); "auto": min(8, cpus_per_worker - 1)
    # for a worker holding a GPU, 0 on a CPU (pretrain.loop.loader_workers_for)
    loader_workers: Literal["auto"] | int = "auto"
    # where training images are decoded: "cpu" in the loader (default), or "device": the loader ships the encoded
    # bytes and the training process decodes and augments whole batches on its device (pretrain.device_decode;
    # batched nvJPEG on CUDA), or "memory": the view is read and decoded once and each epoch is a permutation of
    # it (pretrain.memory_view; for views that fit in memory, e.g. small views repeated under samples_seen).
    # Not bit-identical to "cpu", so "device" and "memory" join the run's key (harness.plan)
    decode: Literal["cpu", "device", "memory"] = "cpu"

    @field_validator("loader_workers")
    @classmethod
    def _loader_workers(cls, v: Any) -> Any:
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"loader_workers must be 'auto' or an int >= 0, got {v!r}")
        return v


class PretrainRate(_Model):
    """A known pre-training speed: training samples/s per GPU (per Ray Train worker where the spec
    asks for no GPU) for (backbone, method, image size)."""

    backbone: str
    method: str
    image_size: int | None = Field(None, ge=16)  # None: at any image size
    samples_per_s: float = Field(gt=0)

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        return _backbone_name(v)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from pretrain.methods import METHODS

        return _check_names([v], METHODS, "method")[0]


class ModelRate(_Model):
    """A known speed of one backbone: images/s per GPU (per task where evaluations ask for no GPU),
    of forward passes (``inference``) or of fine-tuning steps (``finetune``)."""

    backbone: str
    image_size: int | None = Field(None, ge=16)  # None: at any image size
    images_per_s: float = Field(gt=0)

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        return _backbone_name(v)


class Throughput(_Model):
    """Speeds the cost estimate (``tbench plan``, harness/estimate.py) uses instead of its defaults;
    figures measured by finished runs in the workdir take precedence over both."""

    pretrain: list[PretrainRate] = Field(default_factory=list)
    inference: list[ModelRate] = Field(default_factory=list)  # features, zero-shot, validation/test passes
    finetune: list[ModelRate] = Field(default_factory=list)  # fine-tuning training steps (forward + backward)
    decode_per_cpu: float | None = Field(None, gt=0)  # downstream images decoded and resized, per s per CPU core
    view_scan_per_cpu: float | None = Field(None, gt=0)  # view scan without image decoding, samples/s per CPU core
    view_hash_per_cpu: float | None = Field(None, gt=0)  # view scan decoding images (dedup's hashes), per core
    probe_examples_per_s: float | None = Field(None, gt=0)  # linear-probe training examples/s (whole L2 path)


class Storage(_Model):
    """What the cost estimate assumes about bytes on disk (harness/estimate.py has the defaults)."""

    # source name (registered, real.* or declared; or 'default') -> mean bytes of one sample in its shards
    bytes_per_sample: dict[str, int] = Field(default_factory=dict)

    @field_validator("bytes_per_sample")
    @classmethod
    def _bytes(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        problems = _unknown_sources([k for k in v if k != "default"], info)
        problems = [p + " (or 'default')" for p in problems]
        problems += [
            f"{k}: bytes per sample must be a positive integer, got {n!r}"
            for k, n in v.items()
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return v


class Resources(_Model):
    pretrain: PretrainResources = PretrainResources()
    eval: JobResources = JobResources()
    view: ViewResources = ViewResources()
    max_retries: int = Field(1, ge=0)
    throughput: Throughput = Throughput()
    storage: Storage = Storage()


class Describes(_Model):
    """What an existing model was pre-trained on, when known: its rows' pre-training coordinates."""

    source: str | None = None  # default: the model's name
    method: str | None = None  # default: pretrain.existing.DEFAULT_METHOD ("existing")
    pretrain_size: int | None = Field(None, ge=1, strict=True)  # samples: places it on the scaling curves


class ExistingModelSpec(_Model):
    """A model the harness did not pre-train (see pretrain/existing.py): evaluated like a grid checkpoint."""

    framework: Literal["open_clip", "timm"]
    arch: str = Field(min_length=1)  # open_clip.list_models() / timm.list_models() (a timm name may carry a tag)
    # an open_clip pretrained tag, a local file (.pt/.pth/.bin/.safetensors, a training checkpoint) or hf-hub:org/name
    weights: str = Field(min_length=1)
    image_size: int | None = Field(None, ge=16)  # evaluate at this resolution instead of the model's own
    describes: Describes = Describes()

    def resolve(self, name: str):
        """The plain :class:`pretrain.existing.ExistingModel` of this entry."""
        from pretrain.existing import ExistingModel

        return ExistingModel(
            name, self.framework, self.arch, self.weights, self.image_size, self.describes.model_dump()
        )


class World(_Model):
    """The embedded synthetic world (sources and downstream sets generated on disk)."""

    seed: int = 0
    scale: float = Field(1.0, gt=0, le=100)
    dir: str | None = None  # default: <workdir>/world


class Spec(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    world: World = World()
    workdir: str = "tbench-out/{name}/work"
    store: str = "tbench-out/{name}/store"
    report: str = "tbench-out/{name}/report"
    curation: dict[str, list[CurationStep]] = Field(default_factory=lambda: {"none": []})
    # sources declared here (name -> {shards, kind, size, description, ...}; see curation.sources)
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    pretrain: Pretrain = Field(default_factory=Pretrain)
    # existing models (name -> framework, arch, weights, describes), evaluated like the grid's checkpoints
    models: dict[str, ExistingModelSpec] = Field(default_factory=dict)
    downstream: Downstream
    resources: Resources = Resources()

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, ExistingModelSpec]) -> dict[str, ExistingModelSpec]:
        import re

        bad = [n for n in v if not re.fullmatch(r"[A-Za-z0-9_.@+-]+", n)]
        if bad:
            raise ValueError(f"model names {bad}: use letters, digits and _ . @ + - only")
        return v

    def existing_models(self) -> list:
        """The declared models as :class:`pretrain.existing.ExistingModel` values, in spec order."""
        return [entry.resolve(name) for name, entry in self.models.items()]

    @field_validator("sources")
    @classmethod
    def _declared_sources(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from curation.sources import SourceEntry

        problems = []
        for name, cfg in v.items():
            try:
                SourceEntry.from_config(name, cfg)
            except (TypeError, ValueError, KeyError) as exc:
                problems.append(f"{name}: {exc.args[0] if exc.args else exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("curation")
    @classmethod
    def _curation_params(cls, v: dict[str, list[CurationStep]]) -> dict[str, list[CurationStep]]:
        from curation.filters import validate_steps

        problems = []
        for variant, steps in v.items():
            try:
                validate_steps([(s.step, s.params) for s in steps])
            except (TypeError, ValueError, KeyError) as exc:
                problems.append(f"{variant}: {exc.args[0] if exc.args else exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _cross(self) -> Spec:
        from curation.sources import SOURCES

        mixtures = {m.name for m in self.pretrain.mixtures}
        clash = mixtures & (set(SOURCES.names()) | set(self.sources))
        if clash:
            raise ValueError(f"mixture names {sorted(clash)} clash with source names")
        if not self.pretrain.grids and not self.models:
            raise ValueError(
                "nothing to evaluate: give pretrain.grids (blocks to pre-train) or models (existing models), or both"
            )
        problems = []
        for variant, steps in self.curation.items():
            for i, st in enumerate(steps):
                against = st.params.get("against") if st.step == "dedup" else None
                if against and against != "all":
                    names = [against] if isinstance(against, str) else list(against)
                    unknown = [n for n in names if n not in self.downstream.sets]
                    if unknown:
                        problems.append(
                            f"curation.{variant}.{i}: dedup against {unknown}: not sets of this spec; "
                            f"valid: 'all' or names from downstream.sets: {', '.join(self.downstream.sets)}"
                        )
                model = st.params.get("model") if st.step == "dedup" else None
                if model is not None and model not in self.models and not _is_checkpoint_file(model):
                    problems.append(
                        f"curation.{variant}.{i}.model: {model!r} is neither a model of this spec's "
                        f"models: ({', '.join(self.models) or 'none declared'}) nor a harness checkpoint "
                        "file (.pt)"
                    )
        ckpt = self.downstream.checkpoint_epochs
        if isinstance(ckpt, list):
            sized = [
                f"grids.{i}"
                for i, g in enumerate(self.pretrain.grids)
                if self.pretrain.budget(g)[1] is not None and g.checkpoint_epochs is None
            ]
            if sized:
                problems.append(
                    f"downstream.checkpoint_epochs: a list of epochs cannot apply to {', '.join(sized)} "
                    "(samples_seen: the number of epochs depends on the view's size); give 'last' or "
                    "'all', or give those blocks their own checkpoint_epochs"
                )
        if isinstance(ckpt, list) and self.pretrain.all_epochs():
            saved = sorted(set.intersection(*(set(self.pretrain.saved_epochs(e)) for e in self.pretrain.all_epochs())))
            missing = [e for e in ckpt if e not in saved]
            if missing:
                problems.append(
                    f"downstream.checkpoint_epochs: epochs {missing} are not saved by pre-training; "
                    f"saved epochs: {saved} (set pretrain.checkpoint_epochs)"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def eval_epochs(self, epochs: int | None = None, grid: PretrainGrid | None = None) -> list[int | str]:
        """The checkpoint epochs a pre-training run of ``epochs`` (default: ``pretrain.epochs``) is
        evaluated at; a grid block with its own ``checkpoint_epochs`` is evaluated at each it saves.
        A block whose budget is ``samples_seen``: its saved epochs and :data:`LAST` (``downstream.
        checkpoint_epochs: all`` or its own ``checkpoint_epochs``), else only :data:`LAST`."""
        epochs = epochs or self.pretrain.epochs
        ckpt = self.downstream.checkpoint_epochs
        if grid is not None and self.pretrain.budget(grid)[1] is not None:
            saved = self.pretrain.saved_epochs(None, grid)
            return saved if grid.checkpoint_epochs is not None or ckpt == "all" else [LAST]
        if grid is not None and grid.checkpoint_epochs is not None:
            return self.pretrain.saved_epochs(epochs, grid)
        if ckpt == "last":
            return [epochs]
        if ckpt == "all":
            return self.pretrain.saved_epochs(epochs, grid)
        return sorted(set(ckpt))

    def path(self, which: Literal["workdir", "store", "report"], base: Path | None = None) -> Path:
        p = Path(getattr(self, which).format(name=self.name))
        return p if p.is_absolute() or base is None else base / p


def _loc(loc: tuple) -> str:
    return ".".join(str(x) for x in loc if not str(x).startswith("function-after")) or "(top level)"


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    """Validate a spec given as plain data; raise :class:`SpecError` listing every problem."""
    if not isinstance(data, dict):
        raise SpecError(source, [("(top level)", f"a spec is a mapping of fields, got {type(data).__name__}")])
    pretrain = data.get("pretrain") if isinstance(data.get("pretrain"), dict) else {}
    mixtures = pretrain.get("mixtures") if isinstance(pretrain.get("mixtures"), list) else []
    curation = data.get("curation", {"none": []})
    downstream = data.get("downstream") if isinstance(data.get("downstream"), dict) else {}
    custom = downstream.get("custom_sets") if isinstance(downstream.get("custom_sets"), dict) else {}
    context = {
        "mixtures": {m["name"] for m in mixtures if isinstance(m, dict) and isinstance(m.get("name"), str)},
        "curation": set(curation) if isinstance(curation, dict) else {"none"},
        "custom_sets": {str(k) for k in custom},
        "sources": dict(data["sources"]) if isinstance(data.get("sources"), dict) else {},
    }
    try:
        return Spec.model_validate(data, context=context)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                parent = err["loc"][:-1]
                msg = f"unknown field {err['loc'][-1]!r}; valid fields: {_valid_fields(parent)}"
            errors.append((_loc(err["loc"]), msg))
        raise SpecError(source, errors) from None


def _valid_fields(loc: tuple) -> str:
    model: Any = Spec
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None and hasattr(model, "model_fields"):
            continue  # a key of a mapping of models (models.<name>): the model stays
        if field is None:
            return "(see docs)"
        model = _inner_model(field.annotation)
    return ", ".join(model.model_fields) if model is not None and hasattr(model, "model_fields") else "(see docs)"


def _inner_model(ann: Any) -> Any:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        m = _inner_model(arg)
        if m is not None:
            return m
    return None


def load_spec(path: str | Path) -> Spec:
    """Read a YAML spec with ``yaml.safe_load`` and validate it."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(str(p), [("(file)", f"no such spec file: {p}")])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(str(p), [("(yaml)", f"not valid YAML: {e}")]) from None
    return parse_spec(data, str(p))
