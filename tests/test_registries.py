"""Every entry of every registry meets its axis's contract (as timm's tests build every registered model).

One parametrized case per (registry, entry): a new entry is tested the moment it is registered,
and :func:`test_every_registry_is_covered` fails when a module gains a ``Registry(...)`` this file
does not know. Contracts are the ones the entry types document: executors and cost functions take
``(job, context)``; a curation step's parameters are its predicate's keyword arguments; a
pre-training method builds a model with an ``.encoder`` and names a registered sample pipeline;
every backbone builds at 32 px and runs a batch of two; ... All cases together take a few seconds.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "curation", "pretrain", "downstream", "results")

# registry label -> (module, attribute)
REGISTRIES = {
    "executors": ("harness.executors", "EXECUTORS"),
    "costs": ("harness.estimate", "COSTS"),
    "filters": ("curation.filters", "FILTERS"),
    "sources": ("curation.sources", "SOURCES"),
    "real_sources": ("curation.sources", "REAL_SOURCES"),
    "pipelines": ("pretrain.data", "PIPELINES"),
    "methods": ("pretrain.methods", "METHODS"),
    "backbones": ("pretrain.models", "BACKBONES"),
    "downstream": ("downstream.sets", "DOWNSTREAM"),
    "protocols": ("downstream.protocols", "PROTOCOLS"),
}


def registry(label: str):
    module, attr = REGISTRIES[label]
    return getattr(importlib.import_module(module), attr)


def entries(label: str) -> list:
    return [pytest.param(name, id=name) for name in registry(label).names()]


def _doc(obj) -> str:
    return (inspect.getdoc(obj) or "").strip()


def test_every_registry_is_covered():
    """Each ``NAME ... = Registry(...)`` of the five packages is listed above (so its entries are tested)."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for name in re.findall(r"^([A-Z_]+)\s*(?::[^=\n]*)?=\s*Registry\(", path.read_text(), re.M):
                found.add((module, name))
    assert found == set(REGISTRIES.values())


@pytest.mark.parametrize("label", sorted(REGISTRIES))
def test_registry_is_not_empty_and_answers_by_name(label):
    from harness.core.registry import UnknownNameError

    reg = registry(label)
    assert len(reg) > 0 and reg.names() == sorted(reg.names())
    for name, entry in reg.items():
        assert reg.get(name) is entry and name in reg
    with pytest.raises(UnknownNameError, match=f"unknown {reg.kind} 'no-such-entry'.* Valid: {reg.names()[0]}"):
        reg.get("no-such-entry")


# ------------------------------------------------------------------------------ jobs: executors, costs


def _two_positional(fn) -> bool:
    params = list(inspect.signature(fn).parameters.values())
    return len(params) == 2 and all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


@pytest.mark.parametrize("label", ["executors", "costs"])
def test_one_executor_and_cost_function_per_job_kind(label):
    from harness.plan import KINDS

    assert set(registry(label).names()) == set(KINDS)


@pytest.mark.parametrize("kind", entries("executors"))
def test_executor_contract(kind):
    fn = registry("executors").get(kind)
    assert callable(fn) and _two_positional(fn), f"executor {kind!r} must take (job, ctx)"
    assert "dict" in str(inspect.signature(fn).return_annotation)


@pytest.mark.parametrize("kind", entries("costs"))
def test_cost_function_contract(kind):
    fn = registry("costs").get(kind)
    assert callable(fn) and _two_positional(fn), f"cost function {kind!r} must take (job, costing)"
    assert "JobCost" in str(inspect.signature(fn).return_annotation)


# ------------------------------------------------------------------------------ curation steps


def _world_samples(n: int = 4) -> list[dict]:
    """``n`` samples of the world's laion source as views hand them to filters (key, txt, json)."""
    from curation.catalogue import SOURCES_BY_NAME
    from curation.generate import make_captions, sample_factors, sample_meta, sample_original_sizes

    decl = SOURCES_BY_NAME["laion"]
    rng = np.random.default_rng(0)
    f = sample_factors(decl.dist, n, rng)
    caps, facts, sim = make_captions(decl, f, rng, rng)
    width, height = sample_original_sizes(decl.image_size, n, rng)
    out = []
    for i in range(n):
        meta = sample_meta(f, i)
        meta.update(
            similarity=float(sim[i]),
            lang=facts[i]["lang"],
            original_width=int(width[i]),
            original_height=int(height[i]),
        )
        out.append({"key": f"laion-{i:07d}", "txt": caps[i], "json": meta})
    return out


# Parameters that pass a step's validation where its defaults alone do not (a required parameter, or
# a cross-parameter rule such as clip_score's "exactly one of threshold and top_fraction").
VALID_PARAMS = {"min_resolution": {"min_side": 8}, "clip_score": {"threshold": 0.25}}


@pytest.mark.parametrize("name", entries("filters"))
def test_curation_step_contract(name):
    from curation.filters import REQUIRED

    entry = registry("filters").get(name)
    assert entry.name == name and entry.kind in ("sample", "global")
    assert entry.description or _doc(entry.fn), f"curation step {name!r} has no description or docstring"
    assert set(entry.types) <= set(entry.params), "types for parameters the step does not have"
    with pytest.raises(ValueError, match="no_such_param"):
        entry.check_params({"no_such_param": 1})
    required = [k for k, v in entry.params.items() if v is REQUIRED]
    if required:
        with pytest.raises(ValueError, match=required[0]):
            entry.check_params({})
    if entry.kind == "global":  # applied by curation.views to the whole pool, not per sample
        return
    signature = inspect.signature(entry.fn)
    assert list(signature.parameters)[1:] == list(entry.params), "the step's parameters are its predicate's"
    for k, default in entry.params.items():
        if default is not REQUIRED:
            assert signature.parameters[k].default == default, f"{name}.{k}: registered default != predicate's"
    params = entry.check_params(dict(VALID_PARAMS.get(name, {})))
    if entry.is_global(params):
        return
    for sample in _world_samples():
        assert isinstance(entry.fn(sample, **params), (bool, np.bool_))


# ------------------------------------------------------------------------------ sources


@pytest.mark.parametrize("name", entries("sources"))
def test_world_source_contract(name):
    from curation.catalogue import SOURCES_BY_NAME

    entry = registry("sources").get(name)
    assert entry.name == name and entry.kind in ("image-text", "labelled") and entry.description
    decl = SOURCES_BY_NAME[name]  # every world source is declared in the catalogue, with the same kind
    assert decl.kind == entry.kind and decl.description == entry.description


@pytest.mark.parametrize("name", entries("real_sources"))
def test_real_source_contract(name):
    from curation.sources import SourceEntry

    entry = registry("real_sources").get(name)
    assert entry.name == name and name.startswith("real.") and entry.kind in ("image-text", "labelled")
    assert entry.description and entry.hint, f"real source {name!r} must say what it is and how to provide it"
    assert SourceEntry.from_config(name, entry.to_config()) == entry  # to_config round-trips


# ------------------------------------------------------------------------------ pre-training


def _method_for(pipeline: str) -> str:
    return next(n for n, m in registry("methods").items() if m.pipeline == pipeline)


def _raw_sample() -> dict:
    """A raw webdataset sample (bytes per field) with every field a pipeline may read."""
    from curation import render as R

    image = R.png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return {
        "__key__": "s-0000000",
        "png": image,
        "txt": b"a photo of a red cat on grass",
        "cls": b"3",
        "json": b'{"concept_id": 3}',
    }


@pytest.mark.parametrize("name", entries("pipelines"))
def test_sample_pipeline_contract(name):
    pipeline = registry("pipelines").get(name)
    assert pipeline.description and callable(pipeline.make)
    assert all(isinstance(f, str) for f in pipeline.fields) and pipeline.image_keys
    method = registry("methods").get(_method_for(name))  # the pipeline's options come from a method using it
    torch.manual_seed(0)
    hparams = method.resolve({})
    model = method.build("test_resnet", 32, 10, **hparams)
    fn = pipeline.make(32, **method.pipeline_options(model, hparams))
    out = fn(_raw_sample(), torch.Generator().manual_seed(0))
    for key in pipeline.image_keys:
        assert out[key].dtype == torch.uint8 and tuple(out[key].shape[-2:]) == (32, 32)


@pytest.mark.parametrize("name", entries("methods"))
def test_method_contract(name):
    method = registry("methods").get(name)
    assert method.description and method.pipeline in registry("pipelines")
    assert method.resolve({}) == dict(method.hparams)
    with pytest.raises(ValueError, match="no_such_hparam"):
        method.resolve({"no_such_hparam": 1}, name)
    torch.manual_seed(0)
    model = method.build("test_resnet", 32, 10, **method.resolve({}))
    model.eval()
    with torch.no_grad():
        features = model.encoder(torch.randn(2, 3, 32, 32))
    assert features.shape[0] == 2 and torch.isfinite(features).all()
    meta = method.meta(model, "test_resnet", 32)
    assert meta["backbone"] == "test_resnet" and meta["feature_dim"] == features.shape[-1]
    assert isinstance(method.export(model), dict)


@pytest.mark.parametrize("name", entries("backbones"))
def test_backbone_builds_at_32px_and_runs_a_batch_of_two(name):
    from pretrain.models import build_encoder

    entry = registry("backbones").get(name)
    assert entry.timm_name
    torch.manual_seed(0)
    encoder = build_encoder(name, 32).eval()
    with torch.no_grad():
        features = encoder(torch.randn(2, 3, 32, 32))
    assert tuple(features.shape) == (2, encoder.num_features) and torch.isfinite(features).all()


# ------------------------------------------------------------------------------ downstream


@pytest.mark.parametrize("name", entries("downstream"))
def test_downstream_set_contract(name):
    from curation.catalogue import PACKAGE_SETS, SETS_BY_NAME
    from downstream.metrics import METRIC_NAMES
    from downstream.sets import FORMATS, ORIGINS, DownstreamSet

    entry = registry("downstream").get(name)
    assert entry.name == name and entry.description
    assert entry.origin in ORIGINS and entry.format in FORMATS and entry.metric in METRIC_NAMES
    if entry.origin == "world":
        assert SETS_BY_NAME[name].metric == entry.metric
    elif entry.origin == "package":
        assert PACKAGE_SETS[name] == entry.description
    else:
        assert name.startswith(f"{entry.origin}.")
        assert DownstreamSet.from_config(name, entry.to_config()) == entry  # to_config round-trips


@pytest.mark.parametrize("name", entries("protocols"))
def test_protocol_contract(name):
    entry = registry("protocols").get(name)
    assert entry.description and _doc(entry.run), f"protocol {name!r} needs a description and a docstring"
    params = list(inspect.signature(entry.run).parameters)
    assert len(params) == 1, f"protocol {name!r} must take one EvalRequest"
    assert "EvalResult" in str(inspect.signature(entry.run).return_annotation)
    assert not (entry.from_scratch and entry.needs_features), "a from-scratch protocol reads no cached features"
