"""`tbench submit | status | logs | stop | jobs` against a real Ray head on the loopback address,
the dry run, the unreachable-address error, and the cluster configs in cluster/.

The head is started with `ray start --head` in its own session and temp dir (so `ray.init()`
elsewhere never finds it: Ray records the "current cluster" inside the temp dir) and is torn
down by signalling that session's processes and their descendants; `ray stop` is never used,
because it stops every Ray instance of the user on the machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_head import free_ports as _free_ports
from ray_head import head_env as _env

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Much smaller than configs/tiny.yaml: one world at scale 0.05, one pre-training run of one
# epoch, one downstream set, a linear probe at 1 shot and on full data, one seed: 5 jobs, 2 rows.
SPEC = {
    "name": "submit-test",
    "world": {"seed": 0, "scale": 0.05},
    "pretrain": {
        "backbone": "test_resnet",
        "epochs": 1,
        "batch_size": 32,
        "grids": [{"sources": ["imagenet"], "sizes": [100], "methods": ["supervised"]}],
    },
    "downstream": {
        "sets": ["digits"],
        "eval_seeds": [0],
        "random_init_floor": False,
        "protocols": [{"name": "linear", "shots": [1, "full"]}],
    },
    "resources": {"pretrain": {"num_workers": 1, "cpus_per_worker": 1}, "eval": {"num_cpus": 1}},
}
# Ray Train's preemption watcher and slow health checks cost seconds per run on 2 cores
# (harness.runner switches them off for a local Ray; on a cluster they stay on by default).
FAST_TRAIN = [
    "--env",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0",
    "--env",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5",
    "--env",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION=0",
]


def _write_spec(d: Path, **overrides) -> Path:
    spec = json.loads(json.dumps(SPEC))
    for k, v in overrides.items():
        spec[k] = v
    p = d / f"{spec['name']}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def _tbench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *map(str, args)]


def _tbench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_tbench_cmd(*args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- no cluster needed


def _cli(*args: str):
    """The real command in this process (no Ray is started: the Jobs API client only speaks HTTP)."""
    from typer.testing import CliRunner

    from harness.cli import app

    env = {"RAY_ADDRESS": None, "RAY_API_SERVER_ADDRESS": None, "COLUMNS": "200"}
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_submit_dry_run_prints_plan_asks_and_runtime_env(tmp_path):
    spec = _write_spec(
        tmp_path,
        resources={
            "pretrain": {"num_workers": 2, "cpus_per_worker": 4, "gpus_per_worker": 1},
            "eval": {"num_cpus": 2, "num_gpus": 0.25},
        },
    )
    closed = _free_ports(1)[0]  # nothing listens: a dry run must not try
    r = _cli(
        "submit",
        spec,
        "--address",
        f"http://127.0.0.1:{closed}",
        "--dry-run",
        "--store",
        "/shared/tbench/store",
        "--workdir",
        "/shared/tbench/work",
    )
    out = _flat(r.output)
    assert r.exit_code == 0, r.output
    assert "dry run: nothing was sent" in out and "(not contacted)" in out
    for kind, n in (("world", 1), ("view", 1), ("pretrain", 1), ("features", 1), ("eval", 1)):
        assert re.search(rf"│ {kind} +│ +{n} │", r.output), (kind, r.output)
    assert "2 Ray Train workers x (4 CPU, 1 GPU)" in out  # per pre-training run
    assert "2 CPU, 0.25 GPU per task" in out  # per evaluation / feature extraction
    assert re.search(r"submission id tbench-submit-test-\d{8}-\d{6}-[0-9a-f]{4}", out)
    assert "-m harness.cli run .tbench-submit/submit-test-" in out
    assert "--address auto --no-progress --workdir /shared/tbench/work --store /shared/tbench/store" in out
    env = json.loads(r.output[r.output.index("{", r.output.index("runtime env:")) : r.output.index("\n}\n") + 2])
    assert env["working_dir"] == str(ROOT)
    assert {".git/", ".venv/", "tbench-out/", "__pycache__/"} <= set(env["excludes"])
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1" and "pip" not in env  # nothing installed at run time
    m = re.search(r"upload (\d+) files, ([\d.]+) (B|KiB|MiB)", out)
    assert m and float(m.group(2)) * {"B": 1, "KiB": 2**10, "MiB": 2**20}[m.group(3)] < 8 * 2**20, out


def test_build_submission_upload_and_paths(tmp_path):
    from harness import submit as S
    from harness.spec import load_spec

    spec_path = _write_spec(tmp_path)
    s = load_spec(spec_path)
    # A loopback cluster shares this machine's disk: relative paths resolve as `tbench run` would here.
    sub = S.build_submission(
        spec_path, s, address="127.0.0.1:8265", cwd=tmp_path, pip=["rich"], env={"TBENCH_DATA": "/data"}
    )
    assert sub.address == "http://127.0.0.1:8265"
    assert f"--workdir {tmp_path}/tbench-out/submit-test/work" in sub.entrypoint
    assert sub.runtime_env["pip"] == ["rich"] and sub.runtime_env["env_vars"]["TBENCH_DATA"] == "/data"
    assert sub.upload.files > 20 and sub.upload.bytes < 8 * 2**20
    assert not any(rel.startswith((".venv/", ".git/", "tbench-out/")) for _, rel in sub.upload.largest)
    # The spec outside the project travels inline and is written back by the entrypoint's first step.
    rel = sub.entrypoint.split("write-spec ", 1)[1].split(" ", 1)[0]
    os.environ[S.SPEC_ENV] = sub.runtime_env["env_vars"][S.SPEC_ENV]
    try:
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            assert S.main(["write-spec", rel]) == 0
        finally:
            os.chdir(cwd)
    finally:
        del os.environ[S.SPEC_ENV]
    assert (tmp_path / rel).read_bytes() == spec_path.read_bytes()
    # A remote cluster with the spec's relative paths: a note says they would not be shared.
    remote = S.build_submission(
        ROOT / "configs" / "tiny.yaml", load_spec(ROOT / "configs" / "tiny.yaml"), address="http://head.example:8265"
    )
    assert remote.entrypoint.startswith("python -m harness.cli run configs/tiny.yaml --address auto")
    assert "--store" not in remote.entrypoint and any("shared storage" in n for n in remote.notes)
    assert S.SPEC_ENV not in remote.runtime_env["env_vars"]
    # The documented runtime-env YAML merges into the default.
    merged = S.build_submission(
        spec_path, s, address="127.0.0.1:8265", cwd=tmp_path, runtime_env_file=ROOT / "cluster" / "runtime_env.yaml"
    )
    assert merged.runtime_env["env_vars"]["TBENCH_DATA"] == "/mnt/tbench/data"
    assert merged.runtime_env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert {"*.png", ".venv/"} <= set(merged.runtime_env["excludes"]) and "pip" not in merged.runtime_env
    # Too large an upload is refused, naming the biggest files.
    with pytest.raises(S.SubmitError, match="over the .* limit; largest: big.bin"):
        S.check_upload(S.Upload(tmp_path, 1, 200 * 2**20, [(200 * 2**20, "big.bin")]))


def test_unreachable_address_names_it_and_how_to_start_a_head(tmp_path):
    port = _free_ports(1)[0]
    addr = f"http://127.0.0.1:{port}"
    for args in (
        ("jobs",),
        ("status", "tbench-x"),
        ("logs", "tbench-x", "--follow"),
        ("stop", "tbench-x"),
        ("submit", _write_spec(tmp_path)),
    ):
        t0 = time.perf_counter()
        r = _cli(*args, "--address", addr)
        out = _flat(r.output)
        assert r.exit_code == 2, (args, r.output)
        assert f"cannot reach the Ray Jobs API at {addr}" in out, out
        assert "ray start --head --dashboard-host 0.0.0.0" in out, out
        assert "Traceback" not in r.output
        assert time.perf_counter() - t0 < 30


def test_default_address_from_environment(monkeypatch):
    from harness import submit as S

    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert S.default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address is not the Jobs API
    assert S.default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265/")
    assert S.normalize_address(None) == "http://10.0.0.5:8265"
    assert S.normalize_address("head:8265") == "http://head:8265"
    assert S.is_loopback("http://localhost:8265") and not S.is_loopback("http://10.0.0.5:8265")
    assert re.fullmatch(r"tbench-my_spec-v2-\d{8}-\d{6}-[0-9a-f]{4}", S.submission_id_for("my_spec.v2"))


class _FakeClient:
    """The parts of JobSubmissionClient that `follow` uses: statuses in turn, an async log tail."""

    def __init__(self, statuses, chunks, break_after=None):
        self.statuses, self.chunks, self.break_after = list(statuses), chunks, break_after

    def get_job_status(self, job_id):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    async def tail_job_logs(self, job_id):
        import asyncio

        for i, c in enumerate(self.chunks):
            if self.break_after is not None and i == self.break_after:
                raise RuntimeError("Connection closed unexpectedly")
            await asyncio.sleep(0)
            yield c


def test_follow_streams_chunks_then_returns_the_final_status():
    from harness import submit as S

    got = []
    client = _FakeClient(["RUNNING", "RUNNING", "SUCCEEDED"], ["a\n", "b\n"])
    assert S.follow("http://127.0.0.1:1", "tbench-x", got.append, client=client) == "SUCCEEDED"
    assert got == ["a\n", "b\n"]
    # The stream breaks while the job still runs: a clear error that says how to resume following.
    client = _FakeClient(["RUNNING"], ["a\n", "b\n"], break_after=1)
    with pytest.raises(S.SubmitError, match="log stream of tbench-x .* broke .*the job is RUNNING: run `tbench logs"):
        S.follow("http://127.0.0.1:1", "tbench-x", lambda c: None, client=client)


# --------------------------------------------------------------------------- cluster/ configs


def test_cluster_configs_parse():
    up = yaml.safe_load((ROOT / "cluster" / "ray-up.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in up, key
    assert up["head_node_type"] in up["available_node_types"]
    assert up["provider"].get("type")
    workers = {k: v for k, v in up["available_node_types"].items() if k != up["head_node_type"]}
    assert workers and any(v.get("resources", {}).get("GPU") for v in workers.values())
    assert all(v.get("max_workers", 0) > v.get("min_workers", 0) for v in workers.values())  # autoscaling
    assert any("pip install" in c for c in up.get("setup_commands", []) + up.get("head_setup_commands", []))
    try:  # the schema `ray up` itself validates against
        import jsonschema
        import ray.autoscaler

        schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    except (ImportError, OSError):
        schema = None
    if schema is not None:
        jsonschema.validate(up, schema)

    docs = [d for d in yaml.safe_load_all((ROOT / "cluster" / "rayjob.yaml").read_text()) if d]
    job = next(d for d in docs if d.get("kind") == "RayJob")
    assert job["apiVersion"].startswith("ray.io/")
    assert "harness.cli run" in job["spec"]["entrypoint"] and "--address auto" in job["spec"]["entrypoint"]
    rc = job["spec"]["rayClusterSpec"]
    assert rc["headGroupSpec"] and rc["workerGroupSpecs"]
    limits = rc["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" in limits
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert isinstance(env, dict) and "excludes" in env


# --------------------------------------------------------------------------- a real head


@pytest.mark.slow
def test_submit_follow_status_jobs_stop_on_a_loopback_head(ray_head, tmp_path):
    from harness import submit as S
    from results.store import Store

    address, world = ray_head.dashboard, ray_head.world
    # The session's world, already on disk (as in test_curation): the job skips writing one.
    info = json.loads((world / "world.json").read_text())
    spec = _write_spec(tmp_path, world={"seed": info["seed"], "scale": info["scale"], "dir": str(world)})
    store, work = tmp_path / "store", tmp_path / "work"
    t0 = time.perf_counter()
    r = _cli("submit", spec, "--address", address, "--store", store, "--workdir", work, *FAST_TRAIN)
    assert r.exit_code == 0, r.output
    m = re.search(r"submitted (tbench-submit-test-\d{8}-\d{6}-[0-9a-f]{4}) to " + re.escape(address), r.output)
    assert m, r.output
    job = m.group(1)
    assert f"tbench logs {job} --follow --address {address}" in _flat(r.output)
    # Followed by the real command line in its own process, while the rest goes on here.
    follower = subprocess.Popen(
        _tbench_cmd("logs", job, "--follow", "--address", address),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # A second submission of the same spec (other paths), stopped as soon as it runs.
        r = _cli("submit", spec, "--address", address, "--store", tmp_path / "store2", "--workdir", tmp_path / "work2")
        assert r.exit_code == 0, r.output
        job2 = re.search(r"submitted (\S+) to ", r.output).group(1)
        assert job2 != job
        deadline = time.monotonic() + 60
        while S.status_name(S.job_info(address, job2).status) == "PENDING":
            assert time.monotonic() < deadline, "the second submission never started"
            time.sleep(0.25)
        r = _cli("stop", job2, "--address", address)
        assert r.exit_code == 0 and f"{job2}: stop sent; now STOPPED" in _flat(r.output), r.output
        r = _cli("status", job2, "--address", address)
        assert r.exit_code == 0 and f"{job2}: STOPPED" in r.output, r.output

        out, errs = follower.communicate(timeout=420)
    finally:
        if follower.poll() is None:
            follower.kill()
    print(f"submitted and followed to the end in {time.perf_counter() - t0:.1f}s")
    assert follower.returncode == 0, out[-4000:] + errs[-2000:]
    assert f"{job}: SUCCEEDED" in errs
    assert re.search(r"5 jobs planned, \d already finished, \d ran .*0 failed; 2 rows written", out), out[-4000:]

    r = _cli("status", job, "--address", address)
    assert r.exit_code == 0 and f"{job}: SUCCEEDED" in r.output, r.output
    assert "spec             submit-test" in r.output
    r = _cli("logs", job, "--address", address)
    assert r.exit_code == 0 and "2 rows written" in r.output, r.output
    r = _cli("jobs", "--address", address)
    assert r.exit_code == 0, r.output
    assert job in r.output and job2 in r.output
    assert r.output.index(job2) < r.output.index(job), "newest first"
    assert re.search(rf"{job} +│ SUCCEEDED +│ submit-test", r.output), r.output

    runs = Store(store).read("runs")
    assert len(runs) == 2 and set(runs["spec"]) == {"submit-test"} and set(runs["status"]) == {"ok"}
    assert sorted(runs["shots"].fillna(-1).astype(int)) == [-1, 1]  # 1 shot and full (null)
    assert (work / "pretrain").is_dir() and not (tmp_path / "store2" / "runs").exists()
