"""Writes that leave a whole file (or folder) or none: write to a temporary name beside the
target, then rename over it (``os.replace``, atomic on one filesystem).

Temporary files are hidden and end in ``.tmp`` (``.<name>.<random>.tmp``), so readers and
:meth:`harness.workdir.Workdir.push` skip them; a failed write removes its temporary file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends
    without an exception, removed when it raises.

    >>> with atomic_path(out / "model.pt") as tmp:  # doctest: +SKIP
    ...     torch.save(obj, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def swap_dir_into_place(tmp: Path, dest: Path, same_output: Callable[[Path], bool], *, keep_same: bool = False) -> None:
    """Move the fully written folder ``tmp`` to ``dest``.

    An existing ``dest`` is renamed aside first and removed once ``tmp`` is in place. When the
    rename fails because another writer put a folder there in the meantime, theirs is kept (and
    ``tmp`` removed) if ``same_output(dest)`` says it is the same output; otherwise the error is
    raised. ``keep_same``: also keep an existing ``dest`` for which ``same_output`` holds before
    moving anything (someone else finished first).
    """
    tmp, dest = Path(tmp), Path(dest)
    old = None
    if dest.exists():
        if keep_same and same_output(dest):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except OSError:
        if not same_output(dest):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
