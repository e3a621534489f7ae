"""Data-quality checks of every ingested table: audited on the staged rows before the commit.

A materialization stages its rows, `audit()` judges exactly what it is about to publish (the
staged rows and, for key uniqueness, the rows the commit keeps), one verdict per partition, and
the asset commits only when no blocking check failed. Executed alone (from the UI), the same
checks judge the committed table. Cross-asset reconciliation judges committed tables, so it is
a check of its own that runs after the assets it reads. Freshness is Dagster's (policies.py)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    DagsterInstance,
    DailyPartitionsDefinition,
    MetadataValue,
    Output,
    TableSchema,
    multi_asset_check,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from ingestion_assets.io_managers.contract import TableWriter
from ingestion_assets.lake.keys import DayKeys, KeyFindings, KeyLedger
from ingestion_assets.lake.rows import LINEAGE_COLUMNS, PARTITION_DATE
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import CheckSpec, DatasetSpec

SCHEMA_CONTRACT = "schema_contract"
ROW_COUNT = "row_count"
PRIMARY_KEY = "primary_key"
UNPARTITIONED_ROWS = "unpartitioned_rows"
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
    set_aside: int = 0,
) -> Verdict:
    """Rows per day at least `min_rows`, and the window's total (with the `set_aside` records
    kept in the rejected table) equal to the source's count."""
    lake_rows = sum(rows_by_day.get(day, 0) for day in days)
    short_days = [day.isoformat() for day in days if rows_by_day.get(day, 0) < min_rows]
    reconciled = source_rows is None or source_rows == lake_rows + set_aside
    metadata: dict[str, Any] = {
        "lake_rows": lake_rows,
        "min_rows": min_rows,
        "days_below_min_rows": short_days[:SAMPLE_SIZE],
    }
    if set_aside:
        metadata["set_aside_rows"] = set_aside
    problems = []
    if short_days:
        problems.append(f"{len(short_days)} day(s) below {min_rows} rows")
    if source_rows is None:
        metadata["source_rows"] = "not compared (no count from the source, or reconcile off)"
    else:
        metadata["source_rows"] = source_rows
        metadata["difference"] = lake_rows + set_aside - source_rows
        if not reconciled:
            aside = f" (and {set_aside} set aside)" if set_aside else ""
            problems.append(f"{lake_rows} rows{aside}, the source has {source_rows}")
    return Verdict(
        not short_days and reconciled,
        metadata,
        "; ".join(problems)
        or (
            f"{lake_rows} rows, as at the source"
            if source_rows is not None
            else f"{lake_rows} rows"
        ),
    )


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def _severity(spec: CheckSpec) -> AssetCheckSeverity:
    return AssetCheckSeverity.ERROR if spec.severity == "ERROR" else AssetCheckSeverity.WARN


@dataclass(frozen=True)
class Evaluation:
    """One check's verdict on one partition day (None: on the whole table)."""

    check_name: str
    day: datetime.date | None
    verdict: Verdict
    severity: AssetCheckSeverity
    blocking: bool

    @property
    def stops_the_commit(self) -> bool:
        """A failed blocking ERROR check: nothing may be published."""
        return self.blocking and not self.verdict.passed


@dataclass(frozen=True)
class AuditData:
    """What an audit judges: the rows about to be published (or, for a check run alone, the
    committed rows) of `window` (None: the whole table)."""

    window: PartitionWindow | None
    rows_by_day: Mapping[datetime.date, int]
    # records the source read but set aside (the rejected table): they count as reconciled
    set_aside_by_day: Mapping[datetime.date, int] = field(default_factory=dict)
    # Delta type names of the incoming columns, and of the table's (None: no table yet)
    columns: Mapping[str, str] = field(default_factory=dict)
    expected_columns: Mapping[str, str] | None = None
    # key columns and `_partition_date` of the judged rows, and the key columns of the
    # table's other rows (None: not readable here); or what was found judging them already
    keys: pa.Table | None = None
    other_keys: pa.Table | None = None
    key_findings: KeyFindings | None = None

    @property
    def days(self) -> list[datetime.date] | None:
        """The partition days judged; None for a whole-table snapshot."""
        return self.window.days() if self.window is not None else None

    @property
    def rows(self) -> int:
        """Rows judged in all."""
        return sum(self.rows_by_day.values())


class DatasetChecks:
    """The checks a dataset's spec enables on its asset, judged in the asset's own step."""

    def __init__(
        self,
        asset_key: AssetKey,
        dataset: DatasetSpec,
        partitions_def: DailyPartitionsDefinition | None,
        source_counts_unreachable: bool = False,
    ) -> None:
        self.asset_key, self.dataset, self.partitions_def = asset_key, dataset, partitions_def
        self.source_counts_unreachable = source_counts_unreachable
        checks = dataset.checks
        self.enabled: dict[str, CheckSpec] = {
            name: spec
            for name, spec in (
                (SCHEMA_CONTRACT, checks.schema_contract),
                (ROW_COUNT, checks.row_count),
                (PRIMARY_KEY, checks.primary_key if dataset.primary_key else None),
            )
            if spec is not None and spec.enabled
        }

    @property
    def counts_unpartitioned_rows(self) -> bool:
        """Whether the asset judges the rows no partition reaches (a partitioned dataset of a
        kind whose Source can count them)."""
        return self.partitions_def is not None and self.source_counts_unreachable

    def unpartitioned_spec(self) -> AssetCheckSpec:
        """The table-wide check of the rows no partition reaches."""
        policy = self.dataset.unpartitioned_rows
        return AssetCheckSpec(
            UNPARTITIONED_ROWS,
            asset=self.asset_key,
            description="Every run: rows at the source that no partition reaches (partition "
            f"column NULL, or outside the partitions' days) are none; `{policy}`: "
            + {
                "warn": "their count is reported.",
                "fail": "the run fails, nothing is committed.",
                "quarantine": "they are landed in the sibling table "
                f"`{self.asset_key.path[-1]}_unpartitioned` with the reason.",
            }[policy],
            blocking=policy == "fail",
        )

    def unpartitioned_evaluation(self, count: int | None) -> Evaluation:
        """The verdict on the rows no partition reaches, from the source's count."""
        policy = self.dataset.unpartitioned_rows
        column = self.dataset.partition_column
        if count is None:
            verdict = Verdict(
                True, {"unpartitioned_rows": "not counted by the source"}, "not counted"
            )
        else:
            fix = {
                "warn": "they are not ingested",
                "fail": "nothing was committed",
                "quarantine": f"they are kept in {self.asset_key.path[-1]}_unpartitioned",
            }[policy]
            verdict = Verdict(
                count == 0,
                {"unpartitioned_rows": count, "policy": policy},
                f"{count} row(s) at the source have no partition ({column} NULL or outside "
                f"the partitions' days); {fix}. Fix `{column}` at the source, or widen "
                "start_date / end_date"
                if count
                else "every row at the source falls in a partition",
            )
        severity = AssetCheckSeverity.ERROR if policy == "fail" else AssetCheckSeverity.WARN
        return Evaluation(UNPARTITIONED_ROWS, None, verdict, severity, policy == "fail")

    def specs(self) -> list[AssetCheckSpec]:
        """The Dagster check specs, one per enabled check, partitioned like the asset."""
        checks = self.dataset.checks
        descriptions = {
            SCHEMA_CONTRACT: "Before each commit: the source's columns and types match the "
            "table's (added columns are fine under schema_policy evolve).",
            ROW_COUNT: f"Before each commit: at least {checks.row_count.min_rows} rows a day"
            + (
                "; as many rows a day as the source counts for the same window."
                if checks.row_count.reconcile
                else "."
            ),
            PRIMARY_KEY: f"Before each commit: ({', '.join(self.dataset.primary_key)}) never "
            "null, and unique across the rows written and the rows the table keeps.",
        }
        specs = [
            AssetCheckSpec(
                name,
                asset=self.asset_key,
                description=descriptions[name],
                blocking=is_blocking(spec),
                partitions_def=self.partitions_def,
            )
            for name, spec in self.enabled.items()
        ]
        if self.counts_unpartitioned_rows:
            specs.append(self.unpartitioned_spec())
        return specs

    def audit(
        self,
        data: AuditData,
        count_at_source: Callable[[PartitionWindow | None], int | None],
        selected: set[str] | None = None,
    ) -> list[Evaluation]:
        """Every enabled (and selected) check's verdict, one per partition day of the window."""
        evaluations: list[Evaluation] = []
        for name, spec in self.enabled.items():
            if selected is not None and name not in selected:
                continue
            verdicts: dict[datetime.date | None, Verdict]
            if name == SCHEMA_CONTRACT:
                expected = data.expected_columns or data.columns
                verdict = schema_contract(
                    expected, data.columns, allow_added=self.dataset.schema_policy == "evolve"
                )
                verdicts = {day: verdict for day in _judged_days(data.window)}
            elif name == ROW_COUNT:
                verdicts = row_counts_by_day(data, self.dataset, count_at_source)
            else:
                verdicts = keys_by_day(data, self.dataset.primary_key)
            evaluations.extend(
                Evaluation(name, day, verdict, _severity(spec), is_blocking(spec))
                for day, verdict in verdicts.items()
            )
        return evaluations


def _judged_days(window: PartitionWindow | None) -> list[datetime.date | None]:
    """The days a check gives a verdict on: each of the window's, or [None] for a snapshot."""
    return list(window.days()) if window is not None else [None]


def is_blocking(spec: CheckSpec) -> bool:
    """Whether a failed check stops the commit (and downstream assets)."""
    return spec.blocking and spec.severity == "ERROR"


def row_counts_by_day(
    data: AuditData,
    dataset: DatasetSpec,
    count_at_source: Callable[[PartitionWindow | None], int | None],
) -> dict[datetime.date | None, Verdict]:
    """Rows per day at least `min_rows`, and reconciled with the source's count.

    The source counts the whole window once; only when that total differs (or the window is
    one day) is each day counted on its own, so a three-year backfill costs one count query and
    a mismatch still names its days."""
    spec = dataset.checks.row_count
    days = data.days
    set_aside = data.set_aside_by_day
    if days is None or data.window is None:
        source_rows = count_at_source(None) if spec.reconcile else None
        verdict = row_count(
            {datetime.date.min: data.rows},
            [datetime.date.min],
            spec.min_rows,
            source_rows,
            sum(set_aside.values()),
        )
        verdict.metadata.pop("days_below_min_rows", None)
        return {None: verdict}
    by_day: dict[datetime.date, int] | None = None
    window_total: int | None = None
    accounted = data.rows + sum(set_aside.values())
    if spec.reconcile:
        window_total = count_at_source(data.window)
        if window_total is not None and len(days) == 1:
            by_day = {days[0]: window_total}
        elif window_total is not None and window_total != accounted:
            zone = data.window.timezone
            by_day = {}
            for day in days:
                counted = count_at_source(PartitionWindow.of_days(day, day, zone))
                by_day[day] = counted if counted is not None else 0
    verdicts: dict[datetime.date | None, Verdict] = {}
    for day in days:
        source_rows = by_day.get(day) if by_day is not None else None
        verdict = row_count(
            data.rows_by_day, [day], spec.min_rows, source_rows, set_aside.get(day, 0)
        )
        if by_day is None and window_total is not None:
            # the window's total matched: every day is reconciled with it
            verdict.metadata["source_rows"] = f"{window_total} in the window, as in the lake"
        if window_total is not None and len(days) > 1:
            verdict.metadata["window_lake_rows"] = data.rows
            verdict.metadata["window_source_rows"] = window_total
        verdicts[day] = verdict
    return verdicts


def keys_by_day(data: AuditData, key: Sequence[str]) -> dict[datetime.date | None, Verdict]:
    """The primary key never null, and unique across the judged rows and the table's other
    rows; a day fails when one of its rows has a null or a duplicated key.

    The keys are judged once for the whole window, in bounded memory (lake.keys: spilled and
    grouped bucket by bucket beyond a few hundred thousand rows); only the offending keys are
    reported by day, so a three-year backfill costs one pass, not one scan per day."""
    findings = data.key_findings
    if findings is None:
        findings = judged_keys(data.keys, data.other_keys, key)
    if data.window is None:
        return {None: _key_verdict(list(key), findings.total)}
    return {day: _key_verdict(list(key), findings.day(day)) for day in data.window.days()}


def judged_keys(
    keys: pa.Table | None, other_keys: pa.Table | None, key: Sequence[str]
) -> KeyFindings:
    """The findings on `keys` (key columns and `_partition_date` of the judged rows) and
    `other_keys` (key columns of the rows the commit keeps)."""
    key = list(key)
    keys = keys if keys is not None else _empty_keys(key)
    ledger = KeyLedger([keys.schema.field(name) for name in key], PARTITION_DATE)
    for batch in keys.select([*key, PARTITION_DATE]).to_batches():
        ledger.add(batch)
    if other_keys is not None:
        ledger.add_kept(other_keys)
    return ledger.judge()


def _key_verdict(key: list[str], found: DayKeys) -> Verdict:
    parts = []
    if found.duplicate_keys:
        parts.append(f"{found.duplicate_keys} duplicated key(s)")
    if found.null_keys:
        parts.append(f"{found.null_keys} row(s) with a null key")
    return Verdict(
        not parts,
        {
            "primary_key": ", ".join(key),
            "duplicate_keys": found.duplicate_keys,
            "null_keys": found.null_keys,
            "duplicate_sample": MetadataValue.json(found.duplicate_sample),
            "null_sample": MetadataValue.json(found.null_sample),
        },
        "; ".join(parts) or f"({', '.join(key)}) is unique and never null",
    )


def _empty_keys(key: list[str]) -> pa.Table:
    return pa.table(
        {
            **{name: pa.array([], pa.int64()) for name in key},
            PARTITION_DATE: pa.array([], pa.date32()),
        }
    )


def failure_summary(evaluations: Sequence[Evaluation]) -> str:
    """What a failed audit tells the operator: each failed blocking check, its days and what it
    found there (counts, sample keys)."""
    by_check: dict[str, list[Evaluation]] = {}
    for evaluation in evaluations:
        if evaluation.stops_the_commit:
            by_check.setdefault(evaluation.check_name, []).append(evaluation)
    parts = []
    for name, failed in by_check.items():
        found = []
        for evaluation in failed[: SAMPLE_SIZE // 2]:
            detail = evaluation.verdict.description
            for sample_key in ("duplicate_sample", "null_sample"):
                sample = evaluation.verdict.metadata.get(sample_key)
                values = getattr(sample, "value", None)
                if values:
                    detail += f" (e.g. {values[:3]})"
            found.append(f"{evaluation.day}: {detail}" if evaluation.day else detail)
        more = f"; and {len(failed) - len(found)} more day(s)" if len(failed) > len(found) else ""
        parts.append(f"{name} failed on {len(failed)} partition(s): {'; '.join(found)}{more}")
    return ". ".join(parts)


def check_evaluations(
    asset_key: AssetKey,
    evaluations: Sequence[Evaluation],
    partition_keys: Mapping[datetime.date, str],
    targets: Mapping[str | None, AssetCheckEvaluationTargetMaterializationData] | None = None,
    assets_def: AssetsDefinition | None = None,
) -> Iterator[AssetCheckEvaluation | Output[None]]:
    """The Dagster events of the evaluations: one per check and partition, each pointing at the
    materialization it judged (`targets`: partition key -> materialization, once committed);
    with `assets_def`, first each check's (empty) output, which downstream steps wait on."""
    announced: set[str] = set()
    for evaluation in evaluations:
        if assets_def is not None and evaluation.check_name not in announced:
            announced.add(evaluation.check_name)
            check_key = AssetCheckKey(asset_key, evaluation.check_name)
            yield Output(
                None, output_name=assets_def.get_output_name_for_asset_check_key(check_key)
            )
        partition = partition_keys.get(evaluation.day) if evaluation.day is not None else None
        yield AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=evaluation.check_name,
            passed=evaluation.verdict.passed,
            metadata=dict(evaluation.verdict.metadata),
            target_materialization_data=(targets or {}).get(partition),
            severity=evaluation.severity,
            description=evaluation.verdict.description,
            blocking=evaluation.blocking,
            partition=partition,
        )


def committed_audit_data(
    writer: TableWriter,
    asset_key: AssetKey,
    dataset: DatasetSpec,
    window: PartitionWindow | None,
    instance: DagsterInstance,
) -> AuditData | None:
    """The committed table's rows of `window`, for checks executed on their own (from the UI);
    None before the table's first write."""
    path = tuple(asset_key.path)
    schema = writer.committed_schema(path)
    key = list(dataset.primary_key)
    rows = writer.committed_rows(path, window, key)
    if schema is None or rows is None:
        return None
    counts = pc.value_counts(rows.column(PARTITION_DATE))
    rows_by_day = dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )
    other_keys = None
    if key and window is not None:
        everything = writer.committed_rows(path, None, key)
        if everything is not None:
            day = everything.column(PARTITION_DATE)
            outside = pc.or_(
                pc.less(day, pa.scalar(window.first_day)),
                pc.greater(day, pa.scalar(window.last_day)),
            )
            other_keys = everything.filter(outside).select(key)
    # the committed schema against the first materialization's, both as Arrow type names
    columns = {field.name: str(field.type) for field in schema}
    return AuditData(
        window=window,
        rows_by_day=rows_by_day,
        columns=columns,
        expected_columns=_first_schema(instance, asset_key),
        keys=rows if key and all(name in rows.column_names for name in key) else None,
        other_keys=other_keys,
    )


def materialization_targets(
    instance: DagsterInstance,
    asset_key: AssetKey,
    partition_keys: Sequence[str],
    run_id: str | None = None,
) -> dict[str | None, AssetCheckEvaluationTargetMaterializationData]:
    """The latest materialization of each partition (key None: the newest of all), from
    `run_id` when given: what each check evaluation judged."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=list(partition_keys) or None),
        limit=max(len(partition_keys), 1),
    ).records
    targets: dict[str | None, AssetCheckEvaluationTargetMaterializationData] = {}
    for record in records:
        entry = record.event_log_entry
        if run_id is not None and entry.run_id != run_id:
            continue
        target = AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id, run_id=entry.run_id, timestamp=record.timestamp
        )
        # a table-wide check of a partitioned asset judged the newest materialization
        targets.setdefault(None, target)
        if partition_keys:
            targets.setdefault(record.partition_key, target)
    return targets


def _first_schema(instance: DagsterInstance, asset_key: AssetKey) -> dict[str, str] | None:
    """The column schema recorded by the asset's first materialization."""
    records = instance.fetch_materializations(asset_key, limit=1, ascending=True).records
    if not records:
        return None
    materialization = records[0].asset_materialization
    if materialization is None or "dagster/column_schema" not in materialization.metadata:
        return None
    schema = cast(TableSchema, materialization.metadata["dagster/column_schema"].value)
    return {column.name: column.type for column in schema.columns}


def reconciliation(
    ours: pa.Table, theirs: pa.Table, days: Sequence[datetime.date] | None, key: Sequence[str]
) -> dict[datetime.date | None, Verdict]:
    """Per day, the rows (and with `key`, the key sets) of two tables that hold the same data.

    The key sets are compared once for the whole window (an anti-join each way on the key and
    the day), then counted by day."""
    key = list(key)
    day_key = [*key, PARTITION_DATE]
    only_here = only_there = None
    if key:
        mine = ours.select(day_key)
        other = theirs.select(day_key).cast(mine.schema)
        only_here = mine.join(other, keys=day_key, join_type="left anti")
        only_there = other.join(mine, keys=day_key, join_type="left anti")
    verdicts: dict[datetime.date | None, Verdict] = {}
    if days is None:
        verdicts[None] = _reconciled(ours.num_rows, theirs.num_rows, only_here, only_there, key)
        return verdicts
    our_days, their_days = _rows_by_day(ours), _rows_by_day(theirs)
    for day in days:
        verdicts[day] = _reconciled(
            our_days.get(day, 0),
            their_days.get(day, 0),
            _of_day(only_here, day),
            _of_day(only_there, day),
            key,
        )
    return verdicts


def _of_day(table: pa.Table | None, day: datetime.date) -> pa.Table | None:
    """The rows of one day (of a small table of offending rows)."""
    if table is None or table.num_rows == 0:
        return table
    return table.filter(pc.equal(table.column(PARTITION_DATE), pa.scalar(day, pa.date32())))


def _rows_by_day(table: pa.Table) -> dict[datetime.date, int]:
    counts = pc.value_counts(table.column(PARTITION_DATE))
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )


def _reconciled(
    our_rows: int,
    their_rows: int,
    only_here: pa.Table | None,
    only_there: pa.Table | None,
    key: list[str],
) -> Verdict:
    metadata: dict[str, Any] = {"rows": our_rows, "other_rows": their_rows}
    problems = []
    if our_rows != their_rows:
        problems.append(f"{our_rows} rows here, {their_rows} in the other table")
    if only_here is not None and only_there is not None:
        metadata["keys_only_here"] = only_here.num_rows
        metadata["keys_only_in_other"] = only_there.num_rows
        for name, table in (("sample_only_here", only_here), ("sample_only_in_other", only_there)):
            metadata[name] = MetadataValue.json(
                [
                    {column: _plain(row[column]) for column in key}
                    for row in table.slice(0, SAMPLE_SIZE).to_pylist()
                ]
            )
        if only_here.num_rows or only_there.num_rows:
            problems.append(
                f"{only_here.num_rows} key(s) only here, {only_there.num_rows} only in the "
                "other table"
            )
    return Verdict(
        not problems, metadata, "; ".join(problems) or f"{our_rows} rows, as in the other table"
    )


def reconciliation_checks(
    asset_key: AssetKey,
    dataset: DatasetSpec,
    partitions_def: DailyPartitionsDefinition | None,
    writer_key: str,
) -> AssetChecksDefinition | None:
    """`reconcile_with`: this asset's rows per day (and key sets) against another asset's that
    holds the same data (e.g. the SQL table behind an API), after both are materialized."""
    spec = dataset.checks.reconcile_with
    if spec is None or not spec.enabled:
        return None
    other_key = AssetKey.from_user_string(spec.asset)
    name = f"reconciled_with_{'__'.join(other_key.path)}"
    key = list(dataset.primary_key) if spec.keys else []

    @multi_asset_check(
        name=f"{'__'.join(asset_key.path)}_{name}",
        specs=[
            AssetCheckSpec(
                name,
                asset=asset_key,
                additional_deps=[other_key],
                description=f"Rows per day{' and keys' if key else ''} equal to "
                f"{other_key.to_user_string()}'s.",
                blocking=is_blocking(spec),
                partitions_def=partitions_def,
            )
        ],
        required_resource_keys={writer_key},
    )
    def _reconcile(context) -> Iterator[Any]:  # type: ignore[no-untyped-def]
        # Dagster reads the `context` annotation at run time: it stays bare
        context = cast(AssetCheckExecutionContext, context)
        writer: TableWriter = getattr(context.resources, writer_key)
        window = None
        partition_keys: dict[datetime.date, str] = {}
        if partitions_def is not None:
            time_window = context.partition_time_window
            window = PartitionWindow(time_window.start, time_window.end)
            partition_keys = {
                datetime.date.fromisoformat(k[:10]): k for k in context.partition_keys
            }
        ours = writer.committed_rows(tuple(asset_key.path), window, key)
        theirs = writer.committed_rows(tuple(other_key.path), window, key)
        if ours is None or theirs is None:
            missing = asset_key if ours is None else other_key
            verdicts: dict[datetime.date | None, Verdict] = {
                day: Verdict(False, {}, f"{missing.to_user_string()} has no table yet")
                for day in (window.days() if window else [None])
            }
        else:
            verdicts = reconciliation(ours, theirs, window.days() if window else None, key)
        evaluations = [
            Evaluation(name, day, verdict, _severity(spec), is_blocking(spec))
            for day, verdict in verdicts.items()
        ]
        targets = materialization_targets(
            context.instance, asset_key, list(partition_keys.values())
        )
        yield from check_evaluations(
            asset_key, evaluations, partition_keys, targets, context.op_execution_context.assets_def
        )

    return _reconcile
