"""Views: curation funnel, caption-derived labels, nested sizes, label noise, mixtures, atomic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from curation import world as W
from curation.filters import FILTERS, run_steps
from curation.views import LABEL_STEP, SUBSET_STEP, ViewConfig, allocate, build_view

SCALE = 0.1
CONTRACT_KEYS = {
    "source",
    "curation",
    "requested_size",
    "size",
    "label_noise",
    "achieved_noise",
    "label_accuracy",
    "num_classes",
    "class_names",
    "funnel",
    "shards",
}
CLEAN = (("caption_length", {"min_words": 2, "max_words": 30}), ("clip_score", {"threshold": 0.25}))


def cfg(source="laion", size=100, curation=(), name="none", noise=0.0, labels=False, seed=0, mixture=None):
    return ViewConfig(
        source=None if mixture else source,
        mixture=mixture,
        curation_name=name,
        curation=tuple(curation),
        size=size,
        label_noise=noise,
        needs_labels=labels,
        seed=seed,
    )


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
    with pytest.raises(
        ValueError, match=r"clip_score.*unknown parameter\(s\) \['treshold'\].*threshold \(default None\), top_fraction"
    ):
        cfg(curation=(("clip_score", {"treshold": 0.3}),))
    with pytest.raises(KeyError, match="unknown curation step 'clip'"):
        cfg(curation=(("clip", {}),))


def test_filters_funnel_counts():
    samples = [{"key": str(i), "txt": "a " * i, "json": {"similarity": i / 10}} for i in range(10)]
    kept, funnel = run_steps(
        samples,
        [
            ("caption_length", {"min_words": 2}),
            ("clip_score", {"threshold": 0.5}),
            ("caption_length", {"max_words": 8}),
        ],
    )
    assert [s["key"] for s in kept] == ["5", "6", "7", "8"]
    assert funnel == {"caption_length": 2, "clip_score": 3, "caption_length#2": 1}
    assert {"caption_length", "clip_score"} <= set(FILTERS.names())
    with pytest.raises(TypeError, match="min_words"):
        run_steps(samples, [("caption_length", {"min_words": "two"})])


# ----------------------------------------------------------------------------- issue 5: steps, noise, nesting


def test_label_noise_rate_within_one_point_on_10000_samples():
    from curation.views import add_label_noise, class_partners

    rng = np.random.default_rng(0)
    vocab = [f"c{i}" for i in range(20)]
    groups = {c: f"g{i % 4}" for i, c in enumerate(vocab)}
    partners = class_partners(20, groups, vocab, seed=0)
    assert sorted(partners.tolist()) == list(range(20)), "each class is exactly one class's partner"
    assert all(groups[vocab[p]] == groups[vocab[c]] and p != c for c, p in enumerate(partners))
    keys = [f"sample-{i:06d}" for i in range(10_000)]
    clean = rng.integers(0, 20, 10_000)
    for model in ("symmetric", "class_dependent"):
        for rate in (0.05, 0.2, 0.4):
            noisy = add_label_noise(keys, clean, 20, rate, seed=3, model=model, partners=partners)
            achieved = float((noisy != clean).mean())
            assert abs(achieved - rate) <= 0.01, (model, rate, achieved)
            flipped = noisy != clean
            if model == "class_dependent":
                assert (noisy[flipped] == partners[clean[flipped]]).all()
            else:  # spread over the other classes
                assert len(np.unique((noisy[flipped] - clean[flipped]) % 20)) == 19
            again = add_label_noise(keys, clean, 20, rate, seed=3, model=model, partners=partners)
            assert (again == noisy).all(), "seeded: the same flips every time"
    other = add_label_noise(keys, clean, 20, 0.2, seed=4, model="symmetric", partners=partners)
    assert (other != add_label_noise(keys, clean, 20, 0.2, seed=3, model="symmetric", partners=partners)).any()


CURATED = (
    ("caption_length", {"min_words": 2}),
    ("clip_score", {"top_fraction": 0.8}),
    ("dedup", {}),
    ("aspect_ratio", {"max_ratio": 3.0}),
)


@pytest.mark.parametrize("mixture", [None, {"laion": 2.0, "cc12m": 1.0, "yfcc": 1.0}])
def test_every_size_pair_nests(world, tmp_path, mixture):
    sizes = (20, 45, 90, 180, 300)
    keys, labels = {}, {}
    for n in sizes:
        d = tmp_path / f"v{n}"
        m = build_view(cfg(size=n, curation=CURATED, name="curated", labels=True, noise=0.2, mixture=mixture), world, d)
        assert m["size"] == n and m["pool_size"] == m["size"] + sum(m["funnel"].values())
        import webdataset as wds

        samples = list(wds.WebDataset(sorted(str(p) for p in (d / "shards").glob("*.tar")), shardshuffle=False))
        keys[n] = {s["__key__"] for s in samples}
        labels[n] = {s["__key__"]: json.loads(s["json"])["view"]["clean_label"] for s in samples}
    for a in sizes:
        for b in sizes:
            if a < b:
                assert keys[a] < keys[b], f"size {a} is not inside size {b}"
                assert all(labels[b][k] == v for k, v in labels[a].items())


def test_top_fraction_keeps_the_best_scores(world, tmp_path):
    full = build_view(cfg(size=100_000, name="none"), world, tmp_path / "all")
    top = build_view(
        cfg(size=100_000, curation=(("clip_score", {"top_fraction": 0.25}),), name="top"), world, tmp_path / "top"
    )
    assert top["funnel"]["clip_score"] == full["size"] - math.ceil(0.25 * full["size"])
    cut = top["steps"]["clip_score"]["score_cutoff"]
    import webdataset as wds

    sims = [
        json.loads(s["json"])["similarity"]
        for s in wds.WebDataset(sorted(str(p) for p in (tmp_path / "top" / "shards").glob("*.tar")), shardshuffle=False)
    ]
    assert min(sims) >= cut
    with pytest.raises(ValueError, match="exactly one of 'threshold'.*'top_fraction'"):
        cfg(curation=(("clip_score", {"threshold": 0.2, "top_fraction": 0.5}),))
    with pytest.raises(ValueError, match="top_fraction must lie in"):
        cfg(curation=(("clip_score", {"top_fraction": 1.5}),))


def test_index_view_reads_the_source_shards(world, tmp_path):
    from pretrain.data import make_train_loader, read_view

    c = dict(size=150, curation=CURATED, name="curated", labels=True, noise=0.1)
    shards = build_view(cfg(**c), world, tmp_path / "s")
    index = build_view(ViewConfig(**{**cfg(**c).__dict__, "materialize": "index"}), world, tmp_path / "i")
    assert index["funnel"] == shards["funnel"] and index["size"] == shards["size"] == 150
    assert not (tmp_path / "i" / "shards").exists()
    v = read_view(tmp_path / "i")
    assert v.num_samples == 150 and all(Path(u).is_file() for u in v.shards)
    want = {k: lab for per in v.index.values() for k, lab in per.items()}
    import webdataset as wds

    got = {
        s["__key__"]: int(s["cls"])
        for s in wds.WebDataset(sorted(str(p) for p in (tmp_path / "s" / "shards").glob("*.tar")), shardshuffle=False)
    }
    assert want == got, "the index keeps the same samples with the same (noisy) labels"
    loader = make_train_loader(
        tmp_path / "i", pipeline="image_label", batch_size=50, num_batches=3, image_size=32, seed=0
    )
    loader.set_epoch(0)
    seen = [int(x) for b in loader for x in b["label"]]
    assert len(seen) == 150 and set(seen) <= set(got.values())


def test_caption_and_image_steps(world, tmp_path):
    steps = (
        ("caption_language", {}),
        ("caption_concept", {}),
        ("min_resolution", {"min_side": 300}),
        ("aspect_ratio", {"max_ratio": 2.5}),
    )
    m = build_view(cfg(source="wit", size=100_000, curation=steps, name="rules"), world, tmp_path / "wit")
    assert list(m["funnel"]) == ["caption_language", "caption_concept", "min_resolution", "aspect_ratio", SUBSET_STEP]
    assert all(m["funnel"][s] > 0 for s in ("caption_language", "min_resolution"))
    import webdataset as wds

    metas = [
        json.loads(s["json"])
        for s in wds.WebDataset(sorted(str(p) for p in (tmp_path / "wit" / "shards").glob("*.tar")), shardshuffle=False)
    ]
    kept_lang = [meta.get("lang", "en") for meta in metas]
    assert sum(x == "en" for x in kept_lang) / len(kept_lang) >= 0.95, "the language rule keeps English captions"
    assert all(min(meta["original_width"], meta["original_height"]) >= 300 for meta in metas)


def test_ray_engine_builds_the_same_view(world, tmp_path):
    ray = pytest.importorskip("ray")
    c = cfg(size=200, curation=CURATED, name="curated", labels=True, noise=0.2, mixture={"laion": 1.0, "cc3m": 1.0})
    local = build_view(c, world, tmp_path / "local", engine="local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = build_view(c, world, tmp_path / "ray", engine="ray")
    finally:
        ray.shutdown()
    assert remote["engine"] == "ray"
    for k in ("funnel", "size", "achieved_noise", "label_accuracy", "per_source"):
        assert remote[k] == local[k]
    assert sorted(keys_of(tmp_path / "ray")) == sorted(keys_of(tmp_path / "local"))
