"""Layer assets (silver, gold): the project file's `layers` as Dagster assets over the ingested
tables, each run reading only its days of each input, judged by its expectations before the
commit (audit before publish), written by the same Delta writer as the ingested tables."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    CodeReferencesMetadataValue,
    DailyPartitionsDefinition,
    Failure,
    LocalFileCodeReference,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableColumnDep,
    TableColumnLineage,
    TableSchema,
    TimeWindowPartitionMapping,
    define_asset_job,
    multi_asset,
)
from deltalake import DeltaTable

from ingestion_assets.checks import (
    AuditData,
    Evaluation,
    Verdict,
    check_evaluations,
    failure_summary,
    keys_by_day,
    materialization_targets,
)
from ingestion_assets.errors import AuditFailedError, IngestionError
from ingestion_assets.io_managers.contract import (
    COLUMN_SCHEMA,
    DATABRICKS_IO_MANAGER_KEY,
    PARTITION_COLUMN_KEY,
    PARTITION_ROW_COUNT,
    SCHEMA_POLICY_KEY,
    StagedWrite,
    WriteRequest,
    column_schema,
    partition_row_counts,
)
from ingestion_assets.io_managers.delta import DeltaLakeIOManager, absolute_uri
from ingestion_assets.lake.merge import merge_changes
from ingestion_assets.lake.replace import held_interrupts
from ingestion_assets.lake.rows import PARTITION_DATE, partition_dates
from ingestion_assets.layers.engine import InputScan, LayerQuery, scan_days
from ingestion_assets.layers.expectations import ExpectationSplit, ExpectationTally
from ingestion_assets.layers.graph import Days, Layer, LayerGraph
from ingestion_assets.layers.sql import LayerSqlError, check_columns, sql_type
from ingestion_assets.modes.merge import MergeRules
from ingestion_assets.policies import follows_upstream, on_cron
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import ProjectSpec

PRIMARY_KEY_CHECK = "primary_key"
QUARANTINE_SUFFIX = "_quarantine"
LAYER_JOB = "build_layers"


def layer_partitions(days: Days | None) -> DailyPartitionsDefinition | None:
    """A daily layer's partitions: its inputs' common days (today included when they run on)."""
    if days is None:
        return None
    return DailyPartitionsDefinition(
        start_date=days.start.isoformat(),
        end_date=days.end.isoformat() if days.end else None,
        timezone=days.timezone,
        end_offset=0 if days.end else 1,
    )


def quarantine_path(layer: Layer) -> tuple[str, ...]:
    """Where a layer's dropped rows are kept: `<asset>_quarantine` beside it."""
    path = layer.spec.asset_path
    return (*path[:-1], path[-1] + QUARANTINE_SUFFIX)


def _description(layer: Layer) -> str:
    spec = layer.spec
    reads = ", ".join(f"{name} ({table.key})" for name, table in layer.inputs.items())
    parts = [spec.description or f"Layer {spec.key} over {reads}."]
    if layer.days is not None:
        parts.append(
            f"Daily: a run reads its days of each daily input ({reads}) and replaces those days; "
            f"each row's day is its `{spec.partition_column}`."
        )
    elif spec.primary_key:
        parts.append(
            f"Unpartitioned: each run rebuilds it and merges it by {', '.join(spec.primary_key)}."
        )
    else:
        parts.append("Unpartitioned: each run rebuilds the whole table.")
    for expectation in spec.expect:
        parts.append(f"Expects `{expectation.sql}` ({expectation.on_violation}).")
    return "\n\n".join(parts)


def _column_schema(layer: Layer) -> TableSchema | None:
    if layer.columns is None:
        return None
    lineage_types = {
        PARTITION_DATE: "date",
        "_ingested_at": "timestamp[us, tz=UTC]",
        "_run_id": "string",
    }
    columns = [
        TableColumn(
            name=name,
            type=kind.lower() or "unknown until the first run",
            description=_lineage_text(layer, name),
        )
        for name, kind in layer.columns
        if name not in lineage_types
    ]
    columns += [TableColumn(name=name, type=kind) for name, kind in lineage_types.items()]
    return TableSchema(columns=columns)


def _lineage_text(layer: Layer, column: str) -> str:
    sources = layer.lineage.get(column)
    if not sources:
        return "Computed by the layer's SQL."
    return "From " + ", ".join(
        f"{layer.inputs[source.input_name].key}.{source.column}" for source in sources
    )


def _column_lineage(layer: Layer) -> TableColumnLineage | None:
    if not layer.lineage:
        return None
    return TableColumnLineage(
        deps_by_column={
            column: [
                TableColumnDep(
                    asset_key=AssetKey(layer.inputs[source.input_name].key.split("/")),
                    column_name=source.column,
                )
                for source in sources
            ]
            for column, sources in layer.lineage.items()
        }
    )


def _check_specs(
    layer: Layer, partitions_def: DailyPartitionsDefinition | None
) -> list[AssetCheckSpec]:
    key = AssetKey(list(layer.spec.asset_path))
    specs = [
        AssetCheckSpec(
            expectation.name,
            asset=key,
            description=(expectation.description or f"Expects `{expectation.sql}`")
            + {
                "warn": ": violating rows are kept and counted.",
                "drop": f": violating rows are kept out, in {'.'.join(quarantine_path(layer))}.",
                "fail": ": a violating row fails the run, which commits nothing.",
            }[expectation.on_violation],
            blocking=expectation.on_violation == "fail",
            partitions_def=partitions_def,
        )
        for expectation in layer.spec.expect
    ]
    if layer.spec.primary_key:
        specs.append(
            AssetCheckSpec(
                PRIMARY_KEY_CHECK,
                asset=key,
                description=f"Before each commit: ({', '.join(layer.spec.primary_key)}) never "
                "null, and unique across the rows written and the rows the table keeps.",
                blocking=True,
                partitions_def=partitions_def,
            )
        )
    return specs


def layer_asset(
    layer: Layer, io_manager_key: str = "io_manager", location: tuple[str, int] | None = None
) -> AssetsDefinition:
    """The asset of one layer, its expectations as checks judged before each commit;
    `location`: its entry's project file and line (the UI links the asset to it)."""
    spec = layer.spec
    asset_key = AssetKey(list(spec.asset_path))
    partitions_def = layer_partitions(layer.days)
    metadata: dict[str, Any] = {
        "sql": MetadataValue.md(f"```sql\n{spec.sql.strip()}\n```"),
        "inputs": ", ".join(f"{name}: {table.key}" for name, table in layer.inputs.items()),
        PARTITION_COLUMN_KEY: spec.partition_column if layer.days is not None else "",
        SCHEMA_POLICY_KEY: spec.schema_policy,
        "dagster/storage_kind": "deltalake" if layer.writer == "delta" else "databricks",
    }
    schema = _column_schema(layer)
    if schema is not None:
        metadata[COLUMN_SCHEMA] = schema
    lineage = _column_lineage(layer)
    if lineage is not None:
        metadata["dagster/column_lineage"] = lineage
    if spec.primary_key:
        metadata["primary_key"] = ", ".join(spec.primary_key)
    if location is not None:
        metadata["dagster/code_references"] = CodeReferencesMetadataValue(
            code_references=[LocalFileCodeReference(file_path=location[0], line_number=location[1])]
        )
    condition = None
    if spec.automation is not None:
        condition = (
            on_cron(
                spec.automation.on_cron,
                spec.automation.timezone or (layer.days.timezone if layer.days else "UTC"),
                partitions_def,
            )
            if spec.automation.on_cron
            else follows_upstream(
                ignore_updates_of=[
                    AssetKey(table.key.split("/"))
                    for table in layer.inputs.values()
                    if table.days is None and partitions_def is not None
                ]
            )
        )
    deps = [
        AssetDep(
            AssetKey(table.key.split("/")),
            partition_mapping=(
                TimeWindowPartitionMapping()
                if table.days is not None and partitions_def is not None
                else None
            ),
        )
        for table in layer.inputs.values()
    ]
    asset_spec = AssetSpec(
        asset_key,
        deps=deps,
        group_name=spec.group_name,
        description=_description(layer),
        kinds={"duckdb" if layer.writer == "delta" else "databricks", "sql", "deltalake"},
        owners=list(spec.owners),
        tags=dict(spec.tags),
        metadata=metadata,
        partitions_def=partitions_def,
        automation_condition=condition,
    )

    @multi_asset(
        name="__".join(asset_key.path),
        specs=[asset_spec],
        check_specs=_check_specs(layer, partitions_def),
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        required_resource_keys={io_manager_key},
    )
    def _layer(context) -> Iterator[Any]:  # type: ignore[no-untyped-def]
        # Dagster reads the `context` annotation at run time: it stays bare
        context = cast(AssetExecutionContext, context)
        run = LayerRun(context, layer, getattr(context.resources, io_manager_key))
        try:
            yield from run.publish()
        except IngestionError as error:
            raise Failure(description=str(error), allow_retries=False) from error

    return _layer


class LayerRun:
    """One execution of a layer asset: scan its inputs' days, run the SQL, apply the
    expectations, stage, judge, then commit (with the quarantine) or refuse."""

    def __init__(self, context: AssetExecutionContext, layer: Layer, writer: Any) -> None:
        """`writer`: the layer's IO manager (the Delta one; the Unity Catalog one for a layer on
        Databricks)."""
        self.context, self.layer, self.io_manager = context, layer, writer
        # the Delta path's writer (the warehouse path reads `io_manager`)
        self.writer = cast(DeltaLakeIOManager, writer)
        self.spec = layer.spec
        self.asset_key = AssetKey(list(layer.spec.asset_path))
        self.window: PartitionWindow | None = None
        self.partition_keys: dict[datetime.date, str] = {}
        if layer.days is not None:
            time_window = context.partition_time_window
            self.window = PartitionWindow(time_window.start, time_window.end)
            self.partition_keys = {
                datetime.date.fromisoformat(key[:10]): key for key in context.partition_keys
            }
        self.ingested_day = datetime.datetime.now(datetime.UTC).date()

    @property
    def label(self) -> str:
        """`layer silver/x, partitions A..B` for messages."""
        return f"layer {self.spec.key}, " + (
            self.window.label if self.window else "the whole table"
        )

    def scans(self) -> list[InputScan]:
        """Each input's files of the run's days (a whole unpartitioned input)."""
        scans = []
        for name, table in self.layer.inputs.items():
            path = table.key.split("/")
            delta = self.writer.open_table(path)
            if delta is None:
                raise IngestionError(
                    f"{self.label}: input {name} ({table.key}) has no table yet at "
                    f"{self.writer.table_uri(path)}; materialize {table.key} first (its days "
                    "the layer reads), then re-run the layer."
                )
            window = self.window if table.days is not None else None
            scans.append(scan_days(name, table.key, delta, window))
        return scans

    def check_schemas(self, scans: list[InputScan]) -> None:
        """The SQL's columns against the inputs' Delta schemas, before any data is read."""
        schemas = {
            scan.name: {field.name: sql_type(field.type) for field in scan.schema} for scan in scans
        }
        check_columns(self.layer.query, schemas, self.spec.inputs, self.label)

    def day_of(self, batch: pa.RecordBatch) -> pa.Array:
        """Each row's partition day (the ingestion day for an unpartitioned layer)."""
        if self.window is None:
            return pa.repeat(pa.scalar(self.ingested_day, pa.date32()), batch.num_rows)
        column = self.spec.partition_column
        if column not in batch.schema.names:
            raise LayerSqlError(
                f"{self.label}: the SQL's result has no column {column}; select the column "
                "that holds each row's day, or set `partition_column`."
            )
        days = partition_dates(batch.column(column), self.window.timezone)
        if batch.num_rows and days.null_count:
            raise LayerSqlError(
                f"{self.label}: {days.null_count} row(s) of the SQL's result have no {column}; "
                "every row of a daily layer needs its day (select an input's `_partition_date`)."
            )
        if batch.num_rows:
            bounds = pc.min_max(days)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low < self.window.first_day or high > self.window.last_day:
                raise LayerSqlError(
                    f"{self.label}: the SQL's result has rows for {low}..{high}, outside the "
                    f"run's days ({self.window.first_day}..{self.window.last_day}); a row keeps "
                    f"the day of the input rows it comes from: select their `_partition_date` "
                    f"as {column}, or make the layer unpartitioned."
                )
        return days

    def publish(self) -> Iterator[Any]:
        """Run, judge, commit; or refuse and fail with nothing committed."""
        if self.layer.writer == "databricks":
            # the same SQL, transpiled, on the SQL warehouse over the Unity Catalog tables
            from ingestion_assets.layers.databricks import publish_on_warehouse

            yield from publish_on_warehouse(self)
            return
        context, spec = self.context, self.spec
        started = time.monotonic()
        scans = self.scans()
        self.check_schemas(scans)
        for scan in scans:
            context.log.info(
                f"{self.label}: input {scan.name} ({scan.key}): reading {len(scan.files)} of "
                f"{scan.files_in_table} file(s)"
                + (f" for {scan.window.label}" if scan.window else " (the whole table)")
            )
        query = LayerQuery(spec.sql, scans, spec.expect)
        split = ExpectationSplit(spec.expect, self.day_of)
        try:
            try:
                judged = query.reader()
            except Exception as error:  # duckdb's errors: binder, conversion, out of memory
                raise IngestionError(
                    f"{self.label}: DuckDB could not run the SQL: {error}. Fix the SQL in the "
                    "project file (`layers`), then re-run."
                ) from error
            layer_schema = pa.schema(
                [field for field in judged.schema if not field.name.startswith("__")]
            )
            kept = pa.RecordBatchReader.from_batches(layer_schema, split.kept(judged))
            if self.window is None and spec.primary_key:
                yield from self._merge(kept.read_all(), split, layer_schema, scans, started)
                return
            request = WriteRequest(
                asset_path=spec.asset_path,
                window=self.window,
                run_id=context.run_id,
                partition_column=spec.partition_column if self.window else None,
                log=context.log,
                schema_policy=spec.schema_policy,
                key_columns=tuple(spec.primary_key),
            )
            staged = self.writer.stage(request, kept)
            try:
                evaluations = self.evaluations(split.tally, staged)
            except BaseException:
                staged.abort()
                raise
            yield from self._finish(staged, split, layer_schema, evaluations, scans, started)
        finally:
            split.close()
            query.close()

    def _finish(
        self,
        staged: StagedWrite,
        split: ExpectationSplit,
        layer_schema: pa.Schema,
        evaluations: list[Evaluation],
        scans: list[InputScan],
        started: float,
    ) -> Iterator[Any]:
        context = self.context
        yield from self.refuse_or_warn(evaluations, staged)
        quarantine = self._stage_quarantine(split, layer_schema)
        for key, rows in partition_row_counts(
            list(self.partition_keys.values()), staged.plan.rows_by_day
        ).items():
            context.add_asset_metadata({PARTITION_ROW_COUNT: rows}, partition_key=key)
        with held_interrupts():
            metadata = staged.commit()
            if quarantine is not None:
                quarantine.commit()
            metadata.update(self._run_metadata(split.tally, scans, quarantine, started))
            yield MaterializeResult(asset_key=self.asset_key, metadata=metadata)
        targets = materialization_targets(
            context.instance, self.asset_key, list(self.partition_keys.values()), context.run_id
        )
        yield from check_evaluations(
            self.asset_key, evaluations, self.partition_keys, targets, context.assets_def
        )

    def refuse_or_warn(
        self, evaluations: list[Evaluation], staged: StagedWrite | None = None
    ) -> Iterator[Any]:
        """Log the failed checks that let the commit go on; when one stops it, remove what was
        staged, record the verdicts and fail the run."""
        for evaluation in evaluations:
            if not evaluation.verdict.passed and not evaluation.stops_the_commit:
                self.context.log.warning(
                    f"{self.label}"
                    + (f" {evaluation.day}" if evaluation.day else "")
                    + f": expectation {evaluation.check_name} failed: "
                    f"{evaluation.verdict.description}"
                )
        if not any(evaluation.stops_the_commit for evaluation in evaluations):
            return
        if staged is not None:
            staged.abort()
        yield from check_evaluations(
            self.asset_key, evaluations, self.partition_keys, assets_def=self.context.assets_def
        )
        expectation_failed = any(
            evaluation.stops_the_commit and evaluation.check_name != PRIMARY_KEY_CHECK
            for evaluation in evaluations
        )
        raise AuditFailedError(
            f"{self.label}: nothing was committed, the table is unchanged: "
            f"{failure_summary(evaluations)}. Fix the input rows (or the layer's SQL), then "
            "re-run these partitions"
            + (
                "; an expectation that should not stop the run can be `on_violation: drop` "
                "or `warn`."
                if expectation_failed
                else "."
            )
        )

    def _run_metadata(
        self,
        tally: ExpectationTally,
        scans: list[InputScan],
        quarantine: StagedWrite | None,
        started: float,
    ) -> dict[str, Any]:
        """What every layer materialization reports beside its write: the files each input
        read, the expectations' violations, the quarantine."""
        metadata: dict[str, Any] = {
            "rows_quarantined": tally.quarantined,
            "input_files_read": MetadataValue.json({scan.name: list(scan.files) for scan in scans}),
            "input_files": ", ".join(
                f"{scan.name}: {len(scan.files)} of {scan.files_in_table}" for scan in scans
            ),
            "expectations": MetadataValue.json(
                {
                    expectation.name: {
                        "violations": sum(tally.violations[expectation.name].values()),
                        "on_violation": expectation.on_violation,
                    }
                    for expectation in self.spec.expect
                }
            ),
            "layer_seconds": round(time.monotonic() - started, 3),
        }
        lineage = _column_lineage(self.layer)
        if lineage is not None:
            # on the materialization too: the UI's column lineage reads the latest one
            metadata["dagster/column_lineage"] = lineage
        if quarantine is not None:
            metadata["quarantine_table"] = MetadataValue.path(
                absolute_uri(self.writer.table_uri(quarantine_path(self.layer)))
            )
        self.context.log.info(
            f"{self.label}: committed, {tally.quarantined:,} row(s) quarantined, in "
            f"{time.monotonic() - started:.2f} s"
        )
        return metadata

    def _merge(
        self,
        rows: pa.Table,
        split: ExpectationSplit,
        layer_schema: pa.Schema,
        scans: list[InputScan],
        started: float,
    ) -> Iterator[Any]:
        """An unpartitioned layer with a key: its rows merged into the table by key in one
        commit (keys the result no longer has removed), only changed rows rewritten."""
        context, key = self.context, list(self.spec.primary_key)
        days = pa.repeat(pa.scalar(self.ingested_day, pa.date32()), rows.num_rows)
        keys = rows.select(key).append_column(PARTITION_DATE, days)
        data = AuditData(window=None, rows_by_day={self.ingested_day: rows.num_rows}, keys=keys)
        evaluations = self.expectation_evaluations(split.tally) + [
            Evaluation(PRIMARY_KEY_CHECK, day, verdict, AssetCheckSeverity.ERROR, True)
            for day, verdict in keys_by_day(data, key).items()
        ]
        yield from self.refuse_or_warn(evaluations)
        quarantine = self._stage_quarantine(split, layer_schema)
        uri = self.writer.table_uri(self.spec.asset_path)
        options = self.writer.storage_options or None
        with held_interrupts():
            outcome = merge_changes(
                uri,
                options,
                rows,
                MergeRules(keys=tuple(key), deletes="hard"),
                full_read=True,
                run_id=context.run_id,
                label=self.label,
                log=context.log.info,
                schema_policy=self.spec.schema_policy,
            )
            if quarantine is not None:
                quarantine.commit()
            table = DeltaTable(uri, storage_options=options)
            metadata: dict[str, Any] = {
                "dagster/row_count": rows.num_rows,
                "rows_written": outcome.inserted + outcome.updated,
                "rows_inserted": outcome.inserted,
                "rows_updated": outcome.updated,
                "rows_deleted": outcome.deleted,
                "rows_unchanged": outcome.unchanged,
                "delta_version": outcome.version,
                COLUMN_SCHEMA: column_schema(pa.schema(table.schema().to_arrow())),
                "dagster/table_name": ".".join(self.spec.asset_path),
                "dagster/uri": MetadataValue.path(absolute_uri(uri)),
                "seconds": round(time.monotonic() - started, 3),
            }
            metadata.update(self._run_metadata(split.tally, scans, quarantine, started))
            yield MaterializeResult(asset_key=self.asset_key, metadata=metadata)
        targets = materialization_targets(context.instance, self.asset_key, [], context.run_id)
        yield from check_evaluations(self.asset_key, evaluations, {}, targets, context.assets_def)

    def _stage_quarantine(
        self, split: ExpectationSplit, layer_schema: pa.Schema
    ) -> StagedWrite | None:
        """The run's days of `<asset>_quarantine` replaced with the rows dropped now (emptied
        when none was); None while there are none and never were."""
        path = quarantine_path(self.layer)
        if not split.tally.quarantined and self.writer.open_table(path) is None:
            return None
        request = WriteRequest(
            asset_path=path,
            window=self.window,
            run_id=self.context.run_id,
            partition_column=self.spec.partition_column if self.window else None,
            log=self.context.log,
        )
        return self.writer.stage(request, split.quarantined(layer_schema))

    def _days(self) -> list[datetime.date | None]:
        return list(self.window.days()) if self.window is not None else [None]

    def evaluations(self, tally: ExpectationTally, staged: StagedWrite) -> list[Evaluation]:
        """Each expectation's verdict per day, and the primary key's on the staged rows and the
        rows the commit keeps."""
        evaluations = self.expectation_evaluations(tally)
        if self.spec.primary_key:
            plan = staged.plan
            ledger = plan.staged_keys()
            key = list(self.spec.primary_key)
            try:
                kept = staged.kept_rows(key, ledger.first_values())
                if kept is not None:
                    ledger.add_kept(kept)
            except BaseException:
                ledger.close()
                raise
            data = AuditData(
                window=plan.window,
                rows_by_day=dict(plan.rows_by_day),
                key_findings=ledger.judge(),
            )
            evaluations.extend(
                Evaluation(PRIMARY_KEY_CHECK, day, verdict, AssetCheckSeverity.ERROR, True)
                for day, verdict in keys_by_day(data, key).items()
            )
        return evaluations

    def expectation_evaluations(self, tally: ExpectationTally) -> list[Evaluation]:
        """Each expectation's verdict per day: its violations among the day's rows."""
        evaluations: list[Evaluation] = []
        for expectation in self.spec.expect:
            violations = tally.violations[expectation.name]
            for day in self._days():
                counted = violations.get(day, 0) if day is not None else sum(violations.values())
                rows = (
                    tally.rows_by_day.get(day, 0)
                    if day is not None
                    else sum(tally.rows_by_day.values())
                )
                action = {
                    "warn": "kept",
                    "drop": "dropped (quarantined)",
                    "fail": "fail the run",
                }[expectation.on_violation]
                evaluations.append(
                    Evaluation(
                        expectation.name,
                        day,
                        Verdict(
                            counted == 0,
                            {
                                "violations": counted,
                                "rows": rows,
                                "on_violation": expectation.on_violation,
                                "expectation": expectation.sql,
                            },
                            f"{counted} of {rows} row(s) violate `{expectation.sql}`: {action}"
                            if counted
                            else f"all {rows} row(s) meet `{expectation.sql}`",
                        ),
                        AssetCheckSeverity.ERROR
                        if expectation.on_violation == "fail"
                        else AssetCheckSeverity.WARN,
                        expectation.on_violation == "fail",
                    )
                )
        return evaluations


def layer_assets(project: ProjectSpec) -> list[AssetsDefinition]:
    """One asset per layer of the project, in build order."""
    if not project.layers:
        return []
    return [
        layer_asset(
            layer,
            DATABRICKS_IO_MANAGER_KEY if layer.writer == "databricks" else "io_manager",
            project.layer_location(layer.spec),
        )
        for layer in LayerGraph(project).layers
    ]


def layer_jobs(assets: list[AssetsDefinition]) -> list[Any]:
    """`build_layers`: every layer over the same days in one run, in dependency order; layers
    of other days or unpartitioned ones in jobs of their own (`build_layers_<start>`,
    `build_layers_unpartitioned`)."""
    groups: dict[str, list[AssetKey]] = {}
    for definition in assets:
        partitions_def = definition.partitions_def
        label = (
            "unpartitioned"
            if not isinstance(partitions_def, DailyPartitionsDefinition)
            else partitions_def.start.strftime("%Y%m%d")
        )
        groups.setdefault(label, []).extend(definition.keys)
    jobs = []
    for index, (label, keys) in enumerate(groups.items()):
        name = LAYER_JOB if index == 0 else f"{LAYER_JOB}_{label}"
        jobs.append(
            define_asset_job(
                name,
                selection=AssetSelection.assets(*keys),
                description="Build the silver and gold layers (SQL over the ingested tables).",
            )
        )
    return jobs
