"""Typed job configs: one frozen dataclass per job kind, shared by the planner, the executors and
the cost estimate.

A :class:`harness.plan.Job` still carries its config as a plain dict (that dict is what is
hashed into its content key, shipped to Ray tasks and written beside markers); the planner
builds it with ``XConfig(...).to_dict()`` and readers turn it back with
:func:`config_of` (or ``XConfig.from_dict``) instead of reading string keys.

``to_dict()`` gives exactly the dict the planner wrote before these classes existed: fields
marked :func:`optional` are left out while they are ``None`` (settings added later join a key
only when set, so older keys stay), tuples become lists. ``from_dict()`` refuses a key the
kind does not know, or a missing required one, with a message naming the kind and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

_OPTIONAL = "optional"


def optional(default: Any = None) -> Any:
    """A field left out of :meth:`JobConfig.to_dict` while it is ``None``."""
    return field(default=default, metadata={_OPTIONAL: True})


class JobConfigError(ValueError):
    """A job config dict that does not fit its kind's config class."""


def _plain(value: Any) -> Any:
    """``value`` as the planner's dict holds it: nested configs as dicts, tuples as lists."""
    if isinstance(value, JobConfig):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class JobConfig:
    """The base of every kind's config: the dict round trip."""

    KIND: ClassVar[str] = ""
    #: fields held as tuples (lists in the dict)
    TUPLES: ClassVar[tuple[str, ...]] = ()
    #: fields holding a nested config class
    NESTED: ClassVar[dict[str, type[JobConfig]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get(_OPTIONAL):
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        if not isinstance(data, dict):
            raise JobConfigError(f"{cls.KIND} job config: expected a mapping, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise JobConfigError(
                f"{cls.KIND} job config: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        required = [
            n for n, f in known.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            raise JobConfigError(f"{cls.KIND} job config: missing key {missing[0]!r}")
        values = dict(data)
        for name in cls.TUPLES:
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        for name, sub in cls.NESTED.items():
            if values.get(name) is not None:
                values[name] = sub.from_dict(values[name])
        return cls(**values)


@dataclass(frozen=True)
class WorldConfig(JobConfig):
    """The embedded world: its seed, scale and generator version."""

    KIND: ClassVar[str] = "world"
    seed: int
    scale: float
    version: int


@dataclass(frozen=True)
class ViewJobConfig(JobConfig):
    """The exact pre-training data of a run (curation's own :class:`curation.views.ViewConfig` is
    built from it by :func:`harness.executors.view_config`)."""

    KIND: ClassVar[str] = "view"
    TUPLES: ClassVar[tuple[str, ...]] = ("curation", "against")
    source: str | None
    mixture: dict[str, float] | None
    curation_name: str
    curation: tuple[dict[str, Any], ...]  # the variant's steps, each {"step": name, **params}
    size: int
    label_noise: float
    needs_labels: bool
    seed: int
    noise_model: str | None = optional()  # only when not "symmetric" and noise > 0
    materialize: str | None = optional()  # only when not "shards"
    sources: dict[str, Any] | None = optional()  # declared sources the view reads
    against: tuple[str, ...] | None = optional()  # every downstream set, for dedup against "all"
    sets_config: dict[str, Any] | None = optional()  # declared sets' configs dedup reads
    dedup_models: dict[str, dict[str, Any]] | None = optional()  # embedding model -> identity


@dataclass(frozen=True)
class OptimJobConfig(JobConfig):
    """Pre-training's optimiser settings (``harness.spec.Optim`` without its unset fields)."""

    KIND: ClassVar[str] = "pretrain.optim"
    lr: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    warmup_fraction: float | None = optional()


@dataclass(frozen=True)
class PretrainJobConfig(JobConfig):
    """One pre-training run; its budget is ``epochs`` or ``samples_seen`` (exactly one is set)."""

    KIND: ClassVar[str] = "pretrain"
    TUPLES: ClassVar[tuple[str, ...]] = ("save_epochs",)
    NESTED: ClassVar[dict[str, type[JobConfig]]] = {"optim": OptimJobConfig}
    method: str
    backbone: str
    image_size: int
    save_epochs: tuple[int, ...]
    batch_size: int
    optim: OptimJobConfig
    seed: int
    epochs: int | None = optional()
    samples_seen: int | None = optional()
    hparams: dict[str, Any] | None = optional()  # only a method's non-default arguments
    grad_accum: int | None = optional()  # only when not 1
    precision: str | None = optional()  # only when not "auto"
    decode: str | None = optional()  # only when not "cpu"


@dataclass(frozen=True)
class InitConfig(JobConfig):
    """A randomly initialised encoder (the `linear` floor and `scratch`'s start)."""

    KIND: ClassVar[str] = "init"
    backbone: str
    image_size: int
    seed: int


@dataclass(frozen=True)
class ModelJobConfig(JobConfig):
    """An existing model imported as a harness checkpoint (its weights' sha256 in the key)."""

    KIND: ClassVar[str] = "model"
    name: str
    framework: str
    arch: str
    weights: str
    sha256: str | None
    describes: dict[str, Any]
    image_size: int | None = optional()


@dataclass(frozen=True)
class FeaturesConfig(JobConfig):
    """Features of one checkpoint (an epoch, ``LAST`` or ``IMPORTED``) on one downstream set."""

    KIND: ClassVar[str] = "features"
    downstream: str
    epoch: int | str
    set_config: dict[str, Any] | None = optional()


@dataclass(frozen=True)
class EvalConfig(JobConfig):
    """One protocol on one set for one checkpoint, every shot count (None: full) and seed; the
    training settings only for protocols that train (``recipe`` marks their version)."""

    KIND: ClassVar[str] = "eval"
    TUPLES: ClassVar[tuple[str, ...]] = ("shots", "seeds", "lrs")
    downstream: str
    epoch: int | str
    protocol: str
    shots: tuple[int | None, ...]
    seeds: tuple[int, ...]
    epochs: int | None = optional()
    lrs: tuple[float, ...] | None = optional()
    batch_size: int | None = optional()
    min_steps: int | None = optional()
    bn: str | None = optional()
    selection: str | None = optional()  # only when not the default test at 0.05: "plain" or "alpha=<level>"
    recipe: int | None = optional()
    head_init: str | None = optional()  # only when not "zero"
    set_config: dict[str, Any] | None = optional()


#: LP-FT's (and a zero-shot-headed fine-tuning's) default test for leaving its starting point:
#: a one-sided level, Bonferroni-corrected over the candidates (``downstream.finetune``).
DEFAULT_START_ALPHA = 0.05


def selection_setting(start_alpha: float | None) -> str | None:
    """``start_alpha`` as the eval key holds it: None at the default (keys stay as they were), else
    "plain" (no test) or "alpha=<level>"; :func:`selection_alpha` reads it back."""
    if start_alpha == DEFAULT_START_ALPHA:
        return None
    return "plain" if start_alpha is None else f"alpha={float(start_alpha)!r}"


def selection_alpha(selection: str | None) -> float | None:
    """The ``start_alpha`` an eval job's ``selection`` setting stands for."""
    if selection is None:
        return DEFAULT_START_ALPHA
    if selection == "plain":
        return None
    if not selection.startswith("alpha="):
        raise ValueError(f"selection {selection!r} is not valid; valid: None, 'plain', 'alpha=<level>'")
    return float(selection.removeprefix("alpha="))


#: The config class of each job kind (:data:`harness.plan.KINDS`).
CONFIGS: dict[str, type[JobConfig]] = {
    c.KIND: c
    for c in (WorldConfig, ViewJobConfig, PretrainJobConfig, InitConfig, ModelJobConfig, FeaturesConfig, EvalConfig)
}


def config_of(job: Any) -> Any:
    """The typed config of ``job`` (a :class:`harness.plan.Job`), by its kind."""
    if job.kind not in CONFIGS:
        raise JobConfigError(f"job kind {job.kind!r} has no config class (known: {', '.join(sorted(CONFIGS))})")
    return CONFIGS[job.kind].from_dict(job.config)
