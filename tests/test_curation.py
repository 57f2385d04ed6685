"""Curation at the spec and command-line level: CLIP-score scorers, de-duplication against the
downstream test sets, spec validation of curation, `tbench data curate` and the plan's funnels."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from curation.views import ViewConfig, build_view
from harness.spec import SpecError, parse_spec

SCALE = 0.1


def _cfg(**kw) -> ViewConfig:
    base = dict(
        source="laion",
        mixture=None,
        curation_name="c",
        curation=(),
        size=100_000,
        label_noise=0.0,
        needs_labels=False,
        seed=0,
    )
    return ViewConfig(**{**base, **kw})


def test_clip_score_from_a_clip_checkpoint(world, tmp_path):
    from test_downstream import _clip_checkpoint

    ckpt = _clip_checkpoint(tmp_path / "clip.pt")
    steps = (("clip_score", {"scorer": "checkpoint", "checkpoint": str(ckpt), "top_fraction": 0.5}),)
    m = build_view(_cfg(curation=steps), world, tmp_path / "v")
    pool = m["pool_size"]
    assert m["funnel"]["clip_score"] == pool - int(np.ceil(0.5 * pool)) and m["size"] == int(np.ceil(0.5 * pool))
    assert m["steps"]["clip_score"]["score_cutoff"] is not None
    again = build_view(_cfg(curation=steps), world, tmp_path / "v2")
    assert again["funnel"] == m["funnel"]  # the model's scores are deterministic
    with pytest.raises(ValueError, match="scorer 'checkpoint' needs 'checkpoint'"):
        _cfg(curation=(("clip_score", {"scorer": "checkpoint", "threshold": 0.1}),))


def _plant_test_copies(world: Path, out: Path, n_copies: int) -> list[str]:
    """A declared image-text source: world laion samples plus altered copies of dtd test images."""
    from PIL import Image, ImageOps

    from curation.sources import open_source
    from downstream.sets import load_split

    test = load_split("dtd", "test", world)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(test.images), n_copies, replace=False)
    out.mkdir(parents=True)
    planted = []
    with tarfile.open(out / "00000.tar", "w") as tf:

        def add(key: str, ext: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        laion = open_source("laion", world_root=world)
        for i, s in enumerate(laion.iter_samples()):
            if i == 150:
                break
            add(f"web{i:05d}", "png", s["image"])
            add(f"web{i:05d}", "txt", s["txt"].encode())
            add(f"web{i:05d}", "json", json.dumps({"similarity": 0.3, "width": 32, "height": 32}).encode())
        for j, p in enumerate(picks):
            img = Image.fromarray(test.images[p])
            img = ImageOps.mirror(img) if j % 2 else img
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(60, 90)))
            key = f"copy{j:05d}"
            planted.append(key)
            add(key, "jpg", buf.getvalue())
            add(key, "txt", b"a photo of a textured surface")
            add(key, "json", json.dumps({"similarity": 0.3, "width": 32, "height": 32}).encode())
    (out / "sizes.json").write_text(json.dumps({"00000.tar": 150 + n_copies}))
    return planted


def test_dedup_finds_copies_of_downstream_test_images(world, tmp_path):
    planted = _plant_test_copies(world, tmp_path / "web", 40)
    sources = {"web": {"shards": str(tmp_path / "web" / "00000.tar"), "kind": "image-text"}}
    steps = (("dedup", {"within": False, "against": ["dtd"]}),)
    m = build_view(_cfg(source="web", sources=sources, curation=steps), world, tmp_path / "v")
    found = m["steps"]["dedup"]["overlap"]["dtd"]
    assert found >= 0.95 * len(planted), f"found {found} of {len(planted)} planted test images"
    assert found <= len(planted) + 0.01 * 150, "at most 1% of the other samples removed"
    assert m["funnel"]["dedup"] == found and m["size"] == 190 - found


def test_spec_validates_curation(tmp_path):
    base = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml").read_text())

    def bad(mutate, match):
        data = json.loads(json.dumps(base))
        mutate(data)
        with pytest.raises(SpecError, match=match):
            parse_spec(data)

    bad(lambda d: d["curation"]["clean"].append({"step": "clip_score", "top_fraction": 2}), "top_fraction must lie in")
    bad(
        lambda d: d["curation"]["clean"].append({"step": "caption_language", "languages": ["xx"]}),
        r"unknown language\(s\) \['xx'\]",
    )
    bad(
        lambda d: d["curation"]["clean"].append({"step": "dedup", "against": ["cifar100"]}),
        "dedup against \\['cifar100'\\]: not sets of this spec",
    )
    bad(lambda d: d["pretrain"]["grids"][1].update(noise_model="pairs"), "noise_model")
    bad(lambda d: d.update(sources={"mine": {"shard": "x/{0..3}.tar"}}), "did you mean 'shards'")

    data = json.loads(json.dumps(base))
    data["pretrain"]["view_format"] = "index"
    data["sources"] = {"mine": {"shards": str(tmp_path / "{00000..00001}.tar")}}
    data["pretrain"]["grids"].append({"sources": ["mine"], "sizes": [100], "methods": ["simclr"]})
    from harness.plan import make_plan

    plan = make_plan(parse_spec(data))
    views = plan.of_kind("view")
    assert {v.config.get("materialize") for v in views} == {"index"}
    mine = [v for v in views if v.config["source"] == "mine"]
    assert mine and mine[0].config["sources"] == {"mine": data["sources"]["mine"]}
    laion = [v for v in views if v.config["source"] == "laion"]
    assert all(v.config["against"] == sorted(data["downstream"]["sets"]) for v in laion)
    assert {v.config.get("noise_model") for v in laion if v.config["label_noise"] > 0} == {"class_dependent"}


def test_data_curate_builds_views_and_plan_shows_funnels(world, tmp_path, run_tbench):
    spec = {
        "name": "curate",
        "world": {"seed": 0, "scale": SCALE, "dir": str(world)},  # the session's world: built already
        "workdir": str(tmp_path / "work"),
        "store": str(tmp_path / "store"),
        "curation": {"none": [], "english": [{"step": "caption_language"}, {"step": "dedup"}]},
        "pretrain": {
            "grids": [
                {"sources": ["laion"], "sizes": [100], "curation": ["none", "english"], "label_noise": [0.0, 0.25]}
            ]
        },
        "downstream": {"sets": ["dtd"], "protocols": [{"name": "linear", "shots": [1]}]},
    }
    path = tmp_path / "curate.yaml"
    path.write_text(yaml.safe_dump(spec))
    from typer.testing import CliRunner

    from harness.cli import app

    plan = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "200"})  # no Ray: in this process
    assert plan.exit_code == 0, plan.output
    assert "not built: caption_language -> dedup" in plan.output
    proc = run_tbench("data", "curate", str(path))  # Ray: in a process of its own
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 view(s) built, 0 failed" in proc.stdout and "caption_language -" in proc.stdout
    plan = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "200"})
    assert "caption_language -" in plan.output and "not built" not in plan.output
    from results.store import Store

    rows = (
        Store(tmp_path / "store")
        .query("SELECT curation, label_noise, achieved_noise, label_accuracy, funnel FROM views ORDER BY 1, 2")
        .to_dict("records")
    )
    assert len(rows) == 4 and all(r["label_accuracy"] > 0 for r in rows)
    assert [abs(r["achieved_noise"] - r["label_noise"]) <= 0.01 for r in rows] == [True] * 4
    assert list(json.loads(rows[0]["funnel"])) == ["caption_language", "dedup", "labels_from_captions", "size_subset"]
    assert not list((tmp_path / "work").glob("pretrain/*")), "curate builds views only"
