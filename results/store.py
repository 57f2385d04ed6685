"""The append-only Parquet results store.

Layout: ``<root>/<table>/<key>.parquet``, one part file per finished job, for the tables in
:data:`results.schema.TABLES`. Readers never see half a file, and re-writing a key replaces
its rows instead of duplicating them:

- on a local (or any non object-store) filesystem a part is written to a temporary file in
  the same folder and then renamed over its final name (``rename(2)`` is atomic and replaces).
  Temporary files (``.<key>.parquet.tmp-*``) are ignored by every reader; a crash can leave
  one behind, never a partial part;
- on an object store (``s3://``, ``gs://``, ``abfs://``) there is no rename: pyarrow's
  ``move`` is a server-side copy plus a delete, three requests where one does. An upload is
  atomic per object: a PUT, or a multipart upload (what pyarrow's S3 stream sends), becomes
  visible only when complete, and a reader sees the old object or the new one. So the part is
  serialised completely in memory first and then uploaded straight to its final key: a
  failure while serialising sends nothing, an upload that fails or is killed never completes,
  and no temporary objects are left behind.

Every part carries, in its Parquet key-value metadata, the schema version that wrote it
(``transfer_bench.schema_version``, see :mod:`results.schema`) and a random write id
(``transfer_bench.write_id``). Readers bring parts of older versions up to date with the
registered upgrade steps (:func:`results.schema.upgrade`) and refuse parts written by a newer
version, naming them. SQL reads a table's files in place unless one of them needs a step; then
that table is served through Arrow, upgraded (slower; compaction writes the current version
and ends it). Versions are read from the footers with a byte search (no Thrift parsing) and
cached per :class:`Store` by (path, size, modification time), so this costs little.

Compaction (:meth:`Store.compact`) merges many small parts into few larger files named
``<root>/<table>/_compact-<generation>-<id>.parquet``. A compacted file holds, besides the
table's columns, a column ``_part`` naming the part key each row came from, and lists every
key it absorbed (zero-row parts included) in its Parquet metadata under
``transfer_bench.parts``. Readers resolve each key to exactly one source, newest wins:

1. a loose part ``<key>.parquet`` always wins (it is either the very file a compaction copied
   and has not deleted yet, or a re-write made after the compaction read it);
2. otherwise the compacted file with the highest generation that lists the key.

So ``write_part`` on a compacted key still replaces its rows, and neither :meth:`Store.read`
nor the DuckDB views ever show a row twice, including between a compacted file's rename and
the deletion of the parts it absorbed. Compaction deletes a merged part only if it is still
the file it read: same size, modification time *and write id* (object stores keep modification
times to the second, so size and time alone miss a quick re-write of the same size). A re-write
landing between that check and the delete (microseconds locally, one round trip on object
storage) is lost to the older compacted copy; re-running its job restores it. Keys never start
with ``_``, so compacted files cannot collide with parts. Run one compaction per table at a
time; writers and readers may run concurrently with it.

The root is a local directory or any URI :mod:`pyarrow.fs` understands (``s3://bucket/prefix``,
``gs://...``, ``file:///...``; options such as
``s3://bucket/prefix?endpoint_override=host:9000&scheme=http`` go in the query string).
Local stores are queried by DuckDB in place with ``read_parquet``; remote ones are handed to
DuckDB as Arrow datasets, so no DuckDB extension is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from harness.core.storage import OBJECT_STORES, resolve_root
from results import compaction
from results import schema as S
from results.parts import (  # StoreError, StoreQueryError and the names below are re-exported
    COMPACT_PREFIX,
    DEFAULT_TARGET_ROWS,
    META_PARTS_KEY,
    META_WRITE_ID_KEY,
    PART_COLUMN,
    PART_SUFFIX,
    TMP_MARK,
    StoreError,
    StoreQueryError,
    arrange,
)
from results.schema import TABLES, conform, schema_for

log = logging.getLogger(__name__)

__all__ = [
    "COMPACT_PREFIX",
    "DEFAULT_TARGET_ROWS",
    "META_PARTS_KEY",
    "META_WRITE_ID_KEY",
    "PART_COLUMN",
    "PART_SUFFIX",
    "Store",
    "StoreError",
    "StoreQueryError",
    "arrow_to_pandas",
    "load",
]

_READ_RETRIES = 20  # re-list this many times when a listed file vanished (a compaction moved it)
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
_FOOTER_TAIL = 64 * 1024  # bytes read from a part's end to find its footer (more when it is longer)
_THREADED_READ_BYTES = 4 << 20  # read files at least this large with Arrow's thread pool
_REMOTE_READERS = 16  # files of a remote store read at once


def arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Convert an Arrow table to pandas the way the store does everywhere.

    Integer columns become pandas nullable ``Int64`` (so ``shots`` keeps null = full data
    distinct from a number, instead of turning into float NaN); floats stay ``float64`` with NaN
    for null; timestamps become ``datetime64[us, UTC]``.
    """
    mapping = {
        pa.int64(): pd.Int64Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.int16(): pd.Int16Dtype(),
        pa.int8(): pd.Int8Dtype(),
        pa.bool_(): pd.BooleanDtype(),
    }
    return table.to_pandas(types_mapper=mapping.get)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_RE.match(key) or ".." in key or TMP_MARK in key:
        raise StoreError(
            f"invalid part key {key!r}: a key names one file, so it must start with a letter or "
            f"digit and contain only letters, digits and '._=-' (no '/', '..' or '{TMP_MARK}')"
        )


class _Served(NamedTuple):
    """A compacted file and the part keys it serves (those no loose part or newer file has)."""

    path: str
    keys: set[str]
    version: int
    complete: bool  # it serves every key it absorbed: all its rows count, no filter needed


class _Ambiguous(Exception):
    """The byte search cannot tell a footer's metadata value for sure: parse the footer instead."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _footer_value(footer: bytes, key: bytes) -> bytes | None:
    """The value of ``key`` in a Parquet footer's key-value metadata, found without parsing it.

    The footer is Thrift compact protocol; a ``KeyValue`` entry is encoded as ``0x18`` (field 1,
    binary), the key's length as a varint, the key, ``0x18`` (field 2, binary), the value's
    length and the value. The key is looked up framed like that; when its bare bytes occur
    anywhere else as well (say, as a string column's min/max statistic) or the framing is not
    the expected one, :class:`_Ambiguous` is raised and the caller parses the footer properly.
    ``None``: the key is not in the footer at all.
    """
    bare = footer.count(key)
    if bare == 0:
        return None
    needle = b"\x18" + _varint(len(key)) + key
    at = footer.find(needle)
    if bare != 1 or at < 0:
        raise _Ambiguous(key)
    i = at + len(needle)
    if i >= len(footer) or footer[i] != 0x18:
        raise _Ambiguous(key)
    i += 1
    length = shift = 0
    while i < len(footer):
        byte = footer[i]
        i += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        raise _Ambiguous(key)
    if i + length > len(footer):
        raise _Ambiguous(key)
    return footer[i : i + length]


class Store:
    """A results store rooted at a directory or object-storage URI.

    >>> store = Store("tbench-out/quickstart/store")
    >>> store.write_part("runs", job_key, rows)       # doctest: +SKIP
    >>> store.query("SELECT method, avg(score) FROM runs GROUP BY 1")  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.fspath(root)
        self.fs, self.base, self.is_local = resolve_root(root)
        self.is_object_store = self.fs.type_name in OBJECT_STORES
        # Footer facts by path, valid while (size, mtime_ns) are unchanged: loose parts'
        # (version, write id) and compacted files' (part keys, version).
        self._part_meta: dict[str, tuple[tuple[int, int | None], tuple[int, bytes | None]]] = {}
        self._compacted_meta: dict[str, tuple[tuple[int, int | None], tuple[list[str], int]]] = {}

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ---------------------------------------------------------------- paths

    def table_dir(self, table: str) -> str:
        """Folder (inside :attr:`fs`) holding ``table``'s parts."""
        schema_for(table)  # validates the name
        return f"{self.base}/{table}"

    def part_path(self, table: str, key: str) -> str:
        """Path (inside :attr:`fs`) of the part for ``key``."""
        _check_key(key)
        return f"{self.table_dir(table)}/{key}{PART_SUFFIX}"

    # ---------------------------------------------------------------- writing

    def write_part(self, table: str, key: str, rows: Sequence[Mapping[str, Any]]) -> str:
        """Write ``rows`` as the one part file of ``key`` in ``table``; return its path.

        The rows are conformed to the table's schema first (unknown columns are rejected), then
        written atomically (see the module docstring): readers see either the old part or the
        new one, never a partial file, and a re-run replaces instead of appending. The part
        records the current schema version. Zero rows still write an (empty) part, so
        ``has_part`` marks the job done.
        """
        data = conform(table, list(rows))
        meta = {**(data.schema.metadata or {}), **S.part_metadata(table), META_WRITE_ID_KEY: uuid.uuid4().hex.encode()}
        data = data.replace_schema_metadata(meta)
        final = self.part_path(table, key)
        if not self.is_object_store:  # object stores have no folders (the call would PUT a marker)
            self.fs.create_dir(self.table_dir(table), recursive=True)
        self._write_atomic(data, final)
        log.debug("wrote %d row(s) to %s", data.num_rows, final)
        if "://" not in self.root:
            return final
        return self._uri(f"{table}/{key}{PART_SUFFIX}")

    def _uri(self, relative: str) -> str:
        """The URI of ``relative`` (a path below the root) for a root given as a URI, keeping the
        root's query string (``?endpoint_override=...``) at the end."""
        parts = urllib.parse.urlsplit(self.root)
        return urllib.parse.urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{relative}"))

    # ---------------------------------------------------------------- reading

    def _files(self, table: str, keep: Callable[[str], bool]) -> list[pafs.FileInfo]:
        """The table folder's plain files whose name ``keep`` accepts, sorted by name."""
        selector = pafs.FileSelector(self.table_dir(table), allow_not_found=True, recursive=False)
        infos = [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File and keep(i.base_name)]
        return sorted(infos, key=lambda i: i.base_name)

    def _part_infos(self, table: str) -> list[pafs.FileInfo]:
        return self._files(table, lambda n: n.endswith(PART_SUFFIX) and not n.startswith((".", "_")))

    def _compacted_infos(self, table: str) -> list[pafs.FileInfo]:
        """Compacted files of ``table``, oldest generation first (zero-padded generations sort by age)."""
        return self._files(
            table, lambda n: n.startswith(COMPACT_PREFIX) and n.endswith(PART_SUFFIX) and TMP_MARK not in n
        )

    def files_digest(self, tables: Sequence[str]) -> str:
        """A digest of the files that hold ``tables`` (paths, sizes, modification times): it
        changes whenever a part is written or replaced or a table is compacted."""
        h = hashlib.sha256()
        for table in tables:
            for info in self._part_infos(table) + self._compacted_infos(table):
                h.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
        return h.hexdigest()

    def part_files(self, table: str) -> list[str]:
        """Paths of ``table``'s loose (not compacted) finished parts, sorted; temporary and
        compacted files are excluded (see :meth:`compacted_files`)."""
        return [info.path for info in self._part_infos(table)]

    def compacted_files(self, table: str) -> list[str]:
        """Paths of ``table``'s compacted files, oldest generation first."""
        return [info.path for info in self._compacted_infos(table)]

    def _compacted_keys(self, path: str) -> list[str]:
        """The part keys a compacted file absorbed (from its Parquet metadata)."""
        return self._compacted_facts(self.fs.get_file_info(path))[0]

    def _compacted_facts(self, info: pafs.FileInfo) -> tuple[list[str], int]:
        """(part keys it absorbed, schema version) of a compacted file, from its Parquet
        metadata; cached (compacted files are never re-written under the same name)."""
        stamp = (info.size, info.mtime_ns)
        cached = self._compacted_meta.get(info.path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(info.path)
        try:
            with self.fs.open_input_file(info.path) as f:
                meta = pq.read_metadata(f).metadata or {}
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"cannot read compacted file {info.path!r}: {exc}") from exc
        raw = meta.get(META_PARTS_KEY)
        if raw is None:
            raise StoreError(
                f"compacted file {info.path!r} has no {META_PARTS_KEY.decode()!r} metadata; "
                f"files named {COMPACT_PREFIX}*{PART_SUFFIX} are reserved for Store.compact"
            )
        facts = (list(json.loads(raw)), self._version(info.path, meta))
        if info.mtime_ns is not None:
            self._compacted_meta[info.path] = (stamp, facts)
        return facts

    def _version(self, path: str, metadata: Mapping[bytes, bytes] | None) -> int:
        """The schema version in a file's ``metadata``; :class:`StoreError` when it is malformed
        or newer than this code's (such a file cannot be read correctly)."""
        try:
            version = S.version_of(metadata)
        except S.SchemaError as exc:
            raise StoreError(f"cannot read {path!r}: {exc}") from None
        if version > S.SCHEMA_VERSION:
            raise StoreError(
                f"{path!r} was written by results schema version {version}, newer than this code's "
                f"version {S.SCHEMA_VERSION}: upgrade transfer-bench to read this store"
            )
        return version

    def _footer(self, path: str) -> bytes:
        """The raw (Thrift) footer of the Parquet file at ``path``, in one or two reads."""
        try:
            with self.fs.open_input_file(path) as f:
                size = f.size()
                n = min(size, _FOOTER_TAIL)
                tail = f.read_at(n, size - n)
                length = int.from_bytes(tail[-8:-4], "little") if size >= 12 else -1
                if tail[-4:] != b"PAR1" or not 0 < length <= size - 12:
                    raise StoreError(f"{path!r} is not a Parquet file (no footer)")
                if length + 8 > n:
                    tail = f.read_at(length + 8, size - length - 8)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                raise FileNotFoundError(path) from exc
            raise StoreError(f"cannot read {path!r}: {exc}") from exc
        return bytes(tail[-8 - length : -8])

    def _part_facts(self, info: pafs.FileInfo) -> tuple[int, bytes | None]:
        """(schema version, write id) of a loose part, from its footer; cached by
        (path, size, mtime). The footer is searched, not parsed (see :func:`_footer_value`):
        parsing one costs about 20 times as much as reading it."""
        stamp = (info.size, info.mtime_ns)
        cached = self._part_meta.get(info.path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        footer = self._footer(info.path)
        try:
            raw_version = _footer_value(footer, S.META_VERSION_KEY)
            write_id = _footer_value(footer, META_WRITE_ID_KEY)
            meta = {} if raw_version is None else {S.META_VERSION_KEY: raw_version}
        except _Ambiguous:
            with self.fs.open_input_file(info.path) as f:
                meta = pq.read_metadata(f).metadata or {}
            write_id = meta.get(META_WRITE_ID_KEY)
        facts = (self._version(info.path, meta), write_id)
        if info.mtime_ns is not None:
            self._part_meta[info.path] = (stamp, facts)
        return facts

    def _resolve_sources(self, table: str) -> tuple[list[pafs.FileInfo], list[_Served]]:
        """Which file serves each key: (loose part infos, compacted files with the keys they serve).

        Loose parts are listed *before* compacted files: a key absent from the loose listing
        was already in a compacted file (compacted files are never removed), so no key is
        missed; a loose part deleted after listing makes the read fail and be retried.
        A key listed loose is served by the loose part; otherwise by the newest compacted
        file that lists it. Compacted files serving no key are left out.
        """
        loose = self._part_infos(table)
        taken = {info.base_name[: -len(PART_SUFFIX)] for info in loose}
        served: list[_Served] = []
        for info in reversed(self._compacted_infos(table)):  # newest first
            absorbed, version = self._compacted_facts(info)
            keys = set(absorbed) - taken
            taken |= keys
            if keys:
                served.append(_Served(info.path, keys, version, len(keys) == len(set(absorbed))))
        served.reverse()
        return loose, served

    def _needs_upgrade(self, table: str, loose: list[pafs.FileInfo], served: list[_Served]) -> bool:
        """Whether any of these files needs an upgrade step to be read in the current schema
        (:class:`StoreError` if one was written by a newer version). Reads loose parts' footers
        (cached)."""
        versions = {s.version for s in served}
        versions.update(facts[0] for facts in self._map(self._part_facts, loose))
        return any(S.upgrade_steps(table, v) for v in versions)

    def _map(self, fn, items: Sequence[Any]) -> list[Any]:
        """``[fn(item) for item in items]``; on a remote store several at once, since every file
        read there costs round trips (Arrow releases the GIL while it waits)."""
        if self.is_local or len(items) < 2:
            return [fn(item) for item in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(_REMOTE_READERS, len(items))) as pool:
            return list(pool.map(fn, items))

    def _retrying(self, fn):
        """Call ``fn()``, re-trying when a listed file vanished under it (a concurrent compaction)."""
        for attempt in range(_READ_RETRIES):
            try:
                return fn()
            except FileNotFoundError:
                if attempt == _READ_RETRIES - 1:
                    raise
                time.sleep(_backoff(attempt))
        raise StoreError("retry loop ended without a result")  # pragma: no cover

    def part_keys(self, table: str) -> set[str]:
        """Keys that have a finished part in ``table``, loose or compacted."""

        def keys() -> set[str]:
            found = {info.base_name[: -len(PART_SUFFIX)] for info in self._part_infos(table)}
            for info in self._compacted_infos(table):
                found.update(self._compacted_facts(info)[0])
            return found

        return self._retrying(keys)

    def has_part(self, table: str, key: str) -> bool:
        """Whether ``key`` has a finished part in ``table`` (possibly with zero rows), loose or
        compacted."""
        info = self.fs.get_file_info(self.part_path(table, key))
        if info.type == pafs.FileType.File:
            return True
        return key in self.part_keys(table)

    def read_arrow(self, table: str) -> pa.Table:
        """All of ``table``'s rows as one Arrow table in the current schema, each part key's
        rows exactly once (newest wins: a loose part over a compacted copy, a newer compacted
        file over an older one).

        Parts written under an older layout read back with nulls for columns they lack;
        columns a part has beyond the schema are kept at the end.
        """
        return self._retrying(lambda: self._read_arrow_once(table))

    def _read_file(self, table: str, path: str) -> pa.Table:
        """The file at ``path`` as written (no upgrade); ``FileNotFoundError`` if it vanished."""
        try:
            with self.fs.open_input_file(path) as f:
                # Arrow's thread pool costs more than it gains on the small files parts are.
                return pq.ParquetFile(f).read(use_threads=f.size() >= _THREADED_READ_BYTES)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowInvalid) as exc:
            if not self.fs.get_file_info(path).type == pafs.FileType.File:
                raise FileNotFoundError(path) from exc
            raise StoreError(f"cannot read part {path!r} of table {table!r}: {exc}") from exc

    def _upgraded(self, table: str, path: str, data: pa.Table, version: int) -> pa.Table:
        """``data`` (read from ``path``, written at ``version``) with the upgrade steps applied."""
        try:
            return S.upgrade(table, data, version)
        except Exception as exc:
            raise StoreError(
                f"cannot upgrade {path!r} of table {table!r} from schema version {version} to "
                f"{S.SCHEMA_VERSION}: {type(exc).__name__}: {exc}"
            ) from exc

    def _read_part(self, table: str, path: str) -> pa.Table:
        """A loose part's rows in the current schema version (columns as the part has them)."""
        data = self._read_file(table, path)
        return self._upgraded(table, path, data, self._version(path, data.schema.metadata))

    def _read_served(self, table: str, served: _Served, keep_part: bool = False) -> pa.Table:
        """The rows of the keys a compacted file serves, in the current schema version, without
        the ``_part`` column (or with it at the end: ``keep_part``)."""
        data = self._read_file(table, served.path)
        version = self._version(served.path, data.schema.metadata)
        if PART_COLUMN not in data.column_names:
            raise StoreError(f"compacted file {served.path!r} of table {table!r} lacks its {PART_COLUMN!r} column")
        if not served.complete:
            data = data.filter(pc.is_in(data[PART_COLUMN], value_set=pa.array(sorted(served.keys), pa.string())))
        rows = self._upgraded(table, served.path, data.drop_columns([PART_COLUMN]), version)
        if not keep_part:
            return rows
        return arrange(
            table,
            [schema_for(table).empty_table(), rows.append_column(PART_COLUMN, data[PART_COLUMN])],
            tail=[PART_COLUMN],
        )

    def _read_arrow_once(self, table: str) -> pa.Table:
        schema = schema_for(table)
        loose, served = self._resolve_sources(table)
        pieces = [schema.empty_table()]
        pieces.extend(self._map(lambda info: self._read_part(table, info.path), loose))
        pieces.extend(self._map(lambda src: self._read_served(table, src), served))
        return arrange(table, pieces)

    def read(self, table: str) -> pd.DataFrame:
        """All rows of ``table`` as a DataFrame (empty, with the schema's columns, when no parts)."""
        return arrow_to_pandas(self.read_arrow(table))

    # ---------------------------------------------------------------- SQL

    def connect(self):
        """A fresh in-memory DuckDB connection with ``runs``, ``curves``, ``spectra`` and
        ``views`` defined as views over the current parts (typed and empty where no parts).

        Compacted rows are filtered by the same newest-wins rule as :meth:`read_arrow` (a
        registered table of the (file, key) pairs that serve each key, joined only to the
        files that lost some keys to newer writes), so SQL sees every row once. The views
        name the files listed now; a file a compaction removes afterwards makes a query on
        this connection fail (:meth:`query_arrow` re-lists and retries).

        A table with a part of an older schema version that needs an upgrade step is served
        from :meth:`read_arrow` (upgraded rows, in memory) instead of in place; a part of a
        newer version raises :class:`StoreError` naming it."""
        import duckdb

        con = duckdb.connect(database=":memory:")
        try:
            self._define_tables(con)
        except BaseException:
            con.close()
            raise
        return con

    def _define_tables(self, con) -> None:
        import duckdb

        # Timestamps come back as UTC (as stored) rather than in the machine's zone.
        con.execute("SET TimeZone = 'UTC'")
        # Joins push bloom filters into their scans, which DuckDB (1.5) cannot hand to the Arrow
        # tables and datasets registered below ("Pushdown Filter Type BLOOM_FILTER is not
        # currently supported in PyArrow Scans"): any join over runs and curves failed.
        con.execute("SET disabled_optimizers = 'join_filter_pushdown'")
        # Every view over a table re-binds its read_parquet, reading all footers again (the
        # derived views name runs and curves several times): keep them for this connection.
        con.execute("SET parquet_metadata_cache = true")
        for table, schema in TABLES.items():
            empty_name = f"__empty_{table}"
            con.register(empty_name, schema.empty_table())
            loose, served = self._resolve_sources(table)
            files = [info.path for info in loose]
            if not files and not served:
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "{empty_name}"')
            elif self._needs_upgrade(table, loose, served) or (served and not self.is_local):
                # Some part needs an upgrade step (or a remote store has compacted files):
                # resolve, upgrade and filter in Arrow.
                data_name = f"__rows_{table}"
                con.register(data_name, self.read_arrow(table))
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "{data_name}"')
            elif self.is_local:
                sql = f'SELECT * FROM "{empty_name}"'
                if files:
                    listing = ", ".join(_sql_str(f) for f in files)
                    sql += f" UNION ALL BY NAME SELECT * FROM read_parquet([{listing}], union_by_name=true)"
                complete = [src.path for src in served if src.complete]
                partial = [src for src in served if not src.complete]
                if complete:  # every row of these files counts
                    listing = ", ".join(_sql_str(path) for path in complete)
                    sql += (
                        f" UNION ALL BY NAME SELECT * EXCLUDE ({PART_COLUMN}) FROM "
                        f"read_parquet([{listing}], union_by_name=true)"
                    )
                if partial:  # some keys of these files were re-written since: keep the others' rows
                    live_name = f"__compacted_{table}"
                    con.register(
                        live_name,
                        pa.table(
                            {
                                "__file": [src.path for src in partial for _ in src.keys],
                                "__key": [k for src in partial for k in sorted(src.keys)],
                            }
                        ),
                    )
                    listing = ", ".join(_sql_str(src.path) for src in partial)
                    sql += (
                        f" UNION ALL BY NAME SELECT c.* EXCLUDE (filename, {PART_COLUMN}) FROM "
                        f"read_parquet([{listing}], union_by_name=true, filename=true) AS c "
                        f'SEMI JOIN "{live_name}" AS l ON c.filename = l.__file AND c.{PART_COLUMN} = l.__key'
                    )
                try:
                    con.execute(f'CREATE VIEW "{table}" AS {sql}')  # binds (opens) the files now
                except duckdb.IOException as exc:
                    if self._vanished(exc):  # a compaction moved a listed part: let the caller re-list
                        raise FileNotFoundError(str(exc)) from exc
                    raise StoreQueryError(f"cannot read table {table!r} of store {self.root}: {exc}") from exc
            else:  # remote store, loose parts only
                dataset_name = f"__parts_{table}"
                con.register(dataset_name, ds.dataset(files, schema=schema, filesystem=self.fs, format="parquet"))
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "{dataset_name}"')
        from results.convergence import define_views

        try:
            define_views(con)  # derived views: convergence, convergence_gaps (binding opens the files)
        except duckdb.IOException as exc:
            if self._vanished(exc):
                raise FileNotFoundError(str(exc)) from exc
            raise StoreQueryError(f"cannot define the derived views of store {self.root}: {exc}") from exc

    def describe(self) -> str:
        """One line per table: its name, part count and columns (used in query error messages)."""
        lines = []
        for table, schema in TABLES.items():
            n = len(self._part_infos(table))
            c = len(self._compacted_infos(table))
            counts = f"{n} part{'s' if n != 1 else ''}" + (f", {c} compacted file{'s' if c != 1 else ''}" if c else "")
            lines.append(f"  {table} ({counts}): {', '.join(schema.names)}")
        return "\n".join(lines)

    def query_arrow(self, sql: str) -> pa.Table:
        """Run ``sql`` over the store with DuckDB and return an Arrow table."""
        import duckdb

        for attempt in range(_READ_RETRIES):
            con = self._retrying(self.connect)
            try:
                return con.execute(sql).arrow().read_all()
            except duckdb.IOException as exc:
                # A part listed by connect() was moved into a compacted file meanwhile: re-list.
                if attempt == _READ_RETRIES - 1 or not self._vanished(exc):
                    raise StoreQueryError(
                        f"{type(exc).__name__}: {exc}\n\nstore {self.root} has these tables:\n{self.describe()}"
                    ) from exc
                time.sleep(_backoff(attempt))
            except duckdb.Error as exc:
                raise StoreQueryError(
                    f"{type(exc).__name__}: {exc}\n\nstore {self.root} has these tables:\n{self.describe()}"
                ) from exc
            finally:
                con.close()
        raise StoreError("retry loop ended without a result")  # pragma: no cover

    def _vanished(self, exc: Exception) -> bool:
        """Whether a DuckDB IO error names a store file that no longer exists."""
        text = str(exc)
        for table in TABLES:
            folder = self.table_dir(table)
            if folder in text:
                return True
        return "No files found" in text or "No such file" in text

    def query(self, sql: str) -> pd.DataFrame:
        """Run ``sql`` over the store (tables ``runs``, ``curves``, ``spectra``, ``views``)."""
        return arrow_to_pandas(self.query_arrow(sql))

    def load(self) -> dict[str, pd.DataFrame]:
        """Every table as a DataFrame: ``{"runs": ..., "curves": ..., "spectra": ..., "views": ...}``."""
        return {table: self.read(table) for table in TABLES}

    def compact(self, table: str, *, min_parts: int = 2, target_rows: int = DEFAULT_TARGET_ROWS) -> dict[str, Any]:
        """Merge ``table``'s loose parts into compacted files of about ``target_rows`` rows
        (:func:`results.compaction.compact`, which documents the arguments and the report)."""
        return compaction.compact(self, table, min_parts=min_parts, target_rows=target_rows)

    def _write_atomic(self, data: pa.Table, final: str) -> None:
        """Make ``final`` hold ``data`` in one step readers cannot see half of (see the module
        docstring): on an object store, serialise in memory and PUT the whole file to its
        key; elsewhere write a hidden temporary file beside ``final`` and rename it over."""
        if self.is_object_store:
            buf = pa.BufferOutputStream()
            pq.write_table(data, buf, compression="zstd")  # a failure here sends nothing
            payload = buf.getvalue()
            # One write of the complete file; the object appears when the stream's upload
            # completes on close(), which a failed request prevents.
            out = self.fs.open_output_stream(final)
            out.write(payload)
            out.close()
            return
        folder, name = final.rsplit("/", 1)
        tmp = f"{folder}/.{name}{TMP_MARK}{uuid.uuid4().hex[:12]}"
        try:
            pq.write_table(data, tmp, filesystem=self.fs, compression="zstd")
            # LocalFileSystem.move is rename(2): atomic, and replaces an existing file.
            self.fs.move(tmp, final)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except (OSError, FileNotFoundError):
                pass
            raise


def _backoff(attempt: int) -> float:
    """Seconds to wait before re-listing after ``attempt`` failed reads (5 ms doubling, capped)."""
    return min(0.2, 0.005 * 2**attempt)


def _sql_str(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def load(store_root: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Load every table of the store at ``store_root`` into pandas (for notebooks)."""
    return Store(store_root).load()
