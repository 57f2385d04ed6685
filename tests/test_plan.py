from pathlib import Path

import pytest
import yaml

from harness.plan import make_plan
from harness.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent


def _tiny() -> dict:
    return yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def test_tiny_plan_counts_and_rows():
    plan = make_plan(load_spec(ROOT / "configs" / "tiny.yaml"))
    counts = plan.counts()
    # views: imagenet 300 + laion {150, 300} x noise {0, 0.2} + shutterstock 150 (unlabelled, for clip
    # and simclr); one pre-training per labelled view, two on the unlabelled one
    assert counts["world"] == 1 and counts["view"] == 6 and counts["pretrain"] == 7 and counts["init"] == 1
    # checkpoints: 7 runs x 2 saved epochs + the random-init floor = 15, on 2 sets
    assert counts["features"] == 30
    # linear on every checkpoint and set (30) + finetune and lp_ft on dtd from the 14 pre-trained
    # checkpoints + zero-shot from the 2 CLIP checkpoints + scratch once
    assert counts["eval"] == 30 + 14 + 14 + 2 + 1
    assert plan.planned_rows() == 30 * 3 * 2 + 14 + 14 + 2 + 1
    # every dependency precedes its dependent
    seen = set()
    for job in plan.jobs.values():
        assert all(d in seen for d in job.deps), job
        seen.add(job.key)


def test_the_floor_has_one_initialisation_per_pretraining_seed_and_scratch_runs_once():
    data = _tiny()
    data["pretrain"]["grids"][0]["seeds"] = [3, 1]  # the imagenet block; the others keep seed 0
    plan = make_plan(parse_spec(data))
    inits = plan.of_kind("init")
    assert sorted(j.config["seed"] for j in inits) == [0, 1, 3]
    assert sorted(j.coords["pretrain_seed"] for j in inits) == [0, 1, 3]
    assert len({j.key for j in inits}) == 3  # three initialisations, three encoders
    floor_linear = [
        j for j in plan.of_kind("eval") if j.config["protocol"] == "linear" and j.coords["method"] == "none"
    ]
    assert sorted(j.coords["pretrain_seed"] for j in floor_linear) == sorted(
        [0, 1, 3] * len(data["downstream"]["sets"])
    )
    # scratch draws its weights from the eval seed: one run, from the first initialisation, not three copies
    scratch = [j for j in plan.of_kind("eval") if j.config["protocol"] == "scratch"]
    assert [j.coords["pretrain_seed"] for j in scratch] == [0]
    # the floor at seed 0 keeps its key: a workdir planned before keeps its finished floor
    assert {j.key for j in make_plan(parse_spec(_tiny())).of_kind("init")} <= {j.key for j in inits}
    # without the linear floor, scratch alone asks for one initialisation
    data["downstream"]["random_init_floor"] = False
    assert [j.config["seed"] for j in make_plan(parse_spec(data)).of_kind("init")] == [0]


def test_keys_are_stable_and_propagate():
    a = make_plan(parse_spec(_tiny()))
    b = make_plan(parse_spec(_tiny()))
    assert list(a.jobs) == list(b.jobs)
    data = _tiny()
    data["pretrain"]["optim"] = {"lr": 0.01}
    c = make_plan(parse_spec(data))
    kinds = lambda p, k: {j.key for j in p.of_kind(k)}  # noqa: E731
    assert kinds(a, "view") == kinds(c, "view")  # the data did not change
    assert kinds(a, "pretrain").isdisjoint(kinds(c, "pretrain"))
    changed_evals = kinds(a, "eval") - kinds(c, "eval")
    floor_evals = {j.key for j in a.of_kind("eval") if j.coords["method"] == "none"}
    assert changed_evals == kinds(a, "eval") - floor_evals  # only the floor's evals survive


def test_pruned_combinations_have_reasons():
    plan = make_plan(load_spec(ROOT / "configs" / "tiny.yaml"))
    assert any("random-init encoder" in what and "`linear` floor" in why for what, why in plan.pruned)


def test_quickstart_plan_is_within_budget():
    plan = make_plan(load_spec(ROOT / "configs" / "quickstart.yaml"))
    counts = plan.counts()
    # 10 configurations x 2 pre-training seeds: imagenet and laion at 3 sizes, 2 curated LAION views,
    # CLIP and SimCLR on laion (9 views: the methods share laion n=1000's); the largest imagenet runs
    # also after their first pass: 22 checkpoints + the floor's 2 initialisations (one per pre-training
    # seed), linear on 11 sets; CLIP zero-shot on the 9 world sets; fine-tuning and LP-FT from the 4
    # imagenet n=3000 checkpoints on 2 sets and scratch on those 2, one seed
    assert counts["pretrain"] == 20 and counts["view"] == 9 and counts["init"] == 2
    assert counts["eval"] == 24 * 11 + 2 * 9 + 4 * 2 * 2 + 2
    assert plan.planned_rows() == 24 * 11 * 5 * 3 + 2 * 9 + 4 * 2 * 2 + 2
    assert len(plan.expected_rows()) == plan.planned_rows()
    # every pre-trained configuration has two pre-training seeds
    seeds: dict[tuple, set] = {}
    for job in plan.of_kind("pretrain"):
        c = job.coords
        seeds.setdefault((c["source"], c["curation"], c["label_noise"], c["method"], c["requested_size"]), set()).add(
            c["pretrain_seed"]
        )
    assert len(seeds) == 10 and all(len(s) == 2 for s in seeds.values())


def test_a_grid_block_can_evaluate_mid_training_checkpoints():
    data = _tiny()
    data["downstream"]["checkpoint_epochs"] = "last"
    data["pretrain"]["checkpoint_epochs"] = "last"
    data["pretrain"]["epochs"] = 4
    data["pretrain"]["grids"][0]["checkpoint_epochs"] = [1, 2]  # the imagenet block
    plan = make_plan(parse_spec(data))
    by_source = {}
    for job in plan.of_kind("pretrain"):
        by_source.setdefault(job.coords["source"], set()).add(tuple(job.config["save_epochs"]))
    assert by_source["imagenet"] == {(1, 2, 4)} and by_source["laion"] == {(4,)}
    epochs = {}
    for job in plan.of_kind("features"):
        epochs.setdefault(job.coords["source"], set()).add(job.coords["checkpoint_epoch"])
    assert epochs["imagenet"] == {1, 2, 4} and epochs["laion"] == {4}
    data["pretrain"]["grids"][0]["checkpoint_epochs"] = [5]
    with pytest.raises(SpecError, match=r"grids.0.checkpoint_epochs \[5\] outside 1..4"):
        parse_spec(data)


def test_methods_settings_and_grid_epochs_reach_the_pretraining_jobs():
    data = _tiny()
    data["pretrain"]["grids"].append(
        {"sources": ["shutterstock"], "sizes": [300], "methods": ["clip", "simclr"], "epochs": 3}
    )
    data["pretrain"]["method_args"] = {"simclr": {"temperature": 0.2}}
    data["pretrain"]["checkpoint_epochs"] = "last"
    plan = make_plan(parse_spec(data))
    runs = {j.config["method"]: j for j in plan.of_kind("pretrain") if j.coords["source"] == "shutterstock"}
    assert runs["simclr"].config["hparams"] == {"temperature": 0.2} and "hparams" not in runs["clip"].config
    assert runs["clip"].config["epochs"] == 3 and runs["clip"].config["save_epochs"] == [3]
    assert runs["clip"].coords["pretrain_epochs"] == 3
    evals = [j for j in plan.of_kind("eval") if j.coords["pretrain_key"] == runs["clip"].key]
    assert evals and {j.config["epoch"] for j in evals} == {3}
    # contrastive methods read unlabelled views; an older spec keeps its keys (no new fields in them)
    views = {j.key: j for j in plan.of_kind("view")}
    assert views[runs["clip"].deps[0]].config["needs_labels"] is False
    base = _tiny()
    base["pretrain"]["checkpoint_epochs"] = "last"
    unchanged = {j.key for j in make_plan(parse_spec(base)).of_kind("pretrain") if j.config["method"] != "simclr"}
    assert unchanged <= {j.key for j in plan.of_kind("pretrain")}


def test_protocol_rules_zero_shot_scratch_and_head_init():
    data = _tiny()
    data["downstream"]["checkpoint_epochs"] = "last"
    data["downstream"]["protocols"] = [
        {"name": "linear", "shots": [5]},
        {"name": "zeroshot", "shots": [0]},
        {"name": "scratch", "shots": [5], "sets": ["dtd"], "epochs": 2},
        {"name": "lp_ft", "shots": [5], "sets": ["dtd"], "epochs": 2},
        {"name": "finetune", "shots": [5], "sets": ["dtd"], "head_init": "auto"},
    ]
    plan = make_plan(parse_spec(data))
    evals = plan.of_kind("eval")
    by = lambda proto: [j for j in evals if j.config["protocol"] == proto]  # noqa: E731
    # zero-shot only on the CLIP run, one seed (nothing is drawn), on both sets
    assert {j.coords["method"] for j in by("zeroshot")} == {"clip"} and len(by("zeroshot")) == 2
    assert all(j.config["seeds"] == [0] and j.config["shots"] == [0] and j.rows == 1 for j in by("zeroshot"))
    # scratch only from the random-init job, once per set it names
    assert [(j.coords["method"], j.coords["downstream"]) for j in by("scratch")] == [("none", "dtd")]
    assert by("scratch")[0].config["epochs"] == 2 and by("scratch")[0].config["lrs"] == [1e-4, 3e-4, 1e-3, 3e-3]
    # lp_ft reads the feature cache; fine-tuning's head starts from zero-shot weights on CLIP only
    assert all(any(d in {f.key for f in plan.of_kind("features")} for d in j.deps) for j in by("lp_ft"))
    heads = {j.coords["method"]: j.config.get("head_init", "zero") for j in by("finetune")}
    assert heads["clip"] == "zeroshot" and heads["supervised"] == "zero" and heads["simclr"] == "zero"
    assert "none" not in heads and "none" not in {j.coords["method"] for j in by("lp_ft")}
    reasons = " | ".join(f"{w}: {y}" for w, y in plan.pruned)
    assert "zeroshot on supervised checkpoints" in reasons and "text tower" in reasons
    assert "scratch on pre-trained checkpoints" in reasons
    # without the floor, the init job still exists for scratch, and evaluates nothing else
    data["downstream"]["random_init_floor"] = False
    plan = make_plan(parse_spec(data))
    assert {j.config["protocol"] for j in plan.of_kind("eval") if j.coords["method"] == "none"} == {"scratch"}


def test_protocol_settings_are_checked():
    import pytest

    from harness.spec import SpecError

    data = _tiny()
    data["downstream"]["protocols"] = [{"name": "linear", "shots": [5], "head_init": "zeroshot"}]
    with pytest.raises(SpecError, match="head_init applies to protocol 'finetune' only"):
        parse_spec(data)
    data["downstream"]["protocols"] = [{"name": "zeroshot", "shots": [1]}]
    with pytest.raises(SpecError, match="protocol 'zeroshot' takes shots"):
        parse_spec(data)
    data["downstream"]["protocols"] = [{"name": "finetune", "lrs": []}]
    with pytest.raises(SpecError, match="lrs"):
        parse_spec(data)


def test_sets_declared_in_the_spec_travel_with_their_jobs(tmp_path):
    import pytest

    from harness.spec import SpecError

    data = _tiny()
    data["downstream"]["sets"] = ["dtd", "my_leaves"]
    data["downstream"]["custom_sets"] = {
        "my_leaves": {"format": "imagefolder", "path": str(tmp_path / "leaves"), "metric": "balanced_acc"}
    }
    plan = make_plan(parse_spec(data))
    jobs = [j for j in plan.jobs.values() if j.kind in ("features", "eval") and j.config["downstream"] == "my_leaves"]
    assert jobs and all(j.config["set_config"]["path"] == str(tmp_path / "leaves") for j in jobs)
    assert all(
        "set_config" not in j.config
        for j in plan.jobs.values()
        if j.kind in ("features", "eval") and j.config["downstream"] == "dtd"
    )
    # moving the data changes the jobs' keys; rewording its description does not
    data["downstream"]["custom_sets"]["my_leaves"]["description"] = "leaves from the garden"
    assert {j.key for j in make_plan(parse_spec(data)).jobs.values()} == set(plan.jobs)
    data["downstream"]["custom_sets"]["my_leaves"]["path"] = str(tmp_path / "elsewhere")
    assert not {j.key for j in jobs} & set(make_plan(parse_spec(data)).jobs)
    # errors name the set and the field
    data["downstream"]["custom_sets"]["my_leaves"]["format"] = "zip"
    with pytest.raises(SpecError, match="my_leaves.*format 'zip'.*valid"):
        parse_spec(data)
    data["downstream"]["custom_sets"] = {"dtd": {"format": "imagefolder", "path": "x"}}
    with pytest.raises(SpecError, match="'dtd' is already a registered set"):
        parse_spec(data)
    data["downstream"]["custom_sets"] = {}
    data["downstream"]["sets"] = ["dtd", "my_leavs"]
    with pytest.raises(SpecError, match="unknown downstream set 'my_leavs'"):
        parse_spec(data)


def test_a_samples_seen_budget_joins_the_run_key_and_its_end_is_the_last_checkpoint():
    from harness.runner import _early_epoch
    from pretrain.budget import LAST

    base = make_plan(parse_spec(_tiny()))
    data = _tiny()
    data["pretrain"]["grids"].append(
        {"sources": ["imagenet"], "sizes": [150, 300], "samples_seen": 1200, "checkpoint_epochs": [1]}
    )
    plan = make_plan(parse_spec(data))
    runs = [j for j in plan.of_kind("pretrain") if "samples_seen" in j.config]
    assert len(runs) == 2 and all("epochs" not in r.config and r.config["save_epochs"] == [1] for r in runs)
    assert all(r.coords["samples_budget"] == 1200 and r.coords["pretrain_epochs"] is None for r in runs)
    # the epoch-budget runs keep their keys; the same data under another budget is another run
    assert {j.key for j in base.of_kind("pretrain")} <= {j.key for j in plan.of_kind("pretrain")}
    epochs_run = next(j for j in plan.of_kind("pretrain") if j.coords["source"] == "imagenet" and "epochs" in j.config)
    same_view = next(r for r in runs if r.deps == epochs_run.deps)
    assert same_view.key != epochs_run.key
    data["pretrain"]["grids"][-1]["samples_seen"] = 2400
    other = {j.key for j in make_plan(parse_spec(data)).of_kind("pretrain") if "samples_seen" in j.config}
    assert other.isdisjoint({r.key for r in runs})
    # evaluated at epoch 1 and at the end (LAST: its epoch depends on the view's size); epoch 1 may
    # start while the run trains, the end only once it finished
    for run in runs:
        evals = [j for j in plan.of_kind("eval") if j.deps[0] == run.key]
        assert {j.config["epoch"] for j in evals} == {1, LAST}
        assert {j.coords["checkpoint_epoch"] for j in evals} == {1, None}
        assert {_early_epoch(j, run) for j in evals} == {1, None}
        assert any(j.label.endswith(" last") for j in evals)
    # pretrain.samples_seen is the default budget of the blocks that give none
    data = _tiny()
    del data["pretrain"]["epochs"]
    data["pretrain"]["samples_seen"] = 600
    data["pretrain"]["checkpoint_epochs"] = "last"
    data["downstream"]["checkpoint_epochs"] = "last"
    plan = make_plan(parse_spec(data))
    assert all(j.config.get("samples_seen") == 600 for j in plan.of_kind("pretrain"))
    assert {j.config["epoch"] for j in plan.of_kind("features")} == {0, LAST}  # the floor and the ends


def test_a_protocol_runs_filter_limits_it_to_the_listed_runs():
    """`runs:` restricts a protocol to some pre-training runs; the random-init job is not filtered,
    and the fine-tuning recipe's settings join the evaluation's key."""
    import copy

    import yaml

    from harness.plan import make_plan
    from harness.spec import parse_spec

    data = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    plan = make_plan(parse_spec(data))
    evals = plan.of_kind("eval")
    ft = [j for j in evals if j.config["protocol"] in ("finetune", "lp_ft")]
    assert ft and {(j.coords["source"], j.coords["requested_size"]) for j in ft} == {("imagenet", 3000)}
    assert {j.coords["pretrain_seed"] for j in ft} == {0, 1}
    assert any(j.config["protocol"] == "scratch" for j in evals)  # from the random-init job
    assert all(j.config["min_steps"] == 150 and j.config["batch_size"] == 32 for j in ft)
    changed = copy.deepcopy(data)
    for p in changed["downstream"]["protocols"]:
        if p["name"] == "finetune":
            p["min_steps"] = 100
    keys = {j.key for j in make_plan(parse_spec(changed)).of_kind("eval") if j.config["protocol"] == "finetune"}
    assert keys and not keys & {j.key for j in ft}
    # leaving LP-FT's start: the default test stays out of the key; another level or none joins it
    assert all("selection" not in j.config for j in ft)
    for alpha, setting in ((0.01, "alpha=0.01"), (None, "plain")):
        other = copy.deepcopy(data)
        for p in other["downstream"]["protocols"]:
            if p["name"] == "lp_ft":
                p["start_alpha"] = alpha
        lp = [j for j in make_plan(parse_spec(other)).of_kind("eval") if j.config["protocol"] == "lp_ft"]
        assert lp and {j.config["selection"] for j in lp} == {setting}
        assert not {j.key for j in lp} & {j.key for j in ft}
    bad = copy.deepcopy(data)
    bad["downstream"]["protocols"][2]["runs"] = {"sorces": ["imagenet"]}
    with pytest.raises(Exception, match="sorces"):
        parse_spec(bad)
