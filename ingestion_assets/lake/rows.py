"""What a Delta row is: lineage columns, Delta-compatible types, partition days, the write plan."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import Schema

from ingestion_assets.errors import IngestionError, PrecisionLossError
from ingestion_assets.lake.keys import KeyLedger
from ingestion_assets.sources.window import PartitionWindow

PARTITION_DATE = "_partition_date"
INGESTED_AT = "_ingested_at"
RUN_ID = "_run_id"
LINEAGE_COLUMNS = (PARTITION_DATE, INGESTED_AT, RUN_ID)

PROGRESS_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class SchemaDiff:
    """How an incoming schema differs from the Delta table's, column by column."""

    added: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.missing or self.changed)

    def describe(self) -> str:
        """`added X (int), missing Y (string), changed Z: int -> string`."""
        parts = [f"added column {name} ({kind})" for name, kind in self.added.items()]
        parts += [f"missing column {name} ({kind})" for name, kind in self.missing.items()]
        parts += [
            f"column {name} changed type from {old} to {new}"
            for name, (old, new) in self.changed.items()
        ]
        return "; ".join(parts)


def delta_type_names(schema: pa.Schema) -> dict[str, str]:
    """Each column's Delta type name (`long`, `decimal(19,4)`, `timestamp_ntz`, ...)."""
    delta = Schema.from_arrow(schema)
    return {
        item.name: str(item.type.type if hasattr(item.type, "type") else item.type)
        for item in delta.fields
    }


def schema_diff(table_types: Mapping[str, str], incoming_types: Mapping[str, str]) -> SchemaDiff:
    """Compare two {column: Delta type} mappings; lineage columns are the project's own."""
    return SchemaDiff(
        added={k: v for k, v in incoming_types.items() if k not in table_types},
        missing={
            k: v
            for k, v in table_types.items()
            if k not in incoming_types and k not in LINEAGE_COLUMNS
        },
        changed={
            k: (table_types[k], v)
            for k, v in incoming_types.items()
            if k in table_types and table_types[k] != v
        },
    )


def delta_compatible_type(arrow: pa.DataType, nanoseconds: str) -> pa.DataType:
    """The Arrow type a value is written as: Delta has no unsigned ints, no time, microseconds only."""
    if pa.types.is_unsigned_integer(arrow):
        widened = {8: pa.int16(), 16: pa.int32(), 32: pa.int64()}
        return widened.get(arrow.bit_width, pa.decimal128(20, 0))
    if pa.types.is_timestamp(arrow) and arrow.unit == "ns":
        return pa.string() if nanoseconds == "string" else pa.timestamp("us", arrow.tz)
    if pa.types.is_timestamp(arrow) and arrow.unit in ("s", "ms"):
        return pa.timestamp("us", arrow.tz)
    if pa.types.is_time(arrow):
        return pa.string()
    if pa.types.is_decimal(arrow) and arrow.precision > 38:
        return pa.string()
    if pa.types.is_large_string(arrow) or pa.types.is_string_view(arrow):
        return pa.string()
    return arrow


def lake_schema(schema: pa.Schema, nanoseconds: str) -> pa.Schema:
    """The schema rows are written with: Delta-compatible types, then the lineage columns."""
    return pa.schema(
        [
            pa.field(f.name, delta_compatible_type(f.type, nanoseconds), nullable=True)
            for f in schema
            if f.name not in LINEAGE_COLUMNS
        ]
        + [
            pa.field(PARTITION_DATE, pa.date32()),
            pa.field(INGESTED_AT, pa.timestamp("us", "UTC")),
            pa.field(RUN_ID, pa.string()),
        ]
    )


def replace_predicate(first_day: datetime.date, last_day: datetime.date) -> str:
    """The Delta predicate selecting exactly the partitions `first_day..last_day`."""
    if first_day == last_day:
        return f"{PARTITION_DATE} = '{first_day.isoformat()}'"
    return (
        f"{PARTITION_DATE} >= '{first_day.isoformat()}' AND "
        f"{PARTITION_DATE} <= '{last_day.isoformat()}'"
    )


def partition_dates(values: pa.Array, zone: str) -> pa.Array:
    """Each row's partition day from its partition-column value, in the partitions' zone."""
    if pa.types.is_date(values.type):
        return values.cast(pa.date32())
    if pa.types.is_timestamp(values.type):
        if values.type.tz is not None:
            values = pc.local_timestamp(values.cast(pa.timestamp(values.type.unit, zone)))
        return values.cast(pa.date32())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return pc.strptime(pc.utf8_slice_codeunits(values, 0, 10), "%Y-%m-%d", "s").cast(
            pa.date32()
        )
    raise IngestionError(
        f"the partition column has type {values.type}; it must be a date, a timestamp or "
        "ISO 8601 text. Fix `partition_column` in the project file."
    )


UNPARTITIONED_REASON = "_unpartitioned_reason"


def with_unpartitioned_reasons(
    batch: pa.RecordBatch,
    column: str,
    zone: str,
    first_day: datetime.date,
    end_day: datetime.date | None,
) -> pa.RecordBatch:
    """`batch` plus `_unpartitioned_reason`: why no partition reaches each row (its partition
    column is NULL, before the first partition day, or on/after the end date)."""
    values = batch.column(column)
    days = partition_dates(values, zone)
    before = pc.less(days, pa.scalar(first_day, pa.date32()))
    reasons = pc.if_else(
        pc.is_null(days),
        pa.scalar(f"{column} is NULL"),
        pc.if_else(
            before,
            pa.scalar(f"{column} before the first partition ({first_day})"),
            pa.scalar(f"{column} on or after end_date ({end_day})" if end_day else "unknown"),
        ),
    )
    return batch.append_column(UNPARTITIONED_REASON, reasons)


@dataclass
class WritePlan:
    """Everything that decides how the incoming batches become Delta rows.

    `window` is the partitions the run replaces; None for a full snapshot (every row replaced,
    each stamped with the day it was ingested, in UTC)."""

    table_label: str
    window: PartitionWindow | None
    target: pa.Schema
    partition_column: str | None
    ingested_at: datetime.datetime
    run_id: str
    nanoseconds: str
    # primary-key columns whose values (with each row's day) the audit judges
    key_columns: tuple[str, ...] = ()
    rows: int = 0
    rows_by_day: dict[datetime.date, int] = field(default_factory=dict)
    source_error: BaseException | None = None
    _key_ledger: KeyLedger | None = field(default=None, repr=False)

    @property
    def first_day(self) -> datetime.date:
        """The window's first day (the ingestion day of a snapshot)."""
        return self.window.first_day if self.window else self.ingested_at.date()

    @property
    def last_day(self) -> datetime.date:
        """The window's last day (the ingestion day of a snapshot)."""
        return self.window.last_day if self.window else self.ingested_at.date()

    @property
    def zone(self) -> str:
        """The zone in which partition days begin."""
        return self.window.timezone if self.window else "UTC"

    @property
    def partition_label(self) -> str:
        """How messages name what the run replaces: `partition D`, `partitions A..B`."""
        return self.window.label if self.window else "full snapshot"

    @property
    def predicate(self) -> str | None:
        """The replace predicate of a partitioned write; None for a full snapshot."""
        return replace_predicate(self.first_day, self.last_day) if self.window else None

    @property
    def days(self) -> tuple[datetime.date, datetime.date] | None:
        """The (first, last) days the run replaces; None when it replaces every row."""
        return (self.first_day, self.last_day) if self.window else None

    def convert(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Cast to the Delta-compatible schema and add the lineage columns."""
        arrays = []
        for target_field in self.target:
            name = target_field.name
            if name == PARTITION_DATE:
                arrays.append(self._partition_dates(batch))
            elif name == INGESTED_AT:
                arrays.append(_repeat(self.ingested_at, target_field.type, batch.num_rows))
            elif name == RUN_ID:
                arrays.append(_repeat(self.run_id, target_field.type, batch.num_rows))
            elif name in batch.schema.names:
                arrays.append(self._cast(batch.column(name), target_field))
            else:
                arrays.append(pa.nulls(batch.num_rows, target_field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.target)

    def staged_keys(self) -> KeyLedger:
        """The key columns and `_partition_date` of every row streamed so far, in a ledger that
        holds a bounded number of them in memory (the rest spilled to local files)."""
        if self._key_ledger is None:
            fields = [self.target.field(name) for name in self.key_columns]
            self._key_ledger = KeyLedger(fields, PARTITION_DATE)
        return self._key_ledger

    def rejected_rows(self, rejected: pa.Table) -> pa.Table:
        """Rejected records (with their `day`) as rows of the `<table>_rejected` Delta table."""
        days = pc.fill_null(rejected.column("day"), pa.scalar(self.first_day, pa.date32()))
        table = rejected.drop_columns(["day"]).append_column(PARTITION_DATE, days)
        return table.append_column(
            INGESTED_AT, _repeat(self.ingested_at, pa.timestamp("us", "UTC"), table.num_rows)
        ).append_column(RUN_ID, _repeat(self.run_id, pa.string(), table.num_rows))

    def _cast(self, values: pa.Array, target_field: pa.Field) -> pa.Array:
        if values.type == target_field.type:
            return values
        if pa.types.is_timestamp(values.type) and values.type.unit == "ns":
            if self.nanoseconds == "string":
                return pc.strftime(values, "%Y-%m-%dT%H:%M:%S")
            if self.nanoseconds == "error":
                try:
                    return values.cast(target_field.type, safe=True)
                except pa.ArrowInvalid:
                    raise PrecisionLossError(
                        f"{self.table_label}, {self.partition_label}: column "
                        f"{target_field.name} has values with 100 ns digits, which Delta "
                        "(microseconds) cannot hold. Set `timestamp_nanoseconds: string` on the "
                        "table to keep them as text, or `truncate` to drop them."
                    ) from None
            return values.cast(target_field.type, safe=False)
        return values.cast(target_field.type, safe=True)

    def _partition_dates(self, batch: pa.RecordBatch) -> pa.Array:
        if self.partition_column is None:
            return _repeat(self.first_day, pa.date32(), batch.num_rows)
        days = partition_dates(batch.column(self.partition_column), self.zone)
        if batch.num_rows and days.null_count:
            raise IngestionError(
                f"{self.table_label}, {self.partition_label}: {days.null_count} row(s) have no "
                f"{self.partition_column}; a partitioned table needs it on every row."
            )
        if batch.num_rows:
            bounds = pc.min_max(days)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low < self.first_day or high > self.last_day:
                raise IngestionError(
                    f"{self.table_label}, {self.partition_label}: rows for {low}..{high} fall "
                    f"outside the partition ({self.first_day}..{self.last_day}); the source "
                    "returned rows it should have filtered out."
                )
            counts = pc.value_counts(days)
            for day, count in zip(
                counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
            ):
                self.rows_by_day[day] = self.rows_by_day.get(day, 0) + count
        return days

    def stream(
        self, reader: Iterable[pa.RecordBatch], log: Callable[[str], None]
    ) -> Generator[pa.RecordBatch]:
        """Convert batches, count rows, log progress; remember a source error for the caller."""
        started = last_report = time.monotonic()
        try:
            for batch in reader:
                self.rows += batch.num_rows
                converted = self.convert(batch)
                if self.key_columns:
                    self.staged_keys().add(
                        converted.select(list(dict.fromkeys([*self.key_columns, PARTITION_DATE])))
                    )
                yield converted
                now = time.monotonic()
                if now - last_report >= PROGRESS_INTERVAL_SECONDS:
                    last_report = now
                    elapsed = now - started
                    log(
                        f"{self.table_label} {self.partition_label}: {self.rows:,} rows in "
                        f"{elapsed:.0f} s ({self.rows / elapsed:,.0f} rows/s)"
                    )
        except GeneratorExit:
            # the writer stopped early: not the source's error
            raise
        except BaseException as error:
            # delta-rs only sees an opaque stream failure: keep the real error to re-raise
            self.source_error = error
            raise
        finally:
            # stop the source now (a read-ahead thread, a query), not when it is collected
            close = getattr(reader, "close", None)
            if close is not None:
                close()


def _repeat(value: Any, kind: pa.DataType, count: int) -> pa.Array:
    """`count` copies of one value, built by Arrow (no Python list per batch)."""
    return pa.repeat(pa.scalar(value, kind), count)
