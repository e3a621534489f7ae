"""Apache Iceberg IO manager (pyiceberg, SQL catalog): the Delta writer's contract on Iceberg.

Each asset is the table `<namespace>.<asset path joined by "__">` of a SQL catalog (SQLite or
PostgreSQL), partitioned by day (or month) of `_partition_date`. A commit is one catalog
transaction: the window's days are overwritten (`overwrite_filter` on `_partition_date`) and any
schema change under policy `evolve` applied, so a reader sees the old rows or the new ones, never
a mix; an abort or a failed stream leaves the table at its previous snapshot. pyiceberg records
the overwrite as two snapshots (a delete, then an append) published by one metadata swap: the
intermediate delete snapshot is never a table's current state.

Types: the Arrow schema the lake writes (`lake_schema`) maps one to one: decimals keep precision
and scale, timestamps with a zone become `timestamptz`, without one `timestamp` (microseconds).
UUIDs are stored as strings (the sources give them as text; Iceberg's `uuid` type would be a
fixed(16) that DuckDB and pyarrow readers show as bytes).

Limit: pyiceberg's overwrite takes an Arrow table, so `stage()` holds the converted window in
memory until the commit (a multi-day backfill needs its rows' size in RAM)."""

from __future__ import annotations

import datetime
import time
from typing import Any, Literal

import pyarrow as pa
from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import Field
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    LessThanOrEqual,
)
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, MonthTransform, Transform

from ingestion_assets.errors import IngestionError
from ingestion_assets.io_managers.contract import (
    WriteRequest,
    column_schema,
    context_window,
    output_reader,
    write_output,
    write_timing_metadata,
)
from ingestion_assets.lake.rows import PARTITION_DATE, WritePlan, lake_schema
from ingestion_assets.sources.window import PartitionWindow

# Iceberg has no 8- or 16-bit integers, nor unsigned ones, nor half floats: the narrowest
# type of its own that holds every value
_WIDER = {
    pa.int8(): pa.int32(),
    pa.int16(): pa.int32(),
    pa.uint8(): pa.int32(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.float16(): pa.float32(),
}


def iceberg_types(schema: pa.Schema) -> pa.Schema:
    """`schema` in the types an Iceberg table stores (and hands back), so that what is staged
    and what is committed compare equal."""
    return pa.schema(
        [field.with_type(_WIDER.get(field.type, field.type)) for field in schema],
        metadata=schema.metadata,
    )


class IcebergIOManager(ConfigurableIOManager):
    """Writes each asset to an Iceberg table of a SQL catalog; replaces partitions atomically."""

    # repr=False: a PostgreSQL URI may carry a password (take it from EnvVar)
    catalog_uri: str = Field(
        repr=False,
        description="SQLAlchemy URI of the SQL catalog: sqlite:///path/catalog.db or "
        "postgresql+psycopg2://user:password@host/db; take secrets from EnvVar.",
    )
    warehouse: str = Field(
        description="Folder or object-store URI where the tables' data and metadata files live."
    )
    namespace: str = Field(default="ingest", description="The catalog namespace of the tables.")
    partition_by: Literal["day", "month"] = Field(
        default="day", description="`day` or `month`: the transform of `_partition_date`."
    )

    def catalog(self) -> Catalog:
        """The SQL catalog, its namespace created on first use."""
        catalog = SqlCatalog("ingestion", uri=self.catalog_uri, warehouse=self.warehouse)
        catalog.create_namespace_if_not_exists(self.namespace)
        return catalog

    def identifier(self, asset_path: tuple[str, ...] | list[str]) -> str:
        """`<namespace>.<asset path joined by __>`."""
        return f"{self.namespace}.{'__'.join(asset_path)}"

    def open_table(self, asset_path: tuple[str, ...] | list[str]) -> Table | None:
        """The asset's table at its current snapshot; None before its first write."""
        try:
            return self.catalog().load_table(self.identifier(asset_path))
        except NoSuchTableError:
            return None

    def stage(self, request: WriteRequest, data: Any) -> IcebergStagedWrite:
        """Convert and count the rows, held until the commit (see the module's limit)."""
        reader, _ = output_reader(data)
        plan = request.plan(iceberg_types(lake_schema(reader.schema, request.nanoseconds)))
        existing = self.open_table(request.asset_path)
        table_schema = existing.schema().as_arrow() if existing is not None else None
        identifier = self.identifier(request.asset_path)
        if table_schema is not None and request.schema_policy == "freeze":
            added = [name for name in plan.target.names if name not in table_schema.names]
            if added:
                raise IngestionError(
                    f"{plan.table_label} ({plan.partition_label}): Iceberg table {identifier} "
                    f"has no column(s) {', '.join(added)} and its schema policy is `freeze`; set "
                    "`schema_policy: evolve` on the table to add them, or drop them at the source"
                )
        started = time.monotonic()
        batches = list(plan.stream(reader, request.log.info))
        rows = pa.Table.from_batches(batches, schema=plan.target)
        written = IcebergStagedWrite(self, request, plan, rows, started)
        written.table_schema = table_schema
        return written

    def committed_rows(
        self, asset_path: tuple[str, ...], window: PartitionWindow | None, columns: list[str]
    ) -> pa.Table | None:
        """`columns` and `_partition_date` of the committed rows in `window` (all when None)."""
        table = self.open_table(asset_path)
        if table is None:
            return None
        present = set(table.schema().column_names)
        wanted = [name for name in dict.fromkeys([*columns, PARTITION_DATE]) if name in present]
        return table.scan(row_filter=days_filter(window), selected_fields=tuple(wanted)).to_arrow()

    def committed_schema(self, asset_path: tuple[str, ...]) -> pa.Schema | None:
        """The table's schema as Arrow; None before its first write."""
        table = self.open_table(asset_path)
        return None if table is None else table.schema().as_arrow()

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Write an asset's Arrow data: replace its partitions (or the whole table) at once."""
        write_output(self, context, obj)

    def load_input(self, context: InputContext) -> pa.Table:
        """The upstream table's rows in the partitions this run asks for."""
        asset_path = list(context.asset_key.path)
        table = self.open_table(asset_path)
        if table is None:
            raise IngestionError(
                f"table {'.'.join(asset_path)}: no Iceberg table {self.identifier(asset_path)}; "
                "materialize the upstream asset first."
            )
        return table.scan(row_filter=days_filter(context_window(context))).to_arrow()

    def expire_snapshots(self, asset_path: tuple[str, ...], older_than: datetime.datetime) -> int:
        """Expire the table's snapshots older than `older_than` (never the current one); how
        many were expired."""
        table = self.open_table(asset_path)
        if table is None:
            return 0
        current = table.current_snapshot()
        cutoff = int(older_than.timestamp() * 1000)
        old = [
            snapshot.snapshot_id
            for snapshot in table.snapshots()
            if snapshot.timestamp_ms < cutoff
            and (current is None or snapshot.snapshot_id != current.snapshot_id)
        ]
        if old:
            table.maintenance.expire_snapshots().by_ids(old).commit()
        return len(old)


def days_filter(window: PartitionWindow | None) -> BooleanExpression:
    """The row filter of a window's days; every row without one."""
    if window is None:
        return AlwaysTrue()
    return And(
        GreaterThanOrEqual(term=PARTITION_DATE, value=window.first_day.isoformat()),
        LessThanOrEqual(term=PARTITION_DATE, value=window.last_day.isoformat()),
    )


class IcebergStagedWrite:
    """A staged replace of one Iceberg table's window (see `StagedWrite`)."""

    def __init__(
        self,
        manager: IcebergIOManager,
        request: WriteRequest,
        plan: WritePlan,
        rows: pa.Table,
        started: float,
    ) -> None:
        self.manager, self.request, self.plan = manager, request, plan
        self.rows: pa.Table | None = rows
        self.started = started
        self.table_name = manager.identifier(request.asset_path)
        self.incoming_schema: pa.Schema = plan.target
        self.table_schema: pa.Schema | None = None

    def kept_rows(self, columns: list[str], among: pa.Array | None = None) -> pa.Table | None:
        """Unknown here (the audit's key check across the window does not apply)."""
        return None

    def abort(self) -> None:
        """Drop the held rows; nothing reached the table."""
        self.rows = None

    def commit(self) -> dict[str, Any]:
        """Overwrite the window's days with the staged rows in one catalog transaction."""
        if self.rows is None:
            raise IngestionError(f"{self.plan.table_label}: the staged write was aborted")
        manager, plan, rows = self.manager, self.plan, self.rows
        catalog = manager.catalog()
        table = manager.open_table(self.request.asset_path)
        if table is None:
            table = catalog.create_table(self.table_name, schema=rows.schema)
            transform: Transform[Any, Any] = (
                MonthTransform() if manager.partition_by == "month" else DayTransform()
            )
            with table.update_spec() as spec:
                spec.add_field(
                    PARTITION_DATE, transform, f"{PARTITION_DATE}_{manager.partition_by}"
                )
        before = {snapshot.snapshot_id for snapshot in table.snapshots()}
        with table.transaction() as transaction:
            if set(rows.schema.names) - set(table.schema().column_names):
                with transaction.update_schema() as update:
                    update.union_by_name(rows.schema)
            overwrite = days_filter(plan.window)
            transaction.overwrite(rows, overwrite_filter=overwrite)
        self.rows = None
        table = manager.open_table(self.request.asset_path)
        assert table is not None
        snapshot = table.current_snapshot()
        # pyiceberg's overwrite is a delete snapshot and an append snapshot, in one catalog commit
        new = [s for s in table.snapshots() if s.snapshot_id not in before]
        summaries = [dict(s.summary.additional_properties) for s in new if s.summary]
        summary = summaries[-1] if summaries else {}
        elapsed = time.monotonic() - self.started
        self.request.log.info(
            f"{plan.table_label} {plan.partition_label}: wrote {plan.rows:,} rows as Iceberg "
            f"snapshot {snapshot.snapshot_id if snapshot else None} in {elapsed:.2f} s"
        )
        return {
            "dagster/row_count": int(summary.get("total-records", plan.rows)),
            "rows_written": plan.rows,
            "dagster/column_schema": column_schema(table.schema().as_arrow()),
            "dagster/table_name": self.table_name,
            **write_timing_metadata(plan, elapsed),
            "iceberg_snapshot_id": snapshot.snapshot_id if snapshot else None,
            "iceberg_snapshot_ids": MetadataValue.json([s.snapshot_id for s in new]),
            "iceberg_added_records": sum(int(s.get("added-records", 0)) for s in summaries),
            "iceberg_deleted_records": sum(int(s.get("deleted-records", 0)) for s in summaries),
            "partition_row_counts": MetadataValue.json(
                {str(day): n for day, n in sorted(plan.rows_by_day.items())}
            ),
        }
