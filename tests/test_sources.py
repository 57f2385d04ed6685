"""Sources: the registry, opening and validating shards (local, brace patterns, fsspec URLs),
skipping bad samples, ``inspect_source`` and ``tbench data inspect``."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.inspect import CELL_PX, HEADER_PX, inspect_source
from curation.sources import (
    REAL_SOURCES,
    SOURCES,
    SourceConfigError,
    SourceEntry,
    SourceError,
    SourceFormatError,
    SourceNotFoundError,
    open_source,
    resolve_source,
)
from harness.core.registry import UnknownNameError

WORLD_NAMES = sorted(["cc3m", "cc12m", "redcaps", "yfcc", "laion", "wit", "shutterstock", "imagenet"])


@pytest.fixture(scope="session")
def world(world_info) -> tuple[Path, dict]:
    """The session's world folder and description (this file reads both)."""
    return world_info


# ----------------------------------------------------------------------------- writing shards


def _jpg(i: int, size: tuple[int, int] = (48, 36)) -> bytes:
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[..., 0] = (np.arange(size[0]) * 5 + i * 20) % 256
    a[..., 1] = (np.arange(size[1])[:, None] * 7) % 256
    a[..., 2] = 255 - i * 10
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


def _tar_bytes(samples: list[dict[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            for ext, data in s.items():
                if ext == "__key__":
                    continue
                ti = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _good(shard: int, i: int, *, sizes: bool = True) -> dict[str, bytes]:
    """An img2dataset-like sample: .jpg, .txt and .json (width/height, originals, similarity)."""
    meta = {"url": f"http://x/{i}.jpg", "caption": "...", "status": "success"}
    if sizes:
        meta.update(width=48, height=36, original_width=640 + i, original_height=480, similarity=0.3 + i / 100)
    return {
        "__key__": f"{shard:05d}{i:04d}",
        "jpg": _jpg(i),
        "txt": f"a photo of thing {i} on a table".encode(),
        "json": json.dumps(meta).encode(),
    }


def write_img2dataset(d: Path, shards: list[list[dict[str, bytes]]], *, stats: bool = True) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for k, samples in enumerate(shards):
        p = d / f"{k:05d}.tar"
        p.write_bytes(_tar_bytes(samples))
        if stats:
            (d / f"{k:05d}_stats.json").write_text(
                json.dumps(
                    {
                        "count": len(samples) + 2,
                        "successes": len(samples),
                        "failed_to_download": 2,
                        "failed_to_resize": 0,
                        "status_dict": {"success": len(samples)},
                    }
                )
            )
        out.append(p)
    return out


# ----------------------------------------------------------------------------- registry


def test_registries_and_config_round_trip():
    assert SOURCES.names() == WORLD_NAMES
    assert REAL_SOURCES.names() == [f"real.{n}" for n in WORLD_NAMES]
    for name in WORLD_NAMES:
        assert resolve_source(name) is SOURCES.get(name) and resolve_source(name).is_world
        real = resolve_source(f"real.{name}")
        assert real.shards.startswith("{data_dir}/") and real.size and real.hint and real.origin
        assert real.kind == ("labelled" if name == "imagenet" else "image-text")
        assert SourceEntry.from_config(real.name, real.to_config()) == real
    assert "img2dataset" in REAL_SOURCES.get("real.laion").hint
    assert "imagenet-train-" in REAL_SOURCES.get("real.imagenet").shards
    with pytest.raises(UnknownNameError, match="Did you mean 'laion'.*real.laion"):
        resolve_source("laoin")
    with pytest.raises(
        SourceConfigError,
        match=r"unknown key\(s\) 'shard' \(did you mean 'shards'\?\); valid keys: "
        r"shards, kind, size",
    ):
        SourceEntry.from_config("mine", {"shard": "x/{0..1}.tar"})
    with pytest.raises(SourceConfigError, match="'shards' is required"):
        SourceEntry.from_config("mine", {"kind": "image-text"})
    with pytest.raises(SourceConfigError, match="kind 'captions' is not valid; valid: image-text, labelled"):
        SourceEntry.from_config("mine", {"shards": "x.tar", "kind": "captions"})
    e = SourceEntry.from_config(
        "mine",
        {"shards": "{data_dir}/m/{00000..00001}.tar", "kind": "labelled", "size": 10, "image_exts": [".JPG", "png"]},
    )
    assert e.image_exts == ("jpg", "png") and SourceEntry.from_config("mine", e.to_config()) == e
    assert resolve_source("mine", custom={"mine": e.to_config()}) == e


# ----------------------------------------------------------------------------- world sources


def test_every_world_source_opens_and_counts(world):
    root, info = world
    for name in WORLD_NAMES:
        o = open_source(name, world_root=root)
        entry = SOURCES.get(name)
        assert o.counted_by == "sizes.json" and o.kind == entry.kind
        assert o.num_samples == entry.num_samples(root) == info["sources"][name]["num_samples"]
        assert o.urls == [str(Path(p).absolute()) for p in entry.shard_paths(root)]
        assert all(o.fields[f] == 1.0 for f in entry.required_fields) and o.probed == 4
        n = 0
        for s in o.iter_samples():
            assert set(s) == {"key", "url", "image", "image_ext", "txt", "json", "cls"} and s["image_ext"] == "png"
            assert s["json"]["width"] == 32 and s["json"]["lang"] in ("en", "de", "es", "fr")
            assert s["json"]["original_width"] >= 16 and s["json"]["original_height"] >= 16
            assert (s["cls"] == s["json"]["concept_id"]) if entry.kind == "labelled" else s["cls"] is None
            n += 1
        assert n == o.num_samples and not o.skipped and o.seen["samples"] == n
    with pytest.raises(SourceError, match="embedded-world source: pass the world root"):
        open_source("laion")
    with pytest.raises(SourceNotFoundError, match="tbench world --out"):
        open_source("laion", world_root=root / "nowhere")


# ----------------------------------------------------------------------------- declared and real sources


def test_declared_brace_pattern_and_real_layout(tmp_path):
    write_img2dataset(tmp_path / "mine", [[_good(k, i) for i in range(5)] for k in range(3)])
    cfg = {
        "shards": "{data_dir}/mine/{00000..00002}.tar",
        "kind": "image-text",
        "size": 15,
        "description": "three img2dataset shards",
    }
    o = open_source("mine", custom={"mine": cfg}, data_dir=tmp_path)
    assert o.counted_by == "stats" and o.num_shards == 3 and o.num_samples == 15
    assert o.urls == [str(tmp_path / "mine" / f"{k:05d}.tar") for k in range(3)]
    assert o.fields == {"image": 1.0, "txt": 1.0, "json": 1.0, "cls": 0.0}
    samples = list(o.iter_samples())
    assert len(samples) == 15 and not o.skipped
    assert samples[0]["image_ext"] == "jpg" and samples[0]["txt"] == "a photo of thing 0 on a table"
    assert samples[3]["json"]["similarity"] == pytest.approx(0.33)
    assert Image.open(io.BytesIO(samples[0]["image"])).size == (48, 36)

    # real.laion reads <data dir>/laion/, shards listed from the folder; a sizes.json wins over stats
    write_img2dataset(tmp_path / "laion", [[_good(k, i) for i in range(4)] for k in range(2)])
    o = open_source("real.laion", data_dir=tmp_path)
    assert (o.counted_by, o.num_samples, o.num_shards) == ("stats", 8, 2)
    (tmp_path / "laion" / "sizes.json").write_text(json.dumps({"00000.tar": 4, "00001.tar": 4}))
    assert open_source("real.laion", data_dir=tmp_path).counted_by == "sizes.json"
    assert REAL_SOURCES.get("real.laion").num_samples(tmp_path) == 8
    assert [Path(p).name for p in REAL_SOURCES.get("real.laion").shard_paths(tmp_path)] == ["00000.tar", "00001.tar"]

    # no sizes.json, no stats: counted by scanning, and the result says so
    write_img2dataset(tmp_path / "bare", [[_good(0, i) for i in range(3)]], stats=False)
    o = open_source(str(tmp_path / "bare"))
    assert (o.counted_by, o.num_samples, o.kind) == ("scan", 3, "image-text")
    assert any("scanning" in n for n in o.notes)

    # real.imagenet: timm's webdataset layout, train shards only, labelled
    inet = tmp_path / "imagenet"
    inet.mkdir()
    for split in ("train", "val"):
        (inet / f"imagenet-{split}-000000.tar").write_bytes(
            _tar_bytes([{"__key__": f"n0144{i}", "jpg": _jpg(i), "cls": str(i % 3).encode()} for i in range(4)])
        )
    o = open_source("real.imagenet", data_dir=tmp_path)
    assert [Path(u).name for u in o.urls] == ["imagenet-train-000000.tar"] and o.kind == "labelled"
    assert [s["cls"] for s in o.iter_samples()] == [0, 1, 2, 0]


def test_errors_name_the_path_and_what_is_valid(tmp_path):
    write_img2dataset(tmp_path / "m", [[_good(k, i) for i in range(3)] for k in range(3)])
    with pytest.raises(SourceNotFoundError, match=r"1 of 4 shard\(s\) .* not found: .*00003\.tar"):
        open_source(str(tmp_path / "m" / "{00000..00003}.tar"))
    with pytest.raises(
        SourceFormatError,
        match=r"bad shard pattern .*unbalanced braces; a valid pattern looks like "
        r"'dir/\{00000..00099\}.tar'",
    ):
        open_source(str(tmp_path / "m" / "{00000..00002.tar"))
    with pytest.raises(SourceFormatError, match=r"\{shard\} is neither a range"):
        open_source(str(tmp_path / "m" / "{shard}.tar"))
    with pytest.raises(
        SourceNotFoundError,
        match=r"real.cc3m.*/cc3m does not exist.*Expected: img2dataset webdataset "
        r"shards in .*--output_folder",
    ):
        open_source("real.cc3m", data_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFoundError, match="no .tar shards in the folder"):
        open_source(str(tmp_path / "empty"))
    # captions missing from every sample of an image-text source
    no_txt = [[{k: v for k, v in _good(0, i).items() if k != "txt"} for i in range(3)]]
    write_img2dataset(tmp_path / "notxt", no_txt)
    cfg = {"shards": str(tmp_path / "notxt" / "{00000..00000}.tar"), "kind": "image-text"}
    with pytest.raises(
        SourceFormatError,
        match=r"has a caption \(\.txt\), which image-text sources need; members "
        r"found: \.jpg, \.json",
    ):
        open_source(SourceEntry.from_config("notxt", cfg))
    # images under an extension the source does not list
    with pytest.raises(SourceFormatError, match=r"an image \(one of \.png\)"):
        open_source(SourceEntry.from_config("pngs", {"shards": str(tmp_path / "m"), "image_exts": ["png"]}))
    # not a tar archive
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "00000.tar").write_bytes(b"not a tar " * 100)
    with pytest.raises(SourceFormatError, match=r"00000.tar cannot be read as a tar archive"):
        open_source(str(tmp_path / "junk"))
    try:
        import s3fs  # noqa: F401 - not a dependency; where it is installed the URL would be tried instead
    except ImportError:
        with pytest.raises(SourceError, match=r"fsspec has no usable filesystem for s3:// .* install s3fs"):
            open_source("s3://bucket/laion/{00000..00009}.tar")


def test_bad_samples_and_truncated_shards_are_skipped_and_counted(tmp_path, caplog):
    good = [_good(0, i) for i in range(6)]
    shard0 = (
        good[:2]
        + [
            {"__key__": "000000090", "txt": b"no image here", "json": b"{}"},  # no image
            {"__key__": "000000091", "jpg": _jpg(1), "txt": b"   ", "json": b"{}"},  # empty caption
            {"__key__": "000000092", "jpg": _jpg(2), "txt": b"a caption", "json": b"{not json"},  # bad json
            {"__key__": "000000093", "jpg": _jpg(3), "txt": b"a caption", "json": b"[1, 2]"},  # json not an object
        ]
        + good[2:4]
    )
    shard1 = [_good(1, i) for i in range(5)]
    shard2 = [_good(2, i) for i in range(5)]
    paths = write_img2dataset(tmp_path / "bad", [shard0, shard1, shard2])
    b1 = paths[1].read_bytes()
    paths[1].write_bytes(b1[: len(b1) // 2])  # cut inside a member
    with tarfile.open(paths[2]) as tf:  # cut exactly after the 3rd sample: no end-of-archive marker
        m = [x for x in tf.getmembers() if x.name.startswith("000020002")][-1]
        end = m.offset_data + -(-m.size // 512) * 512
    paths[2].write_bytes(paths[2].read_bytes()[:end])
    o = open_source(str(tmp_path / "bad"))
    assert o.counted_by == "stats" and o.num_samples == 8 + 5 + 5
    with caplog.at_level("WARNING"):
        keys = [s["key"] for s in o.iter_samples()]
    assert o.skipped == {"no_image": 1, "no_caption": 1, "bad_json": 2, "truncated_shard": 2}
    assert keys[:4] == ["000000000", "000000001", "000000002", "000000003"]
    assert [k for k in keys if k.startswith("00002")] == ["000020000", "000020001"]  # the cut sample is dropped
    assert 0 < sum(k.startswith("00001") for k in keys) < 5
    assert "ends early" in caplog.text and "skipped 4 bad sample(s)" in caplog.text

    # labelled: a class that is not an integer, a sample without class
    lab = [{"__key__": f"s{i}", "jpg": _jpg(i), "cls": str(i).encode()} for i in range(4)]
    lab += [{"__key__": "s8", "jpg": _jpg(8), "cls": b"dog"}, {"__key__": "s9", "jpg": _jpg(9)}]
    write_img2dataset(tmp_path / "lab", [lab])
    o = open_source(SourceEntry.from_config("lab", {"shards": str(tmp_path / "lab"), "kind": "labelled"}))
    assert [s["cls"] for s in o.iter_samples()] == [0, 1, 2, 3]
    assert o.skipped == {"bad_cls": 1, "no_label": 1}


def test_fsspec_urls_memory_and_file(tmp_path):
    import fsspec

    paths = write_img2dataset(tmp_path / "m", [[_good(k, i) for i in range(3)] for k in range(2)])
    fs = fsspec.filesystem("memory")
    try:
        for p in paths:
            fs.pipe(f"/tbench-test/m/{p.name}", p.read_bytes())
            fs.pipe(f"/tbench-test/m/{p.stem}_stats.json", (p.parent / f"{p.stem}_stats.json").read_bytes())
        e = SourceEntry.from_config("mem", {"shards": "memory://tbench-test/m/{00000..00001}.tar"})
        o = open_source(e)
        assert (o.counted_by, o.num_samples) == ("stats", 6)
        assert o.urls == ["memory://tbench-test/m/00000.tar", "memory://tbench-test/m/00001.tar"]
        assert len(list(o.iter_samples())) == 6 and not o.skipped
        assert open_source("memory://tbench-test/m").num_samples == 6  # a remote folder is listed
        with pytest.raises(SourceNotFoundError, match=r"1 of 3 shard\(s\).*memory://tbench-test/m/00002.tar"):
            open_source("memory://tbench-test/m/{00000..00002}.tar")
    finally:
        fs.rm("/tbench-test", recursive=True)
    o = open_source(f"file://{tmp_path / 'm'}/{{00000..00001}}.tar")
    assert o.num_samples == 6 and len(list(o.iter_samples())) == 6


# ----------------------------------------------------------------------------- inspect


def _sheet_ok(sheet: dict, k: int):
    im = Image.open(sheet["path"])
    cols = min(8, k)
    rows = -(-k // cols)
    assert sheet["images"] == k and im.size == (cols * CELL_PX[0], rows * CELL_PX[1] + HEADER_PX)
    assert (sheet["width_px"], sheet["height_px"]) == im.size
    assert np.asarray(im.convert("L"), float).std() > 0


def test_inspect_world_sources(world, tmp_path):
    root, info = world
    r = inspect_source(open_source("laion", world_root=root), tmp_path / "laion", sample=12, seed=1)
    n = info["sources"]["laion"]["num_samples"]
    assert (r["num_samples"], r["valid_samples"], r["samples_read"], r["shards"]) == (n, n, n, 1)
    assert r["complete"] and r["counted_by"] == "sizes.json" and r["skipped"] == {}
    assert r["coverage"]["image"] == r["coverage"]["txt"] == r["coverage"]["json"] == 1.0
    assert r["coverage"]["cls"] == 0.0 and r["coverage"]["json.similarity"] == 1.0
    assert r["caption_words"]["min"] >= 1 and r["caption_words"]["q1"] <= r["caption_words"]["median"]
    assert r["image_size"]["width"]["median"] == 32 and r["image_size"]["from"] == {"json": n}
    assert 0 <= r["similarity"]["min"] <= r["similarity"]["max"] <= 1
    assert r["labels"] is None and r["languages"]["en"] == info["sources"]["laion"]["lang_counts"]["en"]
    assert json.loads((tmp_path / "laion" / "inspect.json").read_text())["valid_samples"] == n
    _sheet_ok(r["contact_sheet"], 12)
    again = inspect_source(open_source("laion", world_root=root), tmp_path / "again", sample=12, seed=1)
    assert Image.open(again["contact_sheet"]["path"]).tobytes() == Image.open(r["contact_sheet"]["path"]).tobytes()

    # world v4: foreign captions and original sizes follow the sources' declarations
    wit = inspect_source(open_source("wit", world_root=root), tmp_path / "wit", sample=3)
    shut = inspect_source(open_source("shutterstock", world_root=root), tmp_path / "s", sample=3)
    foreign = {
        k: 1 - x["languages"].get("en", 0) / x["valid_samples"]
        for k, x in (("wit", wit), ("shutterstock", shut), ("laion", r))
    }
    assert 0.3 < foreign["wit"] < 0.5 and 0.05 < foreign["laion"] < 0.16 and foreign["shutterstock"] < 0.04
    assert r["original_size"]["shorter_side"]["median"] < shut["original_size"]["shorter_side"]["median"]
    assert 0.0 < r["original_size"]["aspect_over_3"] < 0.1

    lab = inspect_source(open_source("imagenet", world_root=root), tmp_path / "inet", sample=5, max_samples=100)
    assert lab["valid_samples"] == 100 and not lab["complete"] and lab["kind"] == "labelled"
    assert sum(lab["labels"]["histogram"].values()) == 100 and lab["labels"]["classes"] > 10
    _sheet_ok(lab["contact_sheet"], 5)


def test_inspect_reads_sizes_from_image_headers(tmp_path):
    write_img2dataset(tmp_path / "h", [[_good(0, i, sizes=False) for i in range(4)]])
    r = inspect_source(open_source(str(tmp_path / "h")), tmp_path / "out", sample=4)
    assert r["image_size"]["from"] == {"header": 4} and r["image_size"]["width"]["max"] == 48
    assert r["similarity"] is None and r["original_size"] is None
    assert r["coverage"]["json"] == 1.0 and r["coverage"]["json.width"] == 0.0
    _sheet_ok(r["contact_sheet"], 4)


# ----------------------------------------------------------------------------- the command line


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone (where it wraps depends on the paths' lengths)."""
    return " ".join(text.split())


def test_cli_data_inspect(world, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    root, _ = world
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "data",
            "inspect",
            "cc3m",
            "--world",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--sample",
            "6",
            "--max-samples",
            "50",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "cc3m" in _flat(res.output) and "caption words" in _flat(res.output) and "sizes.json" in _flat(res.output)
    assert (tmp_path / "o" / "contact_sheet.png").is_file() and (tmp_path / "o" / "inspect.json").is_file()
    res = runner.invoke(app, ["data", "inspect", "real.laion", "--data-dir", str(tmp_path / "none")])
    assert res.exit_code == 2 and "error:" in _flat(res.output)
    assert "does not exist" in _flat(res.output) and "img2dataset" in _flat(res.output)
    res = runner.invoke(app, ["data", "inspect", "laoin", "--world", str(root)])
    assert res.exit_code == 2 and "Did you mean 'laion'" in _flat(res.output)
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "x" / "{0..3.tar")])
    assert res.exit_code == 2 and "unbalanced braces" in _flat(res.output)
