"""A layer on Databricks: its SELECT transpiled by sqlglot from DuckDB's dialect to Databricks',
run on the SQL warehouse over the Unity Catalog tables, audited there, then published.

The judged rows (the layer's columns, a verdict per expectation, the names it violates) are
computed once, into a staging table of the run: the audit counts exactly the rows the publish
statements then copy, even when an input is replaced between two statements, and the layer's
SQL (a join, an aggregate) runs once rather than once per statement. Each statement is one
Statement Execution API call through the IO manager's `execute`; the staging table is dropped
afterwards, also when a check refuses the commit or a statement fails.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import sqlglot
from dagster import AssetCheckSeverity, MaterializeResult, MetadataValue, TableColumn, TableSchema
from sqlglot import exp

from ingestion_assets.checks import (
    AuditData,
    Evaluation,
    check_evaluations,
    keys_by_day,
    materialization_targets,
)
from ingestion_assets.errors import IngestionError
from ingestion_assets.io_managers.contract import PARTITION_ROW_COUNT, partition_row_counts
from ingestion_assets.io_managers.databricks import quote_identifier, sql_string, table_name_of
from ingestion_assets.lake.keys import DayKeys, KeyFindings
from ingestion_assets.lake.rows import (
    INGESTED_AT,
    LINEAGE_COLUMNS,
    PARTITION_DATE,
    RUN_ID,
    WritePlan,
)
from ingestion_assets.layers.engine import FAILED, HELD_PREFIX, judged_sql
from ingestion_assets.layers.expectations import FAILED_EXPECTATIONS, ExpectationTally
from ingestion_assets.layers.sql import DIALECT, LayerSqlError, to_dialect, with_table_names

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from ingestion_assets.io_managers.databricks import DatabricksIOManager
    from ingestion_assets.layers.asset import LayerRun
    from ingestion_assets.layers.graph import Layer
    from ingestion_assets.sources.window import PartitionWindow

# a daily input read for the run's days is the CTE `__input_<name>`
INPUT_PREFIX = "__input_"
# the partition day each staged row is counted and written on
DAY = "__day"
# offending primary keys the check reports (at most), as the Delta path's samples
KEY_SAMPLE_ROWS = 20
_RUN_AGAIN = "Re-run the partitions; if it fails again, run the statement in the SQL editor."


def _q(name: str) -> str:
    return quote_identifier(name)


def _date(day: datetime.date) -> str:
    return f"DATE'{day.isoformat()}'"


def _where(condition: str) -> str:
    return "" if condition == "TRUE" else f" WHERE {condition}"


def _date_literal(day: datetime.date) -> exp.Expression:
    return exp.cast(exp.Literal.string(day.isoformat()), exp.DataType.build("DATE"))


@dataclass(frozen=True)
class Column:
    """A column as the warehouse types it (`DATE`, `TIMESTAMP_NTZ`, `DECIMAL(18,2)`)."""

    name: str
    type_text: str


def days_predicate(window: PartitionWindow) -> str:
    """`_partition_date` within the window's days (the IO manager's replace predicate)."""
    column = _q(PARTITION_DATE)
    return f"{column} >= {_date(window.first_day)} AND {column} <= {_date(window.last_day)}"


def day_expression(column: Column, timezone: str) -> str | None:
    """Each row's partition day from its partition column, as the Delta path's
    `partition_dates` computes it: a date as is, an instant's date in the partitions' zone (on
    a warehouse whose session zone is UTC, its default), a local time's date, ISO text's; None
    for any other type."""
    quoted = _q(column.name)
    kind = column.type_text.upper()
    if kind == "DATE":
        return quoted
    if kind.startswith("TIMESTAMP_NTZ"):
        return f"to_date({quoted})"
    if kind.startswith("TIMESTAMP"):
        return f"to_date(from_utc_timestamp({quoted}, {sql_string(timezone)}))"
    if kind.startswith(("STRING", "VARCHAR", "CHAR")):
        return f"to_date(substr({quoted}, 1, 10))"
    return None


@dataclass(frozen=True)
class LayerStatements:
    """The SQL one layer run sends to the warehouse, built from the layer and the run's days
    (None: an unpartitioned layer); nothing is run here. `table_of` gives an asset path's
    quoted Unity Catalog table name."""

    layer: Layer
    window: PartitionWindow | None
    table_of: Callable[[list[str]], str]
    run_id: str
    ingested_day: datetime.date
    label: str

    @property
    def target(self) -> str:
        """The layer's table."""
        return self.table_of(list(self.layer.spec.asset_path))

    @property
    def quarantine(self) -> str:
        """The table of the rows `drop` expectations keep out of the layer's."""
        # imported here: the asset module imports this one when a run publishes
        from ingestion_assets.layers.asset import quarantine_path

        return self.table_of(list(quarantine_path(self.layer)))

    @property
    def staging(self) -> str:
        """The run's table of judged rows, dropped when the run ends."""
        path = self.layer.spec.asset_path
        return self.table_of([*path[:-1], f"{path[-1]}__staging_{self.run_id.replace('-', '')}"])

    @property
    def verdicts(self) -> list[str]:
        """The verdict column of each expectation, in the spec's order (TRUE: the row holds)."""
        return [_q(f"{HELD_PREFIX}{index}") for index in range(len(self.layer.spec.expect))]

    @property
    def drops(self) -> bool:
        """Whether an expectation keeps rows out, in the quarantine."""
        return any(expectation.on_violation == "drop" for expectation in self.layer.spec.expect)

    @property
    def kept(self) -> str:
        """The condition of a row that no `drop` expectation rejects."""
        held = [
            verdict
            for verdict, expectation in zip(self.verdicts, self.layer.spec.expect, strict=True)
            if expectation.on_violation == "drop"
        ]
        return " AND ".join(held) or "TRUE"

    def select(self) -> str:
        """The judged SELECT in Databricks' dialect: the layer's rows, each input read from its
        Unity Catalog table (a daily one for the run's days only), and the verdicts."""
        names: dict[str, exp.Table] = {}
        inputs: list[exp.CTE] = []
        for name, table in self.layer.inputs.items():
            unity = exp.to_table(self.table_of(table.key.split("/")), dialect="databricks")
            if table.days is None or self.window is None:
                names[name] = unity
                continue
            between = exp.column(PARTITION_DATE, quoted=True).between(
                _date_literal(self.window.first_day), _date_literal(self.window.last_day)
            )
            read = exp.select("*").from_(unity).where(between)
            alias = f"{INPUT_PREFIX}{name}"
            names[name] = exp.to_table(alias)
            inputs.append(exp.CTE(this=read, alias=exp.TableAlias(this=exp.to_identifier(alias))))
        swapped = with_table_names(self.layer.query, names).sql(DIALECT)
        judged = sqlglot.parse_one(judged_sql(swapped, self.layer.spec.expect), read=DIALECT)
        if inputs:
            # first in the WITH: the layer's own CTEs may read them
            existing = judged.args.get("with_")
            if existing is None:
                judged.set("with_", exp.With(expressions=inputs))
            else:
                existing.set("expressions", [*inputs, *existing.expressions])
        return to_dialect(judged.sql(DIALECT), "databricks")

    def stage(self) -> str:
        """The judged rows, into the run's staging table."""
        return f"CREATE OR REPLACE TABLE {self.staging} AS {self.select()}"

    def describe(self) -> str:
        """No rows: the staged columns and their types, in the result's schema."""
        return f"SELECT * FROM {self.staging} LIMIT 0"

    def day(self, staged: Sequence[Column]) -> str:
        """Each staged row's partition day as SQL over the staging table's columns (the run's
        day for an unpartitioned layer)."""
        if self.window is None:
            return _date(self.ingested_day)
        name = self.layer.spec.partition_column
        column = next((column for column in staged if column.name == name), None)
        if column is None:
            selected = ", ".join(c.name for c in staged if not c.name.startswith("__"))
            raise LayerSqlError(
                f"{self.label}: the SQL's result has no column {name} (it has {selected}); "
                "select the column that holds each row's day, or set `partition_column`."
            )
        expression = day_expression(column, self.window.timezone)
        if expression is None:
            raise LayerSqlError(
                f"{self.label}: the partition column {name} has type {column.type_text}; it "
                "must be a date, a timestamp or ISO 8601 text. Cast it in the layer's SQL, or "
                "set `partition_column` to another output column."
            )
        return expression

    def _staged(self, day: str, where: str = "TRUE") -> str:
        return f"(SELECT {day} AS {_q(DAY)}, * FROM {self.staging}{_where(where)}) AS {_q('__s')}"

    def audit(self, day: str) -> str:
        """Per day: the rows, each expectation's violations and the rows a `drop` keeps out."""
        counts = [f"count(*) AS {_q('__rows')}"]
        counts += [
            f"count_if(NOT {verdict}) AS {_q(f'__violations_{index}')}"
            for index, verdict in enumerate(self.verdicts)
        ]
        counts.append(f"count_if(NOT ({self.kept})) AS {_q('__dropped')}")
        return (
            f"SELECT {_q(DAY)}, {', '.join(counts)} FROM {self._staged(day)} "
            f"GROUP BY {_q(DAY)} ORDER BY {_q(DAY)}"
        )

    def _keys(self, day: str) -> str:
        """Each primary key of the kept rows per day: its copies there and in the whole run."""
        key = ", ".join(_q(name) for name in self.layer.spec.primary_key)
        null = " OR ".join(f"{_q(name)} IS NULL" for name in self.layer.spec.primary_key)
        return (
            f"(SELECT {_q(DAY)}, {key}, count(*) AS {_q('__copies')}, ({null}) AS "
            f"{_q('__null_key')}, sum(count(*)) OVER (PARTITION BY {key}) AS "
            f"{_q('__copies_in_run')} FROM {self._staged(day, self.kept)} "
            f"GROUP BY {_q(DAY)}, {key}) AS {_q('__k')}"
        )

    def keys(self, day: str) -> str:
        """Per day: the primary keys its kept rows repeat (in the run's rows), and its kept rows
        with a null key."""
        null = _q("__null_key")
        return (
            f"SELECT {_q(DAY)}, count_if(NOT {null} AND {_q('__copies_in_run')} > 1) AS "
            f"{_q('__duplicate_keys')}, sum(CASE WHEN {null} THEN {_q('__copies')} ELSE 0 END) "
            f"AS {_q('__null_keys')} FROM {self._keys(day)} GROUP BY {_q(DAY)} ORDER BY {_q(DAY)}"
        )

    def key_sample(self, day: str) -> str:
        """A few of the offending keys, with their day and copies."""
        key = ", ".join(_q(name) for name in self.layer.spec.primary_key)
        return (
            f"SELECT {_q(DAY)}, {key}, {_q('__copies_in_run')}, {_q('__null_key')} FROM "
            f"{self._keys(day)} WHERE {_q('__null_key')} OR {_q('__copies_in_run')} > 1 "
            f"ORDER BY {_q(DAY)}, {key} LIMIT {KEY_SAMPLE_ROWS}"
        )

    def _values(self, columns: Sequence[Column], day: str, quarantine: bool) -> str:
        values = [_q(column.name) for column in columns]
        if quarantine:
            values.append(f"{_q(FAILED)} AS {_q(FAILED_EXPECTATIONS)}")
        values += [
            f"{day} AS {_q(PARTITION_DATE)}",
            f"current_timestamp() AS {_q(INGESTED_AT)}",
            f"{sql_string(self.run_id)} AS {_q(RUN_ID)}",
        ]
        return ", ".join(values)

    def create(self, columns: Sequence[Column], day: str, quarantine: bool = False) -> str:
        """The table (or the quarantine) with the columns it is written with, if missing."""
        table = self.quarantine if quarantine else self.target
        return (
            f"CREATE TABLE IF NOT EXISTS {table} USING DELTA AS SELECT "
            f"{self._values(columns, day, quarantine)} FROM {self.staging} WHERE FALSE"
        )

    def replace(self, columns: Sequence[Column], day: str, quarantine: bool = False) -> str:
        """The run's days of the table (all of it, unpartitioned) swapped for the staged rows no
        `drop` rejects; of the quarantine, for those a `drop` rejects."""
        table = self.quarantine if quarantine else self.target
        where = f"NOT ({self.kept})" if quarantine else self.kept
        rows = f"SELECT {self._values(columns, day, quarantine)} FROM {self.staging}{_where(where)}"
        if self.window is None:
            return f"INSERT OVERWRITE {table} {rows}"
        return f"INSERT INTO {table} REPLACE WHERE {days_predicate(self.window)} {rows}"

    def drop_staging(self) -> str:
        """The run's staging table removed."""
        return f"DROP TABLE IF EXISTS {self.staging}"


@dataclass(frozen=True)
class Result:
    """A finished statement's columns and rows, each value as the warehouse's text."""

    columns: list[Column]
    rows: list[list[str | None]]

    def records(self) -> list[dict[str, str | None]]:
        """The rows by column name."""
        names = [column.name for column in self.columns]
        return [dict(zip(names, row, strict=True)) for row in self.rows]


@dataclass
class Warehouse:
    """The SQL warehouse as one layer run uses it: each statement run, timed and kept."""

    run: LayerRun
    manager: DatabricksIOManager
    client: WorkspaceClient
    # what the IO manager's `execute` names in its errors: the table and the run's days
    labels: WritePlan
    sent: list[tuple[str, str]] = field(default_factory=list)

    def execute(self, purpose: str, statement: str, fix: str, table: str) -> str:
        """Run one statement (on `table`) and wait for it; an error names the layer, the
        window, the table, what the statement was for and what to do."""
        self.sent.append((purpose, statement))
        started = time.monotonic()
        labels = dataclasses.replace(self.labels, table_label=f"table {table}")
        try:
            statement_id = self.manager.execute(self.client, statement, labels)
        except IngestionError as error:
            raise IngestionError(f"{self.run.label}: {purpose} failed: {error}. {fix}") from error
        except Exception as error:  # the SDK's HTTP and connection errors
            raise IngestionError(
                f"{self.run.label}: {purpose} on {table} failed on SQL warehouse "
                f"{self.manager.warehouse_id}: {self.manager.hide_token(error)}. {fix}"
            ) from None
        self.run.context.log.info(
            f"{self.run.label}: {purpose}: statement {statement_id}, "
            f"{time.monotonic() - started:.2f} s"
        )
        return statement_id

    def query(self, purpose: str, statement: str, table: str) -> Result:
        """Run a SELECT (over `table`) and read its whole result, chunk after chunk."""
        statement_id = self.execute(purpose, statement, _RUN_AGAIN, table)
        response = self.client.statement_execution.get_statement(statement_id)
        schema = response.manifest.schema if response.manifest else None
        columns = [
            Column(
                str(column.name),
                column.type_text or (column.type_name.value if column.type_name else ""),
            )
            for column in ((schema.columns or []) if schema else [])
        ]
        rows: list[list[str | None]] = []
        chunk = response.result
        while chunk is not None:
            rows.extend(cast(list[list[str | None]], chunk.data_array or []))
            if chunk.next_chunk_index is None:
                break
            chunk = self.client.statement_execution.get_statement_result_chunk_n(
                statement_id, chunk.next_chunk_index
            )
        return Result(columns, rows)

    def markdown(self) -> str:
        """Every statement sent so far, for the materialization's metadata."""
        return "\n\n".join(f"{purpose}:\n```sql\n{sql}\n```" for purpose, sql in self.sent)


def _count(value: str | None) -> int:
    return int(value) if value is not None else 0


def _day_of(value: str | None) -> datetime.date | None:
    return datetime.date.fromisoformat(value[:10]) if value is not None else None


def tally_of(statements: LayerStatements, audit: Result) -> ExpectationTally:
    """The audit's counts as the Delta path's tally; rows without a day, or on a day outside
    the run's, are an error (the replace would refuse or lose them)."""
    spec, window = statements.layer.spec, statements.window
    tally = ExpectationTally(spec.expect)
    outside: list[datetime.date] = []
    undated = 0
    for record in audit.records():
        day, rows = _day_of(record[DAY]), _count(record["__rows"])
        if day is None:
            undated += rows
            continue
        if window is not None and not window.first_day <= day <= window.last_day:
            outside.append(day)
        tally.rows_by_day[day] = rows
        for index, expectation in enumerate(spec.expect):
            violations = _count(record[f"__violations_{index}"])
            if violations:
                tally.violations[expectation.name][day] = violations
        dropped = _count(record["__dropped"])
        if dropped:
            tally.quarantined_by_day[day] = dropped
    if undated:
        raise IngestionError(
            f"{statements.label}: {undated} row(s) have no {spec.partition_column}; nothing was "
            "written. A daily layer needs the day on every row: filter those rows out in the "
            "SQL, or set `partition_column` to a column that is never NULL."
        )
    if outside:
        raise IngestionError(
            f"{statements.label}: the SQL gives rows for {min(outside)}..{max(outside)}, outside "
            f"the run's days; nothing was written. Select only rows whose "
            f"{spec.partition_column} is one of the run's days (each daily input is read for "
            "those days only; a join to an unpartitioned input or a computed day can move rows "
            "off them)."
        )
    return tally


def key_evaluations(
    statements: LayerStatements, counts: Result, sample: Result | None
) -> list[Evaluation]:
    """The primary key's verdict on each day, from the warehouse's counts and sample."""
    from ingestion_assets.layers.asset import PRIMARY_KEY_CHECK

    key = list(statements.layer.spec.primary_key)
    findings = KeyFindings(tuple(key))
    for record in counts.records():
        day = _day_of(record[DAY])
        found = DayKeys(_count(record["__duplicate_keys"]), _count(record["__null_keys"]))
        if day is not None:
            findings.by_day[day] = found
        findings.total.duplicate_keys += found.duplicate_keys
        findings.total.null_keys += found.null_keys
    for record in sample.records() if sample is not None else []:
        day = _day_of(record[DAY])
        values: dict[str, Any] = {name: record[name] for name in key}
        null_key = str(record["__null_key"]).lower() in ("true", "1")
        if null_key:
            values[PARTITION_DATE] = record[DAY]
        else:
            values["copies"] = _count(record["__copies_in_run"])
        for found in [findings.total, *([findings.of_day(day)] if day is not None else [])]:
            (found.null_sample if null_key else found.duplicate_sample).append(values)
    data = AuditData(window=statements.window, rows_by_day={}, key_findings=findings)
    return [
        Evaluation(PRIMARY_KEY_CHECK, day, verdict, AssetCheckSeverity.ERROR, True)
        for day, verdict in keys_by_day(data, key).items()
    ]


def publish_on_warehouse(run: LayerRun) -> Iterator[Any]:
    """Stage the judged rows on the warehouse and audit them there; then replace the run's
    days of the quarantine and of the layer's table, or refuse with nothing written."""
    manager = cast("DatabricksIOManager", run.io_manager)
    statements = LayerStatements(
        run.layer,
        run.window,
        manager.full_table_name,
        run.context.run_id,
        run.ingested_day,
        run.label,
    )
    labels = WritePlan(
        table_label=f"table {statements.target}",
        window=run.window,
        target=pa.schema([]),
        partition_column=None,
        ingested_at=datetime.datetime.now(datetime.UTC),
        run_id=run.context.run_id,
        nanoseconds="error",
    )
    warehouse = Warehouse(run, manager, manager.client(), labels)
    staging, drop = statements.staging, "dropping the staging table"
    try:
        yield from _audit_and_publish(run, statements, warehouse)
    except BaseException as error:
        try:
            warehouse.execute(drop, statements.drop_staging(), f"Drop {staging}.", staging)
        except IngestionError as cleanup:
            error.add_note(str(cleanup))
        raise
    warehouse.execute(
        drop, statements.drop_staging(), f"The rows were published; drop {staging}.", staging
    )


def _audit_and_publish(
    run: LayerRun, statements: LayerStatements, warehouse: Warehouse
) -> Iterator[Any]:
    context, spec, started = run.context, run.spec, time.monotonic()
    staging, quarantine, target = statements.staging, statements.quarantine, statements.target
    inputs = ", ".join(f"{name} ({table.key})" for name, table in run.layer.inputs.items())
    warehouse.execute(
        "running the layer's SQL into the staging table",
        statements.stage(),
        "Fix the layer's SQL in the project file (`layers`; on Databricks it runs as sqlglot "
        f"transpiles it from DuckDB's dialect), or materialize its inputs ({inputs}) for these "
        "days first, then re-run.",
        staging,
    )
    staged = warehouse.query("reading the staged columns", statements.describe(), staging)
    columns = [
        column
        for column in staged.columns
        if not column.name.startswith("__") and column.name not in LINEAGE_COLUMNS
    ]
    day = statements.day(staged.columns)
    audit = warehouse.query("counting rows and violations", statements.audit(day), staging)
    tally = tally_of(statements, audit)
    evaluations = run.expectation_evaluations(tally)
    if spec.primary_key:
        counts = warehouse.query("counting primary keys", statements.keys(day), staging)
        offending = any(
            _count(record["__duplicate_keys"]) or _count(record["__null_keys"])
            for record in counts.records()
        )
        sample = (
            warehouse.query("sampling offending keys", statements.key_sample(day), staging)
            if offending
            else None
        )
        evaluations.extend(key_evaluations(statements, counts, sample))
    yield from run.refuse_or_warn(evaluations)

    by_position = (
        "if the layer's columns changed since {table} was created, drop it or alter it to "
        "them (rows are written by position), then re-run."
    )
    if statements.drops:
        warehouse.execute(
            "creating the quarantine table",
            statements.create(columns, day, quarantine=True),
            _RUN_AGAIN,
            quarantine,
        )
        warehouse.execute(
            "replacing the quarantined rows",
            statements.replace(columns, day, quarantine=True),
            "The layer's table is unchanged; " + by_position.format(table=quarantine),
            quarantine,
        )
    warehouse.execute(
        "creating the layer's table", statements.create(columns, day), _RUN_AGAIN, target
    )
    warehouse.execute(
        "replacing the layer's rows",
        statements.replace(columns, day),
        "The table is unchanged (its quarantine may hold this run's rows already); "
        + by_position.format(table=target),
        target,
    )
    written_by_day = {
        written_day: rows - tally.quarantined_by_day.get(written_day, 0)
        for written_day, rows in tally.rows_by_day.items()
    }
    for key, rows in partition_row_counts(
        list(run.partition_keys.values()), written_by_day
    ).items():
        context.add_asset_metadata({PARTITION_ROW_COUNT: rows}, partition_key=key)
    metadata = _metadata(run, warehouse, tally, written_by_day, columns, started)
    yield MaterializeResult(asset_key=run.asset_key, metadata=metadata)
    targets = materialization_targets(
        context.instance, run.asset_key, list(run.partition_keys.values()), context.run_id
    )
    yield from check_evaluations(
        run.asset_key, evaluations, run.partition_keys, targets, context.assets_def
    )


def _metadata(
    run: LayerRun,
    warehouse: Warehouse,
    tally: ExpectationTally,
    written_by_day: dict[datetime.date, int],
    columns: list[Column],
    started: float,
) -> dict[str, Any]:
    manager = warehouse.manager

    def table_name(path: Sequence[str]) -> str:
        return ".".join((manager.catalog, manager.schema_name, table_name_of(list(path))))

    written = sum(written_by_day.values())
    lineage = [
        TableColumn(PARTITION_DATE, "DATE"),
        TableColumn(INGESTED_AT, "TIMESTAMP"),
        TableColumn(RUN_ID, "STRING"),
    ]
    metadata: dict[str, Any] = {
        "dagster/table_name": table_name(run.spec.asset_path),
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(column.name, column.type_text) for column in columns] + lineage
        ),
        "rows_written": written,
        "rows_quarantined": tally.quarantined,
        "expectations": MetadataValue.json(
            {
                expectation.name: {
                    "violations": sum(tally.violations[expectation.name].values()),
                    "on_violation": expectation.on_violation,
                }
                for expectation in run.spec.expect
            }
        ),
        "statements": MetadataValue.md(warehouse.markdown()),
        "warehouse_id": manager.warehouse_id,
        "layer_seconds": round(time.monotonic() - started, 3),
    }
    if run.window is None:
        metadata["dagster/row_count"] = written
    if any(expectation.on_violation == "drop" for expectation in run.spec.expect):
        from ingestion_assets.layers.asset import quarantine_path

        metadata["quarantine_table"] = table_name(quarantine_path(run.layer))
    run.context.log.info(
        f"{run.label}: published {written:,} row(s) to {metadata['dagster/table_name']} and "
        f"quarantined {tally.quarantined:,}, in {time.monotonic() - started:.2f} s"
    )
    return metadata
