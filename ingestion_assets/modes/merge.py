"""How changed rows meet a table kept by primary key: the latest change of each key, then either
SCD type 1 (upsert in place; deletes ignored, soft or hard) or SCD type 2 (a new version per change
of the tracked columns, closed versions kept with their validity).

Pure Arrow, no Delta and no Dagster: `plan_scd1` and `plan_scd2` turn (changes, the current rows
of their keys) into one MERGE source whose `_merge_action` column says what each row does to the
table; `lake/merge.py` commits it with one delta-rs MERGE on the row identity (the key, plus
`_valid_from` for history). Ties in the sequence go to the change that arrived last, so a batch
that holds a key twice lands it once.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from ingestion_assets.errors import IngestionError

# what a MERGE source row does: insert a new row or version, update the row it identifies, delete it
ACTION = "_merge_action"
INSERT, UPDATE, DELETE = "insert", "update", "delete"
DELETED = "_deleted"
DELETED_AT = "_deleted_at"
VALID_FROM = "_valid_from"
VALID_TO = "_valid_to"
IS_CURRENT = "_is_current"
HISTORY_COLUMNS = (VALID_FROM, VALID_TO, IS_CURRENT)
TIMESTAMP = pa.timestamp("us", "UTC")
_ARRIVAL = "__arrival"

Deletes = Literal["ignore", "soft", "hard"]


@dataclass(frozen=True)
class MergeRules:
    """How one table's changes are applied: its key, what orders two changes of one key, how a
    delete is marked and kept, and whether history is kept (tracked columns open a version)."""

    keys: tuple[str, ...]
    sequence: str | None = None
    deletes: Deletes = "ignore"
    delete_column: str | None = None
    history: bool = False
    tracked: tuple[str, ...] | None = None
    # columns the table never takes from the changes (a change feed's operation, its sequence)
    except_columns: tuple[str, ...] = ()
    # columns that order two changes of one key with the same sequence (a feed's seqval)
    order_by: tuple[str, ...] = ()
    # with history: every change a version (a change feed), not only a run's latest per key
    every_change: bool = False

    @property
    def identity(self) -> tuple[str, ...]:
        """The columns that name one row of the table: the key, and the version's start."""
        return (*self.keys, VALID_FROM) if self.history else self.keys

    @property
    def keeps_deleted(self) -> bool:
        """Whether the table keeps a `_deleted` flag (soft deletes, or history)."""
        return self.deletes == "soft" or (self.history and self.deletes != "ignore")


@dataclass
class MergePlan:
    """One MERGE's source rows and what they will do, counted before the commit."""

    source: pa.Table
    inserted: int
    updated: int
    deleted: int
    unchanged: int


def latest_changes(changes: pa.Table, rules: MergeRules, where: str) -> pa.Table:
    """One row per key: the highest sequence, the last to arrive among equal sequences."""
    named = (*rules.keys, rules.sequence, *rules.order_by)
    missing = [name for name in named if name and name not in changes.schema.names]
    if missing:
        raise IngestionError(
            f"{where}: column(s) {', '.join(missing)} of the merge rules are not among the rows "
            f"read ({', '.join(changes.schema.names)}); fix `primary_key` or the cursor column"
        )
    for key in rules.keys:
        nulls = changes.column(key).null_count
        if nulls:
            raise IngestionError(
                f"{where}: {nulls} changed row(s) have no value in key column {key}; a merge "
                "table needs a key in every row: fix the source or `primary_key`"
            )
    if changes.num_rows <= 1:
        return changes
    numbered = changes.append_column(_ARRIVAL, _positions(changes.num_rows))
    order = [(key, "ascending", "at_start") for key in rules.keys]
    if rules.sequence:
        # a change without a sequence is older than any with one
        order.append((rules.sequence, "ascending", "at_start"))
    order += [(name, "ascending", "at_start") for name in rules.order_by]
    order.append((_ARRIVAL, "ascending", "at_start"))
    ordered = numbered.take(pc.sort_indices(numbered, sort_keys=order))
    # the last row of each run of equal keys
    last = pc.invert(_same_key_as_next(ordered, rules.keys))
    return ordered.filter(last).drop_columns([_ARRIVAL])


def _same_key_as_next(table: pa.Table, keys: Sequence[str]) -> pa.Array:
    """For each row of a table sorted by `keys`, whether the next row has the same key."""
    same: pa.Array | None = None
    for key in keys:
        column = table.column(key).combine_chunks()
        equal = pc.fill_null(pc.equal(column.slice(0, len(column) - 1), column.slice(1)), False)
        same = equal if same is None else pc.and_(same, equal)
    assert same is not None
    return pa.concat_arrays([same, pa.array([False])])


FEED_DELETE = "__feed_delete"


def feed_changes(
    events: pa.Table,
    operation: str,
    deletes_on: Sequence[str],
    ignored: Sequence[str],
    where: str,
) -> pa.Table:
    """A change feed's events as changes: the `ignored` operations left out, and a flag column
    (FEED_DELETE) true where the operation is one of `deletes_on` (compared as text)."""
    if operation not in events.schema.names:
        raise IngestionError(
            f"{where}: the feed has no operation column {operation}; set `cdc.operation_column` "
            f"(the feed has {', '.join(events.schema.names)})"
        )
    text = pc.cast(events.column(operation), pa.string())
    if ignored:
        events = events.filter(
            pc.invert(pc.fill_null(pc.is_in(text, pa.array(list(ignored))), False))
        )
        text = pc.cast(events.column(operation), pa.string())
    flags = pc.fill_null(pc.is_in(text, pa.array(list(deletes_on), pa.string())), False)
    return events.append_column(FEED_DELETE, flags)


def delete_flags(changes: pa.Table, rules: MergeRules, where: str) -> pa.Array:
    """Which changes are deletes: the delete column true (or non-zero); none without one."""
    if rules.delete_column is None or rules.deletes == "ignore":
        return constant(False, pa.bool_(), changes.num_rows)
    if rules.delete_column not in changes.schema.names:
        raise IngestionError(
            f"{where}: the delete column {rules.delete_column} is not among the rows read; fix "
            "`delete_column`"
        )
    column = changes.column(rules.delete_column).combine_chunks()
    if pa.types.is_boolean(column.type):
        flags = column
    elif pa.types.is_integer(column.type) or pa.types.is_decimal(column.type):
        flags = pc.not_equal(column, pa.scalar(0, column.type))
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        flags = pc.is_in(
            pc.utf8_lower(column), pa.array(["1", "true", "t", "y", "yes", "d", "deleted"])
        )
    else:
        raise IngestionError(
            f"{where}: the delete column {rules.delete_column} is {column.type}; a delete flag "
            "must be boolean, an integer (non-zero: deleted) or text (true/yes/1/y/d)"
        )
    return pc.fill_null(flags, False)


def target_schema(incoming: pa.Schema, rules: MergeRules) -> pa.Schema:
    """The table's columns: the incoming ones (less `except_columns`), then the delete flag and
    the validity of history where the rules keep them."""
    fields = [f for f in incoming if f.name not in rules.except_columns]
    if rules.keeps_deleted:
        fields += [pa.field(DELETED, pa.bool_()), pa.field(DELETED_AT, TIMESTAMP)]
    if rules.history:
        fields += [
            pa.field(VALID_FROM, TIMESTAMP),
            pa.field(VALID_TO, TIMESTAMP),
            pa.field(IS_CURRENT, pa.bool_()),
        ]
    return pa.schema(fields)


def compared_columns(schema: pa.Schema, rules: MergeRules, lineage: Sequence[str]) -> list[str]:
    """The columns whose change makes a row updated (not the key, lineage or the rules' own)."""
    own = {*rules.keys, *lineage, *rules.except_columns, DELETED, DELETED_AT, *HISTORY_COLUMNS}
    return [name for name in schema.names if name not in own]


def plan_scd1(
    changes: pa.Table,
    current: pa.Table,
    rules: MergeRules,
    now: datetime.datetime,
    lineage: Sequence[str],
    where: str,
) -> MergePlan:
    """Upserts and deletes of the latest change per key against the `current` rows of their keys
    (every column of the table); unchanged rows are left out of the MERGE."""
    latest = latest_changes(changes, rules, where)
    deletes = delete_flags(latest, rules, where)
    existing = _matches(latest, current, rules.keys)
    schema = target_schema(latest.schema, rules)
    rows = _conform(latest, schema)
    compared = compared_columns(schema, rules, lineage)
    if rules.keeps_deleted:
        rows = _kept_on_delete(rows, current, deletes, rules, compared)
        rows = _set(rows, DELETED, deletes)
        rows = _set(
            rows,
            DELETED_AT,
            pc.if_else(deletes, pa.scalar(now, TIMESTAMP), pa.scalar(None, TIMESTAMP)),
        )
    differs = _differs(
        rows, current, rules.keys, [*compared, *([DELETED] if rules.keeps_deleted else [])]
    )
    hard = pc.and_(deletes, pa.scalar(rules.deletes == "hard"))
    actions = pc.if_else(
        hard,
        pa.scalar(DELETE),
        pc.if_else(existing, pa.scalar(UPDATE), pa.scalar(INSERT)),
    )
    # a hard delete of a key the table does not hold, and an update that changes nothing, do nothing
    useful = pc.if_else(hard, existing, pc.or_(pc.invert(existing), differs))
    # a soft delete of a key the table does not hold, or one deleted already: nothing either
    if rules.deletes == "soft":
        useful = pc.and_(useful, pc.or_(existing, pc.invert(deletes)))
    # a change older than the row the table holds arrived late: the table keeps the newer row
    useful = pc.and_(useful, pc.invert(_older_than_current(rows, current, rules)))
    planned = rows.append_column(ACTION, actions).filter(useful)
    counts = pc.value_counts(planned.column(ACTION)).to_pylist() if planned.num_rows else []
    by_action = {item["values"]: item["counts"] for item in counts}
    # a soft delete is an update of the row's flag, counted as the delete it is
    soft = int(pc.sum(pc.and_(useful, deletes)).as_py() or 0) if rules.deletes == "soft" else 0
    return MergePlan(
        planned,
        inserted=by_action.get(INSERT, 0),
        updated=by_action.get(UPDATE, 0) - soft,
        deleted=by_action.get(DELETE, 0) + soft,
        unchanged=latest.num_rows - sum(by_action.get(a, 0) for a in (INSERT, UPDATE, DELETE)),
    )


def plan_scd2(
    changes: pa.Table,
    current: pa.Table,
    rules: MergeRules,
    now: datetime.datetime,
    lineage: Sequence[str],
    where: str,
    zone: str = "UTC",
) -> MergePlan:
    """Versions of the latest change per key against the `current` versions of their keys: a
    change in a tracked column closes the current version and opens one; a change elsewhere
    updates the current version in place; a delete closes it (flagged `_deleted` unless deletes
    are ignored). A change older than the current version's start is stale and left out."""
    latest = latest_changes(changes, rules, where)
    deletes = delete_flags(latest, rules, where)
    schema = target_schema(latest.schema, rules)
    starts = _version_starts(latest, rules, now, zone)
    rows = _conform(latest, schema)
    rows = _set(rows, VALID_FROM, starts)
    rows = _set(rows, VALID_TO, pa.nulls(rows.num_rows, TIMESTAMP))
    rows = _set(rows, IS_CURRENT, constant(True, pa.bool_(), rows.num_rows))
    if rules.keeps_deleted:
        rows = _set(rows, DELETED, constant(False, pa.bool_(), rows.num_rows))
        rows = _set(rows, DELETED_AT, pa.nulls(rows.num_rows, TIMESTAMP))
    compared = compared_columns(schema, rules, lineage)
    tracked = list(rules.tracked) if rules.tracked is not None else compared
    unknown = [name for name in tracked if name not in schema.names]
    if unknown:
        raise IngestionError(
            f"{where}: tracked column(s) {', '.join(unknown)} are not among the rows read; fix "
            "`tracked_columns`"
        )
    untracked = [name for name in compared if name not in tracked]
    now_open = (
        current.filter(pc.equal(current.column(IS_CURRENT), True)) if current.num_rows else current
    )
    joined = _joined_current(rows, now_open, rules.keys)
    has_current = pc.is_valid(joined.column(_current(VALID_FROM)))
    # stale: older than the current version's start, or than the end of a closed (deleted) one
    stale = pc.or_(
        pc.fill_null(pc.less_equal(starts, joined.column(_current(VALID_FROM))), False),
        pc.fill_null(pc.less(starts, _last_ends(rows, current, rules.keys)), False),
    )
    tracked_change = _columns_differ(joined, tracked)
    untracked_change = _columns_differ(joined, untracked)
    is_delete = pc.and_(deletes, pa.scalar(rules.deletes != "ignore"))

    opened = pc.and_(
        pc.invert(stale),
        pc.and_(pc.invert(is_delete), pc.or_(pc.invert(has_current), tracked_change)),
    )
    closed = pc.and_(pc.and_(has_current, pc.invert(stale)), pc.or_(is_delete, tracked_change))
    in_place = pc.and_(
        pc.and_(has_current, pc.invert(stale)),
        pc.and_(pc.invert(pc.or_(is_delete, tracked_change)), untracked_change),
    )
    pieces = []
    new_versions = rows.filter(opened)
    new_versions = new_versions.append_column(
        ACTION, constant(INSERT, pa.string(), new_versions.num_rows)
    )
    pieces.append(new_versions)
    # the closing of a current version: its own values, its validity ended where the change begins
    closing = _current_rows(joined.filter(closed), schema)
    ends = starts.filter(closed)
    closing = _set(closing, VALID_TO, ends)
    closing = _set(closing, IS_CURRENT, constant(False, pa.bool_(), closing.num_rows))
    if rules.keeps_deleted:
        deleted_now = is_delete.filter(closed)
        closing = _set(closing, DELETED, deleted_now)
        closing = _set(
            closing,
            DELETED_AT,
            pc.if_else(deleted_now, pa.scalar(now, TIMESTAMP), pa.scalar(None, TIMESTAMP)),
        )
    pieces.append(closing.append_column(ACTION, constant(UPDATE, pa.string(), closing.num_rows)))
    # a change in untracked columns only: the current version takes the new values, keeps its start
    updating = rows.filter(in_place)
    updating = _set(updating, VALID_FROM, joined.filter(in_place).column(_current(VALID_FROM)))
    pieces.append(updating.append_column(ACTION, constant(UPDATE, pa.string(), updating.num_rows)))
    planned = pa.concat_tables([piece.cast(pieces[0].schema) for piece in pieces])
    inserted = new_versions.num_rows
    return MergePlan(
        planned,
        inserted=inserted,
        updated=updating.num_rows + int(pc.sum(pc.and_(closed, pc.invert(is_delete))).as_py() or 0),
        deleted=int(pc.sum(pc.and_(closed, is_delete)).as_py() or 0),
        unchanged=latest.num_rows
        - int(pc.sum(pc.or_(pc.or_(opened, closed), in_place)).as_py() or 0),
    )


def _kept_on_delete(
    rows: pa.Table,
    current: pa.Table,
    deletes: pa.Array,
    rules: MergeRules,
    compared: Sequence[str],
) -> pa.Table:
    """`rows` with each delete's data columns taken from the row of its key the table holds: a
    soft delete only flags the row, and a feed's delete may carry the key alone (the rest null).
    Its sequence and delete column stay its own, so a change older than the delete stays late."""
    kept = [name for name in compared if name not in (rules.sequence, rules.delete_column)]
    if not kept or current.num_rows == 0:
        return rows
    joined = _joined_current(rows.select([*rules.keys, *kept]), current, rules.keys)
    for name in kept:
        held = joined.column(_current(name)).cast(rows.schema.field(name).type)
        rows = _set(rows, name, pc.if_else(deletes, held, rows.column(name)))
    return rows


def _older_than_current(rows: pa.Table, current: pa.Table, rules: MergeRules) -> pa.Array:
    """Per change, whether the table's row of its key has a higher sequence."""
    sequence = rules.sequence
    if sequence is None or current.num_rows == 0 or sequence not in current.schema.names:
        return constant(False, pa.bool_(), rows.num_rows)
    names = [*rules.keys, sequence]
    joined = _joined_current(rows.select(names), current.select(names), rules.keys)
    newer = pc.greater(joined.column(_current(sequence)), joined.column(sequence))
    return pc.fill_null(newer, False)


def _last_ends(rows: pa.Table, versions: pa.Table, keys: Sequence[str]) -> pa.Array:
    """Per row, the latest end of its key's closed versions (null where none is closed)."""
    if versions.num_rows == 0:
        return pa.nulls(rows.num_rows, TIMESTAMP)
    closed = versions.filter(pc.is_valid(versions.column(VALID_TO)))
    ends = closed.group_by(list(keys), use_threads=False).aggregate([(VALID_TO, "max")])
    ends = ends.rename_columns([*keys, VALID_TO])
    probe = rows.select(list(keys)).append_column(VALID_TO, pa.nulls(rows.num_rows, TIMESTAMP))
    return _joined_current(probe, ends, keys).column(_current(VALID_TO))


def _version_starts(
    latest: pa.Table, rules: MergeRules, now: datetime.datetime, zone: str
) -> pa.Array:
    """When each change's version begins: its sequence when that is a date or a time (a naive
    time is in the source's zone), otherwise the run's time."""
    if rules.sequence is not None:
        column = latest.column(rules.sequence).combine_chunks()
        if pa.types.is_timestamp(column.type):
            if column.type.tz is None:
                column = pc.assume_timezone(
                    column, zone, ambiguous="earliest", nonexistent="earliest"
                )
            return pc.fill_null(column.cast(TIMESTAMP), pa.scalar(now, TIMESTAMP))
        if pa.types.is_date(column.type):
            stamped = pc.assume_timezone(
                column.cast(pa.timestamp("us")), zone, ambiguous="earliest", nonexistent="earliest"
            )
            return pc.fill_null(stamped.cast(TIMESTAMP), pa.scalar(now, TIMESTAMP))
    return constant(now, TIMESTAMP, latest.num_rows)


def _current(name: str) -> str:
    return f"__current_{name}"


def _joined_current(rows: pa.Table, current: pa.Table, keys: Sequence[str]) -> pa.Table:
    """`rows` with the current version of each key beside it (columns `__current_<name>`; null
    where the key has none), in the order of `rows`."""
    numbered = rows.append_column(_ARRIVAL, _positions(rows.num_rows))
    if current.num_rows == 0:
        for field in rows.schema:
            numbered = numbered.append_column(
                _current(field.name), pa.nulls(rows.num_rows, field.type)
            )
        return numbered.drop_columns([_ARRIVAL])
    renamed = current.select([name for name in rows.schema.names if name in current.schema.names])
    renamed = renamed.rename_columns(
        [name if name in keys else _current(name) for name in renamed.schema.names]
    )
    for key in keys:
        renamed = renamed.append_column(_current(key), renamed.column(key))
    joined = numbered.join(renamed, list(keys), join_type="left outer", use_threads=False)
    joined = joined.take(pc.sort_indices(joined, sort_keys=[(_ARRIVAL, "ascending")]))
    for field in rows.schema:
        if _current(field.name) not in joined.schema.names:
            joined = joined.append_column(
                _current(field.name), pa.nulls(joined.num_rows, field.type)
            )
    return joined.drop_columns([_ARRIVAL])


def _current_rows(joined: pa.Table, schema: pa.Schema) -> pa.Table:
    """The current versions carried beside the changes, under the table's own names."""
    return pa.table(
        {field.name: joined.column(_current(field.name)).cast(field.type) for field in schema},
        schema=schema,
    )


def _columns_differ(joined: pa.Table, names: Sequence[str]) -> pa.Array:
    """Per row, whether any of `names` differs from the current version's (nulls compared)."""
    differs = constant(False, pa.bool_(), joined.num_rows)
    for name in names:
        differs = pc.or_(differs, _distinct(joined.column(name), joined.column(_current(name))))
    return differs


def _distinct(left: pa.ChunkedArray | pa.Array, right: pa.ChunkedArray | pa.Array) -> pa.Array:
    """`left IS DISTINCT FROM right`, element by element."""
    if left.type != right.type:
        right = right.cast(left.type)
    both_null = pc.and_(pc.is_null(left), pc.is_null(right))
    equal = pc.fill_null(pc.equal(left, right), False)
    return pc.invert(pc.or_(both_null, equal))


def _matches(rows: pa.Table, current: pa.Table, keys: Sequence[str]) -> pa.Array:
    """Per row, whether `current` holds its key."""
    if current.num_rows == 0:
        return constant(False, pa.bool_(), rows.num_rows)
    joined = _joined_current(rows.select(list(keys)), current.select(list(keys)), keys)
    return pc.is_valid(joined.column(_current(keys[0])))


def _differs(
    rows: pa.Table, current: pa.Table, keys: Sequence[str], names: Sequence[str]
) -> pa.Array:
    """Per row, whether its values differ from the current row of its key (true for a new key)."""
    present = [name for name in names if name in current.schema.names]
    joined = _joined_current(
        rows.select([*keys, *present]), current.select([*keys, *present]), keys
    )
    missing_columns = [name for name in names if name not in current.schema.names]
    differs = _columns_differ(joined, present)
    if missing_columns:
        differs = constant(True, pa.bool_(), rows.num_rows)
    return pc.or_(differs, pc.is_null(joined.column(_current(keys[0]))))


def constant(value: object, kind: pa.DataType, count: int) -> pa.Array:
    """`count` copies of one value, built by Arrow (no Python list of them)."""
    return pa.repeat(pa.scalar(value, kind), count)


def _positions(count: int) -> pa.Array:
    """0, 1, ... count - 1, built by Arrow."""
    return pc.subtract(pc.cumulative_sum(constant(1, pa.int64(), count)), 1)


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """`rows` with the columns of `schema` (missing ones null), in its order and types."""
    columns = {}
    for field in schema:
        if field.name in rows.schema.names:
            columns[field.name] = rows.column(field.name).cast(field.type)
        else:
            columns[field.name] = pa.nulls(rows.num_rows, field.type)
    return pa.table(columns, schema=schema)


def _set(rows: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    index = rows.schema.get_field_index(name)
    field = rows.schema.field(index)
    return rows.set_column(index, field, values.cast(field.type))


def deletions(keys: pa.Table, schema: pa.Schema) -> pa.Table:
    """MERGE rows that remove the rows of `keys` (hard deletes of keys gone from the source)."""
    rows = _conform(keys, pa.schema([f for f in schema if f.name != ACTION]))
    return rows.append_column(ACTION, constant(DELETE, pa.string(), keys.num_rows))


def closings(
    held: pa.Table, rules: MergeRules, now: datetime.datetime, schema: pa.Schema
) -> pa.Table:
    """MERGE rows that mark the `held` rows of keys gone from the source deleted (`_deleted`,
    `_deleted_at` now) and, with history, close their current versions (`_valid_to` now)."""
    table_schema = pa.schema([f for f in schema if f.name != ACTION])
    rows = _conform(held, table_schema)
    count = rows.num_rows
    if rules.keeps_deleted:
        rows = _set(rows, DELETED, constant(True, pa.bool_(), count))
        rows = _set(rows, DELETED_AT, constant(now, TIMESTAMP, count))
    if rules.history:
        rows = _set(rows, VALID_TO, constant(now, TIMESTAMP, count))
        rows = _set(rows, IS_CURRENT, constant(False, pa.bool_(), count))
    return rows.append_column(ACTION, constant(UPDATE, pa.string(), count))


def current_rows(table: pa.Table, rules: MergeRules) -> pa.Table:
    """The rows a reader of the table takes as the source's present: current versions, not
    deleted."""
    keep = constant(True, pa.bool_(), table.num_rows)
    if rules.history and IS_CURRENT in table.schema.names:
        keep = pc.and_(keep, pc.fill_null(table.column(IS_CURRENT), False))
    if rules.keeps_deleted and DELETED in table.schema.names:
        keep = pc.and_(keep, pc.invert(pc.fill_null(table.column(DELETED), False)))
    return table.filter(keep)


def duplicate_keys(rows: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The keys held by more than one of `rows`, with how many rows hold each (`rows`)."""
    counted = (
        rows.select(list(keys))
        .group_by(list(keys), use_threads=False)
        .aggregate([([], "count_all")])
    )
    return counted.filter(pc.greater(counted.column("count_all"), 1)).rename_columns(
        [*keys, "rows"]
    )


def overlapping_versions(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The keys whose versions are not one unbroken line: a version that ends after the next one
    begins, or before it unless it was deleted; one that ends before it begins; an open or
    current version before the last; a last version open but not current, or closed but current."""
    if table.num_rows == 0:
        return table.select(list(keys))
    names = [
        *keys,
        VALID_FROM,
        VALID_TO,
        IS_CURRENT,
        *([DELETED] if DELETED in table.schema.names else []),
    ]
    ordered = table.select(names).take(
        pc.sort_indices(
            table,
            sort_keys=[*((key, "ascending") for key in keys), (VALID_FROM, "ascending")],
        )
    )
    same_next = _same_key_as_next(ordered, keys)
    starts = ordered.column(VALID_FROM).combine_chunks()
    ends = ordered.column(VALID_TO).combine_chunks()
    current = pc.fill_null(ordered.column(IS_CURRENT).combine_chunks(), False)
    next_starts = pa.concat_arrays([starts.slice(1), pa.nulls(1, starts.type)])
    # a version followed by one of its key ends exactly where that one begins; a deleted one
    # may leave a gap (the key was absent), never an overlap
    joined_up = pc.fill_null(pc.equal(ends, next_starts), False)
    if DELETED in ordered.schema.names:
        deleted = pc.fill_null(ordered.column(DELETED).combine_chunks(), False)
        gap = pc.fill_null(pc.less(ends, next_starts), False)
        joined_up = pc.or_(joined_up, pc.and_(deleted, gap))
    broken = pc.and_(same_next, pc.invert(joined_up))
    # it ends after it begins, and only the last version of a key is open and current
    backwards = pc.fill_null(pc.less_equal(ends, starts), False)
    open_inside = pc.and_(same_next, pc.or_(pc.is_null(ends), current))
    last_mismatch = pc.and_(pc.invert(same_next), pc.xor(pc.is_null(ends), current))
    bad = pc.or_(pc.or_(broken, backwards), pc.or_(open_inside, last_mismatch))
    return pa.table({key: ordered.column(key) for key in keys}).filter(bad)


def plan_scd2_feed(
    changes: pa.Table,
    current: pa.Table,
    rules: MergeRules,
    now: datetime.datetime,
    lineage: Sequence[str],
    where: str,
    zone: str = "UTC",
) -> MergePlan:
    """A change feed kept as history: every change a version of its own, not only a run's
    latest per key. The changes go in rounds (the n-th change of each key, in sequence order),
    each planned on what the rounds before it left; the MERGE then takes each row's last state."""
    latest_changes(changes.slice(0, 0), rules, where)  # the same checks of the rules' columns
    if changes.num_rows == 0:
        return plan_scd2(changes, current, rules, now, lineage, where, zone)
    numbered = changes.append_column(_ARRIVAL, _positions(changes.num_rows))
    order = [(key, "ascending", "at_start") for key in rules.keys]
    order += [
        (name, "ascending", "at_start")
        for name in (rules.sequence, *rules.order_by, _ARRIVAL)
        if name is not None
    ]
    ordered = numbered.take(pc.sort_indices(numbered, sort_keys=order))
    rounds = _rank_within_key(ordered, rules.keys)
    state = current
    pieces: list[pa.Table] = []
    totals = MergePlan(pa.table({}), 0, 0, 0, 0)
    for number in range(int(pc.max(rounds).as_py()) + 1):
        batch = ordered.filter(pc.equal(rounds, number)).drop_columns([_ARRIVAL])
        plan = plan_scd2(batch, state, rules, now, lineage, where, zone)
        totals.inserted += plan.inserted
        totals.updated += plan.updated
        totals.deleted += plan.deleted
        totals.unchanged += plan.unchanged
        if plan.source.num_rows:
            pieces.append(plan.source)
            state = _with_versions(state, plan.source, rules.identity)
    if not pieces:
        return plan_scd2(changes.slice(0, 0), current, rules, now, lineage, where, zone)
    union = pa.concat_tables([piece.cast(pieces[0].schema) for piece in pieces])
    totals.source = _last_per_identity(union, rules.identity)
    return totals


def _rank_within_key(ordered: pa.Table, keys: Sequence[str]) -> pa.Array:
    """For a table sorted by `keys`, each row's position among the rows of its key (0, 1, ...):
    its own position less that of its key's first row."""
    starts = pa.concat_arrays(
        [
            pa.array([True]),
            pc.invert(_same_key_as_next(ordered, keys).slice(0, ordered.num_rows - 1)),
        ]
    )
    positions = _positions(ordered.num_rows)
    group = pc.subtract(pc.cumulative_sum(pc.cast(starts, pa.int64())), 1)
    first = positions.filter(starts)
    return pc.subtract(positions, pc.take(first, group))


def _with_versions(state: pa.Table, planned: pa.Table, identity: Sequence[str]) -> pa.Table:
    """The versions after a round: the planned rows replace the ones of their identity."""
    rows = planned.filter(pc.is_in(planned.column(ACTION), pa.array([INSERT, UPDATE])))
    rows = rows.drop_columns([ACTION])
    kept = _conform(state, rows.schema) if state.num_rows else rows.slice(0, 0)
    if kept.num_rows:
        kept = kept.join(
            rows.select(list(identity)), list(identity), join_type="left anti", use_threads=False
        )
    return pa.concat_tables([kept.cast(rows.schema), rows])


def _last_per_identity(rows: pa.Table, identity: Sequence[str]) -> pa.Table:
    """One row per identity: the last planned (a version opened, then closed, in one run)."""
    numbered = rows.append_column(_ARRIVAL, _positions(rows.num_rows))
    order = [(name, "ascending", "at_start") for name in (*identity, _ARRIVAL)]
    ordered = numbered.take(pc.sort_indices(numbered, sort_keys=order))
    last = pc.invert(_same_key_as_next(ordered, identity))
    return ordered.filter(last).drop_columns([_ARRIVAL])
