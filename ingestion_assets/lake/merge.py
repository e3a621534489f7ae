"""A keyed Delta table changed in one commit: the changes read since a cursor planned against the
current rows of their keys (`modes/merge.py`), then one delta-rs MERGE on the row identity.

A run that read every row (the first run, a full refresh, a table without a cursor column) also
finds the deletes: a key the table holds and the source no longer does is removed (`hard`) or
flagged (`soft`), and with history its current version is closed. The MERGE commits on exactly
the version it was planned on; when another run committed first it is planned again on the newer
version (`retry_commit`), so two runs never apply a change twice or lose one.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from ingestion_assets.errors import IngestionError, WriteConflictError
from ingestion_assets.lake.replace import (
    MAX_COMMIT_ATTEMPTS,
    create_table,
    fit_schema,
    held_interrupts,
    open_table,
    retry_commit,
)
from ingestion_assets.lake.rows import INGESTED_AT, RUN_ID, delta_compatible_type
from ingestion_assets.modes.merge import (
    ACTION,
    DELETE,
    DELETED,
    DELETED_AT,
    IS_CURRENT,
    TIMESTAMP,
    VALID_TO,
    MergePlan,
    MergeRules,
    plan_scd1,
    plan_scd2,
    plan_scd2_feed,
)

MERGE_LINEAGE = (INGESTED_AT, RUN_ID)


@dataclass(frozen=True)
class MergeOutcome:
    """What one merge did to the table."""

    version: int
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    rows_read: int
    committed: bool


def lake_changes(
    changes: pa.Table, run_id: str, now: datetime.datetime, nanoseconds: str
) -> pa.Table:
    """The changes in Delta-compatible types, with the lineage columns of this run."""
    fields = [
        pa.field(f.name, delta_compatible_type(f.type, nanoseconds))
        for f in changes.schema
        if f.name not in MERGE_LINEAGE
    ]
    columns = {f.name: changes.column(f.name).cast(f.type) for f in fields}
    columns[INGESTED_AT] = pa.array([now] * changes.num_rows, TIMESTAMP)
    columns[RUN_ID] = pa.array([run_id] * changes.num_rows, pa.string())
    return pa.table(columns)


def merge_changes(
    uri: str,
    storage_options: dict[str, str] | None,
    changes: pa.Table,
    rules: MergeRules,
    *,
    full_read: bool,
    run_id: str,
    label: str,
    log: Callable[[str], None],
    schema_policy: str = "evolve",
    nanoseconds: str = "error",
    zone: str = "UTC",
) -> MergeOutcome:
    """Apply `changes` (the rows read; every row of the source when `full_read`) to the table at
    `uri` by the rules, in one commit; creates the table on the first run."""
    now = datetime.datetime.now(datetime.UTC)
    rows = lake_changes(changes, run_id, now, nanoseconds)
    detect_deletes = full_read and rules.deletes != "ignore"

    def attempt(table: DeltaTable) -> MergeOutcome:
        current = _current_rows(table, rows, rules)
        plan = _plan(rows, current, rules, now, label, zone, keep_unchanged=detect_deletes)
        target, schema_mode = fit_schema(
            table, _with_lineage(plan.source).schema, schema_policy, label, uri
        )
        acted = plan.inserted + plan.updated + plan.deleted
        if acted == 0 and not (detect_deletes and table.version() > 0):
            return MergeOutcome(table.version(), 0, 0, 0, plan.unchanged, changes.num_rows, False)
        merger = table.merge(
            plan.source,
            predicate=" AND ".join(f"t.{_quoted(c)} = s.{_quoted(c)}" for c in rules.identity),
            source_alias="s",
            target_alias="t",
            merge_schema=schema_mode == "merge",
            commit_properties=CommitProperties(max_commit_retries=0),
        )
        columns = [name for name in target.names]
        values = {
            name: f"s.{_quoted(name)}" for name in columns if name in plan.source.schema.names
        }
        acting = f"s.{_quoted(ACTION)} IN ('insert', 'update')"
        merger = merger.when_matched_delete(predicate=f"s.{_quoted(ACTION)} = '{DELETE}'")
        merger = merger.when_matched_update(values, predicate=acting)
        merger = merger.when_not_matched_insert(values, predicate=acting)
        if detect_deletes:
            merger = _gone_at_source(merger, rules, now)
        with held_interrupts():
            metrics = merger.execute()
        gone = _gone_count(metrics, plan, rules) if detect_deletes else 0
        return MergeOutcome(
            DeltaTable(uri, storage_options=storage_options).version(),
            plan.inserted,
            plan.updated,
            plan.deleted + gone,
            plan.unchanged,
            changes.num_rows,
            True,
        )

    table = open_table(uri, storage_options)
    if table is None:
        empty = _plan(rows.slice(0, 0), rows.slice(0, 0), rules, now, label, zone, False).source
        table = create_table(uri, _with_lineage(empty).schema, storage_options)
    try:
        return retry_commit(uri, storage_options, attempt, label=label, log=log, table=table)
    except CommitFailedError:
        raise WriteConflictError(
            f"{label}: other runs kept committing to the table while this one tried to "
            f"({MAX_COMMIT_ATTEMPTS} attempts); nothing was written. Re-run the asset."
        ) from None


def _plan(
    rows: pa.Table,
    current: pa.Table,
    rules: MergeRules,
    now: datetime.datetime,
    label: str,
    zone: str,
    keep_unchanged: bool,
) -> MergePlan:
    if rules.history and rules.every_change:
        return plan_scd2_feed(rows, current, rules, now, MERGE_LINEAGE, label, zone)
    if rules.history:
        return plan_scd2(rows, current, rules, now, MERGE_LINEAGE, label, zone, keep_unchanged)
    return plan_scd1(rows, current, rules, now, MERGE_LINEAGE, label, keep_unchanged)


def _with_lineage(source: pa.Table) -> pa.Table:
    """The MERGE source's table columns (without the action), lineage last."""
    names = [n for n in source.schema.names if n not in (ACTION, *MERGE_LINEAGE)]
    return source.select([*names, *[n for n in MERGE_LINEAGE if n in source.schema.names]])


def _current_rows(table: DeltaTable, rows: pa.Table, rules: MergeRules) -> pa.Table:
    """The table's rows (every version, with history) that may share a key with `rows`."""
    if table.version() < 1 or rows.num_rows == 0:
        return pa.table(
            {
                name: pa.array([], f.type)
                for name, f in zip(
                    pa.schema(table.schema().to_arrow()).names,
                    pa.schema(table.schema().to_arrow()),
                    strict=True,
                )
            }
        )
    dataset = table.to_pyarrow_dataset()
    condition: ds.Expression | None = None
    for key in rules.keys:
        values = pc.unique(rows.column(key))
        term = ds.field(key).isin(values)
        condition = term if condition is None else condition & term
    # with history, every version of the keys: a change older than a closed version is stale
    return dataset.to_table(filter=condition)


def _gone_at_source(merger: Any, rules: MergeRules, now: datetime.datetime) -> Any:
    """The MERGE clause for the table's keys the source no longer holds (a full read only)."""
    stamp = f"CAST('{now.strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00' AS TIMESTAMP)"
    if rules.history:
        updates = {_quoted(IS_CURRENT): "false", _quoted(VALID_TO): stamp}
        if rules.keeps_deleted:
            updates |= {_quoted(DELETED): "true", _quoted(DELETED_AT): stamp}
        return merger.when_not_matched_by_source_update(
            updates, predicate=f"t.{_quoted(IS_CURRENT)} = true"
        )
    if rules.deletes == "hard":
        return merger.when_not_matched_by_source_delete()
    return merger.when_not_matched_by_source_update(
        {_quoted(DELETED): "true", _quoted(DELETED_AT): stamp},
        predicate=f"t.{_quoted(DELETED)} IS DISTINCT FROM true",
    )


def _gone_count(metrics: dict[str, Any], plan: MergePlan, rules: MergeRules) -> int:
    """How many rows the source no longer holds were deleted or closed (the MERGE's own count
    less what the plan did)."""
    if rules.deletes == "hard" and not rules.history:
        return max(0, int(metrics.get("num_target_rows_deleted", 0)) - plan.deleted)
    # soft deletes and closed versions are updates to the MERGE
    planned_updates = plan.updated + plan.deleted
    return max(0, int(metrics.get("num_target_rows_updated", 0)) - planned_updates)


def _quoted(name: str) -> str:
    """A column name as delta-rs's SQL reads it."""
    return "`" + name.replace("`", "``") + "`"


def require_keys(rules: MergeRules, where: str) -> None:
    """A merge table declares its key."""
    if not rules.keys:
        raise IngestionError(f"{where}: a merge table needs `primary_key`")
