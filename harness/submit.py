"""Cluster submission: one spec sent to a Ray cluster through the Ray Jobs API, then followed.

``tbench submit SPEC --address http://HEAD:8265`` packs the project directory (outputs, virtual
environments, caches and version control left out) as the job's ``working_dir`` and runs
``python -m harness.cli run SPEC --address auto`` on the cluster, where the cluster's Python
already has the project's dependencies. Nothing is installed at run time unless asked for
(``--pip``, or a runtime-environment YAML with ``pip``/``conda``). ``tbench status|logs|stop|jobs``
follow submissions through the same API.

This module holds the logic (no command-line parsing): building the runtime environment and the
entrypoint, checking the upload's size, summarising the plan's resource asks, and thin wrappers
over :class:`ray.job_submission.JobSubmissionClient` that turn connection failures into one
clear message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Never uploaded: outputs, environments, version control, caches, build products, checkpoints.
# Patterns are .gitignore-style (what Ray's runtime_env "excludes" takes), relative to the root.
DEFAULT_EXCLUDES = [
    ".git/",
    ".venv/",
    "venv/",
    ".env",
    "tbench-out/",
    "tbench-data/",
    ".tbench-submit/",
    "__pycache__/",
    "*.pyc",
    "*.pyo",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".ipynb_checkpoints/",
    "*.egg-info/",
    "build/",
    "dist/",
    ".gl/",
    ".whl/",
    "node_modules/",
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.safetensors",
    "*.tar",
    "*.parquet",
    "*.npz",
    "*.zip",
    "*.tar.gz",
]
# A working dir above this is refused (Ray's own hard limit is the GCS message size, 512 MiB;
# a project this size that is not code means outputs were left in the tree).
MAX_UPLOAD_BYTES = 100 * 2**20
WARN_UPLOAD_BYTES = 20 * 2**20
# The spec travels in this variable when it lives outside the working dir.
SPEC_ENV = "TBENCH_SUBMIT_SPEC_B64"
SPEC_DIR = ".tbench-submit"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CONNECT_TIMEOUT_S = 15.0
START_HEAD_HINT = (
    "start a head there with `ray start --head --dashboard-host 0.0.0.0` "
    "(the Jobs API listens on the dashboard port, 8265 by default), "
    "or pass --address / set RAY_ADDRESS"
)


class SubmitError(Exception):
    """A problem the user can fix; the message says how."""


# ----------------------------------------------------------------------------- addresses


def default_address() -> str:
    """``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS`` when it is an http(s) URL, else the local head."""
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        v = os.environ.get(var, "").strip()
        if v and (var == "RAY_API_SERVER_ADDRESS" or v.startswith(("http://", "https://"))):
            return v
    return DEFAULT_ADDRESS


def normalize_address(address: str | None) -> str:
    """The dashboard URL for ``address`` (``HEAD:8265`` gets ``http://``; no trailing slash)."""
    a = (address or default_address()).strip().rstrip("/")
    if "://" not in a:
        a = "http://" + a
    return a


def is_loopback(address: str) -> bool:
    host = (urlsplit(normalize_address(address)).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def submission_id_for(spec_name: str, now: datetime | None = None) -> str:
    """A readable, unique id: ``tbench-<spec>-<UTC yyyymmdd-hhmmss>-<4 hex>``."""
    now = now or datetime.now(UTC)
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in spec_name).strip("-") or "spec"
    return f"tbench-{safe}-{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# ----------------------------------------------------------------------------- the upload


def project_root(working_dir: str | Path | None = None) -> Path:
    """The directory shipped as the job's working dir: it must hold the ``harness`` package."""
    root = Path(working_dir).expanduser().resolve() if working_dir else PROJECT_ROOT
    if not (root / "harness" / "cli.py").is_file():
        raise SubmitError(
            f"{root} is not the transfer-bench project (no harness/cli.py there); run from a "
            "checkout of the project or pass --working-dir"
        )
    return root


def _ignore_matchers(root: Path, excludes: list[str]) -> list[Callable[[str], bool]]:
    """Matchers over paths relative to ``root``: our excludes, and .gitignore/.rayignore at the root
    (Ray honours those too, unless RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1)."""
    try:
        from ray._private.thirdparty.pathspec import PathSpec
    except ImportError:  # pragma: no cover - Ray moved its vendored copy: fall back to fnmatch
        PathSpec = None
    patterns = [list(excludes)]
    for name in (".gitignore", ".rayignore"):
        if name == ".gitignore" and os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") == "1":
            continue
        f = root / name
        if f.is_file():
            patterns.append(f.read_text().splitlines())
    if PathSpec is not None:
        specs = [PathSpec.from_lines("gitwildmatch", p) for p in patterns]
        return [s.match_file for s in specs]
    import fnmatch

    flat = [p.strip().rstrip("/") for ps in patterns for p in ps if p.strip() and not p.startswith("#")]
    return [lambda rel: any(fnmatch.fnmatch(part, p) for part in Path(rel).parts for p in flat)]


@dataclass
class Upload:
    root: Path
    files: int = 0
    bytes: int = 0
    largest: list[tuple[int, str]] = field(default_factory=list)  # (bytes, relative path), biggest first

    def describe(self) -> str:
        return f"{self.files} files, {_human(self.bytes)} from {self.root}"


def measure_upload(root: Path, excludes: list[str]) -> Upload:
    """What Ray would pack from ``root`` with ``excludes``: file count and bytes (before zipping)."""
    matchers = _ignore_matchers(root, excludes)
    up = Upload(root)
    sizes: list[tuple[int, str]] = []

    def excluded(rel: str) -> bool:
        return any(m(rel) for m in matchers)

    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        keep = []
        for d in sorted(dirnames):
            rel = d if rel_dir == "." else f"{rel_dir}/{d}"
            if not excluded(rel) and not excluded(rel + "/") and not os.path.islink(os.path.join(dirpath, d)):
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = f if rel_dir == "." else f"{rel_dir}/{f}"
            if excluded(rel):
                continue
            try:
                n = os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
            up.files += 1
            up.bytes += n
            sizes.append((n, rel))
    up.largest = sorted(sizes, reverse=True)[:5]
    return up


def check_upload(up: Upload, limit: int = MAX_UPLOAD_BYTES) -> str | None:
    """Refuse an upload over ``limit``; return a warning for a large one (else None)."""
    big = ", ".join(f"{rel} ({_human(n)})" for n, rel in up.largest)
    if up.bytes > limit:
        raise SubmitError(
            f"the working dir to upload is {_human(up.bytes)} ({up.files} files), over the "
            f"{_human(limit)} limit; largest: {big}. Leave outputs out of the project tree, or "
            "exclude them with --exclude PATTERN or a .rayignore file"
        )
    if up.bytes > WARN_UPLOAD_BYTES:
        return f"the upload is {_human(up.bytes)}; largest files: {big}"
    return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# ----------------------------------------------------------------------------- the submission


@dataclass
class Submission:
    """Everything a submission sends: built without contacting anything (what --dry-run prints)."""

    address: str
    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    upload: Upload
    spec_name: str
    workdir: str | None
    store: str | None
    notes: list[str] = field(default_factory=list)

    def shown_runtime_env(self) -> dict[str, Any]:
        """The runtime env with the inlined spec abbreviated (for printing)."""
        env = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.runtime_env.items()}
        ev = env.get("env_vars", {})
        if SPEC_ENV in ev:
            ev[SPEC_ENV] = f"<the spec, base64, {len(ev[SPEC_ENV])} chars>"
        return env


def _rel_inside(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def build_submission(
    spec_path: str | Path,
    spec,
    *,
    address: str | None = None,
    workdir: str | None = None,
    store: str | None = None,
    working_dir: str | Path | None = None,
    pip: Iterable[str] = (),
    env: dict[str, str] | None = None,
    runtime_env_file: str | Path | None = None,
    extra_excludes: Iterable[str] = (),
    submission_id: str | None = None,
    python: str = "python",
    cwd: Path | None = None,
) -> Submission:
    """The submission for a validated ``spec`` read from ``spec_path`` (nothing is contacted).

    ``workdir``/``store`` are passed to ``tbench run`` on the cluster; they should be shared
    storage (a file system every node mounts, or object storage). Without them, a loopback
    cluster gets the paths ``tbench run`` would use from ``cwd``; a remote one the spec's own
    (relative paths land in the job's temporary working dir on the head node: a warning says so).
    """
    addr = normalize_address(address)
    root = project_root(working_dir)
    cwd = Path(cwd or Path.cwd())
    spec_file = Path(spec_path).expanduser()
    notes: list[str] = []
    runtime_env, env_vars = _runtime_env(
        root, DEFAULT_EXCLUDES + [e for e in extra_excludes if e], runtime_env_file, env, pip
    )
    excludes = runtime_env["excludes"]
    rel, cmd_prefix = _place_spec(spec_file, spec, root, excludes, python, env_vars, notes)
    if workdir is None or store is None:
        workdir, store = _default_paths(spec, addr, cwd, workdir, store, notes)

    args = [python, "-m", "harness.cli", "run", rel, "--address", "auto", "--no-progress"]
    if workdir is not None:
        args += ["--workdir", str(workdir)]
    if store is not None:
        args += ["--store", str(store)]
    entrypoint = cmd_prefix + " ".join(shlex.quote(a) for a in args)
    runtime_env["env_vars"] = env_vars
    upload = _upload(root, runtime_env, excludes, notes)
    sid = submission_id or submission_id_for(spec.name)
    from harness.runner import code_version

    # The uploaded copy has no .git: the commit (and '+dirty') is taken here and sent along.
    version = code_version()
    env_vars.setdefault("TBENCH_CODE_VERSION", version)
    metadata = {
        "tbench_spec": spec.name,
        "tbench_spec_path": str(spec_file),
        "tbench_code_version": version,
        "tbench_workdir": str(workdir or ""),
        "tbench_store": str(store or ""),
    }
    return Submission(
        addr,
        sid,
        entrypoint,
        runtime_env,
        metadata,
        upload,
        spec.name,
        None if workdir is None else str(workdir),
        None if store is None else str(store),
        notes,
    )


def _runtime_env(
    root: Path, excludes: list[str], runtime_env_file: str | Path | None, env: dict[str, str] | None, pip: Iterable[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The job's runtime env (working dir, excludes, --runtime-env merged, pip) and its env vars."""
    env_vars = {
        "PYTHONUNBUFFERED": "1",
        # A Ray Train run may wait for its workers' resources (busy CPUs/GPUs, or an autoscaler
        # adding nodes): let it wait rather than restart its worker group every minute.
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "3600",
    }
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": excludes}
    if runtime_env_file is not None:
        runtime_env = _merge_runtime_env(runtime_env, _read_runtime_env(runtime_env_file))
    env_vars.update(runtime_env.pop("env_vars", {}) or {})
    env_vars.update(env or {})
    pip = [p for p in pip if p]
    if pip:
        have = runtime_env.get("pip") or []
        if isinstance(have, dict):
            have = dict(have, packages=list(have.get("packages", [])) + pip)
        else:
            have = list(have) + pip
        runtime_env["pip"] = have
    return runtime_env, env_vars


def _place_spec(
    spec_file: Path, spec, root: Path, excludes: list[str], python: str, env_vars: dict[str, str], notes: list[str]
) -> tuple[str, str]:
    """The spec's path on the cluster and the command that writes it there first (or "").

    By its path inside the working dir, else shipped inline (in ``env_vars``) and written out first."""
    matchers = _ignore_matchers(root, excludes)
    rel = _rel_inside(spec_file, root)
    cmd_prefix = ""
    if rel is None or any(m(rel) for m in matchers):
        text = spec_file.read_bytes()
        digest = hashlib.sha256(text).hexdigest()[:12]
        rel = f"{SPEC_DIR}/{spec.name}-{digest}.yaml"
        env_vars[SPEC_ENV] = base64.b64encode(text).decode()
        cmd_prefix = f"{python} -m harness.submit write-spec {shlex.quote(rel)} && "
        notes.append(
            f"the spec is outside the uploaded project; it travels inline and is written to {rel} on the cluster"
        )
    return rel, cmd_prefix


def _default_paths(
    spec, addr: str, cwd: Path, workdir: str | None, store: str | None, notes: list[str]
) -> tuple[str | None, str | None]:
    """Workdir and store where not given: a loopback cluster's from ``cwd``; a remote one keeps the
    spec's own, with a note when they are relative."""
    relative = [
        w
        for w, given in (("workdir", workdir), ("store", store))
        if given is None and not Path(getattr(spec, w).format(name=spec.name)).is_absolute()
    ]
    if is_loopback(addr):
        workdir = workdir or str(spec.path("workdir", cwd).absolute())
        store = store or str(spec.path("store", cwd).absolute())
    elif relative:
        notes.append(
            f"the spec's {' and '.join(relative)} {'is' if len(relative) == 1 else 'are'} relative: "
            "on the cluster that is the job's temporary working dir on the head node, which workers "
            "do not share and which is deleted with the session; pass --workdir and --store on "
            "shared storage (a file system mounted on every node, or s3://...)"
        )
    return workdir, store


def _upload(root: Path, runtime_env: dict[str, Any], excludes: list[str], notes: list[str]) -> Upload:
    """What will be uploaded (nothing for a packaged working_dir URI), with a note if it is large."""
    if "://" in str(runtime_env.get("working_dir", "")):  # a packaged URI from --runtime-env: nothing to upload
        notes.append(f"working_dir {runtime_env['working_dir']} is used as given (nothing uploaded from here)")
        return Upload(root)
    upload = measure_upload(root, excludes)
    warning = check_upload(upload)
    if warning:
        notes.append(warning)
    return upload


def _read_runtime_env(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SubmitError(f"cannot read the runtime env {p}: {e}") from None
    if not isinstance(data, dict):
        raise SubmitError(f"{p}: a runtime env is a mapping (working_dir, excludes, env_vars, pip, ...)")
    return data.get("runtime_env", data) if isinstance(data.get("runtime_env"), dict) else data


def _merge_runtime_env(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if k == "excludes":
            out["excludes"] = list(out.get("excludes", [])) + [e for e in (v or []) if e not in out.get("excludes", [])]
        elif k == "env_vars":
            out["env_vars"] = {**(out.get("env_vars") or {}), **{str(a): str(b) for a, b in (v or {}).items()}}
        elif k == "working_dir":
            out[k] = str(Path(v).expanduser().resolve()) if "://" not in str(v) else v
        else:
            out[k] = v
    return out


def write_spec_from_env(rel: str) -> Path:
    """On the cluster: write the inlined spec to ``rel`` (under the job's working dir), atomically."""
    data = os.environ.get(SPEC_ENV)
    if not data:
        raise SubmitError(f"${SPEC_ENV} is not set: nothing to write")
    path = Path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(base64.b64decode(data))
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- the plan's asks


def resource_asks(plan) -> list[dict[str, Any]]:
    """Per job kind: jobs, result rows, what one job asks Ray for, and the total if all ran at once."""
    from harness.plan import KINDS

    out = []
    for kind in KINDS:
        jobs = plan.of_kind(kind)
        if not jobs:
            continue
        asks = sorted({_ask(kind, j.resources) for j in jobs})
        if kind == "pretrain":
            cpus = sum(j.resources.get("num_workers", 1) * j.resources.get("cpus_per_worker", 1) for j in jobs)
            gpus = sum(j.resources.get("num_workers", 1) * j.resources.get("gpus_per_worker", 0) for j in jobs)
        else:
            cpus = sum(j.resources.get("num_cpus", 1) for j in jobs)
            gpus = sum(j.resources.get("num_gpus", 0) for j in jobs)
        out.append(
            {
                "kind": kind,
                "jobs": len(jobs),
                "rows": sum(j.rows for j in jobs),
                "per_job": "; ".join(asks),
                "all_at_once": f"{cpus:g} CPU" + (f", {gpus:g} GPU" if gpus else ""),
            }
        )
    return out


def gpu_note(plan) -> str | None:
    """A reminder when a spec asks for no GPU at all (it then runs on CPUs, even on a GPU cluster)."""
    r = plan.spec.resources
    if r.pretrain.gpus_per_worker or r.eval.num_gpus or r.view.num_gpus:
        return None
    return (
        "this spec asks for no GPU: on a GPU cluster set resources.pretrain.gpus_per_worker (GPUs per Ray Train "
        "worker) and resources.eval.num_gpus (a fraction of a GPU per evaluation task)"
    )


def _ask(kind: str, r: dict[str, Any]) -> str:
    if kind == "pretrain":
        w, c, g = r.get("num_workers", 1), r.get("cpus_per_worker", 1), r.get("gpus_per_worker", 0)
        s = f"{w} Ray Train worker{'s' if w != 1 else ''} x ({c:g} CPU, {g:g} GPU)"
        if r.get("loader_workers"):
            s += f", {r['loader_workers']} loader processes per worker"
        return s
    s = f"{r.get('num_cpus', 1):g} CPU, {r.get('num_gpus', 0):g} GPU per task"
    if kind == "view" and r.get("engine"):
        s += f" (engine {r['engine']})"
    return s


# ----------------------------------------------------------------------------- the Jobs API


def connect(address: str | None = None):
    """A :class:`JobSubmissionClient` for ``address``, or :class:`SubmitError` naming it and how to start a head."""
    addr = normalize_address(address)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SubmitError(f"the Ray Jobs API is not importable ({e}); install ray[default]") from None
    # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is given; the address
    # resolved here (from --address, else those variables) is the one meant.
    import socket

    _quiet_ray()
    saved = {v: os.environ.pop(v) for v in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if v in os.environ}
    # Ray's client sets no timeout: a host that drops packets would hang the first request for
    # minutes. Bound the connection check (only while the client is made).
    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(CONNECT_TIMEOUT_S)
    try:
        return JobSubmissionClient(addr)
    except (ConnectionError, OSError) as e:
        raise SubmitError(f"cannot reach the Ray Jobs API at {addr} ({_reason(e)}); {START_HEAD_HINT}") from None
    except Exception as e:  # requests' errors, version checks, auth
        if "404" in str(e):
            raise SubmitError(
                f"cannot reach the Ray Jobs API at {addr}: something answers there but it is not a "
                f"Ray dashboard (HTTP 404 on /api/version); {START_HEAD_HINT}"
            ) from None
        raise SubmitError(f"cannot use the Ray Jobs API at {addr}: {_reason(e)}; {START_HEAD_HINT}") from None
    finally:
        socket.setdefaulttimeout(timeout)
        os.environ.update(saved)


def _quiet_ray() -> None:
    """Ray's client logs every packaging step at INFO (and WARNING for its default excludes);
    keep them for ``tbench -v``."""
    import logging

    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        # The two SDK modules set INFO on their own loggers; the rest inherit from "ray".
        for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


def _call(fn: Callable, address: str, job_id: str | None = None):
    try:
        return fn()
    except RuntimeError as e:
        msg = str(e)
        if job_id is not None and ("404" in msg or "does not exist" in msg):
            raise SubmitError(f"no job {job_id!r} at {address}; `tbench jobs --address {address}` lists them") from None
        raise SubmitError(f"the Ray Jobs API at {address} answered: {_reason(e)}") from None
    except (ConnectionError, OSError) as e:
        raise SubmitError(f"lost the Ray Jobs API at {address} ({_reason(e)}); {START_HEAD_HINT}") from None


def submit(sub: Submission, client=None) -> str:
    client = client or connect(sub.address)
    return _call(
        lambda: client.submit_job(
            entrypoint=sub.entrypoint,
            runtime_env=sub.runtime_env,
            submission_id=sub.submission_id,
            metadata=sub.metadata,
        ),
        sub.address,
    )


def job_info(address: str | None, job_id: str, client=None):
    addr = normalize_address(address)
    client = client or connect(addr)
    return _call(lambda: client.get_job_info(job_id), addr, job_id)


def list_jobs(address: str | None, client=None) -> list:
    """Every job the cluster knows, newest first."""
    addr = normalize_address(address)
    client = client or connect(addr)
    jobs = _call(client.list_jobs, addr)
    return sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)


def stop(address: str | None, job_id: str, *, wait_s: float = 30.0, client=None) -> tuple[bool, str]:
    """Ask the job to stop; wait up to ``wait_s`` for a terminal status. Returns (stop sent, status)."""
    import time

    addr = normalize_address(address)
    client = client or connect(addr)
    sent = _call(lambda: client.stop_job(job_id), addr, job_id)
    deadline = time.monotonic() + wait_s
    status = status_name(_call(lambda: client.get_job_status(job_id), addr, job_id))
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = status_name(_call(lambda: client.get_job_status(job_id), addr, job_id))
    return bool(sent), status


def logs(address: str | None, job_id: str, client=None) -> str:
    addr = normalize_address(address)
    client = client or connect(addr)
    return _call(lambda: client.get_job_logs(job_id), addr, job_id)


def follow(address: str | None, job_id: str, write: Callable[[str], Any], client=None) -> str:
    """Stream the job's logs to ``write`` until the job ends; return its final status.

    ``tail_job_logs`` is an async iterator over a websocket: it is driven by one event loop
    (``asyncio.run``), which Ctrl-C cancels cleanly (the job itself goes on).
    """
    addr = normalize_address(address)
    client = client or connect(addr)
    _call(lambda: client.get_job_status(job_id), addr, job_id)  # an unknown id fails here, clearly

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(_tail())
    except RuntimeError as e:  # the stream closed before the job ended (head restarted, network)
        status = status_name(_call(lambda: client.get_job_status(job_id), addr, job_id))
        if status not in TERMINAL:
            raise SubmitError(
                f"the log stream of {job_id} at {addr} broke ({_reason(e)}); the job is {status}: "
                f"run `tbench logs {job_id} --follow --address {addr}` again"
            ) from None
    except Exception as e:  # aiohttp's connection errors
        if isinstance(e, SubmitError):
            raise
        raise SubmitError(f"lost the log stream of {job_id} at {addr} ({_reason(e)}); {START_HEAD_HINT}") from None
    # The stream ends when the job does; its status may take a moment to settle.
    import time

    status = status_name(_call(lambda: client.get_job_status(job_id), addr, job_id))
    deadline = time.monotonic() + 10
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.25)
        status = status_name(_call(lambda: client.get_job_status(job_id), addr, job_id))
    return status


def status_name(status: Any) -> str:
    """``JobStatus.SUCCEEDED`` -> ``SUCCEEDED`` (the enum is a str subclass in recent Ray)."""
    return str(getattr(status, "value", status))


def fmt_time(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms:
        return ""
    end = end_ms or datetime.now(UTC).timestamp() * 1000
    s = max(0, int((end - start_ms) / 1000))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.submit write-spec PATH``: the first half of an inlined spec's entrypoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "write-spec":
        print("usage: python -m harness.submit write-spec PATH", file=sys.stderr)
        return 2
    try:
        path = write_spec_from_env(argv[1])
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"spec written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
