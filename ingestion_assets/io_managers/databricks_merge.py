"""Merge tables (SCD type 1) in Unity Catalog: the latest change per key found in Arrow, staged as
Parquet on the run's volume folder, applied by one MERGE INTO on the SQL warehouse.

The rules are the Delta path's (`lake/merge.py` over `modes/merge.py`), but the table's rows are
not read here: the MERGE's conditions do what that path's plan does against the current rows. A
change older than the row held (by the sequence) is left out; an update that changes no compared
column writes nothing; a delete removes the row (`hard`) or flags it (`soft`: the row keeps its
values and takes the delete's sequence and delete column). A full read also removes or flags the
keys the source no longer holds (`WHEN NOT MATCHED BY SOURCE`: the staged changes are then every
key read). History (SCD type 2) is kept by the Delta Lake IO manager only.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import pyarrow as pa

from ingestion_assets.errors import IngestionError
from ingestion_assets.io_managers.databricks import (
    StagedFiles,
    create_table_sql,
    quote_identifier,
    sql_string,
)
from ingestion_assets.lake.merge import MERGE_LINEAGE, lake_changes
from ingestion_assets.lake.rows import INGESTED_AT, WritePlan
from ingestion_assets.modes.merge import (
    DELETED,
    DELETED_AT,
    MergeRules,
    compared_columns,
    delete_flags,
    latest_changes,
    target_schema,
)

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from ingestion_assets.io_managers.databricks import DatabricksIOManager

# the staged column that says a change is a delete
MERGE_DELETE = "_merge_delete"
# the counts a Databricks MERGE answers with (its one result row also has num_affected_rows)
_MERGE_COUNTS = ("num_inserted_rows", "num_updated_rows", "num_deleted_rows")


@dataclass(frozen=True)
class DatabricksMergeOutcome:
    """What one merge did to the table; a count is None when the warehouse reported none."""

    inserted: int | None
    updated: int | None
    deleted: int | None
    rows_read: int
    # False when there was nothing to merge (no change read, no deletes to find)
    committed: bool
    statements: tuple[str, ...]


class _MergeLabels(WritePlan):
    """How the IO manager's `execute` names a merge in its errors."""

    @property
    def partition_label(self) -> str:
        return "merge"


def merge_changes(
    manager: DatabricksIOManager,
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
    """Apply `changes` (every row of the source when `full_read`) to the asset's Unity Catalog
    table by the rules: created on the first run, then one MERGE; the staged files are removed
    afterwards, also when a statement fails."""
    table_name = manager.full_table_name(asset_path)
    if rules.history:
        raise IngestionError(
            f"{label}: SCD type 2 is kept by the Delta Lake IO manager only, not in Unity "
            f"Catalog table {table_name}; set `io_manager: delta` for this source or keep the "
            "table as SCD type 1"
        )
    now = datetime.datetime.now(datetime.UTC)
    latest = latest_changes(lake_changes(changes, run_id, now, nanoseconds), rules, label)
    deletes = delete_flags(latest, rules, label)
    data = pa.schema(
        [f for f in latest.schema if f.name not in (*rules.except_columns, *MERGE_LINEAGE)]
    )
    lineage = [latest.schema.field(name) for name in MERGE_LINEAGE]
    table = pa.schema([*target_schema(data, rules), *lineage])
    staged_rows = latest.select([*data.names, *MERGE_LINEAGE]).append_column(MERGE_DELETE, deletes)
    detect_deletes = full_read and rules.deletes != "ignore"
    merging = latest.num_rows > 0 or detect_deletes

    client = manager.client()
    staged = StagedFiles(
        client,
        manager.staging_directory(asset_path, run_id),
        staged_rows.schema,
        manager.rows_per_file,
    )
    labels = _MergeLabels(
        table_label=f"table {table_name}",
        window=None,
        target=table,
        partition_column=None,
        ingested_at=now,
        run_id=run_id,
        nanoseconds=nanoseconds,
    )
    create = create_table_sql(table_name, table)
    merge = merge_sql(
        table_name, staged.directory, table, rules, gone_at=now if detect_deletes else None
    )
    started = time.monotonic()
    try:
        if merging:
            for batch in staged_rows.to_batches():
                staged.write(batch)
            staged.finish()
        manager.execute(client, create, labels)
        merge_id = manager.execute(client, merge, labels) if merging else None
    except BaseException as error:
        _fail(manager, staged, error, table_name)
    if merge_id is None:
        return DatabricksMergeOutcome(0, 0, 0, changes.num_rows, False, (create,))
    try:
        staged.delete()
    except Exception as cleanup_error:
        raise IngestionError(
            f"{label}: the changes were merged into {table_name}, but the staged files under "
            f"{staged.directory} could not be deleted ({manager.hide_token(cleanup_error)}); "
            "delete them from the volume."
        ) from None
    log(
        f"{label}: merged {latest.num_rows:,} latest change(s) of {changes.num_rows:,} read into "
        f"{table_name} from {len(staged.paths)} staged file(s) in "
        f"{time.monotonic() - started:.2f} s"
    )
    statements = [create, merge]
    try:
        inserted, updated, deleted = _merge_counts(
            manager, client, merge_id, rules, table_name, labels, statements
        )
    except Exception as error:
        log(
            f"{label}: the merge is committed, but its counts could not be read "
            f"({manager.hide_token(error)}); they are left unknown"
        )
        inserted = updated = deleted = None
    return DatabricksMergeOutcome(
        inserted, updated, deleted, changes.num_rows, True, tuple(statements)
    )


def _merge_counts(
    manager: DatabricksIOManager,
    client: WorkspaceClient,
    merge_id: str,
    rules: MergeRules,
    table_name: str,
    labels: WritePlan,
    statements: list[str],
) -> tuple[int | None, int | None, int | None]:
    """(inserted, updated, deleted) as the Delta path counts them, from the MERGE's result row.
    The warehouse counts a row flagged by a soft delete as updated: those rows are counted by
    their `_deleted_at`, the merge's own time (that statement is added to `statements`)."""
    row = _first_row(client, merge_id)
    inserted, updated, deleted = (_count(row, name) for name in _MERGE_COUNTS)
    if rules.deletes != "soft" or not updated:
        return inserted, updated, deleted
    count = soft_deletes_sql(table_name, labels.ingested_at)
    statements.append(count)
    flagged = _count(_first_row(client, manager.execute(client, count, labels)), "flagged")
    if flagged is None or deleted is None:
        return inserted, None, None
    return inserted, updated - flagged, deleted + flagged


def merge_sql(
    table_name: str,
    staging_directory: str,
    table: pa.Schema,
    rules: MergeRules,
    gone_at: datetime.datetime | None,
) -> str:
    """The MERGE of the staged latest changes into the table (`table` its columns) on the key.

    A change applies only when it is not older than the row held (by the sequence, when the
    table keeps it); an update only when a compared column (or the delete flag) differs, so a
    batch applied again writes nothing. With `gone_at` (a full read), the rows whose key was not
    read are removed, or flagged deleted at that time."""
    soft = rules.deletes == "soft"
    names = [name for name in table.names if name not in (DELETED, DELETED_AT, *MERGE_LINEAGE)]
    compared = compared_columns(table, rules, MERGE_LINEAGE)
    lineage = {name: _source(name) for name in MERGE_LINEAGE}
    is_delete = _source(MERGE_DELETE)
    fresh: list[str] = []
    if rules.sequence is not None and rules.sequence in names:
        held, incoming = _target(rules.sequence), _source(rules.sequence)
        fresh.append(f"({held} IS NULL OR {incoming} IS NULL OR {incoming} >= {held})")
    clauses: list[str] = []
    if rules.deletes == "hard":
        clauses.append(_when("MATCHED", [is_delete, *fresh], "DELETE"))
    elif soft:
        # a soft delete keeps the row's values: it takes only its own sequence and delete column
        own = [n for n in dict.fromkeys((rules.sequence, rules.delete_column)) if n in compared]
        changed = [f"{_target(DELETED)} IS DISTINCT FROM TRUE", *map(_distinct, own)]
        flag = {
            **{name: _source(name) for name in own},
            DELETED: "TRUE",
            DELETED_AT: _source(INGESTED_AT),
            **lineage,
        }
        clauses.append(_when("MATCHED", [is_delete, *fresh, _any(changed)], _update(flag)))
    restored = {DELETED: "FALSE", DELETED_AT: "NULL"} if soft else {}
    changed = [*map(_distinct, compared)]
    if soft:
        changed.append(f"{_target(DELETED)} IS DISTINCT FROM FALSE")
    if changed:
        values = {name: _source(name) for name in names if name not in rules.keys}
        clauses.append(
            _when(
                "MATCHED",
                [f"NOT {is_delete}", *fresh, _any(changed)],
                _update({**values, **restored, **lineage}),
            )
        )
    inserted = {**{name: _source(name) for name in names}, **restored, **lineage}
    clauses.append(
        _when(
            "NOT MATCHED",
            [f"NOT {is_delete}"],
            f"INSERT ({', '.join(map(quote_identifier, inserted))}) "
            f"VALUES ({', '.join(inserted.values())})",
        )
    )
    if gone_at is not None and rules.deletes == "hard":
        clauses.append("WHEN NOT MATCHED BY SOURCE THEN DELETE")
    elif gone_at is not None and soft:
        clauses.append(
            _when(
                "NOT MATCHED BY SOURCE",
                [f"NOT COALESCE({_target(DELETED)}, FALSE)"],
                _update({DELETED: "TRUE", DELETED_AT: _timestamp(gone_at)}),
            )
        )
    on = " AND ".join(f"{_target(key)} = {_source(key)}" for key in rules.keys)
    source = f"SELECT * FROM read_files({sql_string(staging_directory)}, format => 'parquet')"
    return f"MERGE INTO {table_name} AS t USING ({source}) AS s ON {on} " + " ".join(clauses)


def soft_deletes_sql(table_name: str, moment: datetime.datetime) -> str:
    """The count of rows a merge flagged deleted: their `_deleted_at` is the merge's own time."""
    return (
        f"SELECT count(*) AS flagged FROM {table_name} WHERE {quote_identifier(DELETED)} AND "
        f"{quote_identifier(DELETED_AT)} = {_timestamp(moment)}"
    )


def _fail(
    manager: DatabricksIOManager, staged: StagedFiles, error: BaseException, table_name: str
) -> NoReturn:
    """Delete the staged files and raise what failed, naming the table (unchanged)."""
    try:
        staged.delete()
    except Exception as cleanup_error:
        error.add_note(
            f"the staged files under {staged.directory} could not be deleted "
            f"({manager.hide_token(cleanup_error)}); delete them from the volume."
        )
    if isinstance(error, IngestionError) or not isinstance(error, Exception):
        raise error
    raise IngestionError(
        f"table {table_name} (merge): merging on Databricks failed: {manager.hide_token(error)}. "
        "The table is unchanged; the staged files were removed. Re-run the asset."
    ) from None


def _first_row(client: WorkspaceClient, statement_id: str) -> dict[str, str | None]:
    """The first row of a finished statement's result by column name; empty without one."""
    response = client.statement_execution.get_statement(statement_id)
    schema = response.manifest.schema if response.manifest else None
    data = response.result.data_array if response.result else None
    if schema is None or not schema.columns or not data:
        return {}
    return {str(column.name): value for column, value in zip(schema.columns, data[0], strict=True)}


def _count(row: Mapping[str, str | None], name: str) -> int | None:
    value = row.get(name)
    return int(value) if value is not None else None


def _target(name: str) -> str:
    return f"t.{quote_identifier(name)}"


def _source(name: str) -> str:
    return f"s.{quote_identifier(name)}"


def _distinct(name: str) -> str:
    return f"{_target(name)} IS DISTINCT FROM {_source(name)}"


def _any(conditions: list[str]) -> str:
    return "(" + " OR ".join(conditions) + ")"


def _when(kind: str, conditions: list[str], action: str) -> str:
    return f"WHEN {kind} AND {' AND '.join(conditions)} THEN {action}"


def _update(values: Mapping[str, str]) -> str:
    return "UPDATE SET " + ", ".join(f"{quote_identifier(k)} = {v}" for k, v in values.items())


def _timestamp(moment: datetime.datetime) -> str:
    """A UTC time as a Databricks TIMESTAMP literal, to the microsecond."""
    utc = moment.astimezone(datetime.UTC)
    return f"TIMESTAMP'{utc.strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'"
