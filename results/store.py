"""The append-only Parquet results store.

Layout: ``<root>/<table>/<key>.parquet``, one part file per finished job, for the tables in
:data:`results.schema.TABLES`. A part is written to a temporary file in the same folder and
then renamed over its final name, so a reader never sees half a file and re-writing a key
replaces its rows instead of duplicating them. Temporary files (``.<key>.parquet.tmp-*``) are
ignored by every reader; a crash can leave one behind, never a partial part.

The root is a local directory or any URI :mod:`pyarrow.fs` understands (``s3://bucket/prefix``,
``gs://...``, ``file:///...``). Local stores are queried by DuckDB in place with
``read_parquet``; remote ones are handed to DuckDB as Arrow datasets, so no DuckDB extension
is needed.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from results.schema import TABLES, conform, schema_for

log = logging.getLogger(__name__)

PART_SUFFIX = ".parquet"
_TMP_MARK = ".tmp-"
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
        folder = self.table_dir(table)
        self.fs.create_dir(folder, recursive=True)
        tmp = f"{folder}/.{key}{PART_SUFFIX}{_TMP_MARK}{uuid.uuid4().hex[:12]}"
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
        log.debug("wrote %d row(s) to %s", data.num_rows, final)
        if self.is_local or "://" not in self.root:
            return final
        return f"{self.root.rstrip('/')}/{table}/{key}{PART_SUFFIX}"

    # ---------------------------------------------------------------- reading

    def _part_infos(self, table: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.table_dir(table), allow_not_found=True, recursive=False)
        infos = [
            info
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(PART_SUFFIX)
            and not info.base_name.startswith(".")
        ]
        return sorted(infos, key=lambda i: i.base_name)

    def part_files(self, table: str) -> list[str]:
        """Paths of ``table``'s finished parts (temporary files excluded), sorted."""
        return [info.path for info in self._part_infos(table)]

    def part_keys(self, table: str) -> set[str]:
        """Keys that have a finished part in ``table``."""
        return {info.base_name[: -len(PART_SUFFIX)] for info in self._part_infos(table)}

    def has_part(self, table: str, key: str) -> bool:
        """Whether ``key`` has a finished part in ``table`` (possibly with zero rows)."""
        info = self.fs.get_file_info(self.part_path(table, key))
        return info.type == pafs.FileType.File

    def read_arrow(self, table: str) -> pa.Table:
        """All of ``table``'s parts as one Arrow table in the current schema.

        Parts written under an older layout read back with nulls for columns they lack;
        columns a part has beyond the schema are kept at the end.
        """
        schema = schema_for(table)
        pieces = [schema.empty_table()]
        for path in self.part_files(table):
            try:
                pieces.append(pq.read_table(path, filesystem=self.fs))
            except (OSError, pa.ArrowInvalid) as exc:
                raise StoreError(f"cannot read part {path!r} of table {table!r}: {exc}") from exc
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
        ``views`` defined as views over the current parts (typed and empty where no parts)."""
        import duckdb

        con = duckdb.connect(database=":memory:")
        # Timestamps come back as UTC (as stored) rather than in the machine's zone.
        con.execute("SET TimeZone = 'UTC'")
        for table, schema in TABLES.items():
            empty_name = f"__empty_{table}"
            con.register(empty_name, schema.empty_table())
            files = self.part_files(table)
            if not files:
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "{empty_name}"')
            elif self.is_local:
                listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(
                    f'CREATE VIEW "{table}" AS SELECT * FROM "{empty_name}" '
                    f"UNION ALL BY NAME SELECT * FROM read_parquet([{listing}], union_by_name=true)"
                )
            else:
                dataset_name = f"__parts_{table}"
                con.register(dataset_name, ds.dataset(files, schema=schema, filesystem=self.fs, format="parquet"))
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "{dataset_name}"')
        return con

    def describe(self) -> str:
        """One line per table: its name, part count and columns (used in query error messages)."""
        lines = []
        for table, schema in TABLES.items():
            n = len(self._part_infos(table))
            lines.append(f"  {table} ({n} part{'s' if n != 1 else ''}): {', '.join(schema.names)}")
        return "\n".join(lines)

    def query_arrow(self, sql: str) -> pa.Table:
        """Run ``sql`` over the store with DuckDB and return an Arrow table."""
        import duckdb

        con = self.connect()
        try:
            return con.execute(sql).arrow().read_all()
        except duckdb.Error as exc:
            raise StoreQueryError(
                f"{type(exc).__name__}: {exc}\n\nstore {self.root} has these tables:\n{self.describe()}"
            ) from exc
        finally:
            con.close()

    def query(self, sql: str) -> pd.DataFrame:
        """Run ``sql`` over the store (tables ``runs``, ``curves``, ``spectra``, ``views``)."""
        return arrow_to_pandas(self.query_arrow(sql))

    def load(self) -> dict[str, pd.DataFrame]:
        """Every table as a DataFrame: ``{"runs": ..., "curves": ..., "spectra": ..., "views": ...}``."""
        return {table: self.read(table) for table in TABLES}


def load(store_root: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Load every table of the store at ``store_root`` into pandas (for notebooks)."""
    return Store(store_root).load()
