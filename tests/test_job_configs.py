"""Typed job configs (harness.core.jobs): every config the planner writes for the shipped specs
(the pinned snapshot of tests/test_plan_keys.py) reads back into its kind's class and writes back
to exactly the same dict (no key added or lost: keys name finished work), and a config with a key
its kind does not know, or without a required one, is refused naming the kind and the key."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from harness.core.jobs import CONFIGS, JobConfigError, config_of

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "tests" / "data" / "plan_snapshot.json.gz"  # every shipped spec's plan (test_plan_keys.py)
with gzip.open(SNAPSHOT, "rt") as _f:
    SNAPSHOT_SPECS = sorted(json.load(_f))


@pytest.fixture(scope="module")
def snapshot() -> dict:
    with gzip.open(SNAPSHOT, "rt") as f:
        return json.load(f)


def _normal(config: dict) -> dict:
    return json.loads(json.dumps(config, sort_keys=True))  # tuples as lists, as the snapshot holds them


@pytest.mark.parametrize("name", SNAPSHOT_SPECS)
def test_every_snapshot_config_round_trips(name, snapshot):
    jobs = snapshot[name]["jobs"]
    assert jobs
    for job in jobs:
        typed = CONFIGS[job["kind"]].from_dict(job["config"])
        assert _normal(typed.to_dict()) == job["config"], f"{name}: {job['kind']} {job['key'][:12]}"
        assert CONFIGS[job["kind"]].from_dict(typed.to_dict()) == typed


def test_planned_configs_are_the_typed_configs_dicts():
    """The live plan (not only the snapshot): each job's dict is its typed config's to_dict()."""
    from harness.plan import make_plan
    from harness.spec import load_spec

    plan = make_plan(load_spec(ROOT / "configs" / "tiny.yaml"))
    kinds = set()
    for job in plan.jobs.values():
        typed = config_of(job)
        assert type(typed) is CONFIGS[job.kind]
        assert typed.to_dict() == job.config
        assert type(typed).from_dict(typed.to_dict()) == typed
        kinds.add(job.kind)
    assert {"world", "view", "pretrain", "features", "eval"} <= kinds


def test_optional_settings_stay_out_of_the_dict(snapshot):
    """A pre-training run without grad_accum/precision/decode has none of those keys, one with a
    samples_seen budget no `epochs` key: the keys of older runs stay."""
    pretrain = [j["config"] for s in snapshot.values() for j in s["jobs"] if j["kind"] == "pretrain"]
    plain = next(c for c in pretrain if "decode" not in c and "samples_seen" not in c)
    typed = CONFIGS["pretrain"].from_dict(plain)
    assert typed.decode is None and typed.samples_seen is None
    assert set(typed.to_dict()) == set(plain)
    optim = CONFIGS["pretrain"].NESTED["optim"]
    unset = optim(lr=1e-3, weight_decay=0.0, warmup_epochs=0.5, label_smoothing=0.0)
    assert "warmup_fraction" not in unset.to_dict()
    assert dataclasses.replace(unset, warmup_fraction=0.1).to_dict()["warmup_fraction"] == 0.1


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_unknown_and_missing_keys_name_the_kind_and_key(kind, snapshot):
    config = next(j["config"] for s in snapshot.values() for j in s["jobs"] if j["kind"] == kind)
    with pytest.raises(JobConfigError, match=rf"^{kind} job config: unknown key 'bogus_setting'"):
        CONFIGS[kind].from_dict({**config, "bogus_setting": 1})
    CONFIGS[kind].from_dict(config)  # the untouched config reads
    required = dataclasses.fields(CONFIGS[kind])[0].name
    with pytest.raises(JobConfigError, match=rf"^{kind} job config: missing key '{required}'"):
        CONFIGS[kind].from_dict({k: v for k, v in config.items() if k != required})


def test_a_nested_unknown_key_names_its_place():
    config = {"lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0.0, "label_smoothing": 0.0, "momentum": 0.9}
    with pytest.raises(JobConfigError, match="pretrain.optim job config: unknown key 'momentum'"):
        CONFIGS["pretrain"].NESTED["optim"].from_dict(config)


def test_a_job_of_an_unknown_kind_is_refused():
    from harness.plan import Job

    with pytest.raises(JobConfigError, match="job kind 'render'"):
        config_of(Job("render", "k", {}))


@pytest.mark.parametrize("alpha", [0.05, 0.01, None])
def test_the_start_test_level_survives_the_eval_key(alpha):
    """``start_alpha`` -> the eval job's ``selection`` setting -> the level the executor passes on."""
    from harness.core.jobs import selection_alpha, selection_setting

    assert selection_alpha(selection_setting(alpha)) == alpha
    with pytest.raises(ValueError, match="selection"):
        selection_alpha("strict")


def test_the_request_carries_the_start_test_level_into_the_recipe(tmp_path):
    from downstream.protocols import EvalRequest, _finetune_config

    req = EvalRequest("dtd", tmp_path, tmp_path / "c.pt", None, (None,), (0,), start_alpha=None)
    assert _finetune_config(req, 0).start_alpha is None
    assert _finetune_config(dataclasses.replace(req, start_alpha=0.01), 0).start_alpha == 0.01
