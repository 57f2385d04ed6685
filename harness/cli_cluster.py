"""``tbench submit | status | logs | stop | jobs``: a spec on a Ray cluster through the Jobs API.

The commands are plain functions registered on the ``tbench`` app of :mod:`harness.cli` (which
imports this module once, at its end). The logic lives in :mod:`harness.submit`; Ray is only
imported when a command runs, so ``tbench --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
if not console.is_terminal:  # piped or logged: rich would assume 80 columns and cut the tables
    console = Console(width=140)
err = Console(stderr=True)

ADDRESS_HELP = (
    "The Ray dashboard (Jobs API) of the cluster's head, e.g. http://HEAD:8265 "
    "(default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS when it is an http URL, else http://127.0.0.1:8265)."
)

# submit's longer option helps, kept here so that its signature reads as the list of its options.
STORE_HELP = (
    "The results store as the cluster sees it: shared storage (a path every node mounts, or s3://...). "
    "Default: a loopback cluster gets the path `tbench run` would use here; a remote one the spec's."
)
WORKDIR_HELP = (
    "The workdir as the cluster sees it (shared storage, like --store): views, checkpoints and feature caches."
)
PIP_HELP = (
    "A pip requirement to install on the cluster for this job (repeatable). "
    "Default: none; the cluster's Python has the project's dependencies."
)
RUNTIME_ENV_HELP = (
    "A YAML runtime env merged into the default (pip, conda, env_vars, excludes, ...); see cluster/runtime_env.yaml."
)
EXCLUDE_HELP = (
    "A .gitignore-style pattern left out of the upload (repeatable), on top of outputs, environments and caches."
)


def _address_option():
    return typer.Option(None, "--address", help=ADDRESS_HELP, show_default=False)


def _fail(e: Exception, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
    return typer.Exit(code)


def submit(
    spec: Path = typer.Argument(..., help="The YAML spec (validated here before anything is sent)."),
    address: str | None = _address_option(),
    store: str | None = typer.Option(None, help=STORE_HELP),
    workdir: str | None = typer.Option(None, help=WORKDIR_HELP),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan, the resource asks and what would be sent; contact nothing."
    ),
    follow_logs: bool = typer.Option(False, "--follow", help="Stream the job's logs until it ends."),
    pip: list[str] = typer.Option([], "--pip", help=PIP_HELP),
    runtime_env: Path | None = typer.Option(None, "--runtime-env", help=RUNTIME_ENV_HELP),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE set for the job on the cluster (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help=EXCLUDE_HELP),
    working_dir: Path | None = typer.Option(None, help="The project directory to upload (default: this checkout)."),
    submission_id: str | None = typer.Option(None, help="Default: tbench-<spec name>-<UTC time>-<4 hex>."),
    python: str = typer.Option("python", help="The Python on the cluster that has the project's dependencies."),
) -> None:
    """Send SPEC to a Ray cluster through the Ray Jobs API (`tbench run SPEC --address auto` there)."""
    from harness import submit as S
    from harness.spec import SpecError, load_spec

    try:
        s = load_spec(spec)
    except SpecError as e:
        raise _fail(e) from None
    env_vars = _env_vars(env)
    try:
        sub = S.build_submission(
            spec,
            s,
            address=address,
            workdir=workdir,
            store=store,
            working_dir=working_dir,
            pip=pip,
            env=env_vars,
            runtime_env_file=runtime_env,
            extra_excludes=exclude,
            submission_id=submission_id,
            python=python,
        )
    except S.SubmitError as e:
        raise _fail(e) from None

    from harness.plan import make_plan

    plan = make_plan(s)
    if dry_run:
        _print_dry_run(sub, plan)
        return
    try:
        client = S.connect(sub.address)
        job_id = S.submit(sub, client)
    except S.SubmitError as e:
        raise _fail(e) from None
    _print_submitted(sub, plan, job_id)
    if follow_logs:
        _follow(sub.address, job_id, client)


def _env_vars(env: list[str]) -> dict[str, str]:
    """The ``--env KEY=VALUE`` options as a dict (the value may hold ``=``); one without ``=`` is a
    usage error, raised before anything is built or sent."""
    env_vars = {}
    for kv in env:
        if "=" not in kv:
            raise _fail(ValueError(f"--env takes KEY=VALUE, got {kv!r}"))
        k, v = kv.split("=", 1)
        env_vars[k] = v
    return env_vars


def _print_submitted(sub, plan, job_id: str) -> None:
    """What was sent (job id, plan counts, upload, workdir and store), the submission's notes, and
    the commands that follow, stop or ask after the job (with ``--address`` unless it is the default)."""
    from harness import submit as S

    counts = ", ".join(f"{k} {v}" for k, v in plan.counts().items())
    console.print(
        f"submitted [bold]{job_id}[/] to {sub.address}: spec {plan.spec.name!r}, {len(plan.jobs)} jobs ({counts}), "
        f"{plan.planned_rows()} result rows; uploaded {sub.upload.describe()}",
        highlight=False,
    )
    console.print(
        f"  workdir {sub.workdir or '(the spec’s)'}\n  store   {sub.store or '(the spec’s)'}", highlight=False
    )
    for note in sub.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    a = "" if sub.address == S.normalize_address(None) else f" --address {sub.address}"
    console.print(
        f"follow:  tbench logs {job_id} --follow{a}\nstatus:  tbench status {job_id}{a}\n"
        f"stop:    tbench stop {job_id}{a}",
        highlight=False,
    )


def _print_dry_run(sub, plan) -> None:
    from harness import submit as S

    t = Table(
        title=f"plan of {plan.spec.name!r}: {len(plan.jobs)} jobs, {plan.planned_rows()} result rows "
        "(dry run: nothing was sent)"
    )
    for col in ("kind", "jobs", "rows", "Ray asks per job", "all at once"):
        t.add_column(col, justify="right" if col in ("jobs", "rows") else "left")
    for r in S.resource_asks(plan):
        t.add_row(
            r["kind"], str(r["jobs"]), str(r["rows"]) if r["kind"] == "eval" else "", r["per_job"], r["all_at_once"]
        )
    console.print(t)
    from harness.cli_estimate import print_estimate
    from harness.estimate import estimate

    # the workdir as the cluster sees it may not be readable here: measured figures only from a local one
    workdir = Path(sub.workdir) if sub.workdir and Path(sub.workdir).is_dir() else None
    print_estimate(console, estimate(plan, workdir))
    console.print(
        f"address        {sub.address}  (not contacted)\n"
        f"submission id  {sub.submission_id}\n"
        f"entrypoint     {sub.entrypoint}\n"
        f"upload         {sub.upload.describe()}",
        highlight=False,
    )
    console.print("runtime env:", highlight=False)
    console.print(json.dumps(sub.shown_runtime_env(), indent=2), markup=False, highlight=False, soft_wrap=True)
    for note in sub.notes + [n for n in [S.gpu_note(plan)] if n]:
        console.print(f"note: {note}", markup=False, highlight=False)


def status(
    job: str = typer.Argument(..., help="The submission id (tbench jobs lists them)."),
    address: str | None = _address_option(),
) -> None:
    """The status of a submitted job: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    from harness import submit as S

    try:
        info = S.job_info(address, job)
    except S.SubmitError as e:
        raise _fail(e) from None
    st = S.status_name(info.status)
    colour = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow"}.get(st, "cyan")
    console.print(f"{job}: [bold {colour}]{st}[/]", highlight=False)
    meta = info.metadata or {}
    rows = [
        ("message", info.message or ""),
        ("spec", meta.get("tbench_spec", "")),
        ("code", meta.get("tbench_code_version", "")),
        ("started", S.fmt_time(info.start_time)),
        ("ended", S.fmt_time(info.end_time)),
        ("duration", S.fmt_duration(info.start_time, info.end_time)),
        ("driver exit code", "" if getattr(info, "driver_exit_code", None) is None else str(info.driver_exit_code)),
        ("entrypoint", info.entrypoint or ""),
    ]
    for k, v in rows:
        if v:
            console.print(f"  {k:<17}{escape(str(v))}", highlight=False)


def logs(
    job: str = typer.Argument(..., help="The submission id."),
    address: str | None = _address_option(),
    follow_logs: bool = typer.Option(
        False, "--follow", "-f", help="Stream until the job ends; exit 0 only if it SUCCEEDED."
    ),
) -> None:
    """The driver's logs of a submitted job (the whole log so far, or --follow to stream it)."""
    from harness import submit as S

    try:
        if follow_logs:
            _follow(address, job)
            return
        text = S.logs(address, job)
    except S.SubmitError as e:
        raise _fail(e) from None
    sys.stdout.write(text)
    sys.stdout.flush()


def _follow(address: str | None, job: str, client=None) -> None:
    from harness import submit as S

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    try:
        final = S.follow(address, job, write, client=client)
    except KeyboardInterrupt:
        err.print(f"\nstopped following; {job} goes on (tbench stop {job} ends it)", highlight=False)
        raise typer.Exit(130) from None
    except S.SubmitError as e:
        raise _fail(e) from None
    colour = {"SUCCEEDED": "green", "FAILED": "red"}.get(final, "yellow")
    err.print(f"{job}: [bold {colour}]{final}[/]", highlight=False)
    if final != "SUCCEEDED":
        raise typer.Exit(1)


def stop(
    job: str = typer.Argument(..., help="The submission id."),
    address: str | None = _address_option(),
    wait: float = typer.Option(30.0, help="Seconds to wait for the job to end (0: do not wait)."),
) -> None:
    """Stop a submitted job (its driver is sent SIGTERM, then killed); finished work stays finished."""
    from harness import submit as S

    try:
        sent, st = S.stop(address, job, wait_s=wait)
    except S.SubmitError as e:
        raise _fail(e) from None
    if not sent and st in S.TERMINAL:
        console.print(f"{job} had already ended: {st}", highlight=False)
    else:
        console.print(f"{job}: stop sent; now {st}", highlight=False)


def jobs(
    address: str | None = _address_option(),
    limit: int = typer.Option(50, help="Show at most this many (newest first)."),
) -> None:
    """The cluster's submitted jobs, newest first."""
    from harness import submit as S

    try:
        items = S.list_jobs(address)
    except S.SubmitError as e:
        raise _fail(e) from None
    addr = S.normalize_address(address)
    if not items:
        console.print(f"no jobs at {addr}", highlight=False)
        return
    t = Table(title=f"jobs at {addr} ({len(items)}, newest first)")
    for col in ("submission id", "status", "spec", "started", "duration"):
        t.add_column(col, no_wrap=True)  # ids are copied from here: never cut (`tbench status` shows the rest)
    for j in items[:limit]:
        t.add_row(
            j.submission_id or j.job_id or "",
            S.status_name(j.status),
            (j.metadata or {}).get("tbench_spec", ""),
            S.fmt_time(j.start_time),
            S.fmt_duration(j.start_time, j.end_time),
        )
    console.print(t)


COMMANDS = {"submit": submit, "status": status, "logs": logs, "stop": stop, "jobs": jobs}


def register(app: typer.Typer) -> typer.Typer:
    """Add the cluster commands to ``app`` (once)."""
    if getattr(app, "_tbench_cluster_commands", False):
        return app
    for name, fn in COMMANDS.items():
        app.command(name)(fn)
    app._tbench_cluster_commands = True
    return app


def _register_on_cli() -> None:
    """Register on the ``tbench`` app that imported this module: ``harness.cli``, which may be
    running as ``__main__`` (``python -m harness.cli``) and then is not ``sys.modules['harness.cli']``."""
    for mod in (sys.modules.get("__main__"), sys.modules.get("harness.cli")):
        spec = getattr(mod, "__spec__", None)
        if (
            mod is not None
            and getattr(spec, "name", None) == "harness.cli"
            and isinstance(getattr(mod, "app", None), typer.Typer)
        ):
            register(mod.app)


_register_on_cli()
