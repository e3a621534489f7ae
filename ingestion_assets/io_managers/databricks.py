"""Unity Catalog IO manager: stage Parquet on a volume, commit with one SQL statement."""

from __future__ import annotations

import datetime
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO, NoReturn, cast

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManager, InputContext, OutputContext
from pydantic import Field

from ingestion_assets.errors import IngestionError
from ingestion_assets.io_managers.contract import (
    WriteRequest,
    column_schema,
    output_reader,
    write_output,
    write_timing_metadata,
)
from ingestion_assets.lake.files import read_ahead
from ingestion_assets.lake.rows import PARTITION_DATE, WritePlan, lake_schema
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from ingestion_assets.io_managers.databricks_merge import DatabricksMergeOutcome
    from ingestion_assets.modes.merge import MergeRules

# states in which a statement may still change; anything else is final
_UNFINISHED = frozenset({"PENDING", "RUNNING"})


def databricks_type(arrow: pa.DataType) -> str:
    """The Databricks SQL type of a (Delta-compatible) Arrow type."""
    simple = {
        pa.bool_(): "BOOLEAN",
        pa.int8(): "TINYINT",
        pa.int16(): "SMALLINT",
        pa.int32(): "INT",
        pa.int64(): "BIGINT",
        pa.float16(): "FLOAT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.date32(): "DATE",
        pa.date64(): "DATE",
    }
    if arrow in simple:
        return simple[arrow]
    if pa.types.is_decimal(arrow):
        return f"DECIMAL({arrow.precision},{arrow.scale})"
    if pa.types.is_timestamp(arrow):
        return "TIMESTAMP" if arrow.tz is not None else "TIMESTAMP_NTZ"
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return "STRING"
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return "BINARY"
    if pa.types.is_fixed_size_binary(arrow):
        return "BINARY"
    if pa.types.is_null(arrow):
        # a column with no declared type: STRING rather than VOID, which readers refuse
        return "STRING"
    raise IngestionError(
        f"Arrow type {arrow} has no Databricks SQL column type here; cast the column at the "
        "source (e.g. to text) or declare its type in the project file."
    )


def quote_identifier(name: str) -> str:
    """`name` as a Databricks SQL identifier: in backticks, inner backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def sql_string(value: str) -> str:
    """`value` as a Databricks SQL string literal (backslash is an escape character there)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_table_sql(table_name: str, schema: pa.Schema) -> str:
    """`CREATE TABLE IF NOT EXISTS` with the columns of `schema`, as a Delta table."""
    columns = ", ".join(f"{quote_identifier(f.name)} {databricks_type(f.type)}" for f in schema)
    return f"CREATE TABLE IF NOT EXISTS {table_name} ({columns}) USING DELTA"


def replace_sql(
    table_name: str,
    staging_directory: str,
    columns: list[str],
    window: tuple[datetime.date, datetime.date] | None,
) -> str:
    """The one statement that swaps the window's rows (the whole table when None) for the staged
    files: `INSERT INTO ... REPLACE WHERE` or `INSERT OVERWRITE`."""
    # named columns, not `*`: read_files may add a `_rescued_data` column, and inserts are
    # positional
    selected = ", ".join(quote_identifier(name) for name in columns)
    source = (
        f"SELECT {selected} FROM read_files({sql_string(staging_directory)}, format => 'parquet')"
    )
    if window is None:
        return f"INSERT OVERWRITE {table_name} {source}"
    first, last = window
    column = quote_identifier(PARTITION_DATE)
    predicate = f"{column} >= DATE'{first.isoformat()}' AND {column} <= DATE'{last.isoformat()}'"
    return f"INSERT INTO {table_name} REPLACE WHERE {predicate} {source}"


def table_name_of(asset_path: list[str]) -> str:
    """The Unity Catalog table of an asset `[source, table]`: `source__table`."""
    return "__".join(asset_path)


@dataclass
class StagedFiles:
    """Parquet files written from batches, each uploaded to the volume once it is full."""

    client: WorkspaceClient
    directory: str
    schema: pa.Schema
    rows_per_file: int
    paths: list[str] = field(default_factory=list)
    bytes_staged: int = 0
    _writer: pq.ParquetWriter | None = None
    _buffer: IO[bytes] | None = None
    _rows: int = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Add a batch; a file holding `rows_per_file` rows is uploaded and its space freed."""
        offset = 0
        while offset < batch.num_rows:
            if self._writer is None:
                self._buffer = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _upload
                self._writer = pq.ParquetWriter(self._buffer, self.schema)
                self._rows = 0
            piece = batch.slice(offset, self.rows_per_file - self._rows)
            self._writer.write_batch(piece)
            self._rows += piece.num_rows
            offset += piece.num_rows
            if self._rows >= self.rows_per_file:
                self._upload()

    def finish(self) -> None:
        """Upload the last file; with no rows at all, one empty file so the window is replaced."""
        if self._writer is None and not self.paths:
            self._buffer = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _upload
            self._writer = pq.ParquetWriter(self._buffer, self.schema)
        if self._writer is not None:
            self._upload()

    def _upload(self) -> None:
        assert self._writer is not None
        assert self._buffer is not None
        self._writer.close()
        path = f"{self.directory}/part-{len(self.paths):05d}.parquet"
        try:
            self.bytes_staged += self._buffer.tell()
            self._buffer.seek(0)
            # recorded first: a half-finished upload is deleted too
            self.paths.append(path)
            self.client.files.upload(path, cast(BinaryIO, self._buffer), overwrite=True)
        finally:
            self._buffer.close()
            self._writer, self._buffer = None, None

    def delete(self) -> None:
        """Remove every staged file and the run's staging folder."""
        if self._buffer is not None:
            self._buffer.close()
        for path in self.paths:
            self.client.files.delete(path)
        if self.paths:
            self.client.files.delete_directory(self.directory)


class DatabricksIOManager(ConfigurableIOManager):
    """Writes each asset to a Unity Catalog Delta table `<catalog>.<schema>.<source>__<table>`."""

    host: str = Field(description="Workspace URL, e.g. https://adb-123.azuredatabricks.net.")
    # repr=False: once a run resolved the EnvVar, the value is a credential
    token: str = Field(repr=False, description="Personal access token; take it from EnvVar.")
    warehouse_id: str = Field(description="SQL warehouse that runs the commit statements.")
    catalog: str = Field(description="Unity Catalog catalog of the tables and the volume.")
    schema_name: str = Field(description="Schema holding the tables and the staging volume.")
    volume: str = Field(description="Volume where a run stages its Parquet files.")
    rows_per_file: int = Field(
        default=500_000, gt=0, description="Rows per staged Parquet file: bounds memory and disk."
    )
    statement_timeout_seconds: float = Field(
        default=3600.0, gt=0, description="How long to wait for a statement before cancelling it."
    )
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, description="Pause between polls of a running statement."
    )

    def full_table_name(self, asset_path: list[str]) -> str:
        """`catalog`.`schema`.`source__table`, quoted."""
        return ".".join(
            quote_identifier(part)
            for part in (self.catalog, self.schema_name, table_name_of(asset_path))
        )

    def staging_directory(self, asset_path: list[str], run_id: str) -> str:
        """The run's folder on the volume: `/Volumes/<c>/<s>/<v>/_staging/<table>/<run>`."""
        return (
            f"/Volumes/{self.catalog}/{self.schema_name}/{self.volume}/_staging/"
            f"{table_name_of(asset_path)}/{run_id}"
        )

    def client(self) -> WorkspaceClient:
        """A workspace client; created in a run, never while definitions load."""
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient(host=self.host, token=self.token, auth_type="pat")

    def stage(self, request: WriteRequest, data: Any) -> DatabricksStagedWrite:
        """Upload the rows as Parquet files to the run's folder on the volume (see `StagedWrite`)."""
        reader, source_stream = output_reader(data)
        table_name = self.full_table_name(list(request.asset_path))
        target = lake_schema(reader.schema, request.nanoseconds)
        plan = request.plan(target, f"table {table_name}")
        client = self.client()
        staged = StagedFiles(
            client,
            self.staging_directory(list(request.asset_path), request.run_id),
            target,
            self.rows_per_file,
        )
        written = DatabricksStagedWrite(
            self, request, plan, client, staged, source_stream, time.monotonic()
        )
        try:
            batches = plan.stream(read_ahead(reader), request.log.info)
            try:
                self._stage(staged, batches)
            finally:
                batches.close()
        except BaseException as error:
            written.fail(error)
        return written

    def committed_rows(
        self, asset_path: tuple[str, ...], window: PartitionWindow | None, columns: list[str]
    ) -> pa.Table | None:
        """Unity Catalog tables are read on Databricks, not here."""
        raise IngestionError(
            f"table {self.full_table_name(list(asset_path))} lives in Unity Catalog: its "
            "committed rows are checked on Databricks (the checks ran on the staged rows "
            "before the commit)."
        )

    def committed_schema(self, asset_path: tuple[str, ...]) -> pa.Schema | None:
        """Unity Catalog tables are read on Databricks, not here."""
        return None

    def merge_changes(
        self,
        asset_path: list[str],
        changes: pa.Table,
        rules: MergeRules,
        *,
        run_id: str,
        label: str,
        log: Callable[[str], None],
        full_read: bool,
        nanoseconds: str = "error",
    ) -> DatabricksMergeOutcome:
        """Apply a merge table's changes (SCD type 1) with one MERGE on the warehouse; see
        `databricks_merge.merge_changes`."""
        # imported here: that module builds on this one
        from ingestion_assets.io_managers.databricks_merge import merge_changes

        return merge_changes(
            self,
            asset_path,
            changes,
            rules,
            run_id=run_id,
            label=label,
            log=log,
            full_read=full_read,
            nanoseconds=nanoseconds,
        )

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Stage the batches on the volume, create the table if needed, swap the window in."""
        write_output(self, context, obj)

    def _stage(self, staged: StagedFiles, batches: Iterable[pa.RecordBatch]) -> None:
        for batch in batches:
            staged.write(batch)
        staged.finish()

    def execute(self, client: WorkspaceClient, statement: str, plan: WritePlan) -> str:
        """Run one statement on the warehouse and wait for it; its id once it succeeded."""
        deadline = time.monotonic() + self.statement_timeout_seconds
        response = client.statement_execution.execute_statement(
            statement=statement, warehouse_id=self.warehouse_id, wait_timeout="30s"
        )
        statement_id = response.statement_id or ""
        status = response.status
        max_polls = int(self.statement_timeout_seconds / self.poll_interval_seconds) + 1
        for _ in range(max_polls):
            state = status.state.value if status and status.state else "PENDING"
            if state not in _UNFINISHED:
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval_seconds)
            status = client.statement_execution.get_statement(statement_id).status
        state = status.state.value if status and status.state else "PENDING"
        if state == "SUCCEEDED":
            return statement_id
        where = f"{plan.table_label} ({plan.partition_label})"
        if state in _UNFINISHED:
            client.statement_execution.cancel_execution(statement_id)
            raise IngestionError(
                f"{where}: statement {statement_id} on SQL warehouse {self.warehouse_id} did not "
                f"finish within {self.statement_timeout_seconds:.0f} s and was cancelled; the "
                "table is unchanged. Raise statement_timeout_seconds or size the warehouse up."
            )
        error = status.error if status else None
        message = (error.message if error else None) or "no message"
        code = error.error_code.value if error and error.error_code else state
        raise IngestionError(
            f"{where}: SQL warehouse {self.warehouse_id} reported statement {statement_id} "
            f"{state} ({code}): {message}. The table is unchanged and the staged files were "
            f"removed. Statement: {statement[:300]}"
        )

    def hide_token(self, error: BaseException) -> str:
        return str(error).replace(self.token, "***") if self.token else str(error)

    def load_input(self, context: InputContext) -> pa.Table:
        """Downstream reads happen in Databricks: this IO manager only writes."""
        raise IngestionError(
            f"table {self.full_table_name(list(context.asset_key.path))} lives in Unity Catalog; "
            "read it with a Databricks SQL warehouse or job, not as a Dagster input."
        )


class DatabricksStagedWrite:
    """Parquet files on the run's volume folder, committed by one SQL statement (`StagedWrite`)."""

    def __init__(
        self,
        manager: DatabricksIOManager,
        request: WriteRequest,
        plan: WritePlan,
        client: WorkspaceClient,
        staged: StagedFiles,
        source_stream: SourceStream | None,
        started: float,
    ) -> None:
        self.manager, self.request, self.plan = manager, request, plan
        self.client, self.staged, self.source_stream = client, staged, source_stream
        self.started = started
        self.table_name = self.manager.full_table_name(list(request.asset_path))
        self.incoming_schema: pa.Schema = plan.target
        # the Unity Catalog table's columns are not read here
        self.table_schema: pa.Schema | None = None

    def kept_rows(self, columns: list[str], among: pa.Array | None = None) -> pa.Table | None:
        """Unknown here: the table's other rows are in Unity Catalog."""
        return None

    def abort(self) -> None:
        """Delete the staged files; the table is unchanged."""
        try:
            self.staged.delete()
        except Exception as cleanup_error:
            raise IngestionError(
                f"{self.plan.table_label} ({self.plan.partition_label}): nothing was committed, "
                f"but the staged files under {self.staged.directory} could not be deleted "
                f"({self.manager.hide_token(cleanup_error)}); delete them from the volume."
            ) from None

    def fail(self, error: BaseException) -> NoReturn:
        """Delete the staged files and raise what failed, naming the table (unchanged)."""
        plan = self.plan
        try:
            self.staged.delete()
        except Exception as cleanup_error:
            error.add_note(
                f"the staged files under {self.staged.directory} could not be deleted "
                f"({self.manager.hide_token(cleanup_error)}); delete them from the volume."
            )
        if plan.source_error is not None:
            raise plan.source_error from None
        if isinstance(error, IngestionError) or not isinstance(error, Exception):
            raise error
        raise IngestionError(
            f"{plan.table_label} ({plan.partition_label}): writing to Databricks failed: "
            f"{self.manager.hide_token(error)}. The table is unchanged; staged files were "
            "removed. Re-run the partition."
        ) from None

    def commit(self) -> dict[str, Any]:
        """Create the table if needed and swap the window in with one statement."""
        plan, manager, target = self.plan, self.manager, self.plan.target
        statement_ids: list[str] = []
        try:
            for statement in (
                create_table_sql(self.table_name, target),
                replace_sql(self.table_name, self.staged.directory, target.names, plan.days),
            ):
                statement_ids.append(manager.execute(self.client, statement, plan))
        except BaseException as error:
            self.fail(error)
        try:
            self.staged.delete()
        except Exception as cleanup_error:
            raise IngestionError(
                f"{plan.table_label} ({plan.partition_label}): the rows were committed, but the "
                f"staged files under {self.staged.directory} could not be deleted "
                f"({manager.hide_token(cleanup_error)}); delete them from the volume."
            ) from None
        elapsed = time.monotonic() - self.started
        self.request.log.info(
            f"{plan.table_label} {plan.partition_label}: committed {plan.rows:,} rows from "
            f"{len(self.staged.paths)} staged file(s) in {elapsed:.2f} s"
        )
        asset_path = list(self.request.asset_path)
        return {
            "rows_written": plan.rows,
            "dagster/column_schema": column_schema(target),
            "dagster/table_name": ".".join(
                (manager.catalog, manager.schema_name, table_name_of(asset_path))
            ),
            **write_timing_metadata(plan, elapsed),
            "statement_id": statement_ids[-1],
            "files_staged": len(self.staged.paths),
            "bytes_staged": self.staged.bytes_staged,
            **(self.source_stream.metadata() if self.source_stream is not None else {}),
        }
