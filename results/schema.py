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

Versions
--------

:data:`SCHEMA_VERSION` is stored in every part file's Parquet key-value metadata under
``transfer_bench.schema_version`` (together with the table name), so readers can tell which
layout wrote a part. A part with no version in its metadata was written before versioning
existed: it is version 0 (the same tables with fewer columns). The policy:

- **Adding a column** (at the end of a table's list) needs no version bump and no step: parts
  written before it read back with nulls in it, through :meth:`results.store.Store.read` and
  SQL alike. So a part of version ``v`` may lack columns added while ``v`` was current.
- **Changing a column's type, unit or meaning** (or dropping a later addition; the design
  columns are never renamed) needs a bump of :data:`SCHEMA_VERSION` to ``v + 1`` *and* an
  upgrade step for every table whose parts change, registered with :func:`upgrade_step`::

      @upgrade_step(1, "runs")          # parts of runs written at version 1 -> version 2
      def _runs_scores_in_percent(data: pa.Table) -> pa.Table:
          i = data.schema.get_field_index("score")
          if i < 0:                      # a step must accept parts that lack the column
              return data
          return data.set_column(i, "score", pc.multiply(data["score"], 100.0))

  A step is a function of a :class:`pyarrow.Table` holding one part's rows as written at ``v``
  that returns the same rows, in the same order, as ``v + 1`` would have written them. It must
  keep the columns it does not touch (including ones it does not know) and accept parts that
  lack some columns. A table with no step at a bump is unchanged by it.

Readers apply the steps from a part's version up to :data:`SCHEMA_VERSION`
(:func:`upgrade`): ``Store.read`` part by part, SQL by serving a table that has any part
needing a step through Arrow (tables needing none are read in place). ``tbench results
compact`` writes upgraded rows at the current version, which takes the table back to the
in-place path. A part written by a *newer* version than this code is refused with an error
naming it: its meaning cannot be guessed, so the code must be upgraded.

There are no steps yet: version 0 -> 1 only added columns.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

SCHEMA_VERSION: int = 1
"""Version of the table layouts below; stored in each part file's metadata. Read it as
``results.schema.SCHEMA_VERSION`` at the time of use (tests change it)."""

META_VERSION_KEY = b"transfer_bench.schema_version"
META_TABLE_KEY = b"transfer_bench.table"

Upgrade = Callable[[pa.Table], pa.Table]
UPGRADES: dict[tuple[str, int], Upgrade] = {}
"""Upgrade steps: ``UPGRADES[(table, v)]`` turns rows of ``table`` written at version ``v``
into version ``v + 1`` (register with :func:`upgrade_step`; see the module's policy)."""

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
        ("samples_budget", _I64),  # the run's budget in samples seen (null: its budget is pretrain_epochs)
        # the embedded world's declared similarity[source][downstream] (world.json), null when the
        # source or the set is not a world one (real or package sets, random init, mixtures)
        ("declared_similarity", _F64),
        # an existing model's provenance (the spec's models:, pretrain/existing.py); null on grid rows
        ("model", _STR),  # its name in the spec
        ("framework", _STR),  # open_clip | timm
        ("arch", _STR),
        ("weights", _STR),  # an open_clip tag, a path or hf-hub:org/name, as given
        ("weights_sha256", _STR),  # the weights file's content hash (null for an open_clip tag)
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
        raise SchemaError(f"unknown results table {table!r}; valid tables: {', '.join(TABLES)}") from None


def upgrade_step(from_version: int, *tables: str) -> Callable[[Upgrade], Upgrade]:
    """Register the decorated function as the step from ``from_version`` to ``from_version + 1``
    for each of ``tables`` (see the module docstring for what a step must do)."""
    if not isinstance(from_version, int) or from_version < 0:
        raise SchemaError(f"upgrade_step: from_version must be an integer >= 0, got {from_version!r}")
    if not tables:
        raise SchemaError("upgrade_step: name at least one table")
    for table in tables:
        schema_for(table)

    def register(fn: Upgrade) -> Upgrade:
        for table in tables:
            if (table, from_version) in UPGRADES:
                raise SchemaError(
                    f"an upgrade step for table {table!r} from version {from_version} is already registered"
                )
            UPGRADES[(table, from_version)] = fn
        return fn

    return register


def version_of(metadata: Mapping[bytes, bytes] | None) -> int:
    """The schema version recorded in a part's Parquet key-value ``metadata`` (0 when absent:
    the layout from before versioning). Raises :class:`SchemaError` for a malformed value."""
    raw = (metadata or {}).get(META_VERSION_KEY)
    if raw is None:
        return 0
    try:
        version = int(raw)
    except ValueError:
        version = -1
    if version < 0:
        raise SchemaError(f"malformed {META_VERSION_KEY.decode()!r} metadata {raw!r}: expected an integer >= 0")
    return version


def upgrade_steps(table: str, version: int) -> list[tuple[int, Upgrade]]:
    """The registered steps, in order, that bring a part of ``table`` written at ``version`` to
    :data:`SCHEMA_VERSION` (empty when none is needed; versions newer than the code have none)."""
    return [(v, UPGRADES[(table, v)]) for v in range(version, SCHEMA_VERSION) if (table, v) in UPGRADES]


def upgrade(table: str, data: pa.Table, version: int) -> pa.Table:
    """``data`` (rows of ``table`` as written at ``version``) brought to :data:`SCHEMA_VERSION`
    by the registered steps; unchanged when no step applies."""
    for v, step in upgrade_steps(table, version):
        rows = data.num_rows
        data = step(data)
        if not isinstance(data, pa.Table) or data.num_rows != rows:
            raise SchemaError(
                f"upgrade step of table {table!r} from version {v} must return a pyarrow.Table with "
                f"the same rows ({rows}), got {type(data).__name__}"
                + (f" with {data.num_rows}" if isinstance(data, pa.Table) else "")
            )
    return data


def part_metadata(table: str) -> dict[bytes, bytes]:
    """The Parquet key-value metadata a part of ``table`` is written with: the current
    :data:`SCHEMA_VERSION` and the table name."""
    schema_for(table)
    return {META_VERSION_KEY: str(SCHEMA_VERSION).encode(), META_TABLE_KEY: table.encode()}


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
        return value.replace(tzinfo=_dt.UTC)
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
            raise SchemaError(f"table {table!r}: row {i} is a {type(row).__name__}, expected a dict of column -> value")
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
    raise SchemaError(f"table {table!r}, column {field.name!r}: values of mixed types cannot be stored as {field.type}")
