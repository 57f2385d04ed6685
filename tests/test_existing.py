"""Existing models (pretrain/existing.py, the spec's ``models:``, ``tbench eval``): every weight format
of both frameworks loads offline through the framework's own API and round-trips through a harness
checkpoint; bad input fails before any work, naming the model; an ``hf-hub:`` name resolves from a
Hugging Face cache laid out on disk; two different files never share rows; the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from harness.plan import make_plan
from harness.spec import parse_spec
from pretrain.existing import ExistingModel, ModelError, check_model, import_model, locate_weights, weights_identity

OC_ARCH = "tbench-test-resnet"  # a small open_clip config shipped in pretrain/clip_configs (32 px)
TIMM_ARCH = "test_resnet"
FORMATS = ["oc_plain", "oc_safetensors", "oc_training", "timm_plain", "timm_safetensors"]


def _open_clip(seed: int):
    import open_clip

    import pretrain.clip  # noqa: F401  (registers the tbench-* configs)

    torch.manual_seed(seed)
    return open_clip.create_model(OC_ARCH).eval()


def _timm(seed: int):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(TIMM_ARCH, pretrained=False).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Each format written from a freshly built (seeded) model; ``<fmt>`` -> path."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    oc = {k: v.contiguous() for k, v in _open_clip(1).state_dict().items()}
    tm = _timm(2).state_dict()
    torch.save(oc, d / "oc.pt")
    save_file(oc, d / "oc.safetensors")
    # what open_clip's training writes: epoch, name, DDP-wrapped state dict, optimizer
    torch.save(
        {
            "epoch": 3,
            "name": "run",
            "state_dict": {f"module.{k}": v for k, v in oc.items()},
            "optimizer": {"state": {}, "param_groups": []},
        },
        d / "epoch_3.pt",
    )
    torch.save(tm, d / "tm.pth")
    save_file(tm, d / "tm.safetensors")
    return {
        "oc_plain": d / "oc.pt",
        "oc_safetensors": d / "oc.safetensors",
        "oc_training": d / "epoch_3.pt",
        "timm_plain": d / "tm.pth",
        "timm_safetensors": d / "tm.safetensors",
    }


def _model(fmt: str, path: Path, name: str = "m", **kw) -> ExistingModel:
    framework, arch = ("open_clip", OC_ARCH) if fmt.startswith("oc") else ("timm", TIMM_ARCH)
    return ExistingModel(name, framework, arch, str(path), **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_through_its_framework_and_round_trips(fmt, weights, tmp_path):
    """The harness checkpoint gives the features of the model the framework loads from the same file,
    with the model's own preprocessing; an open_clip checkpoint also rebuilds its text tower."""
    from pretrain.models import load_encoder

    ckpt = tmp_path / "model.pt"
    summary = import_model(_model(fmt, weights[fmt]), ckpt)
    encoder, meta = load_encoder(ckpt)
    x = torch.randn(3, 3, meta["image_size"], meta["image_size"], generator=torch.Generator().manual_seed(0))
    if fmt.startswith("oc"):
        import open_clip

        original = _open_clip(1)
        want = original.encode_image(x)
        assert meta["mean"] == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))
        assert meta["image_size"] == 32 and meta["interpolation"] == "bicubic"
        if fmt == "oc_training":  # the text tower too (zero-shot), from the most wrapped format
            from pretrain.clip import load_clip

            clip, tokenizer, _ = load_clip(ckpt)
            text = tokenizer(["a photo of a dog"])
            with torch.inference_mode():
                assert torch.allclose(clip.encode_text(text), original.encode_text(text), atol=1e-5)
    else:
        original = _timm(2)
        original.reset_classifier(0)
        want = original(x)
        cfg = original.pretrained_cfg
        assert meta["mean"] == pytest.approx(list(cfg["mean"])) and meta["image_size"] == cfg["input_size"][-1]
        assert meta["interpolation"] == cfg["interpolation"]
    with torch.inference_mode():
        got = encoder(x)
    assert torch.allclose(got, want.detach(), atol=1e-5)
    assert summary["feature_dim"] == got.shape[1] == meta["feature_dim"]
    assert meta["weights_sha256"] == summary["sha256"] and len(summary["sha256"]) == 64


def test_bad_models_fail_naming_the_model_and_what_is_valid(weights, tmp_path):
    cases = [
        (ExistingModel("typo", "timm", "test_resnett", str(weights["timm_plain"])), "close matches: test_resnet"),
        (ExistingModel("octypo", "open_clip", "tbench-test-resnt", str(weights["oc_plain"])), "tbench-test-resnet"),
        (ExistingModel("gone", "timm", TIMM_ARCH, str(tmp_path / "nope.safetensors")), "no weights file at"),
        # a ViT's weights in a ResNet: the strict load's keys, summarised
        (ExistingModel("misfit", "timm", "test_vit", str(weights["timm_plain"])), "do not fit the architecture"),
        (ExistingModel("ocmisfit", "open_clip", "tbench-test-vit", str(weights["oc_training"])), "missing keys"),
        (ExistingModel("tag", "open_clip", OC_ARCH, "laion2b"), "not an open_clip pretrained tag"),
    ]
    for model, expected in cases:
        with pytest.raises(ModelError) as exc:
            check_model(model)
        assert f"model {model.name!r}" in str(exc.value) and expected in str(exc.value), str(exc.value)


def _spec(models: dict, world: Path, tmp_path: Path, **downstream) -> dict:
    return {
        "name": "existing",
        "world": {"seed": 0, "scale": 0.1, "dir": str(world)},
        "workdir": str(tmp_path / "work"),
        "store": str(tmp_path / "store"),
        "models": models,
        "downstream": {
            "sets": ["dtd"],
            "eval_seeds": [0],
            **downstream,
            "protocols": downstream.get("protocols", [{"name": "linear", "shots": [5]}]),
        },
    }


def test_a_misfit_fails_before_any_work(weights, world, tmp_path):
    """The runner loads every model to import before anything runs (no job folder, no Ray)."""
    from harness.runner import run

    spec = parse_spec(
        _spec(
            {
                "ok": {"framework": "timm", "arch": TIMM_ARCH, "weights": str(weights["timm_plain"])},
                "bad": {"framework": "timm", "arch": "test_vit", "weights": str(weights["timm_plain"])},
            },
            world,
            tmp_path,
        )
    )
    with pytest.raises(ModelError, match="model 'bad'"):
        run(spec, progress=False)
    assert not [p for p in (tmp_path / "work").glob("*/*")], "work started before the models were checked"


def test_missing_weights_fail_at_planning(world, tmp_path):
    spec = parse_spec(
        _spec({"lost": {"framework": "timm", "arch": TIMM_ARCH, "weights": str(tmp_path / "x.pt")}}, world, tmp_path)
    )
    with pytest.raises(ModelError, match="model 'lost'.*no weights file"):
        make_plan(spec)


def test_keys_hold_the_weights_content_and_rows_their_provenance(weights, world, tmp_path):
    """Two files with different content never share a job (or rows); the same file keeps its key;
    zero-shot is planned for open_clip models only; describes fills the pre-training coordinates."""
    copy = tmp_path / "copy.pth"
    copy.write_bytes(weights["timm_plain"].read_bytes())
    models = {
        "oc": {
            "framework": "open_clip",
            "arch": OC_ARCH,
            "weights": str(weights["oc_plain"]),
            "describes": {"source": "laion", "method": "clip", "pretrain_size": 5000},
        },
        "tm": {"framework": "timm", "arch": TIMM_ARCH, "weights": str(copy)},
    }
    protocols = [{"name": "linear", "shots": [5]}, {"name": "zeroshot", "shots": [0]}]
    plan = make_plan(parse_spec(_spec(models, world, tmp_path, protocols=protocols)))
    jobs = {j.coords["model"]: j for j in plan.of_kind("model")}
    assert jobs["tm"].config["sha256"] == weights_identity(_model("timm_plain", weights["timm_plain"]))["sha256"]
    assert jobs["oc"].coords["source"] == "laion" and jobs["oc"].coords["requested_size"] == 5000
    assert jobs["tm"].coords["method"] == "existing" and jobs["tm"].coords["source"] == "tm"
    evals = {(j.coords["model"], j.config["protocol"]) for j in plan.of_kind("eval")}
    assert evals == {("oc", "linear"), ("oc", "zeroshot"), ("tm", "linear")}
    again = make_plan(parse_spec(_spec(models, world, tmp_path, protocols=protocols)))
    assert {j.coords["model"]: j.key for j in again.of_kind("model")} == {n: j.key for n, j in jobs.items()}
    copy.write_bytes(weights["timm_safetensors"].read_bytes())  # other weights at the same path: a new key
    changed = make_plan(parse_spec(_spec(models, world, tmp_path)))
    assert {j.key for j in changed.of_kind("model")} != {j.key for j in plan.of_kind("model")}
    evals_of = lambda p: {j.key for j in p.of_kind("eval") if j.coords["model"] == "tm"}  # noqa: E731
    assert evals_of(changed) and evals_of(changed).isdisjoint(evals_of(plan))


def _hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache as huggingface_hub lays it out: models--org--name/{refs/main, snapshots/<rev>/...}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return root


def test_hf_hub_name_resolves_from_an_offline_cache(weights, tmp_path, monkeypatch):
    """``hf-hub:org/name`` is found in the cache with the hub offline (huggingface_hub reads these two
    settings at call time; tests/test_existing.py's CLI test sets the environment variables instead)."""
    from huggingface_hub import constants

    config = {"architecture": TIMM_ARCH, "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3]}}
    cache = _hub_cache(
        tmp_path / "hub",
        "tbench/tiny-resnet",
        {"model.safetensors": weights["timm_safetensors"].read_bytes(), "config.json": json.dumps(config).encode()},
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = ExistingModel("hub", "timm", TIMM_ARCH, "hf-hub:tbench/tiny-resnet")
    found = locate_weights(model)
    assert found.path.name == "model.safetensors" and found.path.is_relative_to(cache)
    assert found.sha256 == locate_weights(_model("timm_safetensors", weights["timm_safetensors"])).sha256
    out = import_model(model, tmp_path / "hub.pt")
    meta = torch.load(tmp_path / "hub.pt", weights_only=True)["meta"]
    assert meta["mean"] == pytest.approx([0.1, 0.2, 0.3])  # the hub config's preprocessing
    assert out["sha256"] == found.sha256
    with pytest.raises(ModelError, match="model 'absent'.*HF_HUB_OFFLINE"):
        locate_weights(ExistingModel("absent", "timm", TIMM_ARCH, "hf-hub:tbench/not-cached"))


def test_eval_spec_parses_model_arguments(tmp_path):
    from harness.eval_models import eval_spec, parse_model

    assert parse_model("timm:resnet50.a1_in1k:hf-hub:timm/resnet50.a1_in1k") == (
        "resnet50.a1_in1k@timm.resnet50.a1_in1k",
        {"framework": "timm", "arch": "resnet50.a1_in1k", "weights": "hf-hub:timm/resnet50.a1_in1k"},
    )
    assert parse_model("mine=open_clip:RN50:/ckpt/epoch_32.pt")[0] == "mine"
    with pytest.raises(ValueError, match="FRAMEWORK:ARCH:WEIGHTS"):
        parse_model("timm:resnet50")
    with pytest.raises(ValueError, match="unknown framework 'tf'"):
        parse_model("tf:resnet50:/w.pt")
    data = eval_spec(
        ["a=timm:test_resnet:w.pt"],
        sets="dtd,digits",
        protocols="linear,zeroshot",
        shots="1,full",
        store=str(tmp_path / "s"),
    )
    assert data["models"]["a"]["weights"] == str(Path("w.pt").absolute())
    assert data["downstream"]["protocols"] == [
        {"name": "linear", "shots": [1, "full"]},
        {"name": "zeroshot", "shots": [0]},
    ]
    parse_spec(data)  # a valid spec


@pytest.mark.slow
def test_tbench_eval_two_models_two_sets_then_rerun_and_report(weights, world, tmp_path, run_tbench):
    """``tbench eval`` on an open_clip training checkpoint, a timm .safetensors and a timm model from an
    offline hub cache: rows with provenance, zero-shot for open_clip, the saved spec repeats nothing,
    the report draws the models, and a misfit exits before work naming the model."""
    import os
    import subprocess
    import sys

    cache = _hub_cache(
        tmp_path / "hub", "tbench/tiny-resnet", {"pytorch_model.bin": weights["timm_plain"].read_bytes()}
    )
    store, work = tmp_path / "store", tmp_path / "work"
    common = [
        "--sets",
        "dtd,digits",
        "--protocols",
        "linear,zeroshot",
        "--shots",
        "5",
        "--store",
        str(store),
        "--workdir",
        str(work),
        "--world-dir",
        str(world),
        "--world-scale",
        "0.1",
        "--name",
        "models",
        "--no-progress",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), COLUMNS="200")
    args = [
        f"clip_run=open_clip:{OC_ARCH}:{weights['oc_training']}",
        f"timm:{TIMM_ARCH}:{weights['timm_safetensors']}",
        f"hub=timm:{TIMM_ARCH}:hf-hub:tbench/tiny-resnet",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "eval", *args, *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = tmp_path / "models.yaml"
    assert saved.is_file() and "0 failed" in proc.stdout
    sql = (
        "SELECT model, framework, arch, weights, weights_sha256, protocol, downstream, status FROM runs "
        "ORDER BY model, protocol, downstream"
    )
    rows = json.loads(run_tbench("results", "query", sql, "--store", str(store), "--format", "json").stdout)
    assert {r["status"] for r in rows} == {"ok"}
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append((r["protocol"], r["downstream"]))
    assert sorted(by_model["clip_run"]) == [
        ("linear", "digits"),
        ("linear", "dtd"),
        ("zeroshot", "digits"),
        ("zeroshot", "dtd"),
    ]
    assert sorted(by_model["hub"]) == [("linear", "digits"), ("linear", "dtd")]
    shas = {r["model"]: r["weights_sha256"] for r in rows}
    assert len(set(shas.values())) == 3 and all(len(s) == 64 for s in shas.values())
    again = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(saved), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0 and "0 ran" in again.stdout, again.stdout + again.stderr
    report = run_tbench("report", "--store", str(store), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "existing models (clip_run, hub, test_resnet@tm)" in (tmp_path / "report" / "index.html").read_text()
    data = yaml.safe_load(saved.read_text())
    data["models"]["bad"] = {"framework": "timm", "arch": "test_vit", "weights": str(weights["timm_plain"])}
    saved.write_text(yaml.safe_dump(data))
    bad = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(saved), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert bad.returncode == 2 and "model 'bad'" in bad.stderr and "do not fit" in bad.stderr, bad.stderr


def test_scaling_figures_draw_models_as_reference_points(synthetic_store_root, tmp_path):
    """Existing models' rows become a star at their declared size (or a line where none is
    declared) beside the grid's curves, not curves of their own."""
    import pandas as pd

    from results.report import _model_points, _scaling_figures
    from results.store import Store

    runs = Store(synthetic_store_root).read("runs")
    linear = runs[(runs["protocol"] == "linear") & runs["shots"].isna() & (runs["status"] == "ok")]
    model_rows = []
    for name, size, score in (("openai_b32", 400_000_000, 0.7), ("mine", None, 0.5)):
        for ds_name in sorted(linear["downstream"].unique()):
            model_rows.append(
                {
                    "status": "ok",
                    "protocol": "linear",
                    "shots": None,
                    "downstream": ds_name,
                    "score": score,
                    "pretrain_size": size,
                    "model": name,
                    "method": "existing",
                    "source": name,
                    "pretrain_seed": 0,
                    "eval_seed": 0,
                    "chance": 0.1,
                    "metric": "top1",
                    "pretrain_key": name,
                }
            )
    frame = pd.concat([linear, pd.DataFrame(model_rows)], ignore_index=True)
    frame["pretrain_size"] = frame["pretrain_size"].astype("Float64")
    figures = dict((p, (names, note)) for p, names, note in _scaling_figures(frame, tmp_path))
    names, note = figures["linear"]
    assert names and (tmp_path / names[0]).is_file()
    assert "existing models (mine, openai_b32)" in note
    grid_lines = int(note.split(" line(s)")[0].rsplit(", ", 1)[1])
    grid = linear[linear["method"] != "none"]  # the random-init floor is a dashed line, not counted
    assert grid_lines == len(grid.groupby(["source", "method"])), note  # the models added no line
    points = _model_points(frame.assign(_shots=float("inf")))
    assert set(points["model"]) == {"mine", "openai_b32"}
    assert points.loc[points["model"] == "openai_b32", "size"].eq(4e8).all()
