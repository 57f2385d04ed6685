"""A Ray head on the loopback address for the tests that need a real cluster (tests/conftest.py
makes it a session fixture, `ray_head`): `ray start --head` in a session and temp dir of its own,
so `ray.init()` elsewhere never finds it (Ray records the "current cluster" inside the temp dir),
torn down by signalling that session's processes and their descendants; `ray stop` is never
used, because it stops every Ray instance of the user on the machine."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def head_env() -> dict[str, str]:
    """The environment for the head and for drivers and `tbench` commands that talk to it."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # A job's entrypoint runs `python`: on this loopback cluster it must be this environment's.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", RAY_USAGE_STATS_ENABLED="0")
    return env


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class Head:
    dashboard: str  # http://127.0.0.1:PORT: the Jobs API (tbench submit --address)
    gcs: str  # 127.0.0.1:PORT: what a driver connects to (tbench run --address)
    world: Path  # the session's embedded world, built while the head boots


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) of every process, from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(d)] = (int(fields[1]), int(fields[2]))
    return out


def _group_and_descendants(pgid: int) -> set[int]:
    procs = _proc_table()
    keep = {p for p, (_, g) in procs.items() if g == pgid}
    grew = True
    while grew:
        grew = False
        for p, (pp, _) in procs.items():
            if pp in keep and p not in keep:
                keep.add(p)
                grew = True
    return keep - {os.getpid()}


def _kill_head(pgid: int, grace: float = 2.0) -> None:
    """End the head started in session ``pgid``: its daemons, the workers, job drivers and the
    drivers' watchers they started (workers and drivers run in process groups of their own)."""
    pids = _group_and_descendants(pgid)
    print(f"the head's processes used {_cpu_seconds(pids):.0f} CPU-seconds")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in list(pids):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pids.discard(p)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5)
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)}
        if not pids:
            return


def _cpu_seconds(pids: set[int]) -> float:
    """CPU time of ``pids`` and of their children that have exited (what `time` would show)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2 :].split()
        total += sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
    return total / tick


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rfind(")") + 2 :].split()[0]
    except OSError:
        return "Z"


def start_head(request):
    """A head on the loopback address: `ray start --head` in a session and temp dir of its own.

    While it boots, the session's world is built (or found built: earlier tests share it), so
    the two overlap; yields a :class:`Head`."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (what `ray start --include-dashboard true` needs)
    except ImportError as e:
        import pytest

        pytest.skip(
            f"the Ray dashboard, which serves the Jobs API, needs ray[default] ({e}): "
            "pip install 'ray[default,train,data]==2.58.0'"
        )
    # A short temp dir: Ray's unix sockets live under it (paths over 107 characters fail).
    temp = Path(tempfile.mkdtemp(prefix="tbr-", dir="/tmp"))
    gcs, dash, client, agent_http, agent_grpc, metrics, rt_agent, nm, om, dmetrics = free_ports(10)
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--include-dashboard",
        "true",
        "--num-cpus",
        "2",
        "--num-gpus",
        "0",
        "--temp-dir",
        str(temp),
        "--disable-usage-stats",
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent_http),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--metrics-export-port",
        str(metrics),
        "--runtime-env-agent-port",
        str(rt_agent),
        "--node-manager-port",
        str(nm),
        "--object-manager-port",
        str(om),
        "--object-store-memory",
        str(400 * 2**20),
    ]
    t0 = time.perf_counter()
    # The dashboard starts nine modules as processes, gives each 30 s and itself 60 s to come up:
    # too little on two busy cores (seen: "Module MetricsHead failed to start"). Its metrics port
    # is fixed by default (44227): another head on the machine would hold it.
    env = dict(
        head_env(),
        DASHBOARD_METRIC_PORT=str(dmetrics),
        RAY_DASHBOARD_STARTUP_TIMEOUT_S="240",
        RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT="180",
    )
    proc = subprocess.Popen(
        cmd, cwd=temp, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    pgid = proc.pid  # the head's daemons stay in this process group after `ray start` returns
    address = f"http://127.0.0.1:{dash}"
    try:
        world = request.getfixturevalue("world")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"ray start failed:\n{out[-3000:]}"
        deadline = time.monotonic() + 60
        while True:  # the Jobs API answers once the dashboard's job module is up
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the dashboard at {address} never answered:\n{out[-3000:]}"
            time.sleep(0.5)
        print(f"ray head (and the session world) up in {time.perf_counter() - t0:.1f}s at {address}")
        yield Head(address, f"127.0.0.1:{gcs}", world)
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_head(pgid)
        shutil.rmtree(temp, ignore_errors=True)
