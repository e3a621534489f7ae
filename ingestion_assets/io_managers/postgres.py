"""PostgreSQL IO manager: the same stage -> audit -> commit contract as the Delta writer.

Rows stream through `WritePlan` (lineage columns, per-day counts) into a temporary staging table
with COPY, inside a transaction held open until the audit decides; `commit()` then deletes the
window's rows, inserts the staged ones and commits, under a transaction-level advisory lock on
the table, so readers never see a half-written window and two runs of one day leave no
duplicates."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from dagster import ConfigurableIOManager, InputContext, OutputContext
from pydantic import Field

from ingestion_assets.errors import IngestionError, SchemaDriftError
from ingestion_assets.io_managers.contract import (
    WriteRequest,
    column_schema,
    context_window,
    output_reader,
    write_output,
    write_timing_metadata,
)
from ingestion_assets.lake.files import conform
from ingestion_assets.lake.rows import PARTITION_DATE, WritePlan, lake_schema, schema_diff
from ingestion_assets.sources.postgres import copy_batches, copy_statement_of, copy_supported
from ingestion_assets.sources.window import PartitionWindow

INSTALL_HINT = "pip install 'ingestion_assets[postgres]'"
# rows per Arrow batch when a table is read back through COPY
READ_BATCH_ROWS = 65_536


def _psycopg2() -> Any:
    """The driver, imported only when a write or read runs."""
    try:
        import psycopg2  # type: ignore[import-untyped]
    except ImportError:
        raise IngestionError(
            f"the PostgreSQL IO manager needs psycopg2: run `{INSTALL_HINT}`"
        ) from None
    return psycopg2


def postgres_type(arrow: pa.DataType) -> str:
    """The PostgreSQL column type that holds an Arrow type exactly."""
    if pa.types.is_decimal(arrow):
        return f"numeric({arrow.precision},{arrow.scale})"
    if pa.types.is_timestamp(arrow):
        return "timestamptz" if arrow.tz is not None else "timestamp"
    if pa.types.is_date(arrow):
        return "date"
    if pa.types.is_boolean(arrow):
        return "boolean"
    integers = {8: "smallint", 16: "smallint", 32: "integer", 64: "bigint"}
    if pa.types.is_signed_integer(arrow):
        return integers[arrow.bit_width]
    if pa.types.is_float16(arrow) or pa.types.is_float32(arrow):
        return "real"
    if pa.types.is_float64(arrow):
        return "double precision"
    if pa.types.is_fixed_size_binary(arrow) and arrow.byte_width == 16:
        return "uuid"
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return "bytea"
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return "text"
    raise IngestionError(
        f"Arrow type {arrow} has no exact PostgreSQL type here; cast the column to a supported "
        "type (decimal, timestamp, date, integer, float, boolean, string, binary) in the asset"
    )


def arrow_type(data_type: str, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type a PostgreSQL column (information_schema spelling) is read back as."""
    simple = {
        "smallint": pa.int16(),
        "integer": pa.int32(),
        "bigint": pa.int64(),
        "real": pa.float32(),
        "double precision": pa.float64(),
        "boolean": pa.bool_(),
        "text": pa.string(),
        "bytea": pa.binary(),
        "uuid": pa.binary(16),
        "date": pa.date32(),
        "timestamp with time zone": pa.timestamp("us", "UTC"),
        "timestamp without time zone": pa.timestamp("us"),
    }
    if data_type == "numeric":
        return pa.decimal128(precision or 38, scale or 0)
    return simple.get(data_type, pa.string())


def quoted(name: str) -> str:
    """An identifier quoted for SQL."""
    return '"' + name.replace('"', '""') + '"'


def _ensure_schema(cursor: Any, schema: str) -> None:
    """Create `schema` unless it is there. Two transactions that both find it missing race in
    `CREATE SCHEMA IF NOT EXISTS` (the second fails on pg_namespace's unique index once the first
    commits), so the create runs in a savepoint and losing that race is no error. An existing
    schema needs no CREATE privilege on the database."""
    cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
    if cursor.fetchone() is not None:
        return
    cursor.execute("SAVEPOINT ensure_schema")
    try:
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted(schema)}")
    except _psycopg2().errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT ensure_schema")
    else:
        cursor.execute("RELEASE SAVEPOINT ensure_schema")


def _hex(values: pa.Array) -> pa.Array:
    """Binary values as lowercase hex text, built from the data buffer in one step (no Python
    object per value); nulls stay null."""
    kind, count = values.type, len(values)
    if pa.types.is_fixed_size_binary(kind):
        width = kind.byte_width
        raw = values.buffers()[1].to_pybytes()[
            values.offset * width : (values.offset + count) * width
        ]
        text = (
            pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(2 * width), count, [None, pa.py_buffer(raw.hex().encode())]
            )
            .cast(pa.large_binary())
            .cast(pa.large_string())
        )
    else:
        offset_type = pa.int64() if pa.types.is_large_binary(kind) else pa.int32()
        offsets = pa.Array.from_buffers(
            offset_type, count + 1, [None, values.buffers()[1]], offset=values.offset
        ).cast(pa.int64())
        first, last = offsets[0].as_py(), offsets[-1].as_py()
        data = values.buffers()[2]
        raw = b"" if data is None else data.to_pybytes()[first:last]
        doubled = pc.multiply(pc.subtract(offsets, first), 2)
        text = pa.Array.from_buffers(
            pa.large_string(),
            count,
            [None, doubled.buffers()[1], pa.py_buffer(raw.hex().encode())],
            offset=doubled.offset,
        )
    return pc.if_else(values.is_valid(), text, pa.scalar(None, pa.large_string()))


def _csv_column(values: pa.Array) -> pa.Array:
    """A column as COPY CSV text: binary as `\\x` hex, uuid as its 32 hex digits."""
    kind = values.type
    if pa.types.is_fixed_size_binary(kind) and kind.byte_width == 16:
        # PostgreSQL reads a uuid written as 32 hex digits without dashes
        return _hex(values)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pc.binary_join_element_wise(
            pa.scalar("\\x", pa.large_string()), _hex(values), pa.scalar("", pa.large_string())
        )
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        values = values.cast(pa.timestamp(kind.unit, "UTC"))
        text = pc.strftime(values, "%Y-%m-%dT%H:%M:%S")
        return pc.binary_join_element_wise(text, pa.scalar("+00"), "")
    if pa.types.is_timestamp(kind):
        return pc.strftime(values, "%Y-%m-%dT%H:%M:%S")
    return values.cast(pa.string())


def _csv_bytes(batch: pa.RecordBatch) -> bytes:
    """One batch as CSV for COPY: NULL unquoted-empty, every text value quoted."""
    columns = [_csv_column(batch.column(i)) for i in range(batch.num_columns)]
    table = pa.Table.from_arrays(columns, names=batch.schema.names)
    sink = io.BytesIO()
    pa_csv.write_csv(
        table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid")
    )
    return sink.getvalue()


def _selected(field: pa.Field, columnar: bool) -> str:
    """A column in the read's select list; for COPY, a zoned timestamp as UTC wall time (the
    text parser reads it as UTC)."""
    name = quoted(field.name)
    if columnar and pa.types.is_timestamp(field.type) and field.type.tz is not None:
        return f"timezone('UTC', {name}) AS {name}"
    return name


def _arrow_rows(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """Rows psycopg2 fetched, as Arrow of `schema`."""
    arrays = []
    for index, field in enumerate(schema):
        values = [row[index] for row in rows]
        if pa.types.is_fixed_size_binary(field.type):
            values = [None if v is None else uuid.UUID(str(v)).bytes for v in values]
        elif pa.types.is_binary(field.type):
            values = [None if v is None else bytes(v) for v in values]
        arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class PostgresIOManager(ConfigurableIOManager):
    """Writes each asset to a table `<db_schema>.<asset path joined by __>`; replaces the
    run's partitions in one transaction."""

    # repr=False: the URL may carry a password
    url: str = Field(
        repr=False,
        description="libpq connection URL (postgresql://user@host:5432/db); take it from an EnvVar.",
    )
    db_schema: str = Field(default="ingest", description="Schema holding the ingested tables.")

    def table_name(self, asset_path: tuple[str, ...] | list[str]) -> str:
        """The table an asset lands in, unquoted (`ingest.erp__sales_order_header`)."""
        return f"{self.db_schema}.{'__'.join(asset_path)}"

    def _qualified(self, asset_path: tuple[str, ...] | list[str]) -> str:
        return f"{quoted(self.db_schema)}.{quoted('__'.join(asset_path))}"

    def connect(self) -> Any:
        """A new connection (the caller closes it); the URL stays out of the error."""
        driver = _psycopg2()
        try:
            return driver.connect(self.url)
        except driver.Error as error:
            raise IngestionError(
                f"cannot connect to PostgreSQL for schema {self.db_schema}: "
                f"{type(error).__name__}; check the IO manager's `url`"
            ) from None

    def _table_schema(
        self, cursor: Any, asset_path: tuple[str, ...] | list[str]
    ) -> pa.Schema | None:
        cursor.execute(
            "SELECT column_name, data_type, numeric_precision, numeric_scale "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position",
            (self.db_schema, "__".join(asset_path)),
        )
        rows = cursor.fetchall()
        if not rows:
            return None
        return pa.schema([pa.field(n, arrow_type(t, p, s)) for n, t, p, s in rows])

    def stage(self, request: WriteRequest, data: Any) -> PostgresStagedWrite:
        """COPY the rows into a staging table of an open transaction (see `StagedWrite`)."""
        reader, _ = output_reader(data)
        plan = request.plan(
            lake_schema(reader.schema, request.nanoseconds),
            f"table {self.table_name(request.asset_path)}",
        )
        started = time.monotonic()
        connection = self.connect()
        try:
            cursor = connection.cursor()
            existing = self._table_schema(cursor, request.asset_path)
            incoming = plan.target
            added = self._fit(existing, plan, request.schema_policy)
            columns = ", ".join(f"{quoted(f.name)} {postgres_type(f.type)}" for f in plan.target)
            cursor.execute(f"CREATE TEMP TABLE _staging ({columns}) ON COMMIT DROP")
            names = ", ".join(quoted(name) for name in plan.target.names)
            for batch in plan.stream(reader, request.log.info):
                cursor.copy_expert(
                    f"COPY _staging ({names}) FROM STDIN WITH (FORMAT csv)",
                    io.BytesIO(_csv_bytes(batch)),
                )
        except BaseException:
            connection.rollback()
            connection.close()
            if plan.source_error is not None:
                raise plan.source_error from None
            raise
        written = PostgresStagedWrite(self, request, plan, connection, started, added)
        written.incoming_schema, written.table_schema = incoming, existing
        return written

    def _fit(self, existing: pa.Schema | None, plan: WritePlan, policy: str) -> list[pa.Field]:
        """Fit the plan's target to the table's columns under the schema policy; the columns
        the commit adds."""
        if existing is None:
            return []
        table_types = {f.name: postgres_type(f.type) for f in existing}
        incoming_types = {f.name: postgres_type(f.type) for f in plan.target}
        diff = schema_diff(table_types, incoming_types)
        if diff.changed or (diff and policy == "freeze"):
            fix = (
                "Change the column back at the source, or write to a new table (asset_name)."
                if diff.changed
                else "The table's schema_policy is `freeze`: set it to `evolve` to accept the "
                "change, or change the source back."
            )
            raise SchemaDriftError(
                f"{plan.table_label} ({plan.partition_label}): the source schema no longer "
                f"matches the PostgreSQL table: {diff.describe()}. {fix}"
            )
        plan.target = pa.schema(
            [
                existing.field(name) if name in table_types else plan.target.field(name)
                for name in [*existing.names, *diff.added]
            ]
        )
        return [plan.target.field(name) for name in diff.added]

    def committed_rows(
        self, asset_path: tuple[str, ...], window: PartitionWindow | None, columns: list[str]
    ) -> pa.Table | None:
        """`columns` and `_partition_date` of the committed rows in `window` (all when None)."""
        return self._read(asset_path, window, columns)

    def committed_schema(self, asset_path: tuple[str, ...]) -> pa.Schema | None:
        """The table's schema as Arrow; None before its first write."""
        connection = self.connect()
        try:
            return self._table_schema(connection.cursor(), asset_path)
        finally:
            connection.close()

    def _read(
        self,
        asset_path: tuple[str, ...] | list[str],
        window: PartitionWindow | None,
        columns: list[str] | None,
    ) -> pa.Table | None:
        connection = self.connect()
        try:
            cursor = connection.cursor()
            schema = self._table_schema(cursor, asset_path)
            if schema is None:
                return None
            if columns is not None:
                wanted = [n for n in dict.fromkeys([*columns, PARTITION_DATE]) if n in schema.names]
                schema = pa.schema([schema.field(n) for n in wanted])
            columnar = copy_supported(schema)
            select = ", ".join(_selected(field, columnar) for field in schema)
            query = f"SELECT {select} FROM {self._qualified(asset_path)}"
            parameters: tuple[Any, ...] = ()
            if window is not None:
                query += f" WHERE {quoted(PARTITION_DATE)} BETWEEN %s AND %s"
                parameters = (window.first_day, window.last_day)
            if columnar:
                # COPY's text parsed by Arrow, as the PostgreSQL source reads: no Python object
                # per value (binary and uuid columns, which the text cannot carry exactly, take
                # the row path below)
                statement = copy_statement_of(cursor.mogrify(query, parameters).decode())
                batches = list(copy_batches(connection, statement, schema, READ_BATCH_ROWS))
                connection.rollback()
                return pa.Table.from_batches(batches, schema=schema)
            cursor.execute(query, parameters)
            rows = cursor.fetchall()
            connection.rollback()
        finally:
            connection.close()
        return _arrow_rows(rows, schema)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Write an asset's Arrow data: replace its partitions (or the whole table) at once."""
        write_output(self, context, obj)

    def load_input(self, context: InputContext) -> pa.Table:
        """The upstream table as Arrow, limited to the partitions this run asks for."""
        asset_path = list(context.asset_key.path)
        table = self._read(asset_path, context_window(context), None)
        if table is None:
            raise IngestionError(
                f"table {self.table_name(asset_path)}: no such PostgreSQL table; materialize "
                "the upstream asset first."
            )
        return table


class PostgresStagedWrite:
    """Rows COPied into a staging table of an open transaction (see `StagedWrite`)."""

    def __init__(
        self,
        manager: PostgresIOManager,
        request: WriteRequest,
        plan: WritePlan,
        connection: Any,
        started: float,
        added: list[pa.Field],
    ) -> None:
        self.manager, self.request, self.plan = manager, request, plan
        self.connection, self.started, self.added = connection, started, added
        self.table_name = manager.table_name(request.asset_path)
        self.incoming_schema: pa.Schema = plan.target
        self.table_schema: pa.Schema | None = None

    def kept_rows(self, columns: list[str], among: pa.Array | None = None) -> pa.Table:
        """`columns` of the table's rows outside the window, which the commit keeps (none for a
        snapshot); with `among`, only those whose first column holds one of its values (matched
        in the database against a temporary table of them). Read in the staging transaction; a
        column the table lacks comes back as nulls."""
        schema = pa.schema([self.plan.target.field(name) for name in columns])
        existing = self.table_schema
        if existing is None or self.plan.window is None:
            return schema.empty_table()
        present = [name for name in columns if name in existing.names]
        if not present or (among is not None and columns[0] not in existing.names):
            return schema.empty_table()
        target = self.manager._qualified(self.request.asset_path)
        cursor = self.connection.cursor()
        day = quoted(PARTITION_DATE)
        query = (
            f"SELECT {', '.join(quoted(name) for name in present)} FROM {target} "
            f"WHERE ({day} < %s OR {day} > %s)"
        )
        if among is not None:
            first = schema.field(columns[0])
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS _among (value {postgres_type(first.type)}) "
                "ON COMMIT DROP"
            )
            cursor.execute("TRUNCATE _among")
            if isinstance(among, pa.ChunkedArray):
                among = among.combine_chunks()
            values = pa.RecordBatch.from_arrays([among.cast(first.type)], names=["value"])
            cursor.copy_expert(
                "COPY _among (value) FROM STDIN WITH (FORMAT csv)", io.BytesIO(_csv_bytes(values))
            )
            query += f" AND {quoted(columns[0])} IN (SELECT value FROM _among)"
        cursor.execute(query, self.plan.days)
        fetched = _arrow_rows(cursor.fetchall(), pa.schema([existing.field(n) for n in present]))
        return conform(fetched, schema)

    def abort(self) -> None:
        """Roll back: the staging table goes, the table keeps its rows."""
        try:
            self.connection.rollback()
        finally:
            self.connection.close()

    def commit(self) -> dict[str, Any]:
        """Swap the window's rows for the staged ones in one transaction; the metadata."""
        plan, target = self.plan, self.manager._qualified(self.request.asset_path)
        try:
            cursor = self.connection.cursor()
            _ensure_schema(cursor, self.manager.db_schema)
            # one lock per table: concurrent runs of one day replace in turn, never interleave
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table_name,))
            columns = ", ".join(f"{quoted(f.name)} {postgres_type(f.type)}" for f in plan.target)
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {target} ({columns})")
            index = quoted(f"{'__'.join(self.request.asset_path)}__partition_date")
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {index} ON {target} ({quoted(PARTITION_DATE)})"
            )
            for field in self.added:
                cursor.execute(
                    f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {quoted(field.name)} "
                    f"{postgres_type(field.type)}"
                )
            if plan.days is None:
                cursor.execute(f"DELETE FROM {target}")
            else:
                cursor.execute(
                    f"DELETE FROM {target} WHERE {quoted(PARTITION_DATE)} BETWEEN %s AND %s",
                    plan.days,
                )
            names = ", ".join(quoted(name) for name in plan.target.names)
            cursor.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM _staging")
            cursor.execute(f"SELECT count(*) FROM {target}")
            total_rows = int(cursor.fetchone()[0])
            self.connection.commit()
        except BaseException:
            self.connection.rollback()
            raise
        finally:
            self.connection.close()
        elapsed = time.monotonic() - self.started
        self.request.log.info(
            f"{plan.table_label} {plan.partition_label}: wrote {plan.rows:,} rows in {elapsed:.2f} s"
        )
        return {
            "dagster/row_count": total_rows,
            "rows_written": plan.rows,
            "dagster/column_schema": column_schema(plan.target),
            "dagster/table_name": self.table_name,
            **write_timing_metadata(plan, elapsed),
        }
