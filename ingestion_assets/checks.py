"""Partition-aware data-quality checks on every ingested Delta table, generated from the specs."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DailyPartitionsDefinition,
    MetadataValue,
    multi_asset_check,
)

from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.lake.rows import LINEAGE_COLUMNS, PARTITION_DATE
from ingestion_assets.resources import SourceResource
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import CheckSpec, DatasetSpec

SCHEMA_CONTRACT = "schema_contract"
ROW_COUNT = "row_count"
PRIMARY_KEY = "primary_key"
FRESHNESS = "freshness"
SAMPLE_SIZE = 10


@dataclass(frozen=True)
class Verdict:
    """A check's outcome and what a person needs to act on it."""

    passed: bool
    metadata: dict[str, Any]
    description: str


def schema_contract(
    expected: Mapping[str, str], actual: Mapping[str, str], allow_added: bool
) -> Verdict:
    """Columns and types of the table against the expected ones (lineage columns excluded)."""
    expected = {k: v for k, v in expected.items() if k not in LINEAGE_COLUMNS}
    actual = {k: v for k, v in actual.items() if k not in LINEAGE_COLUMNS}
    added = sorted(set(actual) - set(expected))
    missing = sorted(set(expected) - set(actual))
    changed = sorted(name for name in set(expected) & set(actual) if expected[name] != actual[name])
    passed = not missing and not changed and (allow_added or not added)
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += (
        [f"changed {', '.join(f'{n} ({expected[n]} -> {actual[n]})' for n in changed)}"]
        if changed
        else []
    )
    problems += [f"added {', '.join(added)}"] if added else []
    return Verdict(
        passed,
        {
            "added_columns": added,
            "missing_columns": missing,
            "changed_columns": {name: f"{expected[name]} -> {actual[name]}" for name in changed},
            "expected_columns": len(expected),
            "actual_columns": len(actual),
        },
        "; ".join(problems) or "the columns and types match the expected schema",
    )


def key_violations(table: pa.Table, key: Sequence[str]) -> Verdict:
    """Duplicate and null primary keys, with a sample of offending keys."""
    nulls = table.filter(
        pc.or_(*[pc.is_null(table.column(name)) for name in key])
        if len(key) > 1
        else pc.is_null(table.column(key[0]))
    )
    counted = table.select(list(key)).drop_null().group_by(list(key)).aggregate([([], "count_all")])
    duplicates = counted.filter(pc.greater(counted.column("count_all"), 1))
    duplicate_sample = [
        {name: _plain(row[name]) for name in key} | {"copies": row["count_all"]}
        for row in duplicates.slice(0, SAMPLE_SIZE).to_pylist()
    ]
    null_sample = [
        {name: _plain(row[name]) for name in [*key, PARTITION_DATE] if name in row}
        for row in nulls.select([n for n in [*key, PARTITION_DATE] if n in table.column_names])
        .slice(0, SAMPLE_SIZE)
        .to_pylist()
    ]
    passed = duplicates.num_rows == 0 and nulls.num_rows == 0
    parts = []
    if duplicates.num_rows:
        parts.append(f"{duplicates.num_rows} duplicated key(s)")
    if nulls.num_rows:
        parts.append(f"{nulls.num_rows} row(s) with a null key")
    return Verdict(
        passed,
        {
            "primary_key": ", ".join(key),
            "duplicate_keys": duplicates.num_rows,
            "null_keys": nulls.num_rows,
            "duplicate_sample": MetadataValue.json(duplicate_sample),
            "null_sample": MetadataValue.json(null_sample),
        },
        "; ".join(parts) or f"({', '.join(key)}) is unique and never null",
    )


def row_count(
    rows_by_day: Mapping[datetime.date, int],
    days: Sequence[datetime.date],
    min_rows: int,
    source_rows: int | None,
) -> Verdict:
    """Rows per day at least `min_rows`, and the window's total equal to the source's count."""
    lake_rows = sum(rows_by_day.get(day, 0) for day in days)
    short_days = [day.isoformat() for day in days if rows_by_day.get(day, 0) < min_rows]
    reconciled = source_rows is None or source_rows == lake_rows
    metadata: dict[str, Any] = {
        "lake_rows": lake_rows,
        "min_rows": min_rows,
        "days_below_min_rows": short_days[:SAMPLE_SIZE],
    }
    problems = []
    if short_days:
        problems.append(f"{len(short_days)} day(s) below {min_rows} rows")
    if source_rows is None:
        metadata["source_rows"] = "not reported by the source"
    else:
        metadata["source_rows"] = source_rows
        metadata["difference"] = lake_rows - source_rows
        if not reconciled:
            problems.append(f"the lake has {lake_rows} rows, the source {source_rows}")
    return Verdict(
        not short_days and reconciled,
        metadata,
        "; ".join(problems) or f"{lake_rows} rows, as at the source",
    )


def freshness(
    last_materialized: datetime.datetime | None, now: datetime.datetime, max_age_hours: float
) -> Verdict:
    """The table was materialized within `max_age_hours`."""
    if last_materialized is None:
        return Verdict(False, {"max_age_hours": max_age_hours}, "never materialized")
    age = (now - last_materialized).total_seconds() / 3600
    return Verdict(
        age <= max_age_hours,
        {
            "last_materialized": last_materialized.isoformat(),
            "age_hours": round(age, 2),
            "max_age_hours": max_age_hours,
        },
        f"last materialized {age:.1f} h ago (limit {max_age_hours} h)",
    )


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def _severity(spec: CheckSpec) -> AssetCheckSeverity:
    return AssetCheckSeverity.ERROR if spec.severity == "ERROR" else AssetCheckSeverity.WARN


def dataset_checks(
    asset_key: AssetKey,
    dataset: DatasetSpec,
    partitions_def: DailyPartitionsDefinition | None,
    source_resource_key: str,
) -> AssetChecksDefinition | None:
    """One check op for an asset, with the checks its spec enables."""
    checks = dataset.checks
    enabled: dict[str, CheckSpec] = {
        name: spec
        for name, spec in (
            (SCHEMA_CONTRACT, checks.schema_contract),
            (ROW_COUNT, checks.row_count),
            (PRIMARY_KEY, checks.primary_key if dataset.primary_key else None),
            (FRESHNESS, checks.freshness),
        )
        if spec is not None and spec.enabled
    }
    if not enabled:
        return None
    descriptions = {
        SCHEMA_CONTRACT: "Columns and types match the first materialization's (added columns "
        "are fine under schema_policy evolve).",
        ROW_COUNT: f"At least {checks.row_count.min_rows} rows a day"
        + (
            "; as many rows as the source has for the window."
            if checks.row_count.reconcile
            else "."
        ),
        PRIMARY_KEY: f"({', '.join(dataset.primary_key)}) unique and never null.",
        FRESHNESS: f"Materialized within the last {checks.freshness.max_age_hours} hours.",
    }
    specs = [
        AssetCheckSpec(
            name,
            asset=asset_key,
            description=descriptions[name],
            blocking=spec.blocking and spec.severity == "ERROR",
            partitions_def=partitions_def,
        )
        for name, spec in enabled.items()
    ]

    @multi_asset_check(
        name=f"{'__'.join(asset_key.path)}_checks",
        specs=specs,
        can_subset=True,
        required_resource_keys={"io_manager", source_resource_key},
    )
    def _checks(context) -> Iterator[AssetCheckResult]:  # type: ignore[no-untyped-def]
        # Dagster reads the `context` annotation at run time: it stays bare
        context = cast(AssetCheckExecutionContext, context)
        selected = {key.name for key in context.selected_asset_check_keys}
        io_manager: DeltaLakeIOManager = context.resources.io_manager
        table = io_manager.open_table(list(asset_key.path))
        window = None
        if partitions_def is not None:
            time_window = context.partition_time_window
            window = PartitionWindow(time_window.start, time_window.end)
        source: SourceResource = getattr(context.resources, source_resource_key)

        def count_at_source() -> int | None:
            return source.count(dataset, window)

        for name, spec in enabled.items():
            if name not in selected:
                continue
            if table is None and name != FRESHNESS:
                verdict = Verdict(False, {}, "no Delta table yet: materialize the asset first")
            else:
                verdict = _evaluate(
                    name, context, asset_key, dataset, table, window, count_at_source
                )
            if window is not None:
                verdict.metadata["partitions"] = window.days_text
            yield AssetCheckResult(
                check_name=name,
                asset_key=asset_key,
                passed=verdict.passed,
                severity=_severity(spec),
                description=verdict.description,
                metadata=verdict.metadata,
            )

    return _checks


def _evaluate(
    name: str,
    context: AssetCheckExecutionContext,
    asset_key: AssetKey,
    dataset: DatasetSpec,
    table: Any,
    window: PartitionWindow | None,
    count_at_source: Callable[[], int | None],
) -> Verdict:
    if name == FRESHNESS:
        event = context.instance.get_latest_materialization_event(asset_key)
        last = datetime.datetime.fromtimestamp(event.timestamp, datetime.UTC) if event else None
        return freshness(
            last, datetime.datetime.now(datetime.UTC), dataset.checks.freshness.max_age_hours
        )
    if name == SCHEMA_CONTRACT:
        actual = {field.name: str(field.type) for field in pa.schema(table.schema().to_arrow())}
        expected = _first_schema(context, asset_key) or actual
        return schema_contract(expected, actual, allow_added=dataset.schema_policy == "evolve")
    data = _window_rows(table, window, list(dataset.primary_key) if name == PRIMARY_KEY else [])
    if name == PRIMARY_KEY:
        return key_violations(data, dataset.primary_key)
    counts = pc.value_counts(data.column(PARTITION_DATE))
    rows_by_day = dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )
    days = window.days() if window is not None else list(rows_by_day)
    source_rows = None
    if dataset.checks.row_count.reconcile:
        source_rows = count_at_source()
    return row_count(rows_by_day, days, dataset.checks.row_count.min_rows, source_rows)


def _window_rows(table: Any, window: PartitionWindow | None, columns: list[str]) -> pa.Table:
    dataset = table.to_pyarrow_dataset()
    wanted = [*columns, PARTITION_DATE]
    if window is None:
        return dataset.to_table(columns=wanted)
    day = pc.field(PARTITION_DATE)
    return dataset.to_table(
        columns=wanted,
        filter=(day >= pa.scalar(window.first_day)) & (day <= pa.scalar(window.last_day)),
    )


def _first_schema(
    context: AssetCheckExecutionContext, asset_key: AssetKey
) -> dict[str, str] | None:
    """The column schema recorded by the asset's first materialization."""
    records = context.instance.fetch_materializations(asset_key, limit=1, ascending=True).records
    if not records:
        return None
    materialization = records[0].asset_materialization
    if materialization is None or "dagster/column_schema" not in materialization.metadata:
        return None
    schema = materialization.metadata["dagster/column_schema"].value
    return {column.name: column.type for column in schema.columns}
