"""Delta Lake IO manager (delta-rs): one atomic replace of exactly the partitions a run covers.

Dagster glue only: the table layout, the replace and its commit live in `ingestion_assets.lake`."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from deltalake import DeltaTable
from pydantic import Field

from ingestion_assets.errors import IngestionError
from ingestion_assets.io_managers.contract import (
    NANOSECONDS_KEY,
    PARTITION_COLUMN_KEY,
    SCHEMA_POLICY_KEY,
    column_schema,
    context_window,
    metadata_text,
    output_reader,
    row_count_metadata,
    write_timing_metadata,
)
from ingestion_assets.lake.replace import (
    fit_schema,
    open_table,
    replace_with_writer,
    write_partitions,
)
from ingestion_assets.lake.rows import PARTITION_DATE, WritePlan, lake_schema
from ingestion_assets.sources.stream import SourceStream


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

    def table_uri(self, asset_path: list[str]) -> str:
        """Where an asset's Delta table lives."""
        return "/".join([self.root_uri.rstrip("/"), *asset_path])

    def open_table(self, asset_path: list[str]) -> DeltaTable | None:
        """An asset's Delta table at its latest version, or None before its first write."""
        return self.open_uri(self.table_uri(asset_path))

    def open_uri(self, uri: str) -> DeltaTable | None:
        """The Delta table at `uri` (in this lake's storage), None if there is none yet."""
        return open_table(uri, self.storage_options or None)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Write the asset's batches: replace its partitions (or the whole snapshot) in one commit."""
        if obj is None:
            return
        reader, source_stream = output_reader(obj)
        metadata = context.definition_metadata or {}
        asset_path = list(context.asset_key.path)
        uri = self.table_uri(asset_path)
        options = self.storage_options or None
        nanoseconds = metadata_text(metadata.get(NANOSECONDS_KEY)) or "error"
        plan = WritePlan(
            table_label=f"table {'.'.join(asset_path)}",
            window=context_window(context),
            target=lake_schema(reader.schema, nanoseconds),
            partition_column=metadata_text(metadata.get(PARTITION_COLUMN_KEY)),
            ingested_at=datetime.datetime.now(datetime.UTC),
            run_id=context.run_id,
            nanoseconds=nanoseconds,
        )
        existing = self.open_uri(uri)
        plan.target, schema_mode = fit_schema(
            existing,
            plan.target,
            policy=metadata_text(metadata.get(SCHEMA_POLICY_KEY)) or "evolve",
            where=f"{plan.table_label} ({plan.partition_label})",
            uri=uri,
        )
        started = time.monotonic()
        written = write_partitions(
            uri,
            options,
            existing,
            reader,
            plan,
            schema_mode,
            self.target_file_size,
            context.log.info,
        )
        elapsed = time.monotonic() - started

        table = DeltaTable(uri, storage_options=options)
        context.add_output_metadata(
            {
                **row_count_metadata(context, plan),
                "dagster/column_schema": column_schema(pa.schema(table.schema().to_arrow())),
                "dagster/table_name": ".".join(asset_path),
                "dagster/uri": MetadataValue.path(uri),
                **write_timing_metadata(plan, elapsed),
                "delta_version": table.version(),
                "files_written": len(written),
                "bytes_written": sum(size for _, size in written),
            }
        )
        context.log.info(
            f"{plan.table_label} {plan.partition_label}: wrote {plan.rows:,} rows as Delta "
            f"version {table.version()} in {elapsed:.2f} s"
        )
        if source_stream is not None:
            source_metadata = source_stream.metadata()
            if source_stream.quarantine:
                source_metadata.update(self._write_rejected(uri, source_stream, plan, context))
            context.add_output_metadata(source_metadata)

    def _write_rejected(
        self, uri: str, source_stream: SourceStream, plan: WritePlan, context: OutputContext
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
            context.log.warning(
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
        window = context_window(context)
        if window is None:
            return table.to_pyarrow_table()
        day = pc.field(PARTITION_DATE)
        return table.to_pyarrow_dataset().to_table(
            filter=(day >= pa.scalar(window.first_day)) & (day <= pa.scalar(window.last_day))
        )
