"""Compaction of the results store: many small parts merged into few larger files.

The functions here take a :class:`results.store.Store`; :meth:`Store.compact` calls
:func:`compact`. The file naming, the key resolution readers apply (a loose part wins, then the
newest compacted file) and why a crash leaves every key readable exactly once are described in
:mod:`results.store`'s docstring.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from results import schema as S
from results.parts import (
    COMPACT_PREFIX,
    DEFAULT_TARGET_ROWS,
    META_PARTS_KEY,
    META_WRITE_ID_KEY,
    PART_COLUMN,
    PART_SUFFIX,
    StoreError,
    arrange,
)
from results.schema import schema_for

if TYPE_CHECKING:
    from results.store import Store

log = logging.getLogger("results.store")


def compact(store: Store, table: str, *, min_parts: int = 2, target_rows: int = DEFAULT_TARGET_ROWS) -> dict[str, Any]:
    """Merge ``table``'s loose parts into compacted files of about ``target_rows`` rows.

    Nothing is merged when fewer than ``min_parts`` loose parts exist. Each compacted file
    is written atomically (see the module docstring); only then are the parts it absorbed
    deleted, and a part whose size, modification time or write id changed since it was
    read (a concurrent re-write) is kept, so it keeps winning over its compacted copy.
    A crash at any point leaves every key readable exactly once.

    Rows are written at the current schema version: parts of older versions are upgraded
    on the way, and the rows that compacted files of an older version still serve are
    re-written as new compacted files when reading them needs an upgrade step (so SQL reads
    the table in place again). A part written by a newer version stops the compaction
    with a :class:`StoreError`, checked (from the footers) before anything is written.

    Returns ``{"table", "parts_merged", "rows", "files_written" (paths), "parts_removed",
    "parts_kept" (keys re-written meanwhile), "files_upgraded" (older compacted files
    whose rows were re-written)}``.
    """
    schema_for(table)
    if not isinstance(min_parts, int) or min_parts < 1:
        raise StoreError(f"compact: min_parts must be an integer >= 1, got {min_parts!r}")
    if not isinstance(target_rows, int) or target_rows < 1:
        raise StoreError(f"compact: target_rows must be an integer >= 1, got {target_rows!r}")
    loose = store._part_infos(table)
    report: dict[str, Any] = {
        "table": table,
        "parts_merged": 0,
        "rows": 0,
        "files_written": [],
        "parts_removed": 0,
        "parts_kept": [],
        "files_upgraded": [],
    }
    if len(loose) >= min_parts:
        store._map(partial(_check_version, store), loose)  # a part of a newer version stops us here, before any write
        for batch in compaction_batches(store, table, loose, target_rows):
            path, rows = write_compacted(store, table, batch)
            removed, kept = remove_merged(store, batch)
            report["files_written"].append(path)
            report["parts_merged"] += len(batch)
            report["rows"] += rows
            report["parts_removed"] += removed
            report["parts_kept"].extend(kept)
    _upgrade_compacted(store, table, report)
    if report["files_written"]:
        log.info(
            "compacted %d part(s) of %s into %d file(s), %d older compacted file(s) upgraded",
            report["parts_merged"],
            table,
            len(report["files_written"]),
            len(report["files_upgraded"]),
        )
    return report


def _check_version(store: Store, info: pafs.FileInfo) -> None:
    """Raise :class:`StoreError` if a loose part is of a newer version (a vanished one is fine)."""
    try:
        store._part_facts(info)
    except FileNotFoundError:
        pass


def compaction_batches(store: Store, table: str, loose: list[pafs.FileInfo], target_rows: int):
    """Read the loose parts (upgraded to the current schema version) and group them into
    batches of at most ``target_rows`` rows (a single larger part makes a batch of its own).
    Yields lists of ``(info, key, arrow table, write id)``; a part that vanished meanwhile is
    skipped."""
    batch: list[tuple[pafs.FileInfo, str, pa.Table, bytes | None]] = []
    rows = 0
    for info in loose:
        try:
            raw = store._read_file(table, info.path)
        except FileNotFoundError:
            continue
        write_id = (raw.schema.metadata or {}).get(META_WRITE_ID_KEY)
        data = store._upgraded(table, info.path, raw, store._version(info.path, raw.schema.metadata))
        if batch and rows + data.num_rows > target_rows:
            yield batch
            batch, rows = [], 0
        batch.append((info, info.base_name[: -len(PART_SUFFIX)], data, write_id))
        rows += data.num_rows
    if batch:
        yield batch


def _upgrade_compacted(store: Store, table: str, report: dict[str, Any]) -> None:
    """Re-write the rows that compacted files of older schema versions still serve, when
    reading them needs an upgrade step, as new compacted files at the current version (a
    newer generation, so they win; the old files then serve nothing and are skipped)."""
    _, served = store._resolve_sources(table)
    for src in served:
        if not S.upgrade_steps(table, src.version):
            continue
        try:
            data = store._read_served(table, src, keep_part=True)
        except FileNotFoundError:  # pragma: no cover - compacted files are never removed
            continue
        path, rows = _write_compacted_table(store, table, data, sorted(src.keys))
        report["files_written"].append(path)
        report["rows"] += rows
        report["files_upgraded"].append(src.path)


def _next_generation(store: Store, table: str) -> int:
    newest = 0
    for info in store._compacted_infos(table):
        try:
            newest = max(newest, int(info.base_name[len(COMPACT_PREFIX) :].split("-", 1)[0]))
        except ValueError:
            continue
    return max(time.time_ns(), newest + 1)


def write_compacted(
    store: Store, table: str, batch: list[tuple[pafs.FileInfo, str, pa.Table, bytes | None]]
) -> tuple[str, int]:
    """Write one batch as a compacted file (atomically); return (its path, its row count).
    The parts stay in place: until they are removed they win."""
    pieces = [schema_for(table).empty_table()]
    for _, key, data, _ in batch:
        pieces.append(data.append_column(PART_COLUMN, pa.array([key] * data.num_rows, pa.string())))
    merged = arrange(table, pieces, tail=[PART_COLUMN])
    return _write_compacted_table(store, table, merged, [key for _, key, _, _ in batch])


def _write_compacted_table(store: Store, table: str, data: pa.Table, keys: list[str]) -> tuple[str, int]:
    """Write ``data`` (the current schema plus ``_part``) as a new compacted file, newest
    generation, absorbing ``keys``; return (its path, its row count)."""
    meta = {**S.part_metadata(table), META_PARTS_KEY: json.dumps(keys).encode()}
    data = data.replace_schema_metadata(meta)
    name = f"{COMPACT_PREFIX}{_next_generation(store, table):020d}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
    final = f"{store.table_dir(table)}/{name}"
    store._write_atomic(data, final)
    return final, data.num_rows


def remove_merged(
    store: Store, batch: list[tuple[pafs.FileInfo, str, pa.Table, bytes | None]]
) -> tuple[int, list[str]]:
    """Delete the loose parts of a compacted batch, except those re-written since they
    were read (size, mtime or write id changed); return (removed count, kept keys)."""
    removed, kept = 0, []
    for info, key, _, write_id in batch:
        now = store.fs.get_file_info(info.path)
        if now.type != pafs.FileType.File:
            continue
        if now.size != info.size or now.mtime_ns != info.mtime_ns:
            kept.append(key)
            continue
        if write_id is not None:
            try:
                if store._part_facts(now)[1] != write_id:
                    kept.append(key)
                    continue
            except FileNotFoundError:
                continue
        try:
            store.fs.delete_file(info.path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed, kept
