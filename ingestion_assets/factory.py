"""Turn specs into Dagster assets and jobs: one daily-partitioned asset per source table."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import pyarrow as pa
from dagster import (
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    CodeReferencesMetadataValue,
    DailyPartitionsDefinition,
    Failure,
    LocalFileCodeReference,
    MaterializeResult,
    TableSchema,
    multi_asset,
)

from ingestion_assets.checks import (
    PRIMARY_KEY,
    UNPARTITIONED_ROWS,
    AuditData,
    DatasetChecks,
    Evaluation,
    Verdict,
    check_evaluations,
    committed_audit_data,
    failure_summary,
    materialization_targets,
    reconciliation_checks,
)
from ingestion_assets.errors import AuditFailedError, IngestionError
from ingestion_assets.io_managers.contract import (
    COLUMN_SCHEMA,
    NANOSECONDS_KEY,
    PARTITION_COLUMN_KEY,
    PARTITION_ROW_COUNT,
    SCHEMA_POLICY_KEY,
    STORAGE_KINDS,
    StagedWrite,
    TableWriter,
    WriteRequest,
    described_column_schema,
    partition_row_counts,
)
from ingestion_assets.lake.replace import held_interrupts
from ingestion_assets.lake.rows import (
    INGESTED_AT,
    PARTITION_DATE,
    RUN_ID,
    UNPARTITIONED_REASON,
    delta_type_names,
    with_unpartitioned_reasons,
)
from ingestion_assets.merge_asset import merge_asset
from ingestion_assets.policies import automation_condition, freshness_policy
from ingestion_assets.resources import SourceResource
from ingestion_assets.sources.base import Source, source_kind
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec, SourceSpecBase


def source_resource_key(source_name: str) -> str:
    """The resource key under which a source's connection is bound."""
    return f"{source_name}_source"


def source_resource_class(spec: SourceSpecBase) -> type[SourceResource]:
    """The Dagster resource class of a spec's kind (from the registry of source kinds)."""
    resource_class = source_kind(spec.type).resource_class()
    if not (isinstance(resource_class, type) and issubclass(resource_class, SourceResource)):
        raise TypeError(f"source kind '{spec.type}': {resource_class!r} is no SourceResource")
    return resource_class


def source_resource(source_name: str, spec: SourceSpecBase) -> SourceResource:
    """The resource that holds a source's settings (secrets as EnvVars) and opens it in a run."""
    return source_resource_class(spec).from_spec(source_name, spec)


def partitions_definition(
    spec: SourceSpecBase, table: DatasetSpec
) -> DailyPartitionsDefinition | None:
    """Daily partitions from the table's start date in the source's zone; None for a snapshot."""
    if table.partition_column is None:
        return None
    return DailyPartitionsDefinition(
        start_date=spec.start_date_of(table).isoformat(),
        end_date=spec.end_date.isoformat() if spec.end_date else None,
        timezone=spec.timezone,
        # today is a partition too, so that rows arriving today can be ingested (and re-ingested)
        end_offset=0 if spec.end_date else 1,
    )


def _declared_source_types(spec: SourceSpecBase, dataset: DatasetSpec) -> dict[str, str]:
    """The source types the spec declares (a stream's `fields`), by column."""
    declared = source_resource_class(spec).declared_columns(dataset)
    return {column.name: column.source_type for column in declared if column.source_type}


def _definition_column_schema(spec: SourceSpecBase, dataset: DatasetSpec) -> TableSchema:
    """The column schema the UI shows before the first run: the columns the spec names."""
    declared = source_resource_class(spec).declared_columns(dataset)
    columns = [(column.name, column.type) for column in declared]
    columns += [
        (PARTITION_DATE, "date"),
        (INGESTED_AT, "timestamp[us, tz=UTC]"),
        (RUN_ID, "string"),
    ]
    return described_column_schema(
        columns, dataset, spec.timezone, _declared_source_types(spec, dataset)
    )


def materialized_column_schema(
    spec: SourceSpecBase, dataset: DatasetSpec, written: TableSchema, stream: SourceStream
) -> TableSchema:
    """The written table's column schema described, with the types the source reported."""
    return described_column_schema(
        [(column.name, column.type) for column in written.columns],
        dataset,
        spec.timezone,
        {**_declared_source_types(spec, dataset), **stream.source_types},
    )


def _description(spec: SourceSpecBase, table: DatasetSpec, kind: str) -> str:
    base = table.description or f"{table.origin} from the {kind} source."
    if table.mode == "cdc" and table.cdc is not None:
        return (
            f"{base}\n\nKept by {', '.join(table.primary_key)} from a change feed "
            f"({table.cdc.feed}): each run applies the events past the last sequence applied, in "
            f"sequence order, in one Delta commit (SCD type {table.cdc.stored_as_scd_type})."
        )
    if table.mode == "merge":
        reads = (
            f"the rows whose `{table.cursor_column}` is at or past the last run's highest value"
            if table.cursor_column
            else "every row"
        )
        kept = (
            "SCD type 2 history (`_valid_from`, `_valid_to`, `_is_current`)"
            if table.history
            else "one row per key"
        )
        return (
            f"{base}\n\nMerge table kept by {', '.join(table.primary_key)}: each run reads {reads} "
            f"and merges them in one Delta commit, keeping {kept}; deletes: {table.deletes}."
        )
    if table.partition_column is None:
        return (
            f"{base}\n\nUnpartitioned snapshot: there is no partition column, so every run "
            "reads the whole table and replaces the Delta table."
        )
    return (
        f"{base}\n\nPartitioned by day on `{table.partition_column}` (days begin in "
        f"{spec.timezone}); a run replaces exactly its days in the Delta table. "
        f"Primary key: {', '.join(table.primary_key) or 'not declared'}."
    )


def dataset_asset(
    source_name: str,
    spec: SourceSpecBase,
    table: DatasetSpec,
    io_manager_key: str = "io_manager",
    location: tuple[str, int] | None = None,
) -> AssetsDefinition:
    """The asset `[source, table]` that streams one table's (or stream's) days into its writer
    (delta-rs by default; Unity Catalog, Iceberg or PostgreSQL by `io_manager_key`), with its
    checks judged on the staged rows before the commit (audit before publish)."""
    resource_key = source_resource_key(source_name)
    partitions_def = partitions_definition(spec, table)
    asset_key = AssetKey([source_name, table.key_name])
    source_class = source_resource_class(spec).source_type()
    checks = DatasetChecks(
        asset_key,
        table,
        partitions_def,
        # the kind can count the rows no partition reaches
        source_counts_unreachable=source_class.unreachable_rows is not Source.unreachable_rows,
    )
    kind = spec.asset_kind
    # a snapshot table has the single-run policy too: a range over a whole source
    # (`--select 'group:erp' --partition-range`) then runs its snapshots once, in the same run
    backfill_policy = (
        BackfillPolicy.single_run()
        if partitions_def is None or spec.max_partitions_per_run is None
        else BackfillPolicy.multi_run(spec.max_partitions_per_run)
    )
    metadata: dict[str, Any] = {
        "source_table": table.qualified_name,
        COLUMN_SCHEMA: _definition_column_schema(spec, table),
        PARTITION_COLUMN_KEY: table.partition_column or "",
        SCHEMA_POLICY_KEY: table.schema_policy,
        NANOSECONDS_KEY: table.timestamp_nanoseconds,
    }
    if table.primary_key:
        metadata["primary_key"] = ", ".join(table.primary_key)
    storage_kind = STORAGE_KINDS.get(io_manager_key, "deltalake")
    metadata["dagster/storage_kind"] = storage_kind
    if location is not None:
        # the entry of the project file this asset comes from, linked from the asset's page
        metadata["dagster/code_references"] = CodeReferencesMetadataValue(
            code_references=[LocalFileCodeReference(file_path=location[0], line_number=location[1])]
        )
    asset_spec = AssetSpec(
        asset_key,
        group_name=source_name,
        description=_description(spec, table, kind),
        # `deltalake` is the kind Dagster draws the Delta Lake icon for
        # Unity Catalog tables are Delta tables too
        kinds={kind, storage_kind, *(["deltalake"] if storage_kind == "databricks" else [])},
        owners=list(table.owners or spec.owners),
        tags={**spec.tags, **table.tags},
        metadata=metadata,
        partitions_def=partitions_def,
        freshness_policy=freshness_policy(spec, table),
        automation_condition=automation_condition(spec, table, partitions_def),
    ).with_io_manager_key(io_manager_key)

    if table.mode in ("merge", "cdc"):
        return merge_asset(source_name, spec, table, asset_spec, resource_key, io_manager_key)

    @multi_asset(
        name="__".join(asset_key.path),
        specs=[asset_spec],
        check_specs=checks.specs(),
        partitions_def=partitions_def,
        backfill_policy=backfill_policy,
        pool=source_name,
        required_resource_keys={resource_key, io_manager_key},
        # the checks alone (from the UI) judge the committed table
        can_subset=True,
    )
    def _table(context) -> Iterator[Any]:  # type: ignore[no-untyped-def]
        # Dagster reads the `context` annotation at run time: it stays bare
        context = cast(AssetExecutionContext, context)
        run = AssetRun(
            context,
            source_name,
            spec,
            table,
            checks,
            getattr(context.resources, resource_key),
            getattr(context.resources, io_manager_key),
        )
        try:
            if asset_key in context.selected_asset_keys:
                yield from run.publish()
            else:
                yield from run.judge_committed()
        except IngestionError as error:
            # a Failure is shown as it is: the run's error leads with the project's message
            # (source, table, partition, the fix), not with Dagster's wrapper around it
            raise Failure(description=str(error), allow_retries=False) from error

    return _table


class AssetRun:
    """One execution of an ingestion asset: read, stage, audit, then commit or refuse; or, with
    the checks selected alone, judge the committed table."""

    def __init__(
        self,
        context: AssetExecutionContext,
        source_name: str,
        spec: SourceSpecBase,
        table: DatasetSpec,
        checks: DatasetChecks,
        source: SourceResource,
        writer: TableWriter,
    ) -> None:
        self.context, self.source_name, self.spec, self.table = context, source_name, spec, table
        self.checks, self.source, self.writer = checks, source, writer
        self.asset_key = checks.asset_key
        self.window: PartitionWindow | None = None
        self.partition_keys: dict[datetime.date, str] = {}
        if checks.partitions_def is not None:
            time_window = context.partition_time_window
            self.window = PartitionWindow(time_window.start, time_window.end)
            self.partition_keys = {
                datetime.date.fromisoformat(key[:10]): key for key in context.partition_keys
            }
        self.selected = {key.name for key in context.selected_asset_check_keys}
        self.stream: SourceStream | None = None
        # the rows no partition reaches are counted when their check is asked for, or when
        # they decide the commit (fail) or land somewhere (quarantine)
        self.judges_unreachable = checks.counts_unpartitioned_rows and (
            UNPARTITIONED_ROWS in self.selected or table.unpartitioned_rows != "warn"
        )

    def count_at_source(self, window: PartitionWindow | None) -> int | None:
        """The source's count of a window; for the run's own window, the total an API reported
        while it was read, when it reported one."""
        stream = self.stream
        if stream is not None and window == self.window and stream.reported_total is not None:
            return stream.reported_total
        return self.source.count(self.table, window)

    def judge_committed(self) -> Iterator[Any]:
        """The checks executed without the asset: judged on the committed table."""
        context, checks, window = self.context, self.checks, self.window
        data = committed_audit_data(
            self.writer, self.asset_key, self.table, window, context.instance
        )
        if data is None:
            evaluations = [
                Evaluation(
                    name,
                    day,
                    Verdict(False, {}, "no table yet: materialize the asset first"),
                    AssetCheckSeverity.ERROR,
                    False,
                )
                for name in self.selected
                if name in checks.enabled
                for day in (window.days() if window else [None])
            ]
        else:
            evaluations = checks.audit(data, self.count_at_source, self.selected)
        if UNPARTITIONED_ROWS in self.selected:
            unreachable = self.source.unreachable_rows(self.table)
            evaluations.append(checks.unpartitioned_evaluation(unreachable))
        targets = materialization_targets(
            context.instance, self.asset_key, list(self.partition_keys.values())
        )
        yield from check_evaluations(
            self.asset_key, evaluations, self.partition_keys, targets, context.assets_def
        )

    def publish(self) -> Iterator[Any]:
        """Read the window, stage it, judge it; commit and record, or refuse and fail."""
        context, table, window = self.context, self.table, self.window
        context.log.info(
            f"reading {table.qualified_name} from source '{self.source_name}'"
            + (f" for [{window.start.isoformat()}, {window.end.isoformat()})" if window else "")
        )
        stream = self.stream = self.source.read(table, window)
        context.log.info(f"fetching {table.qualified_name} through {stream.path}")
        request = WriteRequest(
            asset_path=tuple(self.asset_key.path),
            window=window,
            run_id=context.run_id,
            partition_column=table.partition_column,
            log=context.log,
            schema_policy=table.schema_policy,
            nanoseconds=table.timestamp_nanoseconds,
            key_columns=tuple(table.primary_key) if PRIMARY_KEY in self.checks.enabled else (),
        )
        staged = self.writer.stage(request, stream)
        unreachable: int | None = None
        try:
            evaluations = self.checks.audit(staged_audit_data(staged, stream), self.count_at_source)
            if self.judges_unreachable:
                # counted after the read, whose errors (a missing column) are the clearer
                unreachable = self.source.unreachable_rows(table)
                evaluations.append(self.checks.unpartitioned_evaluation(unreachable))
        except BaseException:
            staged.abort()
            raise
        recorded = [e for e in evaluations if e.check_name in self.selected]
        self._warn(staged, evaluations)
        if any(evaluation.stops_the_commit for evaluation in evaluations):
            staged.abort()
            yield from check_evaluations(
                self.asset_key, recorded, self.partition_keys, assets_def=context.assets_def
            )
            raise AuditFailedError(
                f"{staged.table_name} ({staged.plan.partition_label}): nothing was committed, "
                "the table is unchanged: blocking checks rejected the staged rows. "
                f"{failure_summary(evaluations)}. Find why the source and what was read "
                "disagree, fix it and re-run the partitions; a check that should not hold "
                "the data back can be set to severity WARN in the project file."
            )
        for key, rows in partition_row_counts(
            list(self.partition_keys.values()), staged.plan.rows_by_day
        ).items():
            context.add_asset_metadata({PARTITION_ROW_COUNT: rows}, partition_key=key)
        # a stop request (SIGTERM from a cancel) waits until the commit is recorded as a
        # materialization: a run whose rows landed is never reported as having written nothing
        with held_interrupts():
            metadata = staged.commit()
            written = metadata.get(COLUMN_SCHEMA)
            if isinstance(written, TableSchema):
                metadata[COLUMN_SCHEMA] = materialized_column_schema(
                    self.spec, table, written, stream
                )
            if table.unpartitioned_rows == "quarantine" and self.checks.counts_unpartitioned_rows:
                metadata.update(self._quarantine_unreachable(unreachable))
            # Dagster writes one event per partition and check result, silently: for a long
            # range that takes longer than the read and the write did
            context.log.info(
                f"{staged.table_name}: recording {max(len(self.partition_keys), 1):,} "
                f"materialization(s) and {len(recorded):,} check result(s)"
            )
            yield MaterializeResult(asset_key=self.asset_key, metadata=metadata)
        targets = materialization_targets(
            context.instance, self.asset_key, list(self.partition_keys.values()), context.run_id
        )
        yield from check_evaluations(
            self.asset_key, recorded, self.partition_keys, targets, context.assets_def
        )

    def _warn(self, staged: StagedWrite, evaluations: list[Evaluation]) -> None:
        """Log each failed check that does not hold the commit back."""
        for evaluation in evaluations:
            if not evaluation.verdict.passed and not evaluation.stops_the_commit:
                self.context.log.warning(
                    f"{staged.table_name}"
                    + (f" {evaluation.day}" if evaluation.day else "")
                    + f": check {evaluation.check_name} ({evaluation.severity.value}) failed: "
                    f"{evaluation.verdict.description}"
                )

    def _quarantine_unreachable(self, unreachable: int | None) -> dict[str, Any]:
        """Replace `<table>_unpartitioned` with the rows no partition reaches and the reason of
        each (`unpartitioned_rows: quarantine`); left alone while there are none and never were."""
        context, spec, table, writer = self.context, self.spec, self.table, self.writer
        path = (*self.asset_key.path[:-1], f"{self.asset_key.path[-1]}_unpartitioned")
        if not unreachable and writer.committed_schema(path) is None:
            return {"unpartitioned_table": "none (every row falls in a partition)"}
        column = table.partition_column or ""
        first_day = spec.start_date_of(table)
        stream = self.source.read_unreachable(table)
        reasons = (
            with_unpartitioned_reasons(batch, column, spec.timezone, first_day, spec.end_date)
            for batch in stream.reader
        )
        schema = stream.reader.schema.append(pa.field(UNPARTITIONED_REASON, pa.string()))
        request = WriteRequest(
            asset_path=path,
            window=None,
            run_id=context.run_id,
            partition_column=None,
            log=context.log,
            nanoseconds=table.timestamp_nanoseconds,
        )
        quarantined = writer.stage(request, pa.RecordBatchReader.from_batches(schema, reasons))
        written = quarantined.commit()
        context.log.warning(
            f"{'.'.join(self.asset_key.path)}: {quarantined.plan.rows} row(s) no partition "
            f"reaches are kept in {'.'.join(path)} with the reason"
        )
        return {
            "unpartitioned_table": ".".join(path),
            "unpartitioned_rows_quarantined": written.get("rows_written", quarantined.plan.rows),
        }


def staged_audit_data(staged: StagedWrite, stream: SourceStream) -> AuditData:
    """What the audit judges of a staged write: its rows per day (and the records the source
    set aside in the rejected table), its columns against the table's, its keys and the keys of
    the rows the commit keeps."""
    plan = staged.plan
    key = list(plan.key_columns)
    set_aside = stream.rejected_by_day()
    findings = None
    if key:
        ledger = plan.staged_keys()
        try:
            # only kept rows that share a staged key's first column can collide with a staged key
            kept = staged.kept_rows(key, ledger.first_values())
            if kept is not None:
                ledger.add_kept(kept)
        except BaseException:
            ledger.close()
            raise
        findings = ledger.judge()
    return AuditData(
        window=plan.window,
        rows_by_day=dict(plan.rows_by_day) if plan.window else {plan.first_day: plan.rows},
        set_aside_by_day=(
            {day or plan.first_day: rows for day, rows in set_aside.items()}
            if plan.window
            else {plan.first_day: sum(set_aside.values())}
        ),
        columns=delta_type_names(staged.incoming_schema),
        expected_columns=(
            delta_type_names(staged.table_schema) if staged.table_schema is not None else None
        ),
        key_findings=findings,
    )


def source_assets(
    source_name: str,
    spec: SourceSpecBase,
    io_manager_key: str = "io_manager",
    locate: Callable[[DatasetSpec], tuple[str, int] | None] | None = None,
) -> Sequence[AssetsDefinition]:
    """One asset per table or stream of a source, written by the IO manager `io_manager_key`;
    `locate` gives each entry's project file and line (the UI links the asset to it)."""
    return [
        dataset_asset(
            source_name, spec, dataset, io_manager_key, locate(dataset) if locate else None
        )
        for dataset in spec.datasets
    ]


def source_checks(
    source_name: str, spec: SourceSpecBase, io_manager_key: str = "io_manager"
) -> Sequence[AssetChecksDefinition]:
    """The checks of a source's tables that judge committed tables after the assets ran
    (reconciliation with another asset); the others run in each asset's step."""
    checks: list[AssetChecksDefinition] = []
    for dataset in spec.datasets:
        asset_key = AssetKey([source_name, dataset.key_name])
        definition = reconciliation_checks(
            asset_key, dataset, partitions_definition(spec, dataset), io_manager_key
        )
        if definition is not None:
            checks.append(definition)
    return checks
