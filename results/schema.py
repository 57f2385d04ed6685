"""Versioned Arrow schemas of the results store.

Four tables live in the store, each a folder of Parquet part files:

``runs``
    one row per (pre-training run, checkpoint epoch, downstream set, protocol, shots, eval seed).
    The design columns (``key`` ... ``device``) are a contract and are never renamed; later
    columns may be added (readers use ``union_by_name``, so old parts read back with nulls).
``curves``
    one row per epoch of an evaluation's training curve, joined to ``runs`` by ``key``.
``spectra``
    singular values of penultimate features, one row per (checkpoint, downstream set, split,
    rank index), with the per-spectrum summaries ``k80`` and ``effective_rank`` repeated.
``views``
    one row per curated pre-training view (its manifest, with the curation funnel as JSON).

:data:`SCHEMA_VERSION` is stored in every part file's Parquet key-value metadata under
``transfer_bench.schema_version`` (together with the table name), so readers can tell which
layout wrote a part. Bump it when a column changes meaning or type.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

SCHEMA_VERSION: int = 1
"""Version of the table layouts below; stored in each part file's metadata."""

META_VERSION_KEY = b"transfer_bench.schema_version"
META_TABLE_KEY = b"transfer_bench.table"

_TS = pa.timestamp("us", tz="UTC")
_STR = pa.string()
_F64 = pa.float64()
_I64 = pa.int64()


def _schema(table: str, fields: Sequence[tuple[str, pa.DataType]]) -> pa.Schema:
    return pa.schema(
        [pa.field(name, dtype, nullable=True) for name, dtype in fields],
        metadata={META_VERSION_KEY: str(SCHEMA_VERSION).encode(), META_TABLE_KEY: table.encode()},
    )


RUNS = _schema(
    "runs",
    [
        # --- design columns (contract: do not rename) ---
        ("key", _STR),
        ("spec", _STR),
        ("created_at", _TS),
        ("code_version", _STR),
        ("status", _STR),  # 'ok' | 'failed'
        ("error", _STR),
        ("pretrain_key", _STR),
        ("source", _STR),
        ("curation", _STR),
        ("label_noise", _F64),
        ("pretrain_size", _I64),
        ("method", _STR),
        ("backbone", _STR),
        ("pretrain_epochs", _I64),
        ("checkpoint_epoch", _I64),
        ("pretrain_seed", _I64),
        ("samples_seen", _I64),
        ("downstream", _STR),
        ("num_classes", _I64),
        ("metric", _STR),
        ("chance", _F64),
        ("protocol", _STR),
        ("shots", _I64),  # null = full training set, 0 = zero-shot
        ("eval_seed", _I64),
        ("top1", _F64),
        ("balanced_acc", _F64),
        ("score", _F64),
        ("loss", _F64),
        ("train_seconds", _F64),
        ("eval_seconds", _F64),
        ("device", _STR),
        # --- additions ---
        ("job_key", _STR),  # the evaluation job whose part file holds this row
        ("view_key", _STR),
        ("image_size", _I64),
        ("val_score", _F64),
        ("hparams", _STR),  # JSON object of the chosen hyperparameters
    ],
)

CURVES = _schema(
    "curves",
    [
        ("key", _STR),  # the runs row this curve belongs to
        ("job_key", _STR),
        ("protocol", _STR),
        ("downstream", _STR),
        ("shots", _I64),
        ("eval_seed", _I64),
        ("epoch", _I64),
        ("train_loss", _F64),
        ("val_score", _F64),
        ("lr", _F64),
        # additions: what downstream.finetune records per epoch
        ("val_loss", _F64),
        ("last_lr", _F64),  # the scheduler's lr at the epoch's end (``lr`` is the selected base lr)
        ("seconds", _F64),  # wall time since the start of training
        ("val_top1", _F64),  # validation top-1 (``val_score`` is the set's headline metric)
    ],
)

SPECTRA = _schema(
    "spectra",
    [
        ("key", _STR),
        ("job_key", _STR),
        ("pretrain_key", _STR),
        ("checkpoint_epoch", _I64),
        ("downstream", _STR),
        ("split", _STR),
        ("rank_index", _I64),
        ("singular_value", _F64),
        ("k80", _I64),
        ("effective_rank", _F64),
        # additions
        ("num_examples", _I64),
        ("feature_dim", _I64),
        ("method", _STR),
        ("source", _STR),
    ],
)

VIEWS = _schema(
    "views",
    [
        ("view_key", _STR),
        ("spec", _STR),
        ("created_at", _TS),
        ("source", _STR),
        ("curation", _STR),
        ("requested_size", _I64),
        ("size", _I64),
        ("label_noise", _F64),
        ("achieved_noise", _F64),
        ("label_accuracy", _F64),
        ("num_classes", _I64),
        ("funnel", _STR),  # JSON object: step -> removed
        # additions
        ("pool_size", _I64),
        ("noise_model", _STR),
        ("materialize", _STR),
        ("details", _STR),  # JSON: per-step reports (dedup overlap, score cut-off), per-source funnels, per-class noise
    ],
)

TABLES: dict[str, pa.Schema] = {"runs": RUNS, "curves": CURVES, "spectra": SPECTRA, "views": VIEWS}
"""Table name -> Arrow schema. The store exposes exactly these tables."""

# Columns that hold JSON text; dict/list values given for them are serialised by :func:`conform`.
JSON_COLUMNS: dict[str, frozenset[str]] = {
    "runs": frozenset({"hparams"}),
    "views": frozenset({"funnel", "details"}),
}


class SchemaError(ValueError):
    """A row does not fit its table's schema (unknown table or column, or a value of the wrong type)."""


def schema_for(table: str) -> pa.Schema:
    """The schema of ``table``; raises :class:`SchemaError` naming the valid tables."""
    try:
        return TABLES[table]
    except KeyError:
        raise SchemaError(
            f"unknown results table {table!r}; valid tables: {', '.join(TABLES)}"
        ) from None


def columns(table: str) -> list[str]:
    """Column names of ``table`` in schema order."""
    return list(schema_for(table).names)


def empty_table(table: str) -> pa.Table:
    """A zero-row Arrow table with ``table``'s schema."""
    return schema_for(table).empty_table()


def _clean_value(table: str, column: str, value: Any) -> Any:
    """Normalise one Python value before Arrow conversion (NaN-free nulls, JSON text, numpy scalars)."""
    if value is None:
        return None
    # numpy scalars -> Python scalars (avoids importing numpy here)
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        value = item()
    if column in JSON_COLUMNS.get(table, ()) and not isinstance(value, str):
        try:
            return json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError) as exc:
            raise SchemaError(
                f"table {table!r}, column {column!r}: value {value!r} is not JSON-serialisable ({exc})"
            ) from None
    if isinstance(value, _dt.datetime) and value.tzinfo is None:
        # Naive datetimes are taken to be UTC rather than local time.
        return value.replace(tzinfo=_dt.timezone.utc)
    return value


def conform(table: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Turn ``rows`` (dicts of column -> value) into an Arrow table with ``table``'s schema.

    Missing columns become null; a column the schema does not have is rejected with a
    :class:`SchemaError` naming it and the valid columns; values are cast to the schema's types
    (ints to floats, ISO strings to timestamps, dicts to JSON text for JSON columns; float NaN
    is stored as null, as pandas means it) and a value that cannot be cast is reported with its
    column and row index. Naive datetimes are taken to be UTC.
    """
    schema = schema_for(table)
    names = schema.names
    known = set(names)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SchemaError(
                f"table {table!r}: row {i} is a {type(row).__name__}, expected a dict of column -> value"
            )
        unknown = [c for c in row if c not in known]
        if unknown:
            raise SchemaError(
                f"table {table!r}: unknown column(s) {', '.join(map(repr, unknown))} in row {i}; "
                f"valid columns: {', '.join(names)}"
            )

    arrays = []
    for field in schema:
        values = [_clean_value(table, field.name, row.get(field.name)) for row in rows]
        arrays.append(_to_array(table, field, values))
    return pa.Table.from_arrays(arrays, schema=schema)


def _to_array(table: str, field: pa.Field, values: list[Any]) -> pa.Array:
    try:
        return pa.array(values, type=field.type, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        pass
    # Slow path: infer, then cast (e.g. ISO strings -> timestamps, "3" -> int64), and on failure
    # find the offending row so the message can name it.
    try:
        return pa.array(values, from_pandas=True).cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        pass
    for i, v in enumerate(values):
        try:
            pa.array([v], from_pandas=True).cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
            raise SchemaError(
                f"table {table!r}, column {field.name!r}, row {i}: cannot store {v!r} "
                f"({type(v).__name__}) as {field.type}"
            ) from None
    raise SchemaError(
        f"table {table!r}, column {field.name!r}: values of mixed types cannot be stored as {field.type}"
    )
