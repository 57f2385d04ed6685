"""Content keys and the on-disk layout of job outputs.

Every job is a pure function of its resolved config and its inputs' keys; its key is a hash of
both. Its outputs live under ``<workdir>/<kind>/<key>/`` and a finished job leaves a marker,
``_DONE.json``, written last (atomically), so a folder without the marker is unfinished work
that a re-run resumes or redoes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness.core.atomic import atomic_write_text

KEY_VERSION = 1  # bump when the meaning of a job's outputs changes, so old outputs are not reused
DONE = "_DONE.json"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed into keys."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(kind: str, config: dict[str, Any], deps: list[str] | tuple[str, ...] = ()) -> str:
    """The key of a job: a hash of its kind, resolved config and the keys of its inputs."""
    payload = canonical_json({"v": KEY_VERSION, "kind": kind, "config": config, "deps": list(deps)})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def job_dir(workdir: Path, kind: str, key: str) -> Path:
    return Path(workdir) / kind / key


def is_done(directory: Path) -> bool:
    return (Path(directory) / DONE).is_file()


def read_done(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / DONE).read_text())


def mark_done(directory: Path, summary: dict[str, Any]) -> None:
    """Write the completion marker; call it last, after every output is in place."""
    atomic_write_text(Path(directory) / DONE, json.dumps(summary, indent=2, sort_keys=True, default=str))


def replaceable_dir(directory: Path, marker: str) -> bool:
    """Whether an output folder may be replaced wholesale: absent, empty, holding only hidden or
    temporary entries, or an earlier output of the same kind (it has ``marker``)."""
    d = Path(directory)
    if not d.exists():
        return True
    if not d.is_dir():
        return False
    entries = [e.name for e in d.iterdir()]
    return not entries or marker in entries or all(e.startswith((".", "_")) for e in entries)
