"""Delta Lake IO manager (delta-rs): one atomic replace of exactly the partitions a run covers.

Ingestion assets write through `stage()` (audited, then committed or aborted); other assets return
Arrow data and go through `handle_output`, which stages and commits at once. Dagster glue only:
the table layout, the replace and its commit live in `ingestion_assets.lake`."""

from __future__ import annotations

import itertools
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from deltalake import DeltaTable
from pydantic import Field

from ingestion_assets.errors import IngestionError
from ingestion_assets.io_managers.contract import (
    RunLog,
    WriteRequest,
    column_schema,
    context_window,
    output_reader,
    write_output,
    write_timing_metadata,
)
from ingestion_assets.lake.files import delta_dataset
from ingestion_assets.lake.ledger import (
    SOURCE_FILE,
    gone_files,
    kept_rows,
    ledger_files,
    ledger_uri,
    write_ledger,
)
from ingestion_assets.lake.replace import (
    StagedReplace,
    fit_schema,
    open_table,
    replace_with_writer,
    stage_partitions,
)
from ingestion_assets.lake.rows import LINEAGE_COLUMNS, PARTITION_DATE, WritePlan, lake_schema
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow


class DeltaLakeIOManager(ConfigurableIOManager):
    """Writes each asset to a Delta table `<root>/<source>/<table>`; replaces partitions atomically."""

    root_uri: str = Field(
        description="Folder or object-store URI (s3://, az://, gs://) holding one Delta table "
        "per asset, at <root>/<asset key path>."
    )
    # repr=False: once a run resolved the ${VAR}s, the values are credentials
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="delta-rs storage options (credentials, endpoint); take secrets from EnvVar.",
    )
    target_file_size: int | None = Field(
        default=None,
        description="Target Parquet file size in bytes for written files; delta-rs default.",
    )

    def table_uri(self, asset_path: list[str] | tuple[str, ...]) -> str:
        """Where an asset's Delta table lives."""
        return "/".join([self.root_uri.rstrip("/"), *asset_path])

    def open_table(self, asset_path: list[str] | tuple[str, ...]) -> DeltaTable | None:
        """An asset's Delta table at its latest version, or None before its first write."""
        return self.open_uri(self.table_uri(asset_path))

    def open_uri(self, uri: str) -> DeltaTable | None:
        """The Delta table at `uri` (in this lake's storage), None if there is none yet."""
        return open_table(uri, self.storage_options or None)

    def stage(self, request: WriteRequest, data: Any) -> DeltaStagedWrite:
        """Write the rows as files no table version refers to yet (see `StagedWrite`)."""
        reader, source_stream = output_reader(data)
        uri = self.table_uri(request.asset_path)
        plan = request.plan(lake_schema(reader.schema, request.nanoseconds))
        existing = self.open_uri(uri)
        gone = None
        if source_stream is not None and source_stream.files is not None:
            reader, gone = self._keep_gone_files(uri, existing, reader, source_stream, plan)
            # the carried rows may bring the table's columns the files read now lack
            plan.target = lake_schema(reader.schema, request.nanoseconds)
        incoming = plan.target
        table_schema = pa.schema(existing.schema().to_arrow()) if existing is not None else None
        plan.target, schema_mode = fit_schema(
            existing,
            plan.target,
            policy=request.schema_policy,
            where=f"{plan.table_label} ({plan.partition_label})",
            uri=uri,
        )
        started = time.monotonic()
        staged = stage_partitions(
            uri,
            self.storage_options or None,
            existing,
            reader,
            plan,
            schema_mode,
            self.target_file_size,
            request.log.info,
        )
        written = DeltaStagedWrite(self, request, staged, source_stream, started)
        written.incoming_schema, written.table_schema = incoming, table_schema
        written.gone_files = gone
        return written

    def _keep_gone_files(
        self,
        uri: str,
        existing: DeltaTable | None,
        reader: pa.RecordBatchReader,
        stream: SourceStream,
        plan: WritePlan,
    ) -> tuple[pa.RecordBatchReader, pa.Table]:
        """The files of the run's days the ledger holds and the read did not find (gone from
        the landing zone); unless the dataset removes their rows, the stream then carries their
        committed rows too, so that the replace keeps them."""
        assert stream.files is not None
        previous = ledger_files(uri, self.storage_options or None, plan.days)
        # a files source decodes every file before its stream starts: the entries are complete
        read = set(stream.files().column("path").to_pylist())
        gone = gone_files(previous, read)
        paths = set(stream.carried_files)
        if stream.keeps_gone_files:
            paths |= set(gone.column("path").to_pylist())
        if not paths:
            return reader, gone
        if existing is None and stream.carried_files:
            raise IngestionError(
                f"{plan.table_label} {plan.partition_label}: the ledger lists files whose rows "
                f"the table should hold, but there is no table at {uri}; remove the ledger "
                f"{ledger_uri(uri)} so that every file is read again, then re-run"
            )
        schema = reader.schema
        batches: Iterator[pa.RecordBatch] = iter(reader)
        if existing is not None:
            # the table's columns that the files read now lack (none read, or inferred ones)
            held = pa.schema(existing.schema().to_arrow())
            extra = [
                field
                for field in held
                if field.name not in schema.names and field.name not in LINEAGE_COLUMNS
            ]
            if extra:
                schema = pa.schema([*reader.schema, *extra])
                batches = (_widened(batch, schema) for batch in reader)
        kept = kept_rows(existing, plan.days, sorted(paths), schema) if existing else iter(())
        expected = sum(stream.carried_files.values())
        carried = _counted(kept, set(stream.carried_files), expected, plan.table_label)
        return (
            pa.RecordBatchReader.from_batches(schema, itertools.chain(batches, carried)),
            gone,
        )

    def committed_rows(
        self, asset_path: tuple[str, ...], window: PartitionWindow | None, columns: list[str]
    ) -> pa.Table | None:
        """`columns` and `_partition_date` of the committed rows in `window` (all when None)."""
        table = self.open_table(asset_path)
        if table is None:
            return None
        present = set(pa.schema(table.schema().to_arrow()).names)
        wanted = [name for name in dict.fromkeys([*columns, PARTITION_DATE]) if name in present]
        return delta_dataset(table).to_table(columns=wanted, filter=_days_of(window))

    def committed_schema(self, asset_path: tuple[str, ...]) -> pa.Schema | None:
        """The Delta table's schema; None before its first write."""
        table = self.open_table(asset_path)
        return None if table is None else pa.schema(table.schema().to_arrow())

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Write an asset's Arrow data: replace its partitions (or the whole table) in one commit."""
        write_output(self, context, obj)

    def write_rejected(
        self, uri: str, source_stream: SourceStream, plan: WritePlan, log: RunLog
    ) -> dict[str, Any]:
        """Replace the window's rows of `<table>_rejected` with this run's rejected records."""
        rejected = source_stream.rejected_table()
        rejected_uri = f"{uri}_rejected"
        existing = self.open_uri(rejected_uri)
        if rejected.num_rows == 0 and existing is None:
            return {"rejected_table": "none (no record rejected)"}
        replace_with_writer(
            rejected_uri,
            self.storage_options or None,
            plan.rejected_rows(rejected),
            existing,
            plan.predicate,
            target_file_size=self.target_file_size,
        )
        if rejected.num_rows:
            log.warning(
                f"{plan.table_label} {plan.partition_label}: {rejected.num_rows} record(s) did "
                f"not fit the schema and were kept in {rejected_uri}"
            )
        return {"rejected_table": MetadataValue.path(rejected_uri)}

    def load_input(self, context: InputContext) -> pa.Table:
        """The upstream table as Arrow, limited to the partitions this run asks for."""
        asset_path = list(context.asset_key.path)
        uri = self.table_uri(asset_path)
        table = self.open_uri(uri)
        if table is None:
            raise IngestionError(
                f"table {'.'.join(asset_path)}: no Delta table at {uri}; materialize the "
                "upstream asset first."
            )
        return delta_dataset(table).to_table(filter=_days_of(context_window(context)))


def _widened(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch with the columns of `schema` it lacks, as nulls."""
    arrays = [
        batch.column(field.name)
        if field.name in batch.schema.names
        else pa.nulls(batch.num_rows, field.type)
        for field in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _counted(
    batches: Iterator[pa.RecordBatch], carried: set[str], expected: int, label: str
) -> Iterator[pa.RecordBatch]:
    """The carried rows, checked at their end against the rows the ledger says the unchanged
    files gave: a table that lost rows of them fails the run (staged, nothing committed)."""
    found = 0
    for batch in batches:
        if carried:
            found += int(
                pc.sum(pc.is_in(batch.column(SOURCE_FILE), pa.array(sorted(carried)))).as_py() or 0
            )
        yield batch
    if found != expected:
        raise IngestionError(
            f"{label}: the table holds {found:,} rows of the files unchanged since they were "
            f"ingested, their ledger {expected:,}; the table was changed outside the project: "
            "remove its `_files` ledger so that every file is read again, then re-run"
        )


def _days_of(window: PartitionWindow | None) -> pc.Expression | None:
    """The scan filter of a window's days (pruned by the files' `_partition_date` bounds);
    None, every row, without one."""
    if window is None:
        return None
    day = pc.field(PARTITION_DATE)
    return (day >= pa.scalar(window.first_day)) & (day <= pa.scalar(window.last_day))


def absolute_uri(uri: str) -> str:
    """A table's location as the UI should show it: object-store URIs as they are, a local
    folder as its absolute path (the lake root may be relative to where Dagster runs)."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return str(pathlib.Path(uri.removeprefix("file://")).resolve())


class DeltaStagedWrite:
    """A staged replace of one Delta table (see `StagedWrite`)."""

    def __init__(
        self,
        manager: DeltaLakeIOManager,
        request: WriteRequest,
        staged: StagedReplace,
        source_stream: SourceStream | None,
        started: float,
    ) -> None:
        self.manager, self.request, self.staged = manager, request, staged
        self.source_stream, self.started = source_stream, started
        self.plan = staged.plan
        self.table_name = ".".join(request.asset_path)
        self.incoming_schema: pa.Schema = staged.plan.target
        self.table_schema: pa.Schema | None = None
        # a files source's ledger rows whose file is gone from the landing zone
        self.gone_files: pa.Table | None = None

    def _write_ledger(self, uri: str) -> dict[str, Any]:
        """Replace the run's days of `<table>_files` with the files it read, rejected and found
        gone; what the materialization reports of them."""
        stream, plan = self.source_stream, self.plan
        assert stream is not None
        assert stream.files is not None
        entries = stream.files()
        gone = self.gone_files
        kept = stream.keeps_gone_files
        if gone is not None and gone.num_rows:
            marked = gone.set_column(
                gone.schema.get_field_index("status"),
                "status",
                pa.repeat(
                    pa.scalar("gone, rows kept" if kept else "gone, rows removed"), gone.num_rows
                ),
            )
            entries = pa.concat_tables(
                [entries, marked.select(entries.schema.names).cast(entries.schema)]
            )
            paths = sorted(set(gone.column("path").to_pylist()))
            self.request.log.warning(
                f"{plan.table_label} {plan.partition_label}: {len(paths)} file(s) the table holds "
                f"rows of are gone from the landing zone ({', '.join(paths[:5])}"
                + (", ..." if len(paths) > 5 else "")
                + f"); their rows were {'kept' if kept else 'removed'} (deleted_files)"
            )
        write_ledger(
            uri,
            self.manager.storage_options or None,
            entries,
            plan.predicate,
            self.request.run_id,
            plan.ingested_at,
        )
        gone_paths = sorted(set(gone.column("path").to_pylist())) if gone is not None else []
        return {
            "files_table": MetadataValue.path(absolute_uri(ledger_uri(uri))),
            "files_gone": len(gone_paths),
            **({"files_gone_paths": MetadataValue.json(gone_paths[:100])} if gone_paths else {}),
        }

    def kept_rows(self, columns: list[str], among: pa.Array | None = None) -> pa.Table:
        """`columns` of the table's rows outside the window, which the commit keeps."""
        return self.staged.kept_rows(columns, among)

    def abort(self) -> None:
        """Remove the staged files; the table stays at its previous version."""
        self.staged.abort()

    def commit(self) -> dict[str, Any]:
        """Swap the window's rows for the staged ones in one commit; the metadata to report."""
        plan, uri = self.plan, self.staged.uri
        written = self.staged.commit()
        elapsed = time.monotonic() - self.started
        table = DeltaTable(uri, storage_options=self.manager.storage_options or None)
        actions = pa.table(table.get_add_actions(flatten=True))
        total_rows = (
            int(pc.sum(actions.column("num_records")).as_py() or 0)
            if "num_records" in actions.column_names
            else None
        )
        metadata: dict[str, Any] = {
            "dagster/row_count": total_rows if total_rows is not None else plan.rows,
            "rows_written": plan.rows,
            "dagster/column_schema": column_schema(pa.schema(table.schema().to_arrow())),
            "dagster/table_name": self.table_name,
            "dagster/uri": MetadataValue.path(absolute_uri(uri)),
            **write_timing_metadata(plan, elapsed),
            "delta_version": table.version(),
            "files_written": len(written),
            "bytes_written": sum(size for _, size in written),
        }
        self.request.log.info(
            f"{plan.table_label} {plan.partition_label}: wrote {plan.rows:,} rows as Delta "
            f"version {table.version()} in {elapsed:.2f} s"
        )
        if self.source_stream is not None:
            metadata.update(self.source_stream.metadata())
            if self.source_stream.files is not None:
                metadata.update(self._write_ledger(uri))
            if self.source_stream.quarantine:
                metadata.update(
                    self.manager.write_rejected(uri, self.source_stream, plan, self.request.log)
                )
        return metadata
