from pathlib import Path

import pytest
import yaml

from harness.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent


def _quickstart() -> dict:
    return yaml.safe_load((ROOT / "tests" / "spec_example.yaml").read_text())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate(path):
    spec = load_spec(path)
    assert spec.name


def _errors(data) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, "test.yaml")
    return info.value.errors


def test_unknown_source_names_field_and_valid_choices():
    data = _quickstart()
    data["pretrain"]["grids"][0]["sources"] = ["laoin"]
    ((path, msg),) = _errors(data)
    assert "pretrain.grids.0.sources" in path + msg
    assert "laoin" in msg and "laion" in msg and "imagenet" in msg


def test_negative_shots_and_typo_reported_together():
    data = _quickstart()
    data["downstream"]["protocols"][0]["shots"] = [5, -1]
    data["pretrain"]["epocs"] = 3
    errors = dict(_errors(data))
    assert any("downstream.protocols.0.shots" in p for p in errors), errors
    assert any("non-negative" in m for m in errors.values())
    typo = [m for p, m in errors.items() if p == "pretrain.epocs"]
    assert typo and "unknown field 'epocs'" in typo[0] and "epochs" in typo[0]


def test_unknown_set_protocol_and_method():
    data = _quickstart()
    data["downstream"]["sets"] = ["cifar10"]
    data["downstream"]["protocols"][0]["name"] = "linaer"
    data["pretrain"]["grids"][0]["methods"] = ["supervized"]
    errors = _errors(data)
    text = "\n".join(f"{p}: {m}" for p, m in errors)
    assert "downstream.sets" in text and "cifar100" in text
    assert "downstream.protocols.0.name" in text and "'linear'" in text
    assert "pretrain.grids.0.methods" in text and "supervised" in text


def test_zero_shots_only_for_zeroshot_and_noise_range():
    data = _quickstart()
    data["downstream"]["protocols"][0]["shots"] = [0, 5]
    data["pretrain"]["grids"][0]["label_noise"] = [1.5]
    text = str(pytest.raises(SpecError, parse_spec, data).value)
    assert "zero-shot" in text and "label_noise" in text


def test_checkpoint_epochs_must_be_saved():
    data = _quickstart()
    data["downstream"]["checkpoint_epochs"] = [1]
    text = str(pytest.raises(SpecError, parse_spec, data).value)
    assert "not saved by pre-training" in text


def test_yaml_errors_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert "not valid YAML" in str(pytest.raises(SpecError, load_spec, bad).value)
    assert "no such spec file" in str(pytest.raises(SpecError, load_spec, tmp_path / "nope.yaml").value)
    bad.write_text("- a list\n")
    assert "mapping" in str(pytest.raises(SpecError, load_spec, bad).value)


def test_invalid_spec_does_no_work(tmp_path, run_tbench):
    data = _quickstart()
    data["pretrain"]["grids"][0]["sources"] = ["nope"]
    data["downstream"]["protocols"][0]["shots"] = [-3]
    data["workdir"] = str(tmp_path / "work")
    data["store"] = str(tmp_path / "store")
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(data))
    for cmd in ("plan", "run"):
        proc = run_tbench(cmd, str(spec))
        assert proc.returncode == 2, proc.stderr
        assert "pretrain.grids.0.sources" in proc.stderr and "downstream.protocols.0.shots" in proc.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "store").exists()


def test_method_args_are_checked_against_each_method():
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data["pretrain"]["method_args"] = {"simclr": {"temprature": 0.1}, "clipp": {}}
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    text = str(err.value)
    assert "pretrain.method_args" in text and "temperature" in text and "clipp" in text
    data["pretrain"]["method_args"] = {"clip": {"model": "ViT-B-32"}}
    data["pretrain"]["grids"][0]["epochs"] = 1
    data["pretrain"]["checkpoint_epochs"] = [2]
    with pytest.raises(SpecError, match=r"grids\.0\.epochs"):
        parse_spec(data)


def test_a_block_without_curation_needs_none_declared():
    """The default curation of a block is `none`: a spec whose `curation:` drops it names the
    blocks that rely on it (this was a KeyError in the planner)."""
    data = _quickstart()
    del data["curation"]["none"]
    errors = _errors(data)
    paths = [p for p, _ in errors]
    defaults = [f"pretrain.grids.{i}.curation" for i, g in enumerate(data["pretrain"]["grids"]) if "curation" not in g]
    assert paths == defaults
    assert all("'none'" in m and "default" in m and "clip_top50" in m and "none: []" in m for _, m in errors)
    for g in data["pretrain"]["grids"]:
        g.setdefault("curation", ["strict"])
    assert parse_spec(data).pretrain.grids[0].curation == ["strict"]


def _budget_block(**kw) -> dict:
    data = _quickstart()
    data["pretrain"]["grids"].append({"sources": ["laion"], "sizes": [300, 3000], **kw})
    return data


@pytest.mark.parametrize(
    "kw, field, words",
    [
        ({"samples_seen": 15000, "epochs": 4}, "pretrain.grids.7.samples_seen", "epochs or samples_seen, not both"),
        ({"samples_seen": 0}, "pretrain.grids.7.samples_seen", "greater than or equal to 1"),
        ({"samples_seen": -30}, "pretrain.grids.7.samples_seen", "greater than or equal to 1"),
        ({"samples_seen": 1500.5}, "pretrain.grids.7.samples_seen", "valid integer"),
        ({"samples_seen": True}, "pretrain.grids.7.samples_seen", "valid integer"),
        ({"samples_seen": "lots"}, "pretrain.grids.7.samples_seen", "valid integer"),
    ],
)
def test_samples_seen_is_one_positive_integer_budget(kw, field, words):
    ((path, msg),) = _errors(_budget_block(**kw))
    assert path == field and words in msg, (path, msg)


def test_samples_seen_default_and_its_checkpoints():
    data = _budget_block(samples_seen=15000)
    spec = parse_spec(data)
    pt = spec.pretrain
    assert pt.budget(pt.grids[7]) == (None, 15000) and pt.budget(pt.grids[0]) == (5, None)
    # pretrain's default is either budget, not both; a block's own budget overrides it either way
    data["pretrain"]["samples_seen"] = 20000
    ((path, msg),) = _errors(data)
    assert path == "pretrain" and "samples_seen" in msg and "not both" in msg
    del data["pretrain"]["epochs"]
    pt = parse_spec(data).pretrain
    assert pt.budget(pt.grids[0]) == (None, 20000) and pt.budget(pt.grids[6]) == (8, None)
    assert pt.budget(pt.grids[7]) == (None, 15000)
    # checkpoints: whole epochs before the end of every run: 15000 samples at batch 32 are 469 steps,
    # 6 epochs of the 3000-sample view (93 steps each), more of smaller views
    for ckpt, ok in (([5], True), ([6], False), ("all", False), ("last", True)):
        data = _budget_block(samples_seen=15000, checkpoint_epochs=ckpt)
        if ok:
            assert parse_spec(data).eval_epochs(grid=parse_spec(data).pretrain.grids[7])[-1] == "last"
            continue
        ((path, msg),) = _errors(data)
        assert "grids.7.checkpoint_epochs" in msg, msg
        assert ("1..5" in msg) if ckpt == [6] else ("'all' needs a fixed number of epochs" in msg)
    data = _budget_block(samples_seen=15000)
    data["downstream"]["checkpoint_epochs"] = [5]
    text = str(pytest.raises(SpecError, parse_spec, data).value)
    assert "downstream.checkpoint_epochs" in text and "grids.7" in text and "own checkpoint_epochs" in text
