"""The append-only Parquet results store.

Layout: ``<root>/<table>/<key>.parquet``, one part file per finished job, for the tables in
:data:`results.schema.TABLES`. A part is written to a temporary file in the same folder and
then renamed over its final name, so a reader never sees half a file and re-writing a key
replaces its rows instead of duplicating them. Temporary files (``.<key>.parquet.tmp-*``) are
ignored by every reader; a crash can leave one behind, never a partial part.

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
the deletion of the parts it absorbed. Keys never start with ``_``, so compacted files cannot
collide with parts. Run one compaction per table at a time; writers and readers may run
concurrently with it.

The root is a local directory or any URI :mod:`pyarrow.fs` understands (``s3://bucket/prefix``,
``gs://...``, ``file:///...``). Local stores are queried by DuckDB in place with
``read_parquet``; remote ones are handed to DuckDB as Arrow datasets, so no DuckDB extension
is needed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from results.schema import TABLES, conform, schema_for

log = logging.getLogger(__name__)

PART_SUFFIX = ".parquet"
_TMP_MARK = ".tmp-"
COMPACT_PREFIX = "_compact-"
"""File-name prefix of compacted files (part keys cannot start with ``_``)."""
PART_COLUMN = "_part"
"""Column, present only inside compacted files, naming the part key each row came from."""
META_PARTS_KEY = b"transfer_bench.parts"
"""Parquet metadata key of a compacted file: JSON list of every part key it absorbed."""
DEFAULT_TARGET_ROWS = 200_000
"""Default row budget of one compacted file."""
_READ_RETRIES = 20  # re-list this many times when a listed file vanished (a compaction moved it)
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


class StoreError(RuntimeError):
    """A store operation failed (bad key, unreadable part, ...)."""


class StoreQueryError(StoreError):
    """A SQL query over the store failed; the message carries DuckDB's error and the tables."""


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
    if not isinstance(key, str) or not _KEY_RE.match(key) or ".." in key or _TMP_MARK in key:
        raise StoreError(
            f"invalid part key {key!r}: a key names one file, so it must start with a letter or "
            f"digit and contain only letters, digits and '._=-' (no '/', '..' or '{_TMP_MARK}')"
        )


def _resolve(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, base path inside it, whether it is the local filesystem)."""
    text = os.fspath(root)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/"), isinstance(fs, pafs.LocalFileSystem)
    return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute()), True


class Store:
    """A results store rooted at a directory or object-storage URI.

    >>> store = Store("tbench-out/quickstart/store")
    >>> store.write_part("runs", job_key, rows)       # doctest: +SKIP
    >>> store.query("SELECT method, avg(score) FROM runs GROUP BY 1")  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.fspath(root)
        self.fs, self.base, self.is_local = _resolve(root)

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
        written to a temporary file beside the target and renamed over it: readers see either
        the old part or the new one, never a partial file, and a re-run replaces instead of
        appending. Zero rows still write an (empty) part, so ``has_part`` marks the job done.
        """
        data = conform(table, list(rows))
        final = self.part_path(table, key)
        self.fs.create_dir(self.table_dir(table), recursive=True)
        self._write_atomic(data, final)
        log.debug("wrote %d row(s) to %s", data.num_rows, final)
        if self.is_local or "://" not in self.root:
            return final
        return f"{self.root.rstrip('/')}/{table}/{key}{PART_SUFFIX}"

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
        return self._files(table, lambda n: n.startswith(COMPACT_PREFIX) and n.endswith(PART_SUFFIX) and _TMP_MARK not in n)

    def part_files(self, table: str) -> list[str]:
        """Paths of ``table``'s loose (not compacted) finished parts, sorted; temporary and
        compacted files are excluded (see :meth:`compacted_files`)."""
        return [info.path for info in self._part_infos(table)]

    def compacted_files(self, table: str) -> list[str]:
        """Paths of ``table``'s compacted files, oldest generation first."""
        return [info.path for info in self._compacted_infos(table)]

    def _compacted_keys(self, path: str) -> list[str]:
        """The part keys a compacted file absorbed (from its Parquet metadata)."""
        try:
            with self.fs.open_input_file(path) as f:
                meta = pq.read_metadata(f).metadata or {}
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"cannot read compacted file {path!r}: {exc}") from exc
        raw = meta.get(META_PARTS_KEY)
        if raw is None:
            raise StoreError(
                f"compacted file {path!r} has no {META_PARTS_KEY.decode()!r} metadata; "
                f"files named {COMPACT_PREFIX}*{PART_SUFFIX} are reserved for Store.compact"
            )
        return list(json.loads(raw))

    def _resolve_sources(self, table: str) -> tuple[list[pafs.FileInfo], list[tuple[str, set[str]]]]:
        """Which file serves each key: (loose part infos, [(compacted path, keys it serves)]).

        Loose parts are listed *before* compacted files: a key absent from the loose listing
        was already in a compacted file (compacted files are never removed), so no key is
        missed; a loose part deleted after listing makes the read fail and be retried.
        A key listed loose is served by the loose part; otherwise by the newest compacted
        file that lists it. Compacted files serving no key are left out.
        """
        loose = self._part_infos(table)
        taken = {info.base_name[: -len(PART_SUFFIX)] for info in loose}
        served: list[tuple[str, set[str]]] = []
        for info in reversed(self._compacted_infos(table)):  # newest first
            keys = set(self._compacted_keys(info.path)) - taken
            taken |= keys
            if keys:
                served.append((info.path, keys))
        served.reverse()
        return loose, served

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
            for path in self.compacted_files(table):
                found.update(self._compacted_keys(path))
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
        try:
            return pq.read_table(path, filesystem=self.fs)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowInvalid) as exc:
            if not self.fs.get_file_info(path).type == pafs.FileType.File:
                raise FileNotFoundError(path) from exc
            raise StoreError(f"cannot read part {path!r} of table {table!r}: {exc}") from exc

    def _read_arrow_once(self, table: str) -> pa.Table:
        schema = schema_for(table)
        loose, served = self._resolve_sources(table)
        pieces = [schema.empty_table()]
        for info in loose:
            pieces.append(self._read_file(table, info.path))
        for path, keys in served:
            data = self._read_file(table, path)
            if PART_COLUMN not in data.column_names:
                raise StoreError(f"compacted file {path!r} of table {table!r} lacks its {PART_COLUMN!r} column")
            keep = pc.is_in(data[PART_COLUMN], value_set=pa.array(sorted(keys), pa.string()))
            pieces.append(data.filter(keep).drop_columns([PART_COLUMN]))
        merged = pa.concat_tables(pieces, promote_options="permissive")
        extra = [n for n in merged.column_names if n not in schema.names]
        merged = merged.select(schema.names + extra)
        return merged.cast(pa.schema(list(schema) + [merged.schema.field(n) for n in extra]))

    def read(self, table: str) -> pd.DataFrame:
        """All rows of ``table`` as a DataFrame (empty, with the schema's columns, when no parts)."""
        return arrow_to_pandas(self.read_arrow(table))

    # ---------------------------------------------------------------- SQL

    def connect(self):
        """A fresh in-memory DuckDB connection with ``runs``, ``curves``, ``spectra`` and
        ``views`` defined as views over the current parts (typed and empty where no parts).

        Compacted rows are filtered by the same newest-wins rule as :meth:`read_arrow` (a
        registered table of the (file, key) pairs that serve each key), so SQL sees every row
        once. The views name the files listed now; a file a compaction removes afterwards
        makes a query on this connection fail (:meth:`query_arrow` re-lists and retries)."""
        import duckdb

        con = duckdb.connect(database=":memory:")
        # Timestamps come back as UTC (as stored) rather than in the machine's zone.
        con.execute("SET TimeZone = 'UTC'")
        # Joins push bloom filters into their scans, which DuckDB (1.5) cannot hand to the Arrow
        # tables and datasets registered below ("Pushdown Filter Type BLOOM_FILTER is not
        # currently supported in PyArrow Scans"): any join over runs and curves failed.
        con.execute("SET disabled_optimizers = 'join_filter_pushdown'")
        for table, schema in TABLES.items():
            empty_name = f"__empty_{table}"
            con.register(empty_name, schema.empty_table())
            loose, served = self._resolve_sources(table)
            files = [info.path for info in loose]
            if not files and not served:
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "{empty_name}"')
            elif self.is_local:
                sql = f'SELECT * FROM "{empty_name}"'
                if files:
                    listing = ", ".join(_sql_str(f) for f in files)
                    sql += f" UNION ALL BY NAME SELECT * FROM read_parquet([{listing}], union_by_name=true)"
                if served:
                    live_name = f"__compacted_{table}"
                    con.register(live_name, pa.table({
                        "__file": [path for path, keys in served for _ in keys],
                        "__key": [k for _, keys in served for k in sorted(keys)],
                    }))
                    listing = ", ".join(_sql_str(path) for path, _ in served)
                    sql += (
                        f" UNION ALL BY NAME SELECT c.* EXCLUDE (filename, {PART_COLUMN}) FROM "
                        f"read_parquet([{listing}], union_by_name=true, filename=true) AS c "
                        f'SEMI JOIN "{live_name}" AS l ON c.filename = l.__file AND c.{PART_COLUMN} = l.__key'
                    )
                try:
                    con.execute(f'CREATE VIEW "{table}" AS {sql}')  # binds (opens) the files now
                except duckdb.IOException as exc:
                    con.close()
                    if self._vanished(exc):  # a compaction moved a listed part: let the caller re-list
                        raise FileNotFoundError(str(exc)) from exc
                    raise StoreQueryError(f"cannot read table {table!r} of store {self.root}: {exc}") from exc
            elif not served:
                dataset_name = f"__parts_{table}"
                con.register(dataset_name, ds.dataset(files, schema=schema, filesystem=self.fs, format="parquet"))
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "{dataset_name}"')
            else:  # remote store with compacted files: resolve in Arrow
                data_name = f"__rows_{table}"
                con.register(data_name, self.read_arrow(table))
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "{data_name}"')
        from results.convergence import define_views

        try:
            define_views(con)  # derived views: convergence, convergence_gaps (binding opens the files)
        except duckdb.IOException as exc:
            con.close()
            if self._vanished(exc):
                raise FileNotFoundError(str(exc)) from exc
            raise StoreQueryError(f"cannot define the derived views of store {self.root}: {exc}") from exc
        return con

    def describe(self) -> str:
        """One line per table: its name, part count and columns (used in query error messages)."""
        lines = []
        for table, schema in TABLES.items():
            n = len(self._part_infos(table))
            c = len(self._compacted_infos(table))
            counts = f"{n} part{'s' if n != 1 else ''}" + (
                f", {c} compacted file{'s' if c != 1 else ''}" if c else ""
            )
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

    # ---------------------------------------------------------------- compaction

    def compact(self, table: str, *, min_parts: int = 2, target_rows: int = DEFAULT_TARGET_ROWS) -> dict[str, Any]:
        """Merge ``table``'s loose parts into compacted files of about ``target_rows`` rows.

        Nothing happens when fewer than ``min_parts`` loose parts exist. Each compacted file
        is written to a temporary name and renamed into place; only then are the parts it
        absorbed deleted, and a part whose size or modification time changed since it was
        read (a concurrent re-write) is kept, so it keeps winning over its compacted copy.
        A crash at any point leaves every key readable exactly once.

        Returns ``{"table", "parts_merged", "rows", "files_written" (paths), "parts_removed",
        "parts_kept" (keys re-written meanwhile)}``.
        """
        schema_for(table)
        if not isinstance(min_parts, int) or min_parts < 1:
            raise StoreError(f"compact: min_parts must be an integer >= 1, got {min_parts!r}")
        if not isinstance(target_rows, int) or target_rows < 1:
            raise StoreError(f"compact: target_rows must be an integer >= 1, got {target_rows!r}")
        loose = self._part_infos(table)
        report: dict[str, Any] = {"table": table, "parts_merged": 0, "rows": 0, "files_written": [],
                                  "parts_removed": 0, "parts_kept": []}
        if len(loose) < min_parts:
            return report
        for batch in self._compaction_batches(table, loose, target_rows):
            path, rows = self._write_compacted(table, batch)
            removed, kept = self._remove_merged(batch)
            report["files_written"].append(path)
            report["parts_merged"] += len(batch)
            report["rows"] += rows
            report["parts_removed"] += removed
            report["parts_kept"].extend(kept)
        log.info("compacted %d part(s) of %s into %d file(s)", report["parts_merged"], table,
                 len(report["files_written"]))
        return report

    def _compaction_batches(self, table: str, loose: list[pafs.FileInfo], target_rows: int):
        """Read the loose parts and group them into batches of at most ``target_rows`` rows
        (a single larger part makes a batch of its own). Yields lists of
        ``(info, key, arrow table)``; a part that vanished meanwhile is skipped."""
        batch: list[tuple[pafs.FileInfo, str, pa.Table]] = []
        rows = 0
        for info in loose:
            try:
                data = self._read_file(table, info.path)
            except FileNotFoundError:
                continue
            if batch and rows + data.num_rows > target_rows:
                yield batch
                batch, rows = [], 0
            batch.append((info, info.base_name[: -len(PART_SUFFIX)], data))
            rows += data.num_rows
        if batch:
            yield batch

    def _next_generation(self, table: str) -> int:
        newest = 0
        for info in self._compacted_infos(table):
            try:
                newest = max(newest, int(info.base_name[len(COMPACT_PREFIX):].split("-", 1)[0]))
            except ValueError:
                continue
        return max(time.time_ns(), newest + 1)

    def _write_compacted(self, table: str, batch: list[tuple[pafs.FileInfo, str, pa.Table]]) -> tuple[str, int]:
        """Write one batch as a compacted file (temporary name, then atomic rename); return
        (its path, its row count). The parts stay in place: until they are removed they win."""
        schema = schema_for(table)
        pieces = [schema.empty_table().append_column(PART_COLUMN, pa.array([], pa.string()))]
        for _, key, data in batch:
            pieces.append(data.append_column(PART_COLUMN, pa.array([key] * data.num_rows, pa.string())))
        merged = pa.concat_tables(pieces, promote_options="permissive")
        keys = [key for _, key, _ in batch]
        meta = dict(schema.metadata or {})
        meta[META_PARTS_KEY] = json.dumps(keys).encode()
        merged = merged.replace_schema_metadata(meta)
        folder = self.table_dir(table)
        name = f"{COMPACT_PREFIX}{self._next_generation(table):020d}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        final = f"{folder}/{name}"
        self._write_atomic(merged, final)
        return final, merged.num_rows

    def _write_atomic(self, data: pa.Table, final: str) -> None:
        """Write ``data`` to a hidden temporary file beside ``final``, then rename it over ``final``."""
        folder, name = final.rsplit("/", 1)
        tmp = f"{folder}/.{name}{_TMP_MARK}{uuid.uuid4().hex[:12]}"
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

    def _remove_merged(self, batch: list[tuple[pafs.FileInfo, str, pa.Table]]) -> tuple[int, list[str]]:
        """Delete the loose parts of a compacted batch, except those re-written since they
        were read (size or mtime changed); return (removed count, kept keys)."""
        removed, kept = 0, []
        for info, key, _ in batch:
            now = self.fs.get_file_info(info.path)
            if now.type != pafs.FileType.File:
                continue
            if now.size != info.size or now.mtime_ns != info.mtime_ns:
                kept.append(key)
                continue
            try:
                self.fs.delete_file(info.path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed, kept


def _backoff(attempt: int) -> float:
    """Seconds to wait before re-listing after ``attempt`` failed reads (5 ms doubling, capped)."""
    return min(0.2, 0.005 * 2**attempt)


def _sql_str(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def load(store_root: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Load every table of the store at ``store_root`` into pandas (for notebooks)."""
    return Store(store_root).load()
