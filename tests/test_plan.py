from pathlib import Path

import yaml

from harness.plan import make_plan
from harness.spec import load_spec, parse_spec

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
    # linear on every checkpoint and set (30) + finetune on dtd from the 14 pre-trained checkpoints
    assert counts["eval"] == 44
    assert plan.planned_rows() == 30 * 3 * 2 + 14 * 1 * 1
    # every dependency precedes its dependent
    seen = set()
    for job in plan.jobs.values():
        assert all(d in seen for d in job.deps), job
        seen.add(job.key)


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
    assert any("random-init floor" in what and "only `linear`" in why for what, why in plan.pruned)


def test_quickstart_plan_is_within_budget():
    plan = make_plan(load_spec(ROOT / "configs" / "quickstart.yaml"))
    counts = plan.counts()
    # 4 pre-trainings + the floor, linear on 11 sets; fine-tuning from the 4 on 2 sets, one seed
    assert counts["pretrain"] == 4 and counts["eval"] == 5 * 11 + 4 * 2
    assert plan.planned_rows() == 5 * 11 * 5 * 3 + 4 * 2


def test_methods_settings_and_grid_epochs_reach_the_pretraining_jobs():
    data = _tiny()
    data["pretrain"]["grids"].append({"sources": ["shutterstock"], "sizes": [300], "methods": ["clip", "simclr"],
                                      "epochs": 3})
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
