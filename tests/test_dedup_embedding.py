"""De-duplication with an embedding model (issue 16): ``dedup`` with ``model`` (a model of the spec's
``models:`` or a harness checkpoint file) and ``cosine``; the model's identity keys the view."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from curation import dedup as D


def test_embedding_duplicates_cluster_by_cosine_and_keep_the_first_by_order():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 16)).astype(np.float32)
    emb = np.concatenate([base, base[[1]] * 3.0, base[[4]] + 1e-4])  # 6: copy of 1 (scaled), 7: near copy of 4
    res = D.embedding_duplicates(emb, 0.999, order=np.array([5, 4, 3, 2, 9, 0, 1, 8]))
    assert res.remove.tolist() == [False, True, False, False, True, False, False, False]  # keeps 6 over 1, 7 over 4
    assert res.num_clusters == 2 and res.cluster[1] == 6 and res.cluster[4] == 7
    hit = D.matches_reference_embeddings(base, emb[6:], 0.999)
    assert hit.tolist() == [False, True, False, False, True, False]
    for bad in (0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match=r"cosine threshold must be in \(0, 1\]"):
            D.embedding_duplicates(emb, bad)


def _world_images(world: Path, source: str = "laion") -> list[np.ndarray]:
    """One image per concept of a world source (distinct images)."""
    by: dict = {}
    for shard in sorted((world / "sources" / source).glob("*.tar")):
        with tarfile.open(shard) as t:
            items: dict = {}
            for m in t.getmembers():
                key, ext = m.name.rsplit(".", 1)
                items.setdefault(key, {})[ext] = t.extractfile(m).read()
        for it in items.values():
            by.setdefault(json.loads(it["json"]).get("concept_id"), it["png"])
    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in by.values()]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A tiny harness checkpoint built here (timm test_resnet, seeded random weights, 32 px)."""
    from pretrain.models import build_encoder, encoder_meta, save_encoder

    torch.manual_seed(0)
    enc = build_encoder("test_resnet", 32)
    path = tmp_path_factory.mktemp("enc") / "tiny.pt"
    save_encoder(path, enc, encoder_meta(enc, "test_resnet", 32, method="none"))
    return path


def test_exact_flipped_and_jittered_copies_are_found_distinct_images_kept(world, tiny_encoder):
    """At cosine 0.995 the tiny encoder puts each world image with its exact copy, its mirror (the
    embedding is mirror-symmetric by construction) and a 3% brightness change in one cluster, and
    no two distinct images (one per concept) together. Shifts and crops of 2-3 px need a trained
    model: a random encoder's cosines for them (0.98) overlap those of distinct images (up to 0.99)."""
    originals = _world_images(world)
    assert len(originals) >= 20
    bright = [np.asarray(ImageEnhance.Brightness(Image.fromarray(a)).enhance(1.03)) for a in originals]
    images = originals + [a.copy() for a in originals] + [a[:, ::-1] for a in originals] + bright
    n = len(originals)
    emb = D.embed_images(images, tiny_encoder)
    res = D.embedding_duplicates(emb, 0.995)
    assert res.num_clusters == n
    for k in range(1, 4):  # every copy is in its original's cluster
        assert (res.cluster[k * n : (k + 1) * n] == res.cluster[:n]).all()
    assert len(np.unique(res.cluster[:n])) == n  # distinct images stay apart
    assert not res.remove[:n].any() and res.remove[n:].all()


def _spec(tmp_path: Path, step: dict, models: dict | None = None) -> dict:
    return {
        "name": "emb",
        "workdir": str(tmp_path / "w"),
        "store": str(tmp_path / "s"),
        "world": {"scale": 0.1},
        "curation": {"none": [], "sem": [{"step": "dedup", **step}]},
        "models": models or {},
        "pretrain": {"grids": [{"sources": ["laion"], "sizes": [100], "curation": ["sem"]}]},
        "downstream": {"sets": ["dtd"], "protocols": [{"name": "linear", "shots": [5]}]},
    }


def test_bad_model_or_cosine_is_a_spec_error_naming_the_field(tmp_path, tiny_encoder):
    from harness.spec import parse_spec

    cases = [
        ({"model": "nope", "cosine": 0.9}, r"curation.*sem\.0\.model: 'nope' is neither a model"),
        ({"model": str(tiny_encoder), "cosine": 1.5}, r"cosine must be a cosine similarity in \(0, 1\]"),
        ({"model": str(tiny_encoder), "cosine": 0}, r"cosine must be a cosine similarity in \(0, 1\]"),
        ({"cosine": 0.9}, "cosine needs model"),
        ({"model": str(tiny_encoder), "threshold": 3}, "with model give cosine"),
    ]
    for step, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            parse_spec(_spec(tmp_path, step))


def test_the_model_identity_keys_the_view_and_a_declared_model_is_a_dependency(tmp_path, tiny_encoder):
    import timm

    from harness.plan import make_plan
    from harness.spec import parse_spec
    from pretrain.existing import sha256_file

    torch.manual_seed(1)
    weights = tmp_path / "tm.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), weights)
    models = {"tm": {"framework": "timm", "arch": "test_resnet", "weights": str(weights)}}
    plan = make_plan(parse_spec(_spec(tmp_path, {"model": "tm", "cosine": 0.9}, models)))
    view = next(iter(plan.of_kind("view")))
    model = next(iter(plan.of_kind("model")))
    assert model.key in view.deps and view.config["dedup_models"] == {"tm": {"model_key": model.key}}
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), weights)  # other weights
    other = make_plan(parse_spec(_spec(tmp_path, {"model": "tm", "cosine": 0.9}, models)))
    assert next(iter(other.of_kind("view"))).key != view.key
    by_cos = make_plan(parse_spec(_spec(tmp_path, {"model": "tm", "cosine": 0.95}, models)))
    assert next(iter(by_cos.of_kind("view"))).key != view.key
    by_file = make_plan(parse_spec(_spec(tmp_path, {"model": str(tiny_encoder)})))
    fview = next(iter(by_file.of_kind("view")))
    assert fview.config["dedup_models"][str(tiny_encoder)]["sha256"] == sha256_file(tiny_encoder)
    assert fview.deps == (plan.of_kind("world")[0].key,)


def test_a_view_deduplicated_by_embeddings(world, tmp_path, tiny_encoder):
    """build_view with a model dedup step: the report names the method; what it removes is what
    embedding_duplicates removes on the scanned embeddings; a test-set overlap is reported."""
    from curation.views import ViewConfig, build_view

    step = ("dedup", {"model": str(tiny_encoder), "cosine": 0.995, "against": ["dtd"]})
    cfg = ViewConfig(
        source="laion",
        mixture=None,
        curation_name="sem",
        curation=(step,),
        size=50,
        label_noise=0.0,
        needs_labels=False,
        seed=0,
    )
    m = build_view(cfg, world, tmp_path / "v")
    rep = m["steps"]["dedup"]
    assert rep["method"] == "embedding" and rep["cosine"] == 0.995 and "dtd" in rep["overlap"]
    assert m["funnel"]["dedup"] == rep["within_removed"] + sum(rep["overlap"].values())
