"""A keyed Delta table changed in one commit: the changes read since a cursor planned against the
current rows of their keys (`modes/merge.py`), then one delta-rs MERGE on the row identity.

A run that read every row (the first run, a full refresh, a table without a cursor column) also
finds the deletes: a key the table holds and the source no longer does is removed (`hard`) or
flagged (`soft`), and with history its current version is closed. They are found by an Arrow
anti-join of the key columns, not by the MERGE (delta-rs's `when_not_matched_by_source` joins
whole rows: 1.1 GB at 200,000 rows, measured in bench/merge.py). The MERGE commits on exactly
the version it was planned on; when another run committed first it is planned again on the newer
version (`retry_commit`), so two runs never apply a change twice or lose one.

A table's changes (one row per key) are planned in chunks of CHUNK_ROWS, each against the current
rows of its own keys, and only the rows that change the table stay for the MERGE; a change feed
(several events per key, in order) is planned at once.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from ingestion_assets.errors import IngestionError, WriteConflictError
from ingestion_assets.lake.files import delta_dataset
from ingestion_assets.lake.key_scan import gone_keys
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
    IS_CURRENT,
    TIMESTAMP,
    VALID_FROM,
    VALID_TO,
    MergePlan,
    MergeRules,
    closings,
    constant,
    current_rows,
    deletions,
    duplicate_keys,
    plan_scd1,
    plan_scd2,
    plan_scd2_feed,
)

MERGE_LINEAGE = (INGESTED_AT, RUN_ID)
# changes planned at once: their rows and the current rows of their keys are what a plan holds
CHUNK_ROWS = 100_000


class MergeConflictError(IngestionError):
    """The table holds rows a change cannot be matched to one by one (a key held twice)."""


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
    # False when the audit refused the planned table: nothing was committed
    accepted: bool = True


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
    columns[INGESTED_AT] = constant(now, TIMESTAMP, changes.num_rows)
    columns[RUN_ID] = constant(run_id, pa.string(), changes.num_rows)
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
    audit: Callable[[pa.Table], bool] | None = None,
) -> MergeOutcome:
    """Apply `changes` (the rows read; every row of the source when `full_read`) to the table at
    `uri` by the rules, in one commit; creates the table on the first run.

    Before each commit, `audit` judges the table as the MERGE would leave it (its key, flag and
    validity columns, `planned_table`); when it returns False nothing is committed and the
    outcome says so (`accepted`)."""
    now = datetime.datetime.now(datetime.UTC)
    detect_deletes = full_read and rules.deletes != "ignore"

    def planned(table: DeltaTable) -> MergePlan:
        """The plan of every change; a table's (one row per key) in chunks of CHUNK_ROWS, each
        against the current rows of its own keys, keeping only the rows that change the table."""
        if rules.every_change:
            rows = lake_changes(changes, run_id, now, nanoseconds)
            return _plan(rows, _current_rows(table, rows, rules, label), rules, now, label, zone)
        plans = []
        for offset in range(0, max(changes.num_rows, 1), CHUNK_ROWS):
            rows = lake_changes(changes.slice(offset, CHUNK_ROWS), run_id, now, nanoseconds)
            plans.append(
                _plan(rows, _current_rows(table, rows, rules, label), rules, now, label, zone)
            )
        source = pa.concat_tables([plan.source.cast(plans[0].source.schema) for plan in plans])
        return MergePlan(
            source,
            inserted=sum(plan.inserted for plan in plans),
            updated=sum(plan.updated for plan in plans),
            deleted=sum(plan.deleted for plan in plans),
            unchanged=sum(plan.unchanged for plan in plans),
        )

    def attempt(table: DeltaTable) -> MergeOutcome:
        plan = planned(table)
        if detect_deletes:
            keys = lake_changes(changes.select(list(rules.keys)), run_id, now, nanoseconds)
            gone = _gone_at_source(table, keys, rules, now, plan.source.schema, label)
        else:
            gone = None
        if gone is not None and gone.num_rows:
            plan.source = pa.concat_tables([plan.source, gone])
            plan.deleted += gone.num_rows
        target, schema_mode = fit_schema(
            table, _with_lineage(plan.source).schema, schema_policy, label, uri
        )
        if audit is not None and not audit(planned_table(table, plan.source, rules)):
            return MergeOutcome(
                table.version(),
                plan.inserted,
                plan.updated,
                plan.deleted,
                plan.unchanged,
                changes.num_rows,
                committed=False,
                accepted=False,
            )
        if plan.inserted + plan.updated + plan.deleted == 0:
            return MergeOutcome(table.version(), 0, 0, 0, plan.unchanged, changes.num_rows, False)
        _execute(table, plan.source, rules, target.names, merge_schema=schema_mode == "merge")
        return MergeOutcome(
            DeltaTable(uri, storage_options=storage_options).version(),
            plan.inserted,
            plan.updated,
            plan.deleted,
            plan.unchanged,
            changes.num_rows,
            True,
        )

    table = open_table(uri, storage_options)
    if table is None:
        none = lake_changes(changes.slice(0, 0), run_id, now, nanoseconds)
        empty = _plan(none, none, rules, now, label, zone).source
        table = create_table(uri, _with_lineage(empty).schema, storage_options)
    try:
        return retry_commit(uri, storage_options, attempt, label=label, log=log, table=table)
    except CommitFailedError:
        raise WriteConflictError(
            f"{label}: other runs kept committing to the table while this one tried to "
            f"({MAX_COMMIT_ATTEMPTS} attempts); nothing was written. Re-run the asset."
        ) from None


def judged_columns(rules: MergeRules) -> list[str]:
    """The columns the merge checks read: the key, the flags and the validity."""
    return list(dict.fromkeys([*rules.keys, IS_CURRENT, DELETED, VALID_FROM, VALID_TO]))


def planned_table(table: DeltaTable, source: pa.Table, rules: MergeRules) -> pa.Table:
    """The judged columns of the table as the MERGE of `source` would leave it, read before the
    commit so that the checks judge exactly what is about to be published: the table's rows
    the MERGE does not match, one row per matched pair whose action writes (a matched row is
    replaced, each one when several share the identity; the delete action removes it), and the
    rows it inserts."""
    names = pa.schema(table.schema().to_arrow()).names
    # a column the rules no longer set (a flag of earlier rules) is not what they judge
    columns = [n for n in judged_columns(rules) if n in names and n in source.schema.names]
    if table.version() < 1:
        held = pa.schema(table.schema().to_arrow()).empty_table().select(columns)
    else:
        held = delta_dataset(table).to_table(columns=columns)
    if source.num_rows == 0:
        return held
    identity = list(rules.identity)
    source = source.cast(
        pa.schema(
            [
                held.schema.field(n) if n in columns else f
                for n, f in zip(source.schema.names, source.schema, strict=True)
            ]
        )
    )
    matched = source.select(identity)
    kept = held.join(matched, identity, join_type="left anti", use_threads=False)
    acting = pc.is_in(source.column(ACTION), pa.array(["insert", "update"]))
    written = source.filter(acting).select(columns)
    keys = held.select(identity)
    replaced = keys.join(written, identity, join_type="inner", use_threads=False)
    inserted = written.join(keys, identity, join_type="left anti", use_threads=False)
    return pa.concat_tables([kept, replaced.select(columns), inserted.select(columns)])


def _plan(
    rows: pa.Table,
    current: pa.Table,
    rules: MergeRules,
    now: datetime.datetime,
    label: str,
    zone: str,
) -> MergePlan:
    if rules.history and rules.every_change:
        return plan_scd2_feed(rows, current, rules, now, MERGE_LINEAGE, label, zone)
    if rules.history:
        return plan_scd2(rows, current, rules, now, MERGE_LINEAGE, label, zone)
    return plan_scd1(rows, current, rules, now, MERGE_LINEAGE, label)


def _with_lineage(source: pa.Table) -> pa.Table:
    """The MERGE source's table columns (without the action), lineage last."""
    names = [n for n in source.schema.names if n not in (ACTION, *MERGE_LINEAGE)]
    return source.select([*names, *[n for n in MERGE_LINEAGE if n in source.schema.names]])


def _current_rows(table: DeltaTable, rows: pa.Table, rules: MergeRules, label: str) -> pa.Table:
    """The table's rows (every version, with history) that may share a key with `rows`."""
    if table.version() < 1 or rows.num_rows == 0:
        return pa.schema(table.schema().to_arrow()).empty_table()
    dataset = delta_dataset(table)
    condition: ds.Expression | None = None
    for key in rules.keys:
        kind = dataset.schema.field(key).type
        values = pc.unique(rows.column(key)).cast(kind)
        column = ds.field(key)
        if pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind):
            # files a MERGE wrote hold string_view: their statistics do not compare with the
            # table's string type (ArrowNotImplementedError), the cast values do
            column = column.cast(kind)
        term = column.isin(values)
        condition = term if condition is None else condition & term
    # with history, every version of the keys: a change older than a closed version is stale
    held = dataset.to_table(filter=condition)
    twice = duplicate_keys(current_rows(held, rules), rules.keys)
    if twice.num_rows:
        sample = [
            {k: str(v) for k, v in row.items() if k != "rows"}
            for row in twice.slice(0, 3).to_pylist()
        ]
        raise MergeConflictError(
            f"{label}: the table holds more than one current row for {twice.num_rows:,} of the "
            f"changed keys (e.g. {sample}); it was written with another primary key than "
            f"({', '.join(rules.keys)}) or by another writer, and a change cannot say which row "
            "it replaces. Nothing was written. Delete the extra rows, or remove the table and "
            "run the asset with the tag ingest/full_refresh=true to rebuild it."
        )
    return held


def held_keys(table: DeltaTable, rules: MergeRules) -> Iterator[pa.Table]:
    """The table's current keys (not deleted, current versions), streamed batch by batch over
    the key and flag columns alone."""
    names = pa.schema(table.schema().to_arrow()).names
    flags = [name for name in (IS_CURRENT, DELETED) if name in names]
    # one row group read at a time: the scanner's default read-ahead held 16 batches and 4
    # files at once (394 MB for 30,000,000 int64 keys, against 147 MB so)
    batches = delta_dataset(table).to_batches(
        columns=[*rules.keys, *flags],
        batch_readahead=1,
        fragment_readahead=1,
        fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
    )
    for batch in batches:
        yield current_rows(pa.table(batch), rules).select(list(rules.keys))


def key_schema(table: DeltaTable, rules: MergeRules) -> pa.Schema:
    """The table's key columns and their types."""
    schema = pa.schema(table.schema().to_arrow())
    return pa.schema([schema.field(name) for name in rules.keys])


def _gone_at_source(
    table: DeltaTable,
    rows: pa.Table,
    rules: MergeRules,
    now: datetime.datetime,
    schema: pa.Schema,
    label: str,
) -> pa.Table | None:
    """The MERGE rows that delete what the table holds and a full read no longer found: the
    table's current keys less the keys read, compared bucket by bucket (`lake/key_scan.py`)."""
    scan = gone_keys(
        rows.select(list(rules.keys)).to_batches(),
        held_keys(table, rules),
        list(rules.keys),
        key_schema(table, rules),
    )
    if scan.gone.num_rows == 0:
        return None
    return _removals(table, scan.gone, rules, now, schema, label)


def _removals(
    table: DeltaTable,
    gone: pa.Table,
    rules: MergeRules,
    now: datetime.datetime,
    schema: pa.Schema,
    label: str,
) -> pa.Table:
    """The MERGE rows that remove (hard) or flag and close the table's rows of `gone` keys."""
    if rules.deletes == "hard" and not rules.history:
        return deletions(gone, schema)
    # their current rows only: a closed version of a gone key keeps its end
    return closings(
        current_rows(_current_rows(table, gone, rules, label), rules), rules, now, schema
    )


def remove_keys(
    uri: str,
    storage_options: dict[str, str] | None,
    gone: pa.Table,
    rules: MergeRules,
    *,
    run_id: str,
    label: str,
    log: Callable[[str], None],
    audit: Callable[[pa.Table], bool] | None = None,
) -> MergeOutcome:
    """Remove (or flag, or close) the rows of the `gone` keys in one MERGE, planned again on a
    newer version when another run committed first; the audit as in `merge_changes`."""
    now = datetime.datetime.now(datetime.UTC)

    def attempt(table: DeltaTable) -> MergeOutcome:
        held = pa.schema(table.schema().to_arrow())
        schema = pa.schema(
            [f for f in held if f.name not in MERGE_LINEAGE] + [pa.field(ACTION, pa.string())]
        )
        rows = _removals(table, gone, rules, now, schema, label) if gone.num_rows else None
        if rows is None or rows.num_rows == 0:
            rows = schema.empty_table()
        rows = rows.append_column(
            INGESTED_AT, constant(now, TIMESTAMP, rows.num_rows)
        ).append_column(RUN_ID, constant(run_id, pa.string(), rows.num_rows))
        removed = rows.num_rows
        if audit is not None and not audit(planned_table(table, rows, rules)):
            return MergeOutcome(table.version(), 0, 0, removed, 0, 0, False, accepted=False)
        if removed == 0:
            return MergeOutcome(table.version(), 0, 0, 0, 0, 0, False)
        _execute(table, rows, rules, held.names, merge_schema=False)
        return MergeOutcome(
            DeltaTable(uri, storage_options=storage_options).version(), 0, 0, removed, 0, 0, True
        )

    try:
        return retry_commit(uri, storage_options, attempt, label=label, log=log)
    except CommitFailedError:
        raise WriteConflictError(
            f"{label}: other runs kept committing to the table while this one tried to "
            f"({MAX_COMMIT_ATTEMPTS} attempts); nothing was written. Re-run the asset."
        ) from None


def _execute(
    table: DeltaTable, source: pa.Table, rules: MergeRules, names: list[str], merge_schema: bool
) -> None:
    """One MERGE of `source` on the row identity: its action deletes, updates or inserts."""
    merger = table.merge(
        source,
        predicate=" AND ".join(f"t.{_quoted(c)} = s.{_quoted(c)}" for c in rules.identity),
        source_alias="s",
        target_alias="t",
        merge_schema=merge_schema,
        commit_properties=CommitProperties(max_commit_retries=0),
    )
    values = {name: f"s.{_quoted(name)}" for name in names if name in source.schema.names}
    acting = f"s.{_quoted(ACTION)} IN ('insert', 'update')"
    merger = merger.when_matched_delete(predicate=f"s.{_quoted(ACTION)} = '{DELETE}'")
    merger = merger.when_matched_update(values, predicate=acting)
    merger = merger.when_not_matched_insert(values, predicate=acting)
    with held_interrupts():
        merger.execute()


def _quoted(name: str) -> str:
    """A column name as delta-rs's SQL reads it."""
    return "`" + name.replace("`", "``") + "`"
