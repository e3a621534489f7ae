"""The asset of a merge table (`mode: merge`): read the rows changed since the cursor stored with
the last materialization, apply them by key in one Delta MERGE (`lake/merge.py`), store the new
cursor with this materialization. The checks judge the table as the MERGE would leave it, before
the commit (audit before publish): a key held by two current rows or a broken history commits
nothing; the count of current rows against the source's is a warning.

The cursor moves only with a materialization: a run that fails (or is stopped) after reading
leaves the last one's cursor, so its re-run reads the same changes again, and a change applied
twice changes nothing. The tag `ingest/full_refresh=true` reads every row (and, with deletes
on, finds the keys the source no longer holds).
"""

from __future__ import annotations

import contextlib
import datetime
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    DagsterInstance,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)
from deltalake import DeltaTable

from ingestion_assets.errors import AuditFailedError, ConfigError, IngestionError, where
from ingestion_assets.io_managers.contract import DATABRICKS_IO_MANAGER_KEY, column_schema
from ingestion_assets.lake.key_scan import gone_keys
from ingestion_assets.lake.merge import held_keys, key_schema, merge_changes, remove_keys
from ingestion_assets.lake.replace import open_table
from ingestion_assets.modes.merge import (
    FEED_DELETE,
    MergeRules,
    current_rows,
    duplicate_keys,
    feed_changes,
    overlapping_versions,
)
from ingestion_assets.specs import DatasetSpec, SourceSpecBase

CURSOR = "ingest/cursor"
FULL_REFRESH_TAG = "ingest/full_refresh"
KEY_SCAN_TAG = "ingest/key_scan"
ALLOW_MASS_DELETE_TAG = "ingest/allow_mass_delete"
# a key scan that would remove more than half the table (and more than this many rows) stops
MASS_DELETE_ROWS = 10
KEYS_UNIQUE = "current_keys_unique"
MATCHES_SOURCE = "current_rows_match_source"
HISTORY_UNBROKEN = "history_unbroken"
# how often a long read says how far it got
PROGRESS_SECONDS = 10.0


def merge_rules(table: DatasetSpec) -> MergeRules:
    """The merge rules a dataset's spec declares (a cdc table's from its feed)."""
    feed = table.cdc
    if table.mode == "cdc" and feed is not None:
        sequence = feed.sequence
        return MergeRules(
            keys=tuple(table.primary_key),
            sequence=sequence[0] if sequence else None,
            order_by=tuple(sequence[1:]),
            # a feed's delete removes the key, unless the table says `deletes: soft`
            deletes=table.deletes if "deletes" in table.model_fields_set else "hard",
            delete_column=FEED_DELETE,
            history=feed.stored_as_scd_type == 2,
            every_change=True,
            tracked=table.tracked_columns,
            except_columns=(feed.operation, FEED_DELETE, *feed.excepted),
        )
    return MergeRules(
        keys=tuple(table.primary_key),
        sequence=table.cursor_column,
        deletes=table.deletes,
        delete_column=table.delete_column,
        history=table.history,
        tracked=table.tracked_columns,
    )


def read_from(cursor: str | None, lookback: datetime.timedelta | None) -> str | None:
    """Where the next read starts: the stored cursor, moved back by the lookback when it is a
    date or a time."""
    if cursor is None or lookback is None:
        return cursor
    try:
        moment = datetime.datetime.fromisoformat(cursor)
    except ValueError:
        return cursor
    return (moment - lookback).isoformat()


def newest_cursor(changes: pa.Table, column: str | None, previous: str | None) -> str | None:
    """The highest cursor value among the rows read (the previous cursor when none was read)."""
    if column is None or changes.num_rows == 0 or column not in changes.schema.names:
        return previous
    values = changes.column(column)
    if pa.types.is_binary(values.type) or pa.types.is_fixed_size_binary(values.type):
        newest = max((v for v in values.to_pylist() if v is not None), default=None)
        return bytes(newest).hex() if newest is not None else previous
    newest = pc.max(values).as_py()
    if newest is None:
        return previous
    return newest.isoformat() if isinstance(newest, datetime.date) else str(newest)


def merge_asset(
    source_name: str,
    spec: SourceSpecBase,
    table: DatasetSpec,
    asset_spec: AssetSpec,
    resource_key: str,
    io_manager_key: str,
) -> AssetsDefinition:
    """The unpartitioned asset that keeps one table by key, with its checks."""
    asset_key = asset_spec.key
    rules = merge_rules(table)
    on_databricks = io_manager_key == DATABRICKS_IO_MANAGER_KEY
    if on_databricks and rules.history:
        raise ConfigError(
            f"{where(source_name, table.qualified_name, None)}: SCD type 2 history (history: "
            "true, or stored_as_scd_type: 2) is kept by the Delta Lake IO manager only, not in "
            "Unity Catalog; use io_manager: delta for this source, or SCD type 1"
        )
    checks = [
        AssetCheckSpec(
            KEYS_UNIQUE,
            asset=asset_key,
            description=f"Each key ({', '.join(rules.keys)}) is held by one current row.",
            blocking=True,
        ),
        AssetCheckSpec(
            MATCHES_SOURCE,
            asset=asset_key,
            description="The table's current rows number as many as the source's rows (a "
            "warning: the source may change between the read and the count).",
        ),
    ]
    if rules.history:
        checks.append(
            AssetCheckSpec(
                HISTORY_UNBROKEN,
                asset=asset_key,
                description="Each key's versions follow one another without gap or overlap, "
                "and only the last is current.",
                blocking=True,
            )
        )

    @multi_asset(
        name="__".join(asset_key.path),
        specs=[asset_spec],
        # on Databricks the table is judged on the warehouse, not here (see _merge_on_databricks)
        check_specs=[] if on_databricks else checks,
        pool=source_name,
        required_resource_keys={resource_key, io_manager_key},
    )
    def _merge(context) -> Iterator[Any]:  # type: ignore[no-untyped-def]
        context = cast(AssetExecutionContext, context)
        try:
            yield from _run(context, source_name, spec, table, rules, resource_key, io_manager_key)
        except IngestionError as error:
            raise Failure(description=str(error), allow_retries=False) from error

    return _merge


def stored_cursor(instance: DagsterInstance, asset_key: AssetKey) -> str | None:
    """The cursor stored with the asset's latest materialization."""
    event = instance.get_latest_materialization_event(asset_key)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        return None
    value = materialization.metadata.get(CURSOR)
    text = getattr(value, "value", None)
    return str(text) if text else None


def _run(
    context: AssetExecutionContext,
    source_name: str,
    spec: SourceSpecBase,
    table: DatasetSpec,
    rules: MergeRules,
    resource_key: str,
    io_manager_key: str,
) -> Iterator[Any]:
    asset_key = context.assets_def.key
    label = where(source_name, table.qualified_name, "merge")
    writer = getattr(context.resources, io_manager_key)
    delta = hasattr(writer, "table_uri")
    if not delta and not hasattr(writer, "merge_changes"):
        raise IngestionError(
            f"{label}: merge tables are written by the Delta Lake and Databricks IO managers, "
            f"not by {type(writer).__name__}; set `io_manager: delta` for this source"
        )
    if _tagged(context, KEY_SCAN_TAG):
        if not delta:
            raise IngestionError(
                f"{label}: key scans compare with a Delta table read here, not a Unity Catalog "
                "table; run a full refresh (tag ingest/full_refresh=true) to find the deleted keys"
            )
        yield from _scan_keys(
            context, table, rules, label, getattr(context.resources, resource_key), writer
        )
        return
    full_refresh = _tagged(context, FULL_REFRESH_TAG)
    stored = None if full_refresh else stored_cursor(context.instance, asset_key)
    feed, cursor_column = read_spec(table)
    since = read_from(stored, table.lookback) if cursor_column else None
    # a feed read from its start is still a feed: only a table read whole shows its deletes
    full_read = since is None and table.mode == "merge"
    context.log.info(
        f"{label}: reading "
        + (f"{feed.qualified_name}, " if feed is not table else "")
        + (
            "every row"
            if since is None
            else f"the changes past {cursor_column} {since}"
            if table.cdc is not None and table.cdc.reads_the_table
            else f"the rows with {cursor_column} >= {since}"
        )
    )
    started = time.monotonic()
    source = getattr(context.resources, resource_key)
    stream = source.read_changes(feed, since)
    with _spilled(stream.reader, label, context.log.info) as changes:
        if not delta:
            yield from _merge_on_databricks(
                context,
                table,
                rules,
                label,
                changes,
                stream,
                stored,
                full_read,
                source,
                writer,
                started,
            )
            return
        yield from _merge(
            context,
            table,
            rules,
            spec.timezone,
            label,
            changes,
            stream.path,
            stored,
            stream.position,
            cursor_column,
            full_read,
            source,
            writer,
            started,
        )


def _merge(
    context: AssetExecutionContext,
    table: DatasetSpec,
    rules: MergeRules,
    zone: str,
    label: str,
    changes: pa.Table,
    path: str,
    stored: str | None,
    position: str | None,
    cursor_column: str | None,
    full_read: bool,
    source: Any,
    writer: Any,
    started: float,
) -> Iterator[Any]:
    """Merge the rows read (memory-mapped from their spill file), report, and judge."""
    asset_key = context.assets_def.key
    changes = _events(table, rules, changes, label)
    context.log.info(
        f"{label}: read {changes.num_rows:,} changed row(s) through {path} in "
        f"{time.monotonic() - started:.1f} s; merging by {', '.join(rules.keys)}"
    )
    uri = writer.table_uri(asset_key.path)
    options = writer.storage_options or None
    audit, judged = _auditor(rules, asset_key)

    outcome = merge_changes(
        uri,
        options,
        changes,
        rules,
        full_read=full_read,
        run_id=context.run_id,
        label=f"table {'.'.join(asset_key.path)}",
        log=context.log.info,
        schema_policy=table.schema_policy,
        nanoseconds=table.timestamp_nanoseconds,
        zone=zone,
        audit=audit,
    )
    planned, blocking = judged[0]
    present = current_rows(planned, rules)
    if not outcome.accepted:
        yield from _refused(source, table, blocking, present, asset_key, label, outcome.version)
    # a feed that says where its read reached (at or past every row it sent: an empty table's
    # first read, a SQL Server CDC range's end) moves the cursor there, so that a quiet table's
    # cursor keeps up with the feed's cleanup
    cursor = position if position is not None else newest_cursor(changes, cursor_column, stored)
    delta = DeltaTable(uri, storage_options=options)
    context.log.info(
        f"{label}: {outcome.inserted:,} inserted, {outcome.updated:,} updated, "
        f"{outcome.deleted:,} deleted, {outcome.unchanged:,} unchanged; Delta version "
        f"{outcome.version}" + ("" if outcome.committed else " (nothing to commit)")
    )
    metadata: dict[str, Any] = {
        "dagster/row_count": present.num_rows,
        "dagster/column_schema": column_schema(pa.schema(delta.schema().to_arrow())),
        "dagster/table_name": ".".join(asset_key.path),
        "dagster/uri": MetadataValue.path(uri),
        "rows_read": outcome.rows_read,
        # what the MERGE wrote, and the read and the merge's time (as a replace reports them)
        "rows_written": outcome.inserted + outcome.updated + outcome.deleted,
        "seconds": round(time.monotonic() - started, 3),
        "rows_inserted": outcome.inserted,
        "rows_updated": outcome.updated,
        "rows_deleted": outcome.deleted,
        "rows_unchanged": outcome.unchanged,
        "delta_version": outcome.version,
        "cursor_before": stored or "(none: every row read)",
        "full_read": full_read,
    }
    if cursor is not None:
        metadata[CURSOR] = cursor
    yield MaterializeResult(asset_key=asset_key, metadata=metadata)
    if cursor is not None and outcome.committed:
        _release(context, source, table, cursor, label)
    yield from _judge(source, table, blocking, present, asset_key)


def _events(table: DatasetSpec, rules: MergeRules, changes: pa.Table, label: str) -> pa.Table:
    """A cdc table's feed rows as changes (operation -> delete flag, ignored operations out);
    a merge table's rows as they are."""
    if table.cdc is None:
        return changes
    changes = feed_changes(
        changes, table.cdc.operation, table.cdc.deletes_on, table.cdc.ignored, label
    )
    if rules.deletes == "ignore":
        # `deletes: ignore` on a feed: its delete events are left out (taken as upserts, a
        # key-only delete would blank the row)
        changes = changes.filter(pc.invert(pc.fill_null(changes.column(FEED_DELETE), False)))
    return changes


def _merge_on_databricks(
    context: AssetExecutionContext,
    table: DatasetSpec,
    rules: MergeRules,
    label: str,
    changes: pa.Table,
    stream: Any,
    stored: str | None,
    full_read: bool,
    source: Any,
    writer: Any,
    started: float,
) -> Iterator[Any]:
    """The changes applied by one MERGE on the Databricks SQL warehouse (SCD type 1). The rows
    are not read back here: the MERGE keeps one row per key by construction (the changes hold
    one per key, and Databricks refuses a MERGE whose source matches a row twice), and the
    counts are the warehouse's own."""
    asset_key = context.assets_def.key
    changes = _events(table, rules, changes, label)
    context.log.info(
        f"{label}: read {changes.num_rows:,} changed row(s) through {stream.path} in "
        f"{time.monotonic() - started:.1f} s; merging by {', '.join(rules.keys)} on Databricks"
    )
    outcome = writer.merge_changes(
        list(asset_key.path),
        changes,
        rules,
        run_id=context.run_id,
        label=f"table {writer.full_table_name(list(asset_key.path))}",
        log=context.log.info,
        full_read=full_read,
        nanoseconds=table.timestamp_nanoseconds,
    )
    cursor_column = read_spec(table)[1]
    cursor = (
        stream.position
        if stream.position is not None
        else newest_cursor(changes, cursor_column, stored)
    )
    counts = {
        "rows_inserted": outcome.inserted,
        "rows_updated": outcome.updated,
        "rows_deleted": outcome.deleted,
    }
    known = {name: value for name, value in counts.items() if value is not None}
    context.log.info(
        f"{label}: "
        + (
            ", ".join(f"{value:,} {name.removeprefix('rows_')}" for name, value in known.items())
            if known
            else "the warehouse reported no counts"
        )
        + ("" if outcome.committed else " (nothing to merge)")
    )
    metadata: dict[str, Any] = {
        "dagster/table_name": writer.full_table_name(list(asset_key.path)).replace("`", ""),
        "rows_read": outcome.rows_read,
        "seconds": round(time.monotonic() - started, 3),
        **known,
        "cursor_before": stored or "(none: every row read)",
        "full_read": full_read,
    }
    if len(known) == len(counts):
        metadata["rows_written"] = sum(known.values())
    if cursor is not None:
        metadata[CURSOR] = cursor
    yield MaterializeResult(asset_key=asset_key, metadata=metadata)
    if cursor is not None and outcome.committed:
        _release(context, source, table, cursor, label)


def _tagged(context: AssetExecutionContext, tag: str) -> bool:
    return context.run.tags.get(tag, "").lower() in ("1", "true", "yes")


def _auditor(
    rules: MergeRules, asset_key: AssetKey
) -> tuple[Callable[[pa.Table], bool], list[tuple[pa.Table, list[AssetCheckResult]]]]:
    """The audit a merge runs before its commit, and where it keeps the last attempt's planned
    table and blocking results."""
    judged: list[tuple[pa.Table, list[AssetCheckResult]]] = []

    def audit(planned: pa.Table) -> bool:
        """The blocking checks on the table as the MERGE would leave it (each attempt's)."""
        judged[:] = [(planned, _blocking(planned, rules, asset_key))]
        return all(result.passed for result in judged[0][1])

    return audit, judged


def _refused(
    source: Any,
    table: DatasetSpec,
    blocking: list[AssetCheckResult],
    present: pa.Table,
    asset_key: AssetKey,
    label: str,
    version: int,
) -> Iterator[AssetCheckResult]:
    """The checks' results of a MERGE the audit refused, then the failure that says why."""
    yield from _judge(source, table, blocking, present, asset_key)
    failed = [r for r in blocking if not r.passed]
    raise AuditFailedError(
        f"{label}: nothing was committed, the table is unchanged (Delta version {version}): "
        + "; ".join(f"{r.check_name} failed ({r.description})" for r in failed)
        + ". The changes read would leave the table so; find why the source holds them "
        "(e.g. a primary key that is not unique at the source), fix it and re-run."
    )


def _scan_keys(
    context: AssetExecutionContext,
    table: DatasetSpec,
    rules: MergeRules,
    label: str,
    source: Any,
    writer: Any,
) -> Iterator[Any]:
    """A key scan (`ingest/key_scan=true`, or the table's `key_scan_cron`): the source's keys
    alone, compared with the table's current keys in bounded memory; the keys gone from the
    source removed (or flagged, or closed) in one MERGE. The cursor is carried over unchanged."""
    asset_key = context.assets_def.key
    if rules.deletes == "ignore":
        raise IngestionError(
            f"{label}: a key scan finds deleted keys, but the table's deletes are `ignore`: "
            "set `deletes: soft` or `hard` in the project file"
        )
    uri = writer.table_uri(asset_key.path)
    options = writer.storage_options or None
    delta = open_table(uri, options)
    if delta is None or delta.version() < 1:
        raise IngestionError(
            f"{label}: the table has not been loaded yet, so a key scan has nothing to compare; "
            "materialize it once without the tag ingest/key_scan"
        )
    stored = stored_cursor(context.instance, asset_key)
    started = last = time.monotonic()
    context.log.info(f"{label}: scanning the source's keys ({', '.join(rules.keys)})")

    def progress(side: str, rows: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            context.log.info(f"{label}: {rows:,} keys of the {side} read in {now - started:.0f} s")

    stream = source.read_keys(table)
    scan = gone_keys(
        stream.reader, held_keys(delta, rules), list(rules.keys), key_schema(delta, rules), progress
    )
    context.log.info(
        f"{label}: {scan.source_keys:,} source keys (through {stream.path}) and "
        f"{scan.table_keys:,} current keys of the table compared in "
        f"{time.monotonic() - started:.1f} s: {scan.gone.num_rows:,} gone from the source"
    )
    if (
        scan.gone.num_rows > MASS_DELETE_ROWS
        and 2 * scan.gone.num_rows > scan.table_keys
        and not _tagged(context, ALLOW_MASS_DELETE_TAG)
    ):
        raise IngestionError(
            f"{label}: the source returned {scan.source_keys:,} keys and the table holds "
            f"{scan.table_keys:,}: the scan would remove {scan.gone.num_rows:,} rows, more than "
            "half of the table. Nothing was written. Check that the source table is the one "
            "meant and is readable in full; if it did lose those rows, run the scan again with "
            f"the tag {ALLOW_MASS_DELETE_TAG}=true."
        )
    audit, judged = _auditor(rules, asset_key)
    outcome = remove_keys(
        uri,
        options,
        scan.gone,
        rules,
        run_id=context.run_id,
        label=f"table {'.'.join(asset_key.path)}",
        log=context.log.info,
        audit=audit,
    )
    planned, blocking = judged[0]
    present = current_rows(planned, rules)
    if not outcome.accepted:
        yield from _refused(source, table, blocking, present, asset_key, label, outcome.version)
    metadata: dict[str, Any] = {
        "dagster/row_count": present.num_rows,
        "dagster/table_name": ".".join(asset_key.path),
        "dagster/uri": MetadataValue.path(uri),
        "key_scan": True,
        "source_keys": scan.source_keys,
        "table_keys": scan.table_keys,
        "rows_deleted": outcome.deleted,
        "rows_written": outcome.deleted,
        "delta_version": outcome.version,
        "seconds": round(time.monotonic() - started, 3),
        "sample_gone_keys": MetadataValue.json(
            [{k: str(v) for k, v in row.items()} for row in scan.gone.slice(0, 10).to_pylist()]
        ),
    }
    if stored is not None:
        # the incremental runs go on from where they were
        metadata[CURSOR] = stored
    yield MaterializeResult(asset_key=asset_key, metadata=metadata)
    yield from _judge(source, table, blocking, present, asset_key)


def _release(
    context: AssetExecutionContext, source: Any, table: DatasetSpec, cursor: str, label: str
) -> None:
    """Tell the source the changes up to `cursor` are in the lake (a replication slot then
    lets them go). A failure only keeps them longer: the next run releases them."""
    try:
        source.changes_applied(table, cursor)
    except (IngestionError, sa.exc.SQLAlchemyError) as error:
        context.log.warning(
            f"{label}: the source still holds the changes up to {cursor} for this table "
            f"({error}); the next run lets them go"
        )


@contextlib.contextmanager
def _spilled(
    reader: pa.RecordBatchReader, label: str, log: Callable[[str], None]
) -> Iterator[pa.Table]:
    """Every batch of the read, streamed into a local Arrow file and handed back memory-mapped
    (the read never sits in memory whole; a re-plan after a commit conflict reads it again);
    a progress line at least every PROGRESS_SECONDS. The file is removed afterwards."""
    rows = 0
    started = last = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ingestion-merge-") as folder:
        path = f"{folder}/changes.arrow"
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, reader.schema) as spill:
            for batch in reader:
                spill.write_batch(batch)
                rows += batch.num_rows
                now = time.monotonic()
                if now - last >= PROGRESS_SECONDS:
                    last = now
                    log(f"{label}: {rows:,} rows read in {now - started:.0f} s")
        with pa.memory_map(path) as mapped:
            yield pa.ipc.open_file(mapped).read_all()


def read_spec(table: DatasetSpec) -> tuple[DatasetSpec, str | None]:
    """What a run reads and its cursor column: the table itself (merge), or its feed (cdc)."""
    feed = table.cdc
    if table.mode != "cdc" or feed is None:
        return table, table.cursor_column
    cursor = feed.sequence[0] if feed.sequence else None
    if feed.reads_the_table or feed.is_the_dataset:
        # the source reads the feed with the table (its changes joined to it, or its slot), or
        # the dataset is the feed (a REST stream of events)
        return table, cursor
    schema, name = feed.feed_table(
        getattr(table, "schema_name", None), str(getattr(table, "name", ""))
    )
    spec = table.model_copy(
        update={
            "schema_name": schema,
            "name": name,
            "columns": None,
            "cursor_column": cursor,
            "delete_column": None,
        }
    )
    return spec, cursor


def _blocking(planned: pa.Table, rules: MergeRules, asset_key: AssetKey) -> list[AssetCheckResult]:
    """The blocking checks' results on the table as planned: each key held by one current row;
    with history, each key's versions one unbroken line."""

    def verdict(name: str, found: pa.Table, counted: str, problem: str) -> AssetCheckResult:
        return AssetCheckResult(
            asset_key=asset_key,
            check_name=name,
            passed=found.num_rows == 0,
            severity=AssetCheckSeverity.ERROR,
            description=f"{found.num_rows:,} key(s) {problem}" if found.num_rows else None,
            metadata={
                counted: found.num_rows,
                "sample": MetadataValue.json(
                    [{k: str(v) for k, v in row.items()} for row in found.slice(0, 10).to_pylist()]
                ),
            },
        )

    duplicates = duplicate_keys(current_rows(planned, rules), rules.keys)
    results = [
        verdict(KEYS_UNIQUE, duplicates, "duplicate_keys", "held by more than one current row")
    ]
    if rules.history:
        broken = overlapping_versions(planned, rules.keys)
        results.append(
            verdict(HISTORY_UNBROKEN, broken, "broken_versions", "whose versions overlap or break")
        )
    return results


def _judge(
    source: Any,
    table: DatasetSpec,
    blocking: list[AssetCheckResult],
    present: pa.Table,
    asset_key: AssetKey,
) -> Iterator[AssetCheckResult]:
    """Every check's result on the table as planned (and committed, when the audit passed):
    the blocking ones as the audit found them, and the count of current rows against the
    source's."""
    yield blocking[0]
    try:
        # a stream of events holds no rows to count against the table's
        events = table.cdc is not None and table.cdc.is_the_dataset
        counted, problem = (None if events else source.count(table, None)), ""
    except IngestionError as error:
        # the commit stands: a source that cannot be counted is this check's finding
        counted, problem = None, str(error)
    yield AssetCheckResult(
        asset_key=asset_key,
        check_name=MATCHES_SOURCE,
        passed=not problem and (counted is None or counted == present.num_rows),
        severity=AssetCheckSeverity.WARN,
        description=problem or None,
        metadata={
            "source_rows": counted if counted is not None else -1,
            "current_rows": present.num_rows,
        },
    )
    yield from blocking[1:]
