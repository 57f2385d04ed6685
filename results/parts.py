"""The results store's file conventions, shared by :mod:`results.store` and :mod:`results.compaction`.

Part and compacted-file names, the Parquet metadata keys a part or compacted file carries, the
store's error types, and :func:`arrange` (Arrow tables conformed to a table's current schema).
See :mod:`results.store` for what the names mean to readers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from results import schema as S
from results.schema import schema_for

PART_SUFFIX = ".parquet"
TMP_MARK = ".tmp-"
"""Marks a temporary file (``.<key>.parquet.tmp-<id>``); every reader ignores it."""
COMPACT_PREFIX = "_compact-"
"""File-name prefix of compacted files (part keys cannot start with ``_``)."""
PART_COLUMN = "_part"
"""Column, present only inside compacted files, naming the part key each row came from."""
META_PARTS_KEY = b"transfer_bench.parts"
"""Parquet metadata key of a compacted file: JSON list of every part key it absorbed."""
META_WRITE_ID_KEY = b"transfer_bench.write_id"
"""Parquet metadata key of a part: a random id of the write that made it (compaction checks it)."""
DEFAULT_TARGET_ROWS = 200_000
"""Default row budget of one compacted file."""


class StoreError(RuntimeError):
    """A store operation failed (bad key, unreadable part, ...)."""


class StoreQueryError(StoreError):
    """A SQL query over the store failed; the message carries DuckDB's error and the tables."""


def arrange(table: str, pieces: list[pa.Table], tail: Sequence[str] = ()) -> pa.Table:
    """``pieces`` (the first one ``table``'s empty table) concatenated, in the current schema:
    its columns first, cast to its types (missing ones null), then ``tail``, then any other
    column a piece had; the schema's metadata (version) replaces the pieces'."""
    schema = schema_for(table)
    try:
        merged = pa.concat_tables(pieces, promote_options="permissive")
        rest = [n for n in merged.column_names if n not in schema.names and n not in tail]
        merged = merged.select(schema.names + list(tail) + rest)
        target = pa.schema(
            list(schema) + [merged.schema.field(n) for n in [*tail, *rest]], metadata=S.part_metadata(table)
        )
        return merged.cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise StoreError(
            f"table {table!r}: parts hold values that do not fit the current schema "
            f"(a type change without an upgrade step?): {exc}"
        ) from exc
