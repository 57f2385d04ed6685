"""The job workdir: a local (or shared-filesystem) directory, or an object-store URI with a
local cache.

Jobs write their outputs under ``<workdir>/<kind>/<key>/`` and mark completion with
``_DONE.json``, written last (:mod:`harness.core.artifacts`). A :class:`Workdir` is rooted at

- a local path (or ``file://`` URI): :attr:`Workdir.local` is that directory, every sync
  operation (:meth:`~Workdir.pull`, :meth:`~Workdir.push`) is a no-op returning the local folder,
  and :meth:`~Workdir.is_done`/:meth:`~Workdir.done_keys` read the filesystem, exactly as before;
- any other URI :mod:`pyarrow.fs` understands, resolved like the results store's root
  (:func:`harness.core.storage.resolve_root`): ``s3://bucket/prefix``, with options in the query
  string (``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``), ``gs://...``.
  The remote folder is the truth; executors keep working on local paths in a cache directory
  (:attr:`Workdir.local`, by default ``$TBENCH_CACHE/<hash of the URI>`` or
  ``~/.cache/tbench/<hash of the URI>``), and the workdir copies folders between the two.

Rules that keep a remote workdir consistent:

- a remote folder is finished exactly when its remote marker exists, and :meth:`Workdir.push`
  uploads the marker only after every other file of the push went up, so a push that fails or
  is killed half-way leaves no remote marker (the job counts as unfinished and is resumed or
  redone);
- on an object store every file is uploaded straight to its final key (one PUT, or one
  multipart upload, which becomes visible only when complete; no temporary object and rename,
  which would be a copy plus a delete). The file is memory-mapped and handed to Arrow in one
  write, so a Python exception cannot stop an upload half-way (Arrow completes an output stream
  that is dropped unclosed). Other remote filesystems get a temporary file and a rename;
- :meth:`Workdir.pull` downloads each file to a temporary name in its folder and renames it
  into place (``os.replace``), so several processes on one node may pull the same folder at
  once, and a reader sees a whole file or none. Files already present with the remote size are
  not downloaded again; a pull never deletes local files. The marker is pulled last, so a local
  marker in the cache means "the remote job is finished" (and, unless ``only=`` was used, that
  its files are here);
- :meth:`Workdir.done_keys` lists a kind with one recursive listing (a few paged requests for
  thousands of folders) instead of one request per job.

Files named like temporary files (hidden and ending in ``.tmp``, as written by
:func:`harness.core.atomic.atomic_write_text` and by pulls) are never pushed. A ``Workdir``
pickles as ``(uri, cache)`` and is rebuilt on the other side (cheap: no request for a URI with
an ``endpoint_override`` or a ``region``); with no explicit ``cache`` the receiving process uses
its own default cache directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from harness.core import artifacts
from harness.core.artifacts import DONE
from harness.core.storage import OBJECT_STORES, resolve_root

CACHE_ENV = "TBENCH_CACHE"
"""Environment variable naming the folder under which remote workdirs get their caches."""
_TRANSFERS = 16  # files copied at once
_CHUNK = 8 << 20  # bytes per download request
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


class UnfinishedError(RuntimeError):
    """A pull asked for a folder whose remote copy has no completion marker."""


def default_cache(uri: str) -> Path:
    """The default cache directory of the remote workdir ``uri``:
    ``$TBENCH_CACHE/<hash>`` or ``~/.cache/tbench/<hash>``, the hash being the URI's sha256
    (first 16 hex digits)."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "tbench"
    return (root / hashlib.sha256(uri.encode()).hexdigest()[:16]).absolute()


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ValueError(f"invalid {what} {name!r}: expected one folder name (letters, digits, '._=-')")


def _is_temporary(name: str) -> bool:
    """Hidden files are never outputs: temporary files of atomic writes, a trainer's lock file."""
    return name.startswith(".")


class Workdir:
    """Where job outputs live: ``<root>/<kind>/<key>/``, a local directory or an object-store
    URI with a local cache (see the module docstring).

    >>> wd = Workdir("s3://bucket/runs/wd?endpoint_override=127.0.0.1:9000&scheme=http")  # doctest: +SKIP
    >>> d = wd.pull("pretrain", key, only=["checkpoints/epoch_003.pt"])  # doctest: +SKIP
    >>> wd.push("eval", key)  # files first, then the marker  # doctest: +SKIP

    ``root``: a local path or a URI. ``cache``: the local directory a remote workdir is cached
    in (default :func:`default_cache`; ignored for a local workdir). Attributes: :attr:`uri`
    (the root as given for a remote workdir, the absolute directory for a local one),
    :attr:`is_remote`, :attr:`local` (the directory executors work in: the root itself, or the
    cache), :attr:`fs`/:attr:`base` (the :mod:`pyarrow.fs` filesystem and the root's path in it).
    """

    def __init__(self, root: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None):
        text = os.fspath(root)
        self.fs, self.base, is_local = resolve_root(text)
        self.is_remote: bool = not is_local
        self.is_object_store: bool = self.fs.type_name in OBJECT_STORES
        if is_local:
            self.local: Path = Path(self.base)
            self.uri: str = str(self.local)
            self._cache: Path | None = None
        else:
            self.uri = text
            self._cache = Path(cache).expanduser().absolute() if cache is not None else None
            self.local = self._cache if self._cache is not None else default_cache(text)

    def __reduce__(self):
        return (Workdir, (self.uri, self._cache))

    def __repr__(self) -> str:
        return f"Workdir({self.uri!r})" if not self.is_remote else f"Workdir({self.uri!r}, cache={str(self.local)!r})"

    # ---------------------------------------------------------------- paths

    def dir(self, kind: str, key: str) -> Path:
        """The local folder of job ``key`` of ``kind`` (not created)."""
        _check_name("kind", kind)
        _check_name("key", key)
        return self.local / kind / key

    def uri_of(self, kind: str, key: str, relative: str = "") -> str:
        """Where the folder (or the file ``relative`` inside it) truly lives, for messages: a
        local path, or a URI with the root's query string kept at the end."""
        d = self.dir(kind, key)
        if not self.is_remote:
            return str(d / relative) if relative else str(d)
        parts = urllib.parse.urlsplit(self.uri)
        path = f"{parts.path.rstrip('/')}/{kind}/{key}" + (f"/{relative}" if relative else "")
        return urllib.parse.urlunsplit(parts._replace(path=path))

    def _remote(self, kind: str, key: str) -> str:
        self.dir(kind, key)  # validates the names
        return f"{self.base}/{kind}/{key}"

    # ---------------------------------------------------------------- completion

    def is_done(self, kind: str, key: str) -> bool:
        """Whether the job's marker exists where the truth lives (the remote folder for a remote
        workdir; one request)."""
        if not self.is_remote:
            return artifacts.is_done(self.dir(kind, key))
        return self.fs.get_file_info(f"{self._remote(kind, key)}/{DONE}").type == pafs.FileType.File

    def done_keys(self, kind: str) -> set[str]:
        """Keys of ``kind`` whose folder has a marker: one (recursive) listing of
        ``<root>/<kind>/``, not one request per job."""
        _check_name("kind", kind)
        if not self.is_remote:
            return {p.parent.name for p in (self.local / kind).glob(f"*/{DONE}") if p.is_file()}
        prefix = f"{self.base}/{kind}/"
        keys = set()
        for info in self.fs.get_file_info(pafs.FileSelector(prefix[:-1], recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.base_name == DONE:
                key, _, rest = info.path[len(prefix) :].partition("/")
                if rest == DONE:
                    keys.add(key)
        return keys

    def exists(self, kind: str, key: str, relative: str) -> bool:
        """Whether the file ``relative`` of the job's folder exists where the truth lives (one
        request for a remote workdir): e.g. a checkpoint a running pre-training has uploaded."""
        if not self.is_remote:
            return (self.dir(kind, key) / relative).is_file()
        return self.fs.get_file_info(f"{self._remote(kind, key)}/{relative}").type == pafs.FileType.File

    def files(self, kind: str, key: str) -> dict[str, int]:
        """{relative path: size} of the job folder's files where the truth lives (one listing)."""
        if not self.is_remote:
            d = self.dir(kind, key)
            return (
                {p.relative_to(d).as_posix(): p.stat().st_size for p in d.rglob("*") if p.is_file()}
                if d.is_dir()
                else {}
            )
        return self._listing(self._remote(kind, key))

    def read_done(self, kind: str, key: str) -> dict[str, Any]:
        """The summary in the job's marker (read remotely for a remote workdir)."""
        if not self.is_remote:
            return artifacts.read_done(self.dir(kind, key))
        try:
            with self.fs.open_input_stream(f"{self._remote(kind, key)}/{DONE}", compression=None) as f:
                data = f.readall()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.uri_of(kind, key, DONE)} does not exist: the job is not finished") from exc
        return json.loads(data)

    def mark_done(self, kind: str, key: str, summary: dict[str, Any]) -> None:
        """Write the marker locally (:func:`harness.core.artifacts.mark_done`) and, for a remote
        workdir, upload it. It uploads the marker only: push the folder's outputs first."""
        d = self.dir(kind, key)
        artifacts.mark_done(d, summary)
        if self.is_remote:
            self._put(d / DONE, f"{self._remote(kind, key)}/{DONE}")

    # ---------------------------------------------------------------- sync

    def pull(
        self,
        kind: str,
        key: str,
        *,
        only: Iterable[str | os.PathLike[str]] | None = None,
        exclude: Iterable[str] = (),
        allow_partial: bool = False,
        force: bool = False,
    ) -> Path:
        """Make the local folder hold the remote folder's files; return the local folder.

        ``only``: just these paths (relative to the folder, e.g. ``checkpoints/epoch_003.pt``;
        one missing remotely raises :class:`FileNotFoundError`). ``exclude``: top-level names
        not to pull (e.g. ``ray``). Files present locally with the remote size are skipped; the
        remote marker, when there is one, is pulled last (also with ``only=``). A folder without
        a remote marker raises :class:`UnfinishedError` unless ``allow_partial`` (resuming from
        uploaded checkpoints; a missing folder then gives an empty local one). ``force``: fetch
        even files of the remote size (files rewritten in place, such as a training state, keep
        their size). Costs one listing
        plus one download per file fetched. No-op for a local workdir.
        """
        d = self.dir(kind, key)
        if not self.is_remote:
            return d
        root = self._remote(kind, key)
        remote = self._listing(root)
        finished = DONE in remote
        if not finished and not allow_partial:
            state = "has no files" if not remote else f"has no {DONE}"
            raise UnfinishedError(
                f"{self.uri_of(kind, key)} is not finished (it {state}); "
                "pass allow_partial=True to pull an unfinished folder"
            )
        if only is None:
            wanted = list(remote)
        else:
            wanted = [self._relative(d, p) for p in only]
            missing = [r for r in wanted if r not in remote]
            if missing:
                raise FileNotFoundError(f"{self.uri_of(kind, key, missing[0])} does not exist")
        skip = set(exclude)
        todo = [
            r
            for r in dict.fromkeys(wanted)
            if r != DONE and r.split("/", 1)[0] not in skip and (force or not _same_size(d / r, remote[r]))
        ]
        d.mkdir(parents=True, exist_ok=True)
        self._each(lambda r: self._get(f"{root}/{r}", d / r), todo)
        if finished:
            self._get(f"{root}/{DONE}", d / DONE)
        return d

    def push(
        self,
        kind: str,
        key: str,
        *,
        files: Iterable[str | os.PathLike[str]] | None = None,
        exclude: Iterable[str] = (),
        force: bool = False,
    ) -> Path:
        """Upload the local folder's files (or just ``files``, relative to the folder) except the
        marker and temporary files, then the marker, last, if it exists locally; return the local
        folder. ``exclude``: top-level names not to push. Files the remote already holds with
        the same size are skipped (and so is the marker when nothing else went up and the remote
        one has its size; ``force`` sends every file). A failed upload raises before the marker
        is sent. Costs one listing
        plus one upload per file sent. No-op for a local workdir.
        """
        d = self.dir(kind, key)
        if not self.is_remote:
            return d
        if not d.is_dir():
            raise FileNotFoundError(f"nothing to push: {d} does not exist")
        skip = set(exclude)
        if files is None:
            rels = list(_walk(d, skip))
        else:
            rels = [
                r
                for r in dict.fromkeys(self._relative(d, p) for p in files)
                if r != DONE and r.split("/", 1)[0] not in skip
            ]
            missing = [r for r in rels if not (d / r).is_file()]
            if missing:
                raise FileNotFoundError(f"nothing to push: {d / missing[0]} does not exist")
        root = self._remote(kind, key)
        remote = self._listing(root)
        todo = rels if force else [r for r in rels if remote.get(r) != (d / r).stat().st_size]
        self._each(lambda r: self._put(d / r, f"{root}/{r}"), todo)
        marker = d / DONE
        if marker.is_file() and (todo or remote.get(DONE) != marker.stat().st_size):
            self._put(marker, f"{root}/{DONE}")
        return d

    def remove(self, kind: str, key: str) -> None:
        """Delete the job's folder: the remote one (marker first) and the local one."""
        d = self.dir(kind, key)
        if self.is_remote:
            root = self._remote(kind, key)
            for delete, path in ((self.fs.delete_file, f"{root}/{DONE}"), (self.fs.delete_dir, root)):
                try:
                    delete(path)
                except FileNotFoundError:
                    pass
        try:
            shutil.rmtree(d)
        except FileNotFoundError:
            pass

    # ---------------------------------------------------------------- transfers

    def _listing(self, root: str) -> dict[str, int]:
        """{path relative to ``root``: size} of every remote file below ``root`` (one listing)."""
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        return {
            i.path[len(root) + 1 :]: i.size for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File
        }

    @staticmethod
    def _relative(d: Path, path: str | os.PathLike[str]) -> str:
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(d)
            except ValueError:
                raise ValueError(f"{path} is not inside {d}") from None
        if not p.parts or ".." in p.parts:
            raise ValueError(f"invalid path {os.fspath(path)!r}: expected a file path inside the job folder")
        return p.as_posix()

    @staticmethod
    def _each(fn: Callable[[str], None], items: list[str]) -> None:
        """``fn`` over ``items``, several at once; the first failure cancels those not started
        and is raised once the running ones ended."""
        if len(items) < 2:
            for item in items:
                fn(item)
            return
        pool = ThreadPoolExecutor(min(_TRANSFERS, len(items)))
        try:
            for _ in pool.map(fn, items):
                pass
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _get(self, remote: str, local: Path) -> None:
        """Download ``remote`` to ``local`` through a temporary file renamed into place."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with self.fs.open_input_stream(remote, compression=None) as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
            os.replace(tmp, local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _put(self, local: Path, remote: str) -> None:
        """Upload ``local`` to ``remote``: on an object store one upload straight to the final key
        (one C++ write of the memory-mapped file, so it cannot stop half-way for a Python
        exception), elsewhere a temporary file renamed over ``remote``."""
        with pa.memory_map(str(local)) as mapped:
            data = mapped.read_buffer()
            if self.is_object_store:
                out = self.fs.open_output_stream(remote, compression=None)
                out.write(data)
                out.close()  # the object appears here, complete
                return
            folder, name = remote.rsplit("/", 1)
            tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
            try:
                self.fs.create_dir(folder, recursive=True)
                with self.fs.open_output_stream(tmp, compression=None) as out:
                    out.write(data)
                self.fs.move(tmp, remote)
            except BaseException:
                try:
                    self.fs.delete_file(tmp)
                except OSError:
                    pass
                raise


def _same_size(path: Path, size: int | None) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _walk(d: Path, skip: set[str]) -> Iterable[str]:
    """Paths (relative, ``/``-separated) of the files below ``d``, less the top-level marker,
    temporary files and the top-level names in ``skip``."""
    for folder, dirnames, filenames in os.walk(d):
        top = Path(folder) == d
        if top:
            dirnames[:] = [n for n in dirnames if n not in skip]
        rel = Path(folder).relative_to(d)
        for name in sorted(filenames):
            if _is_temporary(name) or (top and (name == DONE or name in skip)):
                continue
            yield (rel / name).as_posix()
