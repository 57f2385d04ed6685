"""Where the results store and the job workdir live: a local path or a :mod:`pyarrow.fs` URI."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})
"""``pyarrow.fs`` type names written with one PUT per file instead of temporary file + rename."""


def resolve_root(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, base path inside it, whether it is the local filesystem) of a local path or a
    :mod:`pyarrow.fs` URI (``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``,
    ``gs://...``, ``file:///...``). A local path is made absolute.
    Shared by the results store (:mod:`results.store`) and the job workdir (:mod:`harness.workdir`)."""
    text = os.fspath(root)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/"), isinstance(fs, pafs.LocalFileSystem)
    return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute()), True
