"""The downstream registry and split loading: world sets, real sets, user sets in every format."""

from __future__ import annotations

import glob
import io
import json
import os
import pickle
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from downstream import sets
from downstream.sets import DOWNSTREAM, DataFormatError, DataNotFoundError, DownstreamSet, load_split, resolve_set

WORLD_SETS = {
    "cifar100",
    "dtd",
    "caltech101",
    "pets",
    "domainnet_real",
    "domainnet_clipart",
    "eurosat",
    "cameratraps",
    "cassava",
}
REAL = {f"real.{n}" for n in WORLD_SETS}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network at all, an empty Hugging Face cache, and an empty data dir (returned)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("TBENCH_DATA", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"a downstream loader tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    d = tmp_path / "data"
    d.mkdir()
    sets.clear_cache()
    yield d
    sets.clear_cache()


def png(colour, size=(8, 8)) -> bytes:
    """An encoded image of one colour; ``size`` is (width, height)."""
    b = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(b, "PNG")
    return b.getvalue()


def colour_of(label: int) -> tuple[int, int, int]:
    return (40 * label, 255 - 40 * label, 100)


def save_dataset_dict(
    path: Path, splits: dict[str, list[int]], class_names, image_col="image", label_col="label", sizes=None
) -> None:
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({image_col: datasets.Image(), label_col: datasets.ClassLabel(names=list(class_names))})
    dd = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict(
                {
                    image_col: [
                        {"bytes": png(colour_of(y), (sizes or {}).get((s, i), (8, 8))), "path": None}
                        for i, y in enumerate(ys)
                    ],
                    label_col: ys,
                },
                features=features,
            )
            for s, ys in splits.items()
        }
    )
    dd.save_to_disk(str(path))


# --------------------------------------------------------------------------------------- registry


def test_registry():
    assert set(DOWNSTREAM.names()) == WORLD_SETS | {"digits", "textures"} | REAL
    assert len(DOWNSTREAM) == 20
    balanced = {"cameratraps", "real.cameratraps"}
    assert all(DOWNSTREAM.get(n).metric == "balanced_acc" for n in balanced)
    assert all(DOWNSTREAM.get(n).metric == "top1" for n in DOWNSTREAM.names() if n not in balanced)
    assert {DOWNSTREAM.get(n).origin for n in ("digits", "textures")} == {"package"}
    assert {DOWNSTREAM.get(n).origin for n in WORLD_SETS} == {"world"}
    assert {DOWNSTREAM.get(n).origin for n in REAL} == {"real"}
    assert {DOWNSTREAM.get(n).format for n in REAL} == {"hf_disk"}
    assert DOWNSTREAM.get("real.cifar100").hub == "uoft-cs/cifar100"
    assert DOWNSTREAM.get("real.cifar100").label_key == "fine_label"
    assert DOWNSTREAM.get("real.cassava").hub is None and "Kaggle" in DOWNSTREAM.get("real.cassava").hint
    assert "LILA" in DOWNSTREAM.get("real.cameratraps").hint
    assert DOWNSTREAM.get("pets").chance(12) == pytest.approx(1 / 12)
    assert DOWNSTREAM.get("real.cameratraps").chance(4) == 0.25
    with pytest.raises(KeyError, match="unknown downstream set 'cifar10'.*Did you mean 'cifar100'"):
        DOWNSTREAM.get("cifar10")


@pytest.mark.parametrize("name", sorted(n for n, e in DOWNSTREAM.items() if e.origin in ("world", "package")))
def test_load_split(world, name):
    sizes = {}
    for split in ("train", "validation", "test"):
        d = load_split(name, split, world, image_size=64)  # world sets come as stored, whatever image_size
        assert d.images.dtype == np.uint8 and d.images.ndim == 4 and d.images.shape[1:] == (32, 32, 3)
        assert d.labels.dtype == np.int64 and d.labels.shape == (len(d.images),)
        assert d.labels.min() >= 0 and d.labels.max() < len(d.class_names)
        assert d.info["source_split"] == split and d.info["format"] == "world" and "validation" not in d.info
        sizes[split] = len(d.labels)
    assert min(sizes.values()) > 0
    assert len(np.unique(load_split(name, "train", world).labels)) == len(d.class_names)
    info = sets.split_info(name, world)
    assert {s: v["count"] for s, v in info["splits"].items()} == sizes
    assert info["num_classes"] == len(d.class_names) and info["chance"] == pytest.approx(1 / len(d.class_names))


def test_cache_and_errors(world, tmp_path):
    a = load_split("pets", "train", world)
    assert load_split("pets", "train", Path(str(world))) is a  # served from the cache
    assert load_split(DOWNSTREAM.get("pets"), "train", world) is a
    assert not a.images.flags.writeable
    with pytest.raises(ValueError, match="valid splits: train, validation, test"):
        load_split("pets", "val", world)
    with pytest.raises(FileNotFoundError, match=r"tbench world"):
        load_split("pets", "train", tmp_path)
    sets.clear_cache()
    assert load_split("pets", "train", world) is not a


def test_a_run_visiting_every_world_and_package_split_in_turn_decodes_each_once(world):
    """Feature extraction visits every split of every set once per checkpoint, in turn: the
    second round must be served from the cache (an LRU smaller than the 33 splits misses on
    every visit of such a cycle)."""
    names = sorted(n for n, e in DOWNSTREAM.items() if e.origin in ("world", "package"))
    sets.clear_cache()
    first = {(n, s): load_split(n, s, world) for n in names for s in ("train", "validation", "test")}
    assert len(first) >= 33
    assert all(load_split(n, s, world) is d for (n, s), d in first.items())


# --------------------------------------------------------------------------------------- real sets


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_set_absent_says_what_to_provide(offline, monkeypatch, name):
    entry = DOWNSTREAM.get(name)
    folder = offline / entry.location
    for call in (
        lambda: load_split(name, "train", None, data_dir=offline, image_size=32),
        lambda: sets.split_info(name, None, data_dir=offline),
    ):
        with pytest.raises(DataNotFoundError) as exc:
            call()
        msg = str(exc.value)
        assert isinstance(exc.value, FileNotFoundError)
        assert repr(name) in msg and str(folder) in msg
        assert f"{folder}/<split>/<class name>/<image files>" in msg  # the image-folder layout
        if entry.hub:
            assert f"datasets.load_dataset({entry.hub!r}).save_to_disk('{folder}')" in msg
            assert str(Path(os.environ["HF_DATASETS_CACHE"])) in msg  # the local cache was looked at
        else:
            assert "save_to_disk" in msg and "no standard Hugging Face copy" in msg
    # The data dir defaults to $TBENCH_DATA.
    monkeypatch.setenv("TBENCH_DATA", str(offline / "elsewhere"))
    with pytest.raises(DataNotFoundError, match=str(offline / "elsewhere" / entry.location)):
        load_split(name, "test", None)


def test_real_set_from_saved_dataset_and_image_folder(offline):
    # What `datasets.load_dataset("uoft-cs/cifar100").save_to_disk(<data dir>/cifar100)` writes: img/fine_label,
    # train and test only, images of differing sizes.
    sizes = {("train", 0): (12, 9), ("test", 1): (7, 10)}
    save_dataset_dict(
        offline / "cifar100",
        {"train": [0, 1, 2] * 10, "test": [0, 1, 2, 2]},
        ["apple", "bee", "cup"],
        image_col="img",
        label_col="fine_label",
        sizes=sizes,
    )
    with pytest.raises(ValueError, match="pass image_size"):
        load_split("real.cifar100", "train", None, data_dir=offline)
    tr = load_split("real.cifar100", "train", None, data_dir=offline, image_size=6)
    va = load_split("real.cifar100", "validation", None, data_dir=offline, image_size=6)
    te = load_split("real.cifar100", "test", None, data_dir=offline, image_size=6)
    assert tr.class_names == ["apple", "bee", "cup"] and tr.images.shape == (27, 6, 6, 3)
    assert len(va.labels) == 3 and sorted(va.labels.tolist()) == [0, 1, 2]  # 10% of 10 per class
    assert len(te.labels) == 4 and te.info["source_split"] == "test" and te.info["format"] == "hf_disk"
    assert tr.info["validation"] == {"carved_from": "train", "fraction": 0.1, "seed": 0, "stratified": True}
    assert tr.info["preprocess"]["resize_shorter_side"] == 6
    for d in (tr, va, te):  # the colour of each image still says its class
        assert np.abs(d.images[:, 3, 3].astype(int) - np.array([colour_of(y) for y in d.labels])).max() <= 2
    # The same set as an image folder (Kaggle / LILA style), test carved too when only train/ exists.
    shutil.rmtree(offline / "cassava", ignore_errors=True)
    for cls, n in (("healthy", 12), ("mosaic", 6), ("streak", 3)):
        (offline / "cassava" / "train" / cls).mkdir(parents=True)
        for i in range(n):
            (offline / "cassava" / "train" / cls / f"{i}.png").write_bytes(png((i, 10, 20), (9, 9)))
    info = sets.split_info("real.cassava", None, data_dir=offline)
    assert info["class_names"] == ["healthy", "mosaic", "streak"] and info["format"] == "imagefolder"
    counts = {s: v["class_counts"] for s, v in info["splits"].items()}
    assert counts["test"] == [2, 1, 1] and counts["validation"] == [1, 1, 1] and counts["train"] == [9, 4, 1]
    assert info["test"]["carved_from"] == "train" and info["test"]["fraction"] == 0.2


def test_real_set_from_local_hub_cache(offline):
    """A hub copy that `load_dataset` left in the local cache is read offline; no copy, no download."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    src = offline / "parquet"
    src.mkdir()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["banded", "dotted"])})
    for split, ys in (("train", [0, 1] * 5), ("test", [1, 0, 1])):
        datasets.Dataset.from_dict(
            {"image": [{"bytes": png(colour_of(y)), "path": None} for y in ys], "label": ys}, features=features
        ).to_parquet(str(src / f"{split}.parquet"))
    cache = Path(os.environ["HF_DATASETS_CACHE"])
    builder = Parquet(
        cache_dir=str(cache / "build"),
        dataset_name="dtd",
        config_name="default",
        hash="0123abcd",
        features=features,
        data_files={s: str(src / f"{s}.parquet") for s in ("train", "test")},
    )
    builder.download_and_prepare()
    prepared = glob.glob(str(cache / "build" / "dtd" / "default*" / "0.0.0" / "0123abcd"))[0]
    (cache / "tanganke___dtd" / "default" / "0.0.0").mkdir(parents=True)
    shutil.move(prepared, cache / "tanganke___dtd" / "default" / "0.0.0" / "0123abcd")  # the cache's layout

    te = load_split("real.dtd", "test", None, data_dir=offline)
    assert te.class_names == ["banded", "dotted"] and te.labels.tolist() == [1, 0, 1]
    assert te.info["format"] == "hf_hub" and te.info["location"] == "tanganke/dtd"
    va = load_split("real.dtd", "validation", None, data_dir=offline)
    assert sorted(va.labels.tolist()) == [0, 1] and va.info["validation"]["carved_from"] == "train"
    hub_set = DownstreamSet.from_config(
        "mydtd", {"format": "hf_hub", "hub": "tanganke/dtd", "splits": {"test": "test"}}
    )
    assert load_split(hub_set, "test", None, data_dir=offline).labels.tolist() == [1, 0, 1]
    missing = DownstreamSet.from_config("nope", {"format": "hf_hub", "hub": "someone/absent"})
    with pytest.raises(DataNotFoundError, match=r"(?s)'nope'.*someone___absent"):
        load_split(missing, "train", None)


# --------------------------------------------------------------------------------------- user sets


def test_custom_saved_dataset_carves_validation(offline, tmp_path):
    train = [0] * 20 + [1] * 7 + [2] * 2 + [3] * 1
    rng = np.random.default_rng(0)
    train = [int(x) for x in rng.permutation(train)]
    save_dataset_dict(tmp_path / "mine", {"train": train, "test": [0, 1, 2, 3]}, ["a", "b", "c", "d"])
    cfg = {"format": "hf_disk", "path": str(tmp_path / "mine"), "description": "mine"}
    entry = DownstreamSet.from_config("mine", cfg)
    assert entry.origin == "custom" and entry.metric == "top1"
    tr = load_split(entry, "train", None, data_dir=offline)
    va = load_split(entry, "validation", None, data_dir=offline)
    te = load_split(entry, "test", None, data_dir=offline)
    assert te.labels.tolist() == [0, 1, 2, 3] and "validation" in te.info
    # Stratified: round(10% of n), at least 1 for any class with >= 2 examples, none for a singleton.
    assert np.bincount(va.labels, minlength=4).tolist() == [2, 1, 1, 0]
    assert np.bincount(tr.labels, minlength=4).tolist() == [18, 6, 1, 1]
    assert (
        va.info["validation"]
        == tr.info["validation"]
        == {"carved_from": "train", "fraction": 0.1, "seed": 0, "stratified": True}
    )
    assert va.info["source_split"] == "train" and json.loads(json.dumps(va.info)) == va.info
    # Disjoint and covering: the carve's positions, and the decoded images, partition train.
    keep, carved = sets.carve_indices(np.asarray(train), 0.1, 0)
    assert not set(keep) & set(carved) and sorted(set(keep) | set(carved)) == list(range(len(train)))
    assert np.array_equal(np.asarray(train)[keep], tr.labels) and np.array_equal(np.asarray(train)[carved], va.labels)
    # Deterministic across processes' caches; another seed carves differently.
    sets.clear_cache()
    assert np.array_equal(load_split(entry, "validation", None).labels, va.labels)
    assert np.array_equal(sets.carve_indices(np.asarray(train), 0.1, 0)[1], carved)
    other = sets.carve_indices(np.asarray(train), 0.1, 1)[1]
    assert not np.array_equal(other, carved)
    assert np.bincount(np.asarray(train)[other], minlength=4).tolist() == [2, 1, 1, 0]
    info = sets.split_info(entry, None)
    assert info["splits"]["validation"] == {
        "source_split": "train",
        "count": 4,
        "carved": True,
        "class_counts": [2, 1, 1, 0],
    }
    assert info["validation"]["seed"] == 0 and info["splits"]["test"]["carved"] is False
    # A relative path is under the data dir; a validation split mapped explicitly is used as is.
    shutil.copytree(tmp_path / "mine", offline / "rel")
    rel = DownstreamSet.from_config("rel", {"format": "hf_disk", "path": "rel", "splits": {"validation": "test"}})
    assert load_split(rel, "validation", None, data_dir=offline).labels.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataFormatError, match="splits maps test to 'heldout'.*it has: train, test"):
        load_split(DownstreamSet.from_config("x", {**cfg, "splits": {"test": "heldout"}}), "test", None)
    with pytest.raises(DataNotFoundError, match=r"(?s)'gone'.*no_such_folder"):
        load_split(
            DownstreamSet.from_config("gone", {"format": "hf_disk", "path": "no_such_folder"}),
            "train",
            None,
            data_dir=offline,
        )


def test_custom_image_folder_resizes_and_crops(offline, tmp_path):
    root = tmp_path / "folder"

    def stripes(w: int, h: int) -> np.ndarray:
        """Red | green | blue bands along the longer side, the green band the middle half."""
        img = np.zeros((h, w, 3), np.uint8)
        if w >= h:
            bands = (img[:, : w // 4], img[:, w // 4 : 3 * w // 4], img[:, 3 * w // 4 :])
        else:
            bands = (img[: h // 4], img[h // 4 : 3 * h // 4], img[3 * h // 4 :])
        for band, colour in zip(bands, ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
            band[...] = colour
        return img

    shapes = {"train": [(80, 40), (40, 80), (40, 40)] * 2, "test": [(60, 30), (30, 60)]}
    for split, whs in shapes.items():
        for i, (w, h) in enumerate(whs):
            cls = ("zebra", "ant")[i % 2]
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(stripes(w, h)).save(root / split / cls / f"{i}.{'png' if i % 3 else 'jpg'}")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "zebra" / ".hidden.png").write_bytes(b"junk")
    entry = DownstreamSet.from_config("folder", {"format": "imagefolder", "path": str(root), "carve_seed": 3})
    with pytest.raises(ValueError, match="images differ in size.*pass image_size"):
        load_split(entry, "test", None)
    te = load_split(entry, "test", None, image_size=16)
    assert te.class_names == ["ant", "zebra"] and te.images.shape == (2, 16, 16, 3)
    assert te.labels.tolist() == [0, 1]  # files in class-folder order: ant/1.png (30x60), zebra/0.jpg (60x30)
    # Shorter side to 16, centre 16x16 crop: what is left is the green middle half.
    inner = te.images[:, 3:-3, 3:-3].astype(int)
    assert (inner[..., 1] > 200).all() and (inner[..., 0] < 40).all() and (inner[..., 2] < 40).all()
    expected = sets.resize_center_crop(stripes(30, 60), 16)
    assert np.abs(te.images[0].astype(int) - expected.astype(int)).max() <= 1
    assert te.info["preprocess"] == {"resize_shorter_side": 16, "center_crop": 16, "interpolation": "bicubic"}
    tr = load_split(entry, "train", None, image_size=16)
    va = load_split(entry, "validation", None, image_size=16)
    assert len(tr.labels) + len(va.labels) == 6 and sorted(va.labels.tolist()) == [0, 1]
    assert va.info["validation"]["seed"] == 3

    # Errors: empty folder, images not inside class folders, a class_names override that misses a folder.
    def folder(name: str, path: Path, **cfg) -> DownstreamSet:
        return DownstreamSet.from_config(name, {"format": "imagefolder", "path": str(path), **cfg})

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="is not an image folder.*<split>/<class name>/<image files>"):
        load_split(folder("e", tmp_path / "empty"), "train", None)
    (tmp_path / "flat" / "train").mkdir(parents=True)
    Image.fromarray(stripes(8, 8)).save(tmp_path / "flat" / "train" / "a.png")
    with pytest.raises(DataFormatError, match="is not an image folder"):
        load_split(folder("f", tmp_path / "flat"), "train", None)
    (tmp_path / "flat" / "train" / "cls").mkdir()
    with pytest.raises(DataFormatError, match="image files directly in"):
        load_split(folder("f2", tmp_path / "flat"), "train", None)
    with pytest.raises(DataFormatError, match=r"class folders \['zebra'\].*not in class_names"):
        load_split(folder("o", root, class_names=["ant"]), "test", None, image_size=8)
    named = folder("o2", root, class_names=["zebra", "ant"])
    assert load_split(named, "test", None, image_size=8).labels.tolist() == [1, 0]  # ant is now class 1


def write_shards(folder: Path, items: list[tuple[int, str]], per_shard: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(items), per_shard):
        with tarfile.open(folder / f"{s // per_shard:06d}.tar", "w") as tf:
            for i, (label, ext) in enumerate(items[s : s + per_shard], start=s):
                for name, data in (
                    (f"s{i:05d}.{ext}", png(colour_of(label)) if ext == "png" else _jpg(label)),
                    (f"s{i:05d}.cls", str(label).encode()),
                    (f"s{i:05d}.json", b"{}"),
                ):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))


def _jpg(label: int) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour_of(label), np.uint8)).save(b, "JPEG", quality=95)
    return b.getvalue()


def test_custom_webdataset_shards(offline, tmp_path):
    root = tmp_path / "shards"
    train = [(i % 3, "png" if i % 2 else "jpg") for i in range(15)]
    write_shards(root / "train", train)
    write_shards(root / "test", [(2, "png"), (0, "jpg")])
    entry = DownstreamSet.from_config("shards", {"format": "wds", "path": str(root)})
    with pytest.raises(DataFormatError, match="classes.txt"):
        load_split(entry, "train", None)
    (root / "classes.txt").write_text("red\ngreen\nblue\n")
    te = load_split(entry, "test", None)
    assert te.class_names == ["red", "green", "blue"] and te.labels.tolist() == [2, 0]
    assert te.images.shape == (2, 8, 8, 3) and te.info["format"] == "wds"
    tr = load_split(entry, "train", None)
    va = load_split(entry, "validation", None)
    assert np.bincount(va.labels).tolist() == [1, 1, 1] and len(tr.labels) == 12
    assert np.abs(tr.images[:, 4, 4].astype(int) - np.array([colour_of(y) for y in tr.labels])).max() <= 6
    # Brace patterns per split, png only, class names overridden.
    pat = DownstreamSet.from_config(
        "pat",
        {
            "format": "wds",
            "path": str(root),
            "image_key": "png",
            "class_names": ["r", "g", "b"],
            "splits": {"train": "train/{000000..000004}.tar", "test": "test/000000.tar"},
        },
    )
    with pytest.raises(DataFormatError, match="has no image under png"):
        load_split(pat, "train", None)
    only_png = DownstreamSet.from_config("pat2", {**pat.to_config(), "image_key": "png;jpg"})
    assert load_split(only_png, "test", None).class_names == ["r", "g", "b"]
    assert len(load_split(only_png, "train", None).labels) == 12


# --------------------------------------------------------------------------------------- plain-data definitions


@pytest.mark.parametrize(
    "cfg, message",
    [
        (
            {"format": "zip", "path": "x"},
            "downstream set 'myset': format 'zip' is not valid; valid: hf_disk, hf_hub, imagefolder, wds",
        ),
        ({"path": "x"}, "format is required; valid: hf_disk, hf_hub, imagefolder, wds"),
        ({"format": "world"}, "format 'world' is not valid; valid: hf_disk"),
        ({"format": "imagefolder"}, "path is required for format 'imagefolder'"),
        ({"format": "hf_hub"}, "hub is required for format hf_hub"),
        ({"format": "hf_hub", "path": "a/b"}, "format hf_hub takes hub"),
        ({"format": "hf_disk", "path": "x", "metric": "top5"}, "metric 'top5' is not valid; valid: top1, balanced_acc"),
        (
            {"format": "hf_disk", "path": "x", "splits": {"val": "validation"}},
            "splits names 'val'.*valid: train, validation, test",
        ),
        ({"format": "hf_disk", "path": "x", "splits": ["train"]}, "splits must map split names"),
        ({"format": "hf_disk", "path": "x", "splits": {"train": None}}, "splits.train cannot be null"),
        ({"format": "hf_disk", "path": "x", "carve_fraction": 1.5}, "carve_fraction must be a number between 0 and 1"),
        ({"format": "hf_disk", "path": "x", "carve_fraction": "a tenth"}, "carve_fraction must be a number"),
        ({"format": "hf_disk", "path": "x", "carve_seed": -1}, "carve_seed must be a non-negative integer"),
        ({"format": "hf_disk", "path": "x", "class_names": "abc"}, "class_names must be a list"),
        ({"format": "hf_disk", "path": "x", "class_names": ["a", "a"]}, "class_names repeats"),
        ({"format": "hf_disk", "path": "x", "image_key": ""}, "image_key must be a non-empty string"),
        ({"format": "hf_disk", "path": "x", "colour": "red"}, "unknown field 'colour'; valid: format, path"),
        ("hf_disk", "expected a mapping of fields"),
    ],
)
def test_from_config_errors_name_the_field(cfg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        DownstreamSet.from_config("myset", cfg)
    assert "'myset'" in str(exc.value)


def test_to_config_round_trips():
    for name, entry in DOWNSTREAM.items():
        cfg = entry.to_config()
        assert list(cfg) == sorted(cfg) and json.loads(json.dumps(cfg)) == cfg
        assert DownstreamSet.from_config(name, cfg) == entry
        assert "description" not in entry.to_config(docs=False)
    custom = DownstreamSet.from_config(
        "c",
        {
            "format": "wds",
            "path": "/data/c",
            "splits": {"test": "val/{0..3}.tar", "train": "train"},
            "image_key": "jpg;png",
            "label_key": "cls",
            "class_names": ["x", "y"],
            "carve_fraction": 0.25,
            "carve_seed": 7,
            "metric": "balanced_acc",
            "description": "mine",
            "hint": "ask me",
        },
    )
    again = DownstreamSet.from_config("c", json.loads(json.dumps(custom.to_config())))
    assert again == custom and again.splits == {"train": "train", "test": "val/{0..3}.tar"}
    assert again.class_names == ("x", "y") and again.chance(2) == 0.5
    # Spelling out a default gives the same (hashable) definition as leaving it out.
    short = DownstreamSet.from_config("s", {"format": "hf_disk", "path": "p"})
    long = DownstreamSet.from_config(
        "s",
        {"format": "hf_disk", "path": "p", "metric": "top1", "carve_fraction": 0.1, "carve_seed": 0, "splits": None},
    )
    assert short.to_config(docs=False) == long.to_config(docs=False) and hash(short) == hash(long)
    # Entries travel to other processes (Ray) as pickles too; their mappings stay read-only.
    dn = DOWNSTREAM.get("real.domainnet_real")
    assert pickle.loads(pickle.dumps(custom)) == custom and pickle.loads(pickle.dumps(dn)) == dn
    with pytest.raises(TypeError, match="read-only"):
        custom.splits["validation"] = "val"
    hub = DownstreamSet.from_config("h", {"format": "hf_hub", "hub": "org/data", "config_name": "full"})
    assert hub.to_config()["hub"] == "org/data" and hub.to_config()["path"] is None
    assert DownstreamSet.from_config("h", hub.to_config()) == hub


def test_resolve_set():
    pets = DOWNSTREAM.get("pets")
    assert resolve_set("pets") is pets and resolve_set(pets) is pets
    custom = {
        "pets": {"format": "imagefolder", "path": "my_pets", "metric": "balanced_acc"},
        "mine": {"format": "hf_disk", "path": "mine"},
    }
    over = resolve_set("pets", custom)
    assert over.origin == "custom" and over.format == "imagefolder" and over.metric == "balanced_acc"
    assert resolve_set("mine", custom).location == "mine"
    assert resolve_set("dtd", custom) is DOWNSTREAM.get("dtd")
    with pytest.raises(KeyError, match="unknown downstream set 'nope'.*Valid: .*real.cifar100"):
        resolve_set("nope", custom)
    with pytest.raises(ValueError, match="'mine2': format 'zip' is not valid"):
        resolve_set("mine2", {"mine2": {"format": "zip", "path": "x"}})
