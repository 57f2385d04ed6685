"""The runner's scheduling decisions (harness.runner.Scheduler), without Ray: which job goes
when, which tasks it waits for, and evaluations of a mid-training checkpoint going as soon as the
checkpoint exists, while the run still trains."""

from __future__ import annotations

from harness.plan import make_plan
from harness.runner import Scheduler
from harness.spec import parse_spec

SPEC = {
    "name": "sched",
    "pretrain": {
        "backbone": "test_resnet",
        "epochs": 4,
        "checkpoint_epochs": [2],
        "grids": [{"sources": ["imagenet"], "sizes": [100], "methods": ["supervised"]}],
    },
    "downstream": {
        "sets": ["digits"],
        "eval_seeds": [0],
        "checkpoint_epochs": "all",
        "random_init_floor": False,
        "protocols": [{"name": "linear", "shots": [1, "full"]}],
    },
}


def _setup(ready: set[tuple[str, int]]):
    plan = make_plan(parse_spec(SPEC))
    todo = list(plan.jobs.values())
    sched = Scheduler(plan, todo, lambda run, epoch: (run, epoch) in ready)
    submitted: dict[str, list] = {}

    def submit(job, handles):
        submitted[job.key] = handles
        return f"task:{job.key}"

    (pre,) = plan.of_kind("pretrain")
    by = {(j.kind, j.config.get("epoch")): j for j in plan.jobs.values() if j.kind in ("features", "eval")}
    return plan, sched, submit, submitted, pre, by


def test_every_job_waits_for_its_inputs_tasks_and_mid_training_ones_for_their_checkpoint():
    ready: set[tuple[str, int]] = set()
    plan, sched, submit, submitted, pre, by = _setup(ready)
    world, view = plan.of_kind("world")[0], plan.of_kind("view")[0]

    assert sched.release(submit) == []
    # everything but the epoch-2 jobs goes at once, each waiting for its inputs' tasks
    assert set(submitted) == {j.key for j in plan.jobs.values()} - {by["features", 2].key, by["eval", 2].key}
    assert submitted[view.key] == [f"task:{world.key}"]
    assert submitted[pre.key] == [f"task:{view.key}"]
    assert submitted[by["eval", 4].key] == [f"task:{pre.key}", f"task:{world.key}", f"task:{by['features', 4].key}"]
    assert [j.key for j in sched.waiting] == [by["features", 2].key, by["eval", 2].key]

    # the epoch-2 checkpoint appears while the run trains on: its jobs go, not waiting for the run
    sched.release(submit)
    assert len(submitted) == len(plan.jobs) - 2
    ready.add((pre.key, 2))
    assert sched.release(submit) == []
    assert submitted[by["features", 2].key] == [f"task:{world.key}"]
    assert submitted[by["eval", 2].key] == [f"task:{world.key}", f"task:{by['features', 2].key}"]
    assert not sched.waiting and {k for k, _ in sched.early} == {by["features", 2].key, by["eval", 2].key}


def test_a_failed_run_gives_up_what_waited_on_its_checkpoint_unless_it_exists():
    ready: set[tuple[str, int]] = set()
    plan, sched, submit, submitted, pre, by = _setup(ready)
    sched.release(submit)
    sched.fail(pre.key, "RuntimeError: out of memory")
    given_up = sched.release(submit)
    assert [(j.key, e.startswith("input failed: pretrain") and "out of memory" in e) for j, e in given_up] == [
        (by["features", 2].key, True),
        (by["eval", 2].key, True),
    ]

    # had the checkpoint been written before the run failed, its evaluations would still run
    ready = {(pre.key, 2)}
    plan, sched, submit, submitted, pre, by = _setup(ready)
    world = plan.of_kind("world")[0]
    sched.release(submit)
    sched.fail(pre.key, "RuntimeError: out of memory")
    assert sched.release(submit) == [] and submitted[by["features", 2].key] == [f"task:{world.key}"]


def test_inputs_finished_before_the_run_are_not_waited_for():
    plan = make_plan(parse_spec(SPEC))
    (pre,) = plan.of_kind("pretrain")
    # a re-run after the pre-training finished: only its evaluation jobs are left
    todo = [j for j in plan.jobs.values() if j.kind in ("features", "eval")]
    sched = Scheduler(plan, todo, lambda run, epoch: False)
    submitted = {}

    def submit(job, handles):
        submitted[job.key] = handles
        return f"task:{job.key}"

    assert sched.release(submit) == []
    assert set(submitted) == {j.key for j in todo} and not sched.waiting and not sched.early
    assert all(f"task:{pre.key}" not in h for h in submitted.values())


def test_each_checkpoint_is_looked_for_once_per_pass():
    asked: list[tuple[str, int]] = []
    plan = make_plan(parse_spec(SPEC))
    sched = Scheduler(plan, list(plan.jobs.values()), lambda run, epoch: asked.append((run, epoch)) or False)
    sched.release(lambda job, handles: f"task:{job.key}")
    sched.release(lambda job, handles: f"task:{job.key}")
    (pre,) = plan.of_kind("pretrain")
    assert asked == [(pre.key, 2), (pre.key, 2)]  # two jobs wait on it, one look per pass
