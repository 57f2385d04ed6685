"""Bad inputs are skipped and counted, never a crash: from declared sources through a view to pre-training.

One image-text source and one labelled source, written as img2dataset-like webdataset shards,
each holding a truncated shard, an image that does not decode (random bytes named ``.jpg``) and
a sample of its kind gone wrong (no caption; a class out of range). Views are built through the
real ``build_view`` with a chain that reads image sizes and decodes pixels (``min_resolution``,
``aspect_ratio``, ``dedup``); the manifest counts each skip by reason and the view keeps exactly
the good samples. Then one epoch of supervised pre-training runs on the labelled view with an
undecodable image and an out-of-range class injected into its shards: the run finishes and its
summary counts both.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from curation.sources import SKIP_REASONS, SourceConfigError, SourceEntry, open_source
from curation.views import ViewConfig, build_view
from pretrain.data import ImageLabel
from pretrain.loop import DistInfo, TrainConfig, train_loop

NUM_CLASSES = 4
CHAIN = (("min_resolution", {"min_side": 32}), ("aspect_ratio", {"max_ratio": 2.0}), ("dedup", {"within": True}))
GARBAGE = bytes(np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8))  # not an image in any format

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- writing shards


def _jpg(seed: int) -> bytes:
    """A 40x32 JPEG of coarse random blocks: every seed hashes far from every other (dedup keeps them all)."""
    blocks = np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    a = np.kron(blocks, np.ones((8, 8, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


META = json.dumps({"width": 40, "height": 32, "original_width": 400, "original_height": 320}).encode()


def _caption(key: str, seed: int) -> dict[str, bytes]:
    return {"__key__": key, "jpg": _jpg(seed), "txt": f"a photo of thing {seed}".encode(), "json": META}


def _labelled(key: str, seed: int, cls: int | bytes | None) -> dict[str, bytes]:
    s = {"__key__": key, "jpg": _jpg(seed), "json": META}
    if cls is not None:
        s["cls"] = cls if isinstance(cls, bytes) else str(cls).encode()
    return s


def _tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            for ext, data in s.items():
                if ext != "__key__":
                    ti = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))


def write_source(d: Path, shards: list[list[dict[str, bytes]]], *, cut: tuple[int, str]) -> Path:
    """img2dataset-like shards with ``*_stats.json``; shard ``cut[0]`` is cut inside sample ``cut[1]``'s image."""
    d.mkdir(parents=True)
    for k, samples in enumerate(shards):
        _tar(d / f"{k:05d}.tar", samples)
        (d / f"{k:05d}_stats.json").write_text(json.dumps({"count": len(samples), "successes": len(samples)}))
    p = d / f"{cut[0]:05d}.tar"
    with tarfile.open(p) as tf:
        m = tf.getmember(f"{cut[1]}.jpg")
    p.write_bytes(p.read_bytes()[: m.offset_data + m.size // 2])
    return d


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, dict[str, dict], dict[str, list[str]]]:
    """(data root with the class vocabulary, declared sources, the good keys of each)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "world.json").write_text(json.dumps({"concepts": [f"class{c}" for c in range(NUM_CLASSES)]}))

    cap0 = (
        [_caption(f"c0-{i}", i) for i in range(3)]
        + [
            {**_caption("c0-garbage", 90), "jpg": GARBAGE},  # an image that does not decode
            {k: v for k, v in _caption("c0-nocap", 91).items() if k != "txt"},  # no caption
            {**_caption("c0-blank", 92), "txt": b"  \n"},  # an empty caption
        ]
        + [_caption(f"c0-{i}", i) for i in range(3, 6)]
    )
    cap1 = [_caption(f"c1-{i}", 10 + i) for i in range(5)]
    write_source(root / "captions", [cap0, cap1], cut=(1, "c1-3"))  # keeps c1-0 .. c1-2

    lab0 = (
        [_labelled(f"l0-{i}", 20 + i, i % NUM_CLASSES) for i in range(4)]
        + [
            {**_labelled("l0-garbage", 93, 1), "jpg": GARBAGE},
            _labelled("l0-big", 94, NUM_CLASSES),  # one past the last class
            _labelled("l0-neg", 95, -1),
            _labelled("l0-nocls", 96, None),
        ]
        + [_labelled(f"l0-{i}", 20 + i, i % NUM_CLASSES) for i in range(4, 8)]
    )
    lab1 = [_labelled(f"l1-{i}", 40 + i, i % NUM_CLASSES) for i in range(6)]
    write_source(root / "labelled", [lab0, lab1], cut=(1, "l1-4"))  # keeps l1-0 .. l1-3

    declared = {
        "captions": {"shards": str(root / "captions"), "kind": "image-text"},
        "labelled": {"shards": str(root / "labelled"), "kind": "labelled", "num_classes": NUM_CLASSES},
    }
    good = {
        "captions": [f"c0-{i}" for i in range(6)] + [f"c1-{i}" for i in range(3)],
        "labelled": [f"l0-{i}" for i in range(8)] + [f"l1-{i}" for i in range(4)],
    }
    return root, declared, good


def view_cfg(source: str, declared: dict, *, labels: bool, size: int = 1000, chain=CHAIN) -> ViewConfig:
    return ViewConfig(
        source=source,
        mixture=None,
        curation_name="images",
        curation=chain,
        size=size,
        label_noise=0.0,
        needs_labels=labels,
        seed=0,
        sources=declared,
    )


def view_samples(view_dir: Path) -> list[dict]:
    return list(wds.WebDataset(sorted(str(p) for p in (view_dir / "shards").glob("*.tar")), shardshuffle=False))


# ----------------------------------------------------------------------------- the tests


def test_num_classes_is_declared_and_validated():
    e = SourceEntry.from_config("lab", {"shards": "x/{0..1}.tar", "kind": "labelled", "num_classes": 10})
    assert e.num_classes == 10 and SourceEntry.from_config("lab", e.to_config()) == e
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(SourceConfigError, match="num_classes must be a positive integer"):
            SourceEntry.from_config("lab", {"shards": "x.tar", "kind": "labelled", "num_classes": bad})
    with pytest.raises(SourceConfigError, match="num_classes.*labelled sources"):
        SourceEntry.from_config("cap", {"shards": "x.tar", "num_classes": 10})
    assert {"label_out_of_range", "bad_image"} <= set(SKIP_REASONS)


def test_sources_skip_and_count_bad_samples(sources):
    _, declared, good = sources
    o = open_source("captions", custom=declared)
    got = [s["key"] for s in o.iter_samples()]
    assert got == good["captions"][:3] + ["c0-garbage"] + good["captions"][3:]  # images are not decoded here
    assert o.skipped == {"no_caption": 2, "truncated_shard": 1}  # the samples before the cut are kept
    o = open_source("labelled", custom=declared)
    got = [s["key"] for s in o.iter_samples()]
    assert got == ["l0-0", "l0-1", "l0-2", "l0-3", "l0-garbage"] + good["labelled"][4:]
    assert o.skipped == {"label_out_of_range": 2, "no_label": 1, "truncated_shard": 1}


def test_views_skip_and_count_bad_inputs(sources, tmp_path, caplog):
    root, declared, good = sources
    with caplog.at_level("WARNING"):
        m = build_view(view_cfg("captions", declared, labels=False), root, tmp_path / "cap")
    assert m["skipped"] == {"bad_image": 1, "no_caption": 2, "truncated_shard": 1}
    assert m["skipped_samples"] == 3  # samples; the truncated shard is counted as a shard
    assert m["pool_size"] == m["size"] == len(good["captions"]) and m["funnel"]["dedup"] == 0
    assert sorted(s["__key__"] for s in view_samples(tmp_path / "cap")) == sorted(good["captions"])
    assert "c0-garbage" in caplog.text and "does not decode" in caplog.text
    # size steps alone read no pixels, but the image must still be one (its header is checked)
    m = build_view(view_cfg("captions", declared, labels=False, chain=CHAIN[:1]), root, tmp_path / "sizes")
    assert m["skipped"] == {"bad_image": 1, "no_caption": 2, "truncated_shard": 1}
    assert sorted(s["__key__"] for s in view_samples(tmp_path / "sizes")) == sorted(good["captions"])

    m = build_view(view_cfg("labelled", declared, labels=True), root, tmp_path / "lab")
    assert m["skipped"] == {"bad_image": 1, "label_out_of_range": 2, "no_label": 1, "truncated_shard": 1}
    assert m["skipped_samples"] == 4
    assert m["pool_size"] == m["size"] == len(good["labelled"]) and "invalid_label" not in m["funnel"]
    samples = view_samples(tmp_path / "lab")
    assert sorted(s["__key__"] for s in samples) == sorted(good["labelled"])
    assert all(0 <= int(s["cls"]) < NUM_CLASSES for s in samples)

    # Without a declared num_classes the source keeps a class past the vocabulary; the labelled view
    # drops it in its funnel (invalid_label); a negative class is out of range for any source.
    loose = {**declared, "labelled": {k: v for k, v in declared["labelled"].items() if k != "num_classes"}}
    m = build_view(view_cfg("labelled", loose, labels=True), root, tmp_path / "loose")
    assert m["skipped"] == {"bad_image": 1, "label_out_of_range": 1, "no_label": 1, "truncated_shard": 1}
    assert m["funnel"]["invalid_label"] == 1 and m["size"] == len(good["labelled"])


def test_image_label_pipeline_refuses_a_class_out_of_range():
    import torch

    fn = ImageLabel(32, num_classes=NUM_CLASSES)
    gen = torch.Generator().manual_seed(0)
    assert fn({"__key__": "a", "jpg": _jpg(0), "cls": b"3"}, gen)["label"] == 3
    for cls in (b"4", b"-1"):
        with pytest.raises(ValueError, match=r"class .* outside \[0, 4\)"):
            fn({"__key__": "a", "jpg": _jpg(0), "cls": cls}, gen)


def _inject(view_dir: Path, samples: list[dict[str, bytes]]) -> None:
    """Rewrite the view as one shard: ``samples`` first (read early in every epoch), then the view's own."""
    kept = view_samples(view_dir)
    for p in (view_dir / "shards").glob("*.tar"):
        p.unlink()
    with wds.TarWriter(
        str(view_dir / "shards" / "shard-000000.tar"), encoder=False, mtime=0, format=tarfile.USTAR_FORMAT
    ) as tw:
        for s in samples + kept:
            tw.write({k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")})
    for p in (view_dir / "sizes.json", view_dir / "shards" / "sizes.json"):
        p.write_text(json.dumps({"shard-000000.tar": len(samples) + len(kept)}))


def test_pretraining_skips_and_counts_bad_samples(sources, tmp_path):
    root, declared, good = sources
    view = tmp_path / "view"
    build_view(view_cfg("labelled", declared, labels=True), root, view)
    _inject(
        view,
        [
            {"__key__": "x-garbage", "jpg": GARBAGE, "cls": b"1", "json": b"{}", "txt": b""},
            {"__key__": "x-big", "jpg": _jpg(99), "cls": b"7", "json": b"{}", "txt": b""},
        ],
    )
    # 14 samples, 2 steps of 5: the epoch reads each sample at most once (bad ones are counted once)
    cfg = TrainConfig(
        method="supervised",
        backbone="test_resnet",
        image_size=32,
        epochs=1,
        batch_size=5,
        lr=1e-3,
        warmup_epochs=0.0,
        seed=0,
        num_classes=NUM_CLASSES,
    )
    summary = train_loop(cfg, view, tmp_path / "run", DistInfo())
    assert summary["epochs_trained"] == 1 and np.isfinite(summary["final_loss"])
    assert summary["steps_per_epoch"] == (len(good["labelled"]) + 2) // 5 == 2
    assert summary["skipped"] == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["summary"]["skipped"] == 2 and metrics["epochs"][0]["skipped"] == 2


def test_a_labelled_source_declaring_its_classes_keeps_its_own_label_space(sources, tmp_path):
    """real.imagenet declares 1000 classes: its views must not be cut to the world's vocabulary.
    Here the source declares two classes more than the data root's vocabulary has."""
    root, declared, good = sources
    wide = {**declared, "labelled": {**declared["labelled"], "num_classes": NUM_CLASSES + 2}}
    m = build_view(view_cfg("labelled", wide, labels=True), root, tmp_path / "wide")
    assert m["num_classes"] == NUM_CLASSES + 2 and "invalid_label" not in m["funnel"]
    assert m["skipped"] == {"bad_image": 1, "label_out_of_range": 1, "no_label": 1, "truncated_shard": 1}
    samples = view_samples(tmp_path / "wide")
    assert sorted(s["__key__"] for s in samples) == sorted(good["labelled"] + ["l0-big"])  # class 4 < 6 now
    assert {int(s["cls"]) for s in samples if s["__key__"] == "l0-big"} == {NUM_CLASSES}
