"""The planner's output, pinned: every job of every shipped spec (configs/*.yaml, tests/spec_example.yaml, and the
example with two existing models) keeps its kind, key, dependencies, coordinates, config, resources and row count,
in the same order, and every spec prunes the same combinations. A refactor of the planner must keep this green:
keys name finished work in old workdirs and rows in old stores.

After a deliberate change of the plan (a new key version, a new coordinate), regenerate the snapshot with
``.venv/bin/python tests/test_plan_keys.py --write`` and say why in the commit.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "tests" / "data" / "plan_snapshot.json.gz"
SPECS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml")) + ["tests/spec_example.yaml"]
# open_clip pretrained tags: planned without reading a file (their sha256 is None), so the key is machine-independent
MODELS = {
    "oc_tag": {
        "framework": "open_clip",
        "arch": "ViT-B-32-quickgelu",
        "weights": "openai",
        "describes": {"source": "wit", "method": "clip", "pretrain_size": 400_000_000},
    },
    "oc_rn50": {"framework": "open_clip", "arch": "RN50", "weights": "yfcc15m", "image_size": 224},
}
WITH_MODELS = "tests/spec_example.yaml+models"


def _spec(name: str):
    from harness.spec import load_spec, parse_spec

    if name == WITH_MODELS:
        data = yaml.safe_load((ROOT / "tests" / "spec_example.yaml").read_text())
        data["models"] = MODELS
        return parse_spec(data, name)
    return load_spec(ROOT / name)


def _record(job) -> dict:
    rec = {
        "kind": job.kind,
        "key": job.key,
        "deps": list(job.deps),
        "coords": job.coords,
        "config": job.config,
        "resources": job.resources,
        "rows": job.rows,
    }
    return json.loads(json.dumps(rec, sort_keys=True))  # tuples as lists, as the snapshot holds them


def planned(name: str) -> dict:
    from harness.plan import make_plan

    plan = make_plan(_spec(name))
    return {"jobs": [_record(j) for j in plan.jobs.values()], "pruned": [list(p) for p in plan.pruned]}


def _first_difference(got: dict, want: dict) -> str:
    if len(got["jobs"]) != len(want["jobs"]):
        return f"{len(got['jobs'])} jobs planned, {len(want['jobs'])} in the snapshot"
    for i, (g, w) in enumerate(zip(got["jobs"], want["jobs"])):
        for field in w:
            if g.get(field) != w[field]:
                return f"job {i} ({w['kind']} {w['key'][:12]}): {field} is {g.get(field)!r}, snapshot {w[field]!r}"
    return f"pruned: {got['pruned']!r} != {want['pruned']!r}"


@pytest.fixture(scope="module")
def snapshot() -> dict:
    with gzip.open(SNAPSHOT, "rt") as f:
        return json.load(f)


def test_snapshot_covers_every_shipped_spec_and_every_job_kind(snapshot):
    from harness.plan import KINDS

    assert sorted(snapshot) == sorted(SPECS + [WITH_MODELS])
    assert {j["kind"] for s in snapshot.values() for j in s["jobs"]} == set(KINDS)


@pytest.mark.parametrize("name", SPECS + [WITH_MODELS])
def test_plan_matches_snapshot(name, snapshot):
    got, want = planned(name), snapshot[name]
    assert got == want, f"{name}: {_first_difference(got, want)}"


def test_every_job_kind_has_an_executor_and_a_cost_function():
    """The planner's kinds, the executors' dispatch and the estimate's cost functions name the same kinds."""
    from harness.estimate import COSTS
    from harness.executors import EXECUTORS
    from harness.plan import KINDS

    assert EXECUTORS.names() == sorted(KINDS)
    assert COSTS.names() == sorted(KINDS)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_plan_keys.py --write   (regenerates tests/data/plan_snapshot.json.gz)")
    sys.path.insert(0, str(ROOT))
    data = {name: planned(name) for name in SPECS + [WITH_MODELS]}
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(SNAPSHOT, "wb", mtime=0) as f:
        f.write(json.dumps(data, sort_keys=True, indent=0).encode())
    print(f"wrote {SNAPSHOT}: " + ", ".join(f"{n} {len(d['jobs'])} jobs" for n, d in data.items()))
