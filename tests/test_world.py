"""The embedded world: determinism, idempotence, atomicity and the on-disk formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation import world as W
from curation.sources import SOURCES

SCALE = 0.1


@pytest.fixture(scope="session")
def world(world_info) -> tuple[Path, dict]:
    """The session's world folder and description (this file reads both)."""
    return world_info


def _tar_members(path: Path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def test_world_json_declares_everything(world):
    root, info = world
    assert json.loads((root / "world.json").read_text()) == info
    assert info["version"] == W.WORLD_VERSION and info["seed"] == 0 and info["scale"] == SCALE
    assert set(info["sources"]) == set(SOURCES.names())
    world_sets = [d.name for d in W.SET_DECLS]
    assert set(info["downstream"]) == set(world_sets) | {"digits", "textures"}
    assert 24 <= len(info["concepts"]) <= 32
    for src, row in info["similarity"].items():
        assert set(row) == set(world_sets)
        assert all(0.0 <= v <= 1.0 for v in row.values()), (src, row)
    sim = info["similarity"]
    # By construction: stock clipart resembles DomainNet-clipart, Flickr night shots camera traps.
    assert sim["shutterstock"]["domainnet_clipart"] > sim["yfcc"]["domainnet_clipart"]
    assert sim["yfcc"]["cameratraps"] > sim["shutterstock"]["cameratraps"]
    assert sim["redcaps"]["pets"] > sim["wit"]["pets"]


def test_build_is_idempotent(world):
    root, info = world
    stamp = (root / "world.json").stat().st_mtime_ns
    again = W.build_world(root, seed=0, scale=SCALE)
    assert again == info
    assert (root / "world.json").stat().st_mtime_ns == stamp


def test_same_seed_gives_identical_pngs(world, tmp_path):
    root, _ = world
    decl = W.SOURCES_BY_NAME["shutterstock"]
    W.write_source(decl, tmp_path / "again", seed=0, scale=SCALE)
    a = _tar_members(root / "sources" / "shutterstock" / "shard-000000.tar")
    b = _tar_members(tmp_path / "again" / "shard-000000.tar")
    assert a.keys() == b.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert pngs and all(a[k] == b[k] for k in pngs)
    W.write_source(decl, tmp_path / "other", seed=1, scale=SCALE)
    c = _tar_members(tmp_path / "other" / "shard-000000.tar")
    assert sum(a[k] != c[k] for k in pngs) > 0.9 * len(pngs)


def test_shards_read_by_plain_webdataset(world):
    import webdataset as wds

    root, info = world
    for name in SOURCES.names():
        entry = SOURCES.get(name)
        sizes = json.loads((root / "sources" / name / "sizes.json").read_text())
        assert sum(sizes.values()) == entry.num_samples(root) == info["sources"][name]["num_samples"]
        paths = entry.shard_paths(root)
        assert [Path(p).name for p in paths] == sorted(sizes)
        n = 0
        for shard in paths:
            count = 0
            for s in wds.WebDataset(shard, shardshuffle=False):
                meta = json.loads(s["json"])
                assert meta["width"] == meta["height"] == 32
                assert 0.0 <= meta["similarity"] <= 1.0
                assert meta["concept"] == info["concepts"][meta["concept_id"]]
                assert isinstance(s["txt"].decode(), str)
                assert ("cls" in s) == (entry.kind == "labelled")
                if "cls" in s:
                    assert int(s["cls"]) == meta["concept_id"]
                if count == 0:
                    img = np.asarray(Image.open(io.BytesIO(s["png"])))
                    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
                count += 1
            assert count == sizes[Path(shard).name]
            n += count
        assert n == round(W.SOURCES_BY_NAME[name].pool * SCALE)


def test_captions_follow_the_caption_model(world):
    _, info = world
    counts = {k: v["caption_counts"] for k, v in info["sources"].items()}
    frac = {k: c.get("correct", 0) / sum(c.values()) for k, c in counts.items()}
    assert frac["imagenet"] == 1.0
    assert frac["shutterstock"] > frac["laion"] > frac["yfcc"]
    assert counts["cc3m"].get("hypernym", 0) > counts["shutterstock"].get("hypernym", 0)


def test_downstream_sets_on_disk(world):
    import datasets

    root, info = world
    for name, meta in info["downstream"].items():
        dd = datasets.load_from_disk(str(root / "downstream" / name))
        assert set(dd) == {"train", "validation", "test"}
        for split, ds in dd.items():
            assert isinstance(ds.features["image"], datasets.Image)
            assert isinstance(ds.features["label"], datasets.ClassLabel)
            assert ds.features["label"].names == meta["classes"]
            assert len(ds) == meta["split_sizes"][split] > 0
        assert 5 <= len(meta["classes"]) <= 20
    # cameratraps is imbalanced; the others are balanced.
    labels = np.asarray(datasets.load_from_disk(str(root / "downstream" / "cameratraps"))["train"]["label"])
    counts = np.bincount(labels)
    assert counts.max() > 2 * counts.min()


def test_texture_tiles_do_not_repeat_across_splits(world):
    import datasets

    root, _ = world
    dd = datasets.load_from_disk(str(root / "downstream" / "textures")).cast_column(
        "image", datasets.Image(decode=False)
    )
    seen = {split: {r["bytes"] for r in dd[split]["image"]} for split in dd}
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["validation"])


def test_the_same_world_in_one_process_and_with_a_pool(world, tmp_path):
    """The sources written by spawned workers (the default) and one after another in this process
    (``workers=0``) are the same bytes and the same description."""
    root, info = world
    alone = W.build_world(tmp_path / "alone", seed=0, scale=SCALE, workers=0)
    assert alone == info

    def files(d: Path) -> dict[str, bytes]:
        return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    assert files(tmp_path / "alone") == files(root)
    with pytest.raises(ValueError, match="workers"):
        W.world_workers(-1)


def test_rebuild_on_new_scale_and_crash_leaves_nothing(tmp_path, monkeypatch):
    d = tmp_path / "w"
    info = W.build_world(d, seed=3, scale=0.02)
    assert info["scale"] == 0.02
    info = W.build_world(d, seed=3, scale=0.03)
    assert json.loads((d / "world.json").read_text())["scale"] == 0.03
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(W, "write_digits", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        W.build_world(tmp_path / "fresh", seed=0, scale=0.02)
    with pytest.raises(RuntimeError, match="simulated crash"):
        W.build_world(d, seed=4, scale=0.02)  # a failed rebuild keeps the old world
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    assert json.loads((d / "world.json").read_text())["scale"] == 0.03


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a world folder"):
        W.build_world(tmp_path, scale=0.02)
    with pytest.raises(ValueError, match="scale"):
        W.build_world(tmp_path / "w", scale=0)


def test_source_registry(tmp_path):
    assert SOURCES.names() == sorted(["cc3m", "cc12m", "redcaps", "yfcc", "laion", "wit", "shutterstock", "imagenet"])
    assert SOURCES.get("imagenet").kind == "labelled" and SOURCES.get("laion").kind == "image-text"
    with pytest.raises(KeyError, match="Did you mean 'laion'"):
        SOURCES.get("laoin")
    with pytest.raises(FileNotFoundError, match="tbench world"):
        SOURCES.get("laion").shard_paths(tmp_path)
