"""The study at full scale, on paper: configs/study2023.yaml, per-grid backbones, the cost estimate."""

import itertools
import json
import re
import threading
from pathlib import Path

import pytest
import yaml

from harness.estimate import estimate, measured_figures
from harness.plan import make_plan
from harness.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "configs" / "study2023.yaml"


_CLI: dict = {}


@pytest.fixture
def plan_cli(run_tbench, tmp_path_factory) -> dict:
    """`tbench plan configs/study2023.yaml` in a fresh process, started once, in the background: the
    first test that asks starts it, the CLI test waits for it (the process's imports then overlap
    the in-process tests')."""
    if "thread" not in _CLI:
        d = tmp_path_factory.mktemp("study2023-plan")

        def go() -> None:
            _CLI["result"] = run_tbench(
                "plan", str(STUDY), "--workdir", str(d / "work"), "--store", str(d / "store"), timeout=300
            )

        _CLI["thread"] = threading.Thread(target=go, daemon=True)
        _CLI["thread"].start()
    return _CLI


def _tiny() -> dict:
    return yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def _expected_counts(data: dict) -> dict:
    """Job counts and rows the study's lists imply, computed from the YAML alone (not the planner)."""
    pt, ds = data["pretrain"], data["downstream"]
    runs, views = set(), set()
    for g in pt["grids"]:
        for src, cur, method, noise, size, backbone, seed in itertools.product(
            g["sources"],
            g.get("curation", ["none"]),
            g["methods"],
            g.get("label_noise", [0.0]),
            g["sizes"],
            g.get("backbones", [pt["backbone"]]),
            g.get("seeds", [0]),
        ):
            if noise > 0 and method != "supervised":
                continue
            labelled = method == "supervised"
            views.add((src, cur, size, noise, labelled))
            runs.add((src, cur, size, noise, method, backbone, seed, g.get("epochs", pt["epochs"])))
    backbones = {r[5] for r in runs}
    floors = {(r[5], r[6]) for r in runs}  # one random-init encoder per (backbone, pre-training seed)
    clip_runs = sum(r[4] == "clip" for r in runs)
    sets = ds["sets"]
    seeds = ds.get("eval_seeds", [0, 1, 2])
    protos = ds["protocols"]
    per_ckpt = [p for p in protos if p["name"] not in ("zeroshot", "scratch")]  # every pre-trained checkpoint

    def rows(p):
        return len(p["shots"]) * (1 if p["name"] == "zeroshot" else len(p.get("seeds", seeds)))

    linear = [p for p in protos if p["name"] == "linear"]
    scratch = [p for p in protos if p["name"] == "scratch"]
    zeroshot = [p for p in protos if p["name"] == "zeroshot"]
    floor_evals = len(floors) * len(sets) * len(linear) + len(backbones) * len(sets) * len(scratch)
    evals = len(runs) * len(sets) * len(per_ckpt) + clip_runs * len(sets) * len(zeroshot) + floor_evals
    n_rows = (
        len(runs) * len(sets) * sum(rows(p) for p in per_ckpt)
        + clip_runs * len(sets) * sum(map(rows, zeroshot))
        + len(floors) * len(sets) * sum(rows(p) for p in linear)
        + len(backbones) * len(sets) * sum(rows(p) for p in scratch)
    )
    return {
        "world": 1,
        "view": len(views),
        "pretrain": len(runs),
        "init": len(floors),
        "features": (len(runs) + len(floors)) * len(sets),
        "eval": evals,
        "rows": n_rows,
        "backbones": backbones,
        "clip_runs": clip_runs,
    }


def test_study2023_validates_and_plans_what_its_grid_implies(plan_cli):
    spec = load_spec(STUDY)  # no data anywhere: planning reads nothing
    plan = make_plan(spec)
    want = _expected_counts(yaml.safe_load(STUDY.read_text()))
    counts = plan.counts()
    for kind in ("world", "view", "pretrain", "init", "features", "eval"):
        assert counts[kind] == want[kind], (kind, counts[kind], want[kind])
    assert plan.planned_rows() == want["rows"]
    assert want["backbones"] == {"resnet50", "vit_b32"} and want["clip_runs"] > 0
    # the study's shape: real sources and sets only, both backbones, 224 px, every protocol
    assert {j.coords["source"] for j in plan.of_kind("pretrain")} >= {
        "real.cc3m",
        "real.cc12m",
        "real.redcaps",
        "real.yfcc",
        "real.laion",
        "real.wit",
        "real.shutterstock",
        "real.imagenet",
    }
    assert {j.config["image_size"] for j in plan.of_kind("pretrain")} == {224}
    assert {j.config["protocol"] for j in plan.of_kind("eval")} == {
        "linear",
        "zeroshot",
        "finetune",
        "lp_ft",
        "scratch",
    }
    assert {j.coords["method"] for j in plan.of_kind("eval") if j.config["protocol"] == "zeroshot"} == {"clip"}
    assert all(s.startswith("real.") for s in spec.downstream.sets) and len(spec.downstream.sets) == 9
    noisy = {j.coords["label_noise"] for j in plan.of_kind("pretrain") if j.coords["source"] == "real.imagenet"}
    assert noisy == {0.0, 0.2, 0.4}


def test_study2023_estimate_adds_up():
    plan = make_plan(load_spec(STUDY))
    est = estimate(plan)
    assert {k.kind: k.jobs for k in est.kinds} == dict(plan.counts())
    for field in ("gpu_hours", "cpu_hours", "bytes"):
        assert getattr(est.total, field) == pytest.approx(sum(getattr(k, field) for k in est.kinds))
        eval_kind = est.kind("eval")
        assert getattr(eval_kind, field) == pytest.approx(sum(getattr(p, field) for p in est.protocols))
    assert est.total.bytes == pytest.approx(sum(b for _, b, _ in est.storage))
    assert est.total.gpu_hours == pytest.approx(sum(c.gpu_seconds for c in est.jobs.values()) / 3600)
    # one run by hand: CLIP ResNet-50 on 2.7M LAION samples for 16 epochs at the default 750 samples/s per GPU
    run = next(
        j
        for j in plan.of_kind("pretrain")
        if j.coords["source"] == "real.laion"
        and j.coords["requested_size"] == 2_700_000
        and j.coords["curation"] == "none"
        and j.config["method"] == "clip"
        and j.config["backbone"] == "resnet50"
    )
    assert est.jobs[run.key].gpu_seconds == pytest.approx(2_700_000 * 16 / 750)
    assert est.jobs[run.key].wall_seconds == pytest.approx(2_700_000 * 16 / 750 / 8)  # 8 workers x 1 GPU
    assert {f.source for f in est.figures} == {"default"}  # nothing measured, nothing given
    assert est.kind("pretrain").gpu_hours > 100 and est.kind("eval").gpu_hours > 100
    assert est.input_bytes > 10 * 1000**4  # LAION-400M's shards alone are terabytes
    assert any("whole pool" in a for a in est.assumptions)


def _gpu_tiny(**resources) -> dict:
    data = _tiny()
    data["resources"] = {
        "pretrain": {"num_workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 2},
        "eval": {"num_cpus": 2, "num_gpus": 0.5},
        **resources,
    }
    return data


def test_measured_throughput_overrides_spec_and_default(tmp_path):
    plan = make_plan(parse_spec(_gpu_tiny()))
    run = next(j for j in plan.of_kind("pretrain") if j.config["method"] == "supervised")
    key = ("pretrain", "GPU", "test_resnet", "supervised", 32)
    kept = run.coords["requested_size"]
    base = estimate(plan)
    fig = next(f for f in base.figures if f.name == "pretrain test_resnet/supervised @32px")
    assert fig.source == "default"
    assert base.jobs[run.key].gpu_seconds == pytest.approx(kept * run.config["epochs"] / fig.value)

    # the spec's figure replaces the default
    spec_data = _gpu_tiny(
        throughput={"pretrain": [{"backbone": "test_resnet", "method": "supervised", "samples_per_s": 123.0}]}
    )
    given = estimate(make_plan(parse_spec(spec_data)))
    assert given.figure_sources()["pretrain test_resnet/supervised @32px"] == "spec"
    assert given.jobs[run.key].gpu_seconds == pytest.approx(kept * run.config["epochs"] / 123.0)

    # a finished run in the workdir (metrics.json: 2 epochs at 800 samples/s on 2 GPUs) beats both
    d = tmp_path / "pretrain" / run.key
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(
        json.dumps(
            {"epochs": [{"samples_per_second": 800.0, "seconds": 10.0}, {"samples_per_second": 800.0, "seconds": 30.0}]}
        )
    )
    (d / "_DONE.json").write_text(json.dumps({"seconds": 45.0, "epochs_trained": 2, "steps_per_epoch": 5}))
    plan2 = make_plan(parse_spec(spec_data))
    assert measured_figures(plan2, tmp_path)[key] == pytest.approx(400.0)  # per GPU
    measured = estimate(plan2, tmp_path)
    assert measured.figure_sources()["pretrain test_resnet/supervised @32px"] == "measured"
    assert measured.jobs[run.key].gpu_seconds == pytest.approx(kept * run.config["epochs"] / 400.0)
    # other figures keep their sources
    assert measured.figure_sources()["pretrain test_resnet/clip @32px"] == "default"


def test_per_grid_backbones_plan_one_init_job_per_backbone():
    base = make_plan(parse_spec(_tiny()))
    data = _tiny()
    data["pretrain"]["grids"][0]["backbones"] = ["test_resnet", "test_vit"]  # the imagenet block
    plan = make_plan(parse_spec(data))
    inits = plan.of_kind("init")
    assert sorted(j.config["backbone"] for j in inits) == ["test_resnet", "test_vit"]
    imagenet = [j for j in plan.of_kind("pretrain") if j.coords["source"] == "imagenet"]
    assert sorted(j.config["backbone"] for j in imagenet) == ["test_resnet", "test_vit"]
    assert all(j.coords["backbone"] == j.config["backbone"] for j in plan.of_kind("pretrain"))
    # scratch and the linear floor run once per backbone (tiny: scratch on dtd; linear on dtd and digits)
    scratch = [j for j in plan.of_kind("eval") if j.config["protocol"] == "scratch"]
    assert sorted(j.coords["backbone"] for j in scratch) == ["test_resnet", "test_vit"]
    floor_linear = [
        j for j in plan.of_kind("eval") if j.config["protocol"] == "linear" and j.coords["method"] == "none"
    ]
    assert len(floor_linear) == 2 * 2
    assert plan.counts()["pretrain"] == base.counts()["pretrain"] + 1
    # everything the old spec planned keeps its key; the block's views are shared by both backbones
    assert set(base.jobs) <= set(plan.jobs)
    assert len({j.deps[0] for j in imagenet}) == 1
    # naming the default backbone explicitly changes nothing
    same = _tiny()
    same["pretrain"]["grids"][0]["backbones"] = ["test_resnet"]
    assert list(make_plan(parse_spec(same)).jobs) == list(base.jobs)


@pytest.mark.parametrize(
    "where, value, path, words",
    [
        (
            ("pretrain", "grids", 0, "backbones"),
            ["resnet5"],
            "pretrain.grids.0.backbones",
            ["unknown backbone 'resnet5'", "Did you mean 'resnet50'", "vit_b32"],
        ),
        (("pretrain", "grids", 0, "backbones"), [], "pretrain.grids.0.backbones", ["at least 1"]),
        (
            ("resources", "throughput", "pretrain"),
            [{"backbone": "resnet50", "method": "clip", "samples_per_s": 0}],
            "resources.throughput.pretrain.0.samples_per_s",
            ["greater than 0"],
        ),
        (
            ("resources", "throughput", "pretrain"),
            [{"backbone": "resnet50", "method": "clipp", "samples_per_s": 9}],
            "resources.throughput.pretrain.0.method",
            ["unknown pre-training method 'clipp'", "simclr"],
        ),
        (
            ("resources", "throughput", "inference"),
            [{"backbone": "vit_b16", "images_per_s": 9}],
            "resources.throughput.inference.0.backbone",
            ["unknown backbone 'vit_b16'", "vit_b32"],
        ),
        (("resources", "throughput", "decode_per_cpu"), -1, "resources.throughput.decode_per_cpu", ["greater than 0"]),
        (
            ("resources", "throughput", "gpu_hours"),
            3,
            "resources.throughput.gpu_hours",
            ["unknown field 'gpu_hours'", "view_scan_per_cpu"],
        ),
        (
            ("resources", "storage", "bytes_per_sample"),
            {"real.laoin": 1000},
            "resources.storage.bytes_per_sample",
            ["unknown source 'real.laoin'", "'default'"],
        ),
    ],
)
def test_spec_errors_name_the_field(where, value, path, words):
    data = _tiny()
    node = data
    for part in where[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[where[-1]] = value
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    msg = str(exc.value)
    assert path in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_plan_and_dry_run_print_the_estimate(plan_cli):
    plan_cli["thread"].join(300)
    r = plan_cli["result"]
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "estimate of 'study2023'" in out and "GPU-hours" in out and "CPU-hours" in out
    for kind in ("view", "pretrain", "init", "features", "eval", "finetune", "total"):
        assert re.search(rf"│\s+{kind}\s+│", out) or re.search(rf"│ {kind}\s+│", out), kind
    assert "figures used" in out and "default" in out and "assumptions:" in out
    assert "read: real.laion" in out
    # the same estimate in the dry run of a submission (in-process: nothing is contacted)
    from typer.testing import CliRunner

    from harness.cli import app

    res = CliRunner().invoke(
        app,
        [
            "submit",
            str(STUDY),
            "--dry-run",
            "--address",
            "http://127.0.0.1:9",
            "--workdir",
            "/shared/work",
            "--store",
            "/shared/store",
        ],
        env={"COLUMNS": "200", "RAY_ADDRESS": None, "RAY_API_SERVER_ADDRESS": None},
    )
    assert res.exit_code == 0, res.output
    assert "dry run: nothing was sent" in res.output and "estimate of 'study2023'" in res.output
    gpu = re.search(r"estimate of 'study2023': ([\d,]+) GPU-hours", out).group(1)
    assert f"estimate of 'study2023': {gpu} GPU-hours" in res.output


def test_a_samples_seen_run_costs_its_budget_whatever_the_size():
    """Pre-training cost is samples_seen rounded up to whole global batches (1000 at batch 64: 16
    steps, 1024 samples), the same at every size; an epoch budget costs size x epochs."""
    data = _tiny()
    data["pretrain"]["grids"] = [
        {"sources": ["imagenet"], "sizes": [150, 300], "samples_seen": 1000, "checkpoint_epochs": "last"},
        {"sources": ["imagenet"], "sizes": [512], "epochs": 2, "checkpoint_epochs": "last"},
    ]
    plan = make_plan(parse_spec(data))
    est = estimate(plan)
    cost = {(j.coords["requested_size"], "samples_seen" in j.config): est.jobs[j.key] for j in plan.of_kind("pretrain")}
    fig = next(f for f in est.figures if f.name == "pretrain test_resnet/supervised @32px")
    assert cost[(150, True)].wall_seconds == pytest.approx(1024 / fig.value)
    assert cost[(300, True)].wall_seconds == pytest.approx(cost[(150, True)].wall_seconds)
    assert cost[(512, False)].wall_seconds == pytest.approx(2 * 512 / fig.value)
    # each keeps one checkpoint (the end: last.pt, or epoch 2) and one rolling state
    assert cost[(150, True)].bytes == cost[(512, False)].bytes
    assert any("samples_seen rounded up to whole global batches" in a for a in est.assumptions)
