"""Views: curation funnel, caption-derived labels, nested sizes, label noise, mixtures, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation import world as W
from curation.filters import FILTERS, run_steps
from curation.views import LABEL_STEP, SUBSET_STEP, ViewConfig, allocate, build_view

SCALE = 0.1
CONTRACT_KEYS = {"source", "curation", "requested_size", "size", "label_noise", "achieved_noise", "label_accuracy",
                 "num_classes", "class_names", "funnel", "shards"}
CLEAN = (("caption_length", {"min_words": 2, "max_words": 30}), ("clip_score", {"threshold": 0.25}))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The session's world (shared with the other test files: build_world is idempotent)."""
    d = tmp_path_factory.getbasetemp() / f"tbench-world-{SCALE}"
    W.build_world(d, seed=0, scale=SCALE)
    return d


def cfg(source="laion", size=100, curation=(), name="none", noise=0.0, labels=False, seed=0, mixture=None):
    return ViewConfig(source=None if mixture else source, mixture=mixture, curation_name=name,
                      curation=tuple(curation), size=size, label_noise=noise, needs_labels=labels, seed=seed)


def keys_of(view_dir: Path) -> list[str]:
    import webdataset as wds

    shards = sorted(str(p) for p in (view_dir / "shards").glob("*.tar"))
    return [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]


def test_manifest_and_shards(world, tmp_path):
    import webdataset as wds

    m = build_view(cfg(size=150, curation=CLEAN, name="clean", labels=True, noise=0.1), world, tmp_path / "v")
    assert CONTRACT_KEYS <= set(m)
    assert json.loads((tmp_path / "v" / "manifest.json").read_text()) == m
    assert m["num_classes"] == len(m["class_names"]) == len(json.loads((world / "world.json").read_text())["concepts"])
    sizes = json.loads((tmp_path / "v" / "sizes.json").read_text())
    assert json.loads((tmp_path / "v" / "shards" / "sizes.json").read_text()) == sizes
    assert [f"shards/{k}" for k in sorted(sizes)] == m["shards"]
    samples = list(wds.WebDataset([str(tmp_path / "v" / p) for p in m["shards"]], shardshuffle=False))
    assert len(samples) == sum(sizes.values()) == m["size"]
    for s in samples:
        assert {"png", "txt", "json", "cls"} <= set(s)
        assert 0 <= int(s["cls"]) < m["num_classes"]
        assert json.loads(s["json"])["view"]["label"] == int(s["cls"])
    assert not list(tmp_path.glob(".v.*")), "no temporary folders are left behind"


def test_funnel_adds_up_and_labels_come_from_captions(world, tmp_path):
    raw = build_view(cfg(size=10_000, labels=True), world, tmp_path / "raw")
    clean = build_view(cfg(size=10_000, curation=CLEAN, name="clean", labels=True), world, tmp_path / "clean")
    for m in (raw, clean):
        assert m["pool_size"] == round(W.SOURCES_BY_NAME["laion"].pool * SCALE)
        assert m["pool_size"] == m["size"] + sum(m["funnel"].values())
        assert m["funnel"][LABEL_STEP] > 0 and m["funnel"][SUBSET_STEP] == 0
        assert m["requested_size"] == 10_000 and m["size"] < 10_000  # the pool is smaller: built what exists
        assert 0.0 < m["label_accuracy"] <= 1.0
    assert list(clean["funnel"]) == ["caption_length", "clip_score", LABEL_STEP, SUBSET_STEP]
    assert clean["funnel"]["clip_score"] > 0
    # Filtering on the image-text score keeps faithful captions, so caption-derived labels improve.
    assert clean["label_accuracy"] > raw["label_accuracy"]
    lab = build_view(cfg(source="imagenet", size=50, labels=True), world, tmp_path / "inet")
    assert lab["label_accuracy"] == 1.0 and LABEL_STEP not in lab["funnel"]


def test_smaller_views_nest_inside_larger(world, tmp_path):
    small = build_view(cfg(size=60, curation=CLEAN, name="clean"), world, tmp_path / "s")
    large = build_view(cfg(size=240, curation=CLEAN, name="clean"), world, tmp_path / "l")
    assert (small["size"], large["size"]) == (60, 240)
    ks, kl = keys_of(tmp_path / "s"), keys_of(tmp_path / "l")
    assert set(ks) < set(kl)
    other = build_view(cfg(size=60, curation=CLEAN, name="clean", seed=1), world, tmp_path / "o")
    assert other["size"] == 60 and set(keys_of(tmp_path / "o")) != set(ks)


def test_label_noise_is_achieved(world, tmp_path):
    mix = {name: 1.0 for name in W.SOURCES_BY_NAME}
    m = build_view(cfg(mixture=mix, size=2000, labels=True, noise=0.3), world, tmp_path / "mix")
    assert m["size"] > 1000
    assert abs(m["achieved_noise"] - 0.3) <= 0.02
    m = build_view(cfg(source="imagenet", size=600, labels=True, noise=0.2), world, tmp_path / "inet")
    assert abs(m["achieved_noise"] - 0.2) <= 0.02
    assert m["label_accuracy"] == 1.0  # measured before the noise is added


def test_mixture_sizes_follow_weights(world, tmp_path):
    m = build_view(cfg(mixture={"laion": 3.0, "cc12m": 1.0}, size=200), world, tmp_path / "mix")
    assert m["size"] == 200 and m["source"] == "mix:cc12m=1+laion=3"
    assert {k: v["size"] for k, v in m["per_source"].items()} == {"laion": 150, "cc12m": 50}
    assert allocate(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    keys = keys_of(tmp_path / "mix")
    assert sum(k.startswith("laion") for k in keys) == 150


def test_build_view_is_idempotent(world, tmp_path):
    c = cfg(size=50)
    m = build_view(c, world, tmp_path / "v")
    stamp = (tmp_path / "v" / "manifest.json").stat().st_mtime_ns
    assert build_view(c, world, tmp_path / "v") == m
    assert (tmp_path / "v" / "manifest.json").stat().st_mtime_ns == stamp
    m2 = build_view(cfg(size=40), world, tmp_path / "v")  # a different config replaces it
    assert m2["size"] == 40 and len(keys_of(tmp_path / "v")) == 40


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="Did you mean 'laion'"):
        cfg(source="laoin")
    with pytest.raises(ValueError, match="exactly one of 'source' and 'mixture'"):
        ViewConfig("laion", {"laion": 1.0}, "x", (), 10, 0.0, False, 0)
    with pytest.raises(ValueError, match="label_noise"):
        cfg(noise=1.5, labels=True)
    with pytest.raises(ValueError, match="needs_labels"):
        cfg(noise=0.1, labels=False)
    with pytest.raises(ValueError, match=r"clip_score.*unknown parameter\(s\) \['treshold'\].*threshold \(required\)"):
        cfg(curation=(("clip_score", {"treshold": 0.3}),))
    with pytest.raises(KeyError, match="unknown curation step 'clip'"):
        cfg(curation=(("clip", {}),))


def test_filters_funnel_counts():
    samples = [{"key": str(i), "txt": "a " * i, "json": {"similarity": i / 10}} for i in range(10)]
    kept, funnel = run_steps(samples, [("caption_length", {"min_words": 2}), ("clip_score", {"threshold": 0.5}),
                                       ("caption_length", {"max_words": 8})])
    assert [s["key"] for s in kept] == ["5", "6", "7", "8"]
    assert funnel == {"caption_length": 2, "clip_score": 3, "caption_length#2": 1}
    assert {"caption_length", "clip_score"} <= set(FILTERS.names())
    with pytest.raises(TypeError, match="min_words"):
        run_steps(samples, [("caption_length", {"min_words": "two"})])
