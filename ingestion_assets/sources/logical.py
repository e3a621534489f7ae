"""Change events of one PostgreSQL table, read from a logical replication slot.

The slot decodes the server's write-ahead log with the `test_decoding` plugin that ships with
PostgreSQL (nothing to install on the server) into one line of text per change, which this module
parses back into the table's columns. The choices:

- Changes are peeked (`pg_logical_slot_peek_changes`), never consumed: the slot moves only when
  the caller has committed them to the lake (`advance_slot`), so a run that fails reads the same
  changes again.
- Every change carries the LSN of its transaction's commit (the end of the commit record, the
  LSN the server gives the COMMIT line): transactions are decoded in commit order, so these LSNs
  ascend, and advancing the slot to one leaves out that transaction and all before it, no other.
- The server prints each value with its type's output function under the session's settings
  (DateStyle, TimeZone, bytea_output, extra_float_digits, IntervalStyle, which a role or a
  database may set otherwise): the read fixes them for its transaction, so the text is the one
  parsed here, timestamps with zone in UTC and floats in their shortest exact form.
- The server keeps only the table's lines (and the commits): the slot decodes every table.
  Values are cast per column by Arrow, strictly: a value that does not fit its column's type
  (more digits than a decimal's scale, NaN in a decimal, an infinite timestamp) is an error,
  never rounded.
- An UPDATE that leaves a large out-of-line (TOASTed) value unchanged writes no copy of it to the
  log; under REPLICA IDENTITY FULL the old row the change carries has it, and it is taken from
  there. Without, the change is an error: its new value cannot be known from the log.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ingestion_assets.errors import SourceError

OPERATION = "_operation"
LSN = "_lsn"

PLUGIN = "test_decoding"


class LogicalDecodingError(SourceError):
    """The server cannot decode changes, or a decoded change cannot be taken as it is."""


class _Unchanged:
    """test_decoding's `unchanged-toast-datum`: an out-of-line value the UPDATE left as it was."""


_UNCHANGED = _Unchanged()
_Value = str | None | _Unchanged
_Converter = Callable[[list[str | None]], pa.Array]

_SERVER_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_TEXT_LSN = re.compile(r"[0-9A-Fa-f]{16}")

# the text forms parsed below, whatever the role's or the database's defaults; set for the read's
# transaction only (set_config's is_local)
_SESSION_SETTINGS = sa.text(
    "SELECT set_config('DateStyle', 'ISO, MDY', true), set_config('TimeZone', 'UTC', true), "
    "set_config('IntervalStyle', 'postgres', true), set_config('bytea_output', 'hex', true), "
    "set_config('extra_float_digits', '1', true)"
)
# plain BEGIN/COMMIT lines (no xids), none for a transaction without a change; the server keeps
# the table's lines, the commits, and every TRUNCATE (one may name several tables)
_PEEK = sa.text(
    "SELECT lsn::text AS lsn, data FROM pg_logical_slot_peek_changes("
    "CAST(:slot AS name), NULL, CAST(:upto AS integer), "
    "'include-xids', '0', 'skip-empty-xacts', '1') "
    "WHERE data = 'COMMIT' OR starts_with(data, :prefix) "
    "OR (starts_with(data, 'table ') AND strpos(data, ': TRUNCATE: ') > 0)"
)
_SLOT = sa.text(
    "SELECT plugin, slot_type, database = current_database() AS here, wal_status "
    "FROM pg_replication_slots WHERE slot_name = CAST(:slot AS name)"
)

# one column of a decoded row: ` name[type]:value`. Names and type names are printed as SQL
# identifiers (double quotes, doubled inside); values are quoted as SQL literals (single quotes
# doubled, nothing else escaped) but for numbers, booleans, bit strings, null and unchanged TOAST
_COLUMN = re.compile(
    r' (?:"(?P<quoted_name>[^"]*(?:""[^"]*)*)"|(?P<name>[a-z0-9_]+))'
    r'\[(?:[^"\]]|"[^"]*(?:""[^"]*)*"|\](?!:))*\]:'
    r"(?:'(?P<text>[^']*(?:''[^']*)*)'|B'(?P<bits>[01]*)'|(?P<word>[^ ']+))",
    re.DOTALL,
)
_QUALIFIED_NAME = re.compile(
    r'(?:"[^"]*(?:""[^"]*)*"|[a-z0-9_]+)\.(?:"[^"]*(?:""[^"]*)*"|[a-z0-9_]+)'
)
_ACTIONS = {"INSERT:": "insert", "UPDATE:": "update", "DELETE:": "delete"}
_OLD_KEY = " old-key:"
_NEW_TUPLE = " new-tuple:"
_NO_TUPLE = " (no-tuple-data)"
# an element of a one-dimensional array's text form: quoted (backslash escapes) or bare
_ARRAY_ITEM = re.compile(r'"(?P<quoted>[^"\\]*(?:\\.[^"\\]*)*)"|(?P<bare>[^",{}]+)', re.DOTALL)
_BACKSLASHED = re.compile(r"\\(.)", re.DOTALL)
_BOOLEANS = {"true": True, "t": True, "false": False, "f": False}


def lsn_text(lsn: str) -> str:
    """'0/163A2F8' -> '000000000163A2F8': the server's LSN as text that sorts as the LSN does."""
    match = _SERVER_LSN.fullmatch(lsn)
    if match is None:
        raise ValueError(f"not a PostgreSQL LSN (like 0/163A2F8): {lsn!r}")
    return f"{int(match[1], 16):08X}{int(match[2], 16):08X}"


def lsn_server(text: str) -> str:
    """'000000000163A2F8' -> '0/163A2F8': the sortable text back in the form pg_lsn takes."""
    if _TEXT_LSN.fullmatch(text) is None:
        raise ValueError(f"not an LSN as 16 hex digits (like 000000000163A2F8): {text!r}")
    return f"{int(text[:8], 16):X}/{int(text[8:], 16):X}"


def ensure_slot(connection: sa.Connection, slot: str) -> bool:
    """Create the logical replication slot `slot` (plugin test_decoding) unless it exists; True
    when created. Creating waits for the transactions running on the server to end; the slot
    then keeps every later change until it is advanced."""
    wal_level, max_slots = connection.execute(
        sa.text(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int"
        )
    ).one()
    if wal_level != "logical":
        raise LogicalDecodingError(
            f"the server's wal_level is '{wal_level}': reading changes from a replication slot "
            "needs wal_level = logical. Set `wal_level = logical` in postgresql.conf (or "
            "ALTER SYSTEM SET wal_level = logical) and restart the server; the role that reads "
            "needs the REPLICATION attribute (ALTER ROLE name REPLICATION)"
        )
    if _slot_state(connection, slot) is not None:
        return False
    if max_slots == 0:
        raise LogicalDecodingError(
            "the server's max_replication_slots is 0: set it to at least 1 in postgresql.conf "
            "and restart the server"
        )
    try:
        connection.execute(
            sa.text("SELECT pg_create_logical_replication_slot(CAST(:slot AS name), :plugin)"),
            {"slot": slot, "plugin": PLUGIN},
        )
    except sa.exc.DBAPIError as error:
        code = getattr(error.orig, "pgcode", None)
        if code == "42501":
            raise LogicalDecodingError(
                f"the role may not create the replication slot '{slot}': give it the REPLICATION "
                "attribute (ALTER ROLE name REPLICATION)"
            ) from error
        if code == "53400":
            raise LogicalDecodingError(
                f"no replication slot is free for '{slot}': all max_replication_slots are in use "
                "(drop an unused one with pg_drop_replication_slot, or raise the setting in "
                "postgresql.conf and restart the server)"
            ) from error
        raise
    return True


def read_logical_changes(
    connection: sa.Connection,
    slot: str,
    schema: str,
    table: str,
    columns: pa.Schema,
    since: str | None,
    *,
    batch_rows: int = 10_000,
    upto_changes: int | None = None,
) -> pa.RecordBatchReader:
    """The changes of `schema.table` in the slot after LSN `since` (all when None), in commit
    order, as batches of [_lsn, _operation, *columns]; peeked, so the slot does not move.

    The reader fetches as it is read: the connection must stay in the same transaction (not in
    AUTOCOMMIT) until it is done; the settings the read fixes (see the module's docstring)
    hold for the rest of that transaction. `upto_changes` bounds the server's work: the peek ends with the transaction
    in which the slot's output (every table's lines, BEGIN and COMMIT included) reaches it.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
    relation = f"{schema}.{table}"
    converters = [_column_converter(relation, field) for field in columns]
    after = None if since is None else lsn_text(lsn_server(since))
    if getattr(connection.connection.dbapi_connection, "autocommit", False):
        raise LogicalDecodingError(
            f"reading the changes of {relation}: the connection is in AUTOCOMMIT; the read needs "
            "a transaction, which holds its server-side cursor and its session settings"
        )
    state = _slot_state(connection, slot)
    if state is None:
        raise LogicalDecodingError(
            f"replication slot '{slot}' does not exist: create it (ensure_slot), then load "
            f"{relation} whole once; the slot holds the changes made after its creation"
        )
    if state["wal_status"] == "lost":
        raise LogicalDecodingError(
            f"replication slot '{slot}' lost changes the server no longer kept "
            "(max_slot_wal_keep_size): drop and create it, then load "
            f"{relation} whole again"
        )
    connection.execute(_SESSION_SETTINGS)
    prefix = connection.execute(
        sa.text("SELECT 'table ' || quote_ident(:schema) || '.' || quote_ident(:table) || ': '"),
        {"schema": schema, "table": table},
    ).scalar_one()
    result = connection.execute(
        _PEEK.execution_options(stream_results=True, max_row_buffer=batch_rows),
        {"slot": slot, "upto": upto_changes, "prefix": prefix},
    )
    output = pa.schema([pa.field(LSN, pa.string()), pa.field(OPERATION, pa.string()), *columns])
    parser = _ChangeParser(relation, prefix, columns.names)
    return pa.RecordBatchReader.from_batches(
        output, _batches(result, parser, after, batch_rows, output, converters)
    )


def advance_slot(connection: sa.Connection, slot: str, lsn: str) -> None:
    """Move the slot to `lsn` (either form), once the changes up to it are in the lake, so the
    server can free their WAL; a slot already there or past it stays."""
    target = lsn_server(lsn_text(lsn) if "/" in lsn else lsn)
    row = connection.execute(
        sa.text(
            "SELECT confirmed_flush_lsn < CAST(:lsn AS pg_lsn) FROM pg_replication_slots "
            "WHERE slot_name = CAST(:slot AS name)"
        ),
        {"slot": slot, "lsn": target},
    ).one_or_none()
    if row is None:
        raise LogicalDecodingError(f"replication slot '{slot}' does not exist")
    # moving a slot back is an error: a retried run may advance to where it already is
    if row[0]:
        connection.execute(
            sa.text(
                "SELECT pg_replication_slot_advance(CAST(:slot AS name), CAST(:lsn AS pg_lsn))"
            ),
            {"slot": slot, "lsn": target},
        )


def _slot_state(connection: sa.Connection, slot: str) -> dict[str, Any] | None:
    """The slot's row, checked to be one this module reads (test_decoding, this database)."""
    row = connection.execute(_SLOT, {"slot": slot}).mappings().one_or_none()
    if row is None:
        return None
    if row["slot_type"] != "logical" or row["plugin"] != PLUGIN:
        raise LogicalDecodingError(
            f"replication slot '{slot}' is a {row['slot_type']} slot of plugin "
            f"'{row['plugin']}', not a logical one of '{PLUGIN}': name another slot"
        )
    if not row["here"]:
        raise LogicalDecodingError(
            f"replication slot '{slot}' belongs to another database: name another slot"
        )
    return dict(row)


def _batches(
    result: sa.CursorResult[Any],
    parser: _ChangeParser,
    after: str | None,
    batch_rows: int,
    output: pa.Schema,
    converters: list[_Converter],
) -> Iterator[pa.RecordBatch]:
    """The committed changes as batches of `batch_rows`: a transaction's lines wait for its
    COMMIT, whose LSN they take (and that tells whether they come after `after`)."""
    fields = list(output)[2:]
    lsns: list[str] = []
    operations: list[str] = []
    values: list[list[str | None]] = [[] for _ in converters]
    pending: list[str] = []

    def batch() -> pa.RecordBatch:
        arrays = [pa.array(lsns, pa.string()), pa.array(operations, pa.string())]
        for field, converter, column in zip(fields, converters, values, strict=True):
            try:
                arrays.append(converter(column))
            except (ValueError, KeyError) as error:
                raise LogicalDecodingError(
                    f"table {parser.relation}, column '{field.name}': a changed value does not "
                    f"fit the column's type {field.type}: {error}"
                ) from error
        lsns.clear()
        operations.clear()
        for column in values:
            column.clear()
        return pa.RecordBatch.from_arrays(arrays, schema=output)

    try:
        for rows in result.partitions(batch_rows):
            for line in rows:
                if line.data != "COMMIT":
                    pending.append(line.data)
                    continue
                commit = lsn_text(line.lsn)
                if pending and (after is None or commit > after):
                    for data in pending:
                        change = parser.parse(data, commit)
                        if change is None:
                            continue
                        operation, row = change
                        lsns.append(commit)
                        operations.append(operation)
                        for column, value in zip(values, row, strict=True):
                            column.append(value)
                        if len(lsns) >= batch_rows:
                            yield batch()
                pending.clear()
        if lsns:
            yield batch()
    finally:
        result.close()


class _ChangeParser:
    """One decoded line of the table -> its operation and its values in the columns' order."""

    def __init__(self, relation: str, prefix: str, names: list[str]) -> None:
        self.relation = relation
        self.prefix = prefix
        # the table as test_decoding prints it (identifiers quoted where needed)
        self.printed = prefix[len("table ") : -len(": ")]
        self.positions = {name: index for index, name in enumerate(names)}

    def parse(self, line: str, commit: str) -> tuple[str, list[str | None]] | None:
        """None: a line of other tables (a TRUNCATE of several that leaves this one out)."""
        if not line.startswith(self.prefix):
            if self._truncates(line):
                raise self._truncated(commit)
            return None
        position = len(self.prefix)
        action = next((a for a in _ACTIONS if line.startswith(a, position)), None)
        if action is None:
            if line.startswith("TRUNCATE:", position):
                raise self._truncated(commit)
            raise self._unparsable(line, position, commit)
        operation = _ACTIONS[action]
        position += len(action)
        if line.startswith(_NO_TUPLE, position):
            raise LogicalDecodingError(
                f"table {self.relation}: a {operation} (commit LSN {commit}) carries no key, as "
                f"the table has no primary key: give it one, or ALTER TABLE {self.relation} "
                "REPLICA IDENTITY FULL (then reload it whole, as the changes before lack the key)"
            )
        old: dict[str, _Value] = {}
        if operation == "update" and line.startswith(_OLD_KEY, position):
            old, position = _tuple(line, position + len(_OLD_KEY))
            if not line.startswith(_NEW_TUPLE, position):
                raise self._unparsable(line, position, commit)
            position += len(_NEW_TUPLE)
        new, position = _tuple(line, position)
        if position != len(line):
            raise self._unparsable(line, position, commit)
        return operation, self._row(operation, new, old, commit)

    def _row(
        self, operation: str, new: dict[str, _Value], old: dict[str, _Value], commit: str
    ) -> list[str | None]:
        row: list[str | None] = [None] * len(self.positions)
        for name, value in new.items():
            index = self.positions.get(name)
            if index is None:
                raise LogicalDecodingError(
                    f"table {self.relation}: a change (commit LSN {commit}) has column '{name}', "
                    "which is not among the dataset's columns: the table was altered (a column "
                    "added or renamed); declare the column, then reload the table whole"
                )
            if isinstance(value, _Unchanged):
                # under REPLICA IDENTITY FULL the old row carries the value the update kept
                value = old.get(name)
                if value is None or isinstance(value, _Unchanged):
                    raise LogicalDecodingError(
                        f"table {self.relation}, column '{name}': an update (commit LSN "
                        f"{commit}) left the column's large (TOASTed) value unchanged, and the "
                        "change does not carry it. Make updates log whole rows: ALTER TABLE "
                        f"{self.relation} REPLICA IDENTITY FULL (then reload the table whole, as "
                        "the changes before lack such values)"
                    )
            row[index] = value
        if operation != "delete" and len(new) < len(self.positions):
            missing = [name for name in self.positions if name not in new]
            raise LogicalDecodingError(
                f"table {self.relation}: an {operation} (commit LSN {commit}) has no column "
                f"{', '.join(repr(name) for name in missing)}: the table was altered (a column "
                "dropped or renamed); declare its columns anew, then reload it whole"
            )
        return row

    def _truncates(self, line: str) -> bool:
        """Whether `line` is a TRUNCATE (`table a.b, c.d: TRUNCATE: ...`) naming this table."""
        names: list[str] = []
        position = len("table ")
        while (match := _QUALIFIED_NAME.match(line, position)) is not None:
            names.append(match[0])
            position = match.end()
            if line.startswith(": TRUNCATE: ", position):
                return self.printed in names
            if not line.startswith(", ", position):
                return False
            position += len(", ")
        return False

    def _truncated(self, commit: str) -> LogicalDecodingError:
        return LogicalDecodingError(
            f"table {self.relation} was truncated (commit LSN {commit}): a truncate carries no "
            f"rows to delete. Reload the table whole, then advance the slot past {commit}"
        )

    def _unparsable(self, line: str, position: int, commit: str) -> LogicalDecodingError:
        return LogicalDecodingError(
            f"table {self.relation}: a decoded change (commit LSN {commit}) does not parse at "
            f"character {position}: {line[max(0, position - 40) : position + 40]!r}"
        )


def _tuple(line: str, position: int) -> tuple[dict[str, _Value], int]:
    """The columns printed from `position` on, and the position after the last."""
    values: dict[str, _Value] = {}
    while (match := _COLUMN.match(line, position)) is not None:
        quoted_name, name, text, bits, word = match.groups()
        if name is None:
            name = quoted_name.replace('""', '"')
        value: _Value
        if text is not None:
            value = text.replace("''", "'")
        elif bits is not None:
            value = bits
        elif word == "null":
            value = None
        elif word == "unchanged-toast-datum":
            value = _UNCHANGED
        else:
            value = word
        values[name] = value
        position = match.end()
    return values, position


def _column_converter(relation: str, field: pa.Field) -> _Converter:
    converter = _converter(field.type)
    if converter is None:
        raise LogicalDecodingError(
            f"table {relation}, column '{field.name}': changes cannot be read into Arrow type "
            f"{field.type}"
        )
    return converter


def _converter(arrow: pa.DataType) -> _Converter | None:
    """The function from a column's printed values to its Arrow array; None: no such function."""
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return lambda values: pa.array(values, arrow)
    if pa.types.is_boolean(arrow):
        return lambda values: pa.array(
            [None if value is None else _BOOLEANS[value] for value in values], arrow
        )
    if (
        pa.types.is_integer(arrow)
        or pa.types.is_floating(arrow)
        or pa.types.is_decimal(arrow)
        or pa.types.is_date32(arrow)
        or pa.types.is_timestamp(arrow)
    ):
        # Arrow's casts from text are exact or fail (a decimal's digits past its scale, an int
        # out of range, a zone offset in a timestamp without zone)
        return lambda values: pc.cast(pa.array(values, pa.string()), arrow)
    if pa.types.is_time(arrow):
        return lambda values: pa.array(
            [None if value is None else datetime.time.fromisoformat(value) for value in values],
            arrow,
        )
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return lambda values: pa.array(
            [None if value is None else _bytea(value) for value in values], arrow
        )
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        items = _converter(arrow.value_type)
        return None if items is None else _list_converter(arrow, items)
    return None


def _bytea(value: str) -> bytes:
    if not value.startswith("\\x"):
        raise ValueError(f"not bytea in hex form: {value[:40]!r}")
    return bytes.fromhex(value[2:])


def _list_converter(arrow: pa.DataType, items: _Converter) -> _Converter:
    array_class = pa.ListArray if pa.types.is_list(arrow) else pa.LargeListArray
    offset_type = pa.int32() if pa.types.is_list(arrow) else pa.int64()

    def convert(values: list[str | None]) -> pa.Array:
        flat: list[str | None] = []
        offsets = [0]
        for value in values:
            if value is not None:
                flat.extend(_array_items(value))
            offsets.append(len(flat))
        nulls = pa.array([value is None for value in values], pa.bool_())
        return array_class.from_arrays(
            pa.array(offsets, offset_type), items(flat), type=arrow, mask=nulls
        )

    return convert


def _array_items(text: str) -> list[str | None]:
    """The elements of a one-dimensional array's text form ('{1,NULL,"a b"}')."""
    if text.startswith("["):
        # lower bounds other than 1 are printed first ('[0:1]={1,2}'); a list has none
        text = text[text.index("=") + 1 :]
    if text == "{}":
        return []
    end = len(text) - 1
    if not (text.startswith("{") and text.endswith("}")) or text.startswith("{{"):
        raise ValueError(f"not a one-dimensional array: {text[:80]!r}")
    items: list[str | None] = []
    position = 1
    while True:
        match = _ARRAY_ITEM.match(text, position, end)
        if match is None:
            raise ValueError(f"array does not parse at character {position}: {text[:80]!r}")
        if match["quoted"] is not None:
            items.append(_BACKSLASHED.sub(r"\1", match["quoted"]))
        else:
            items.append(None if match["bare"] == "NULL" else match["bare"])
        position = match.end()
        if position == end:
            return items
        if text[position] != ",":
            raise ValueError(f"array does not parse at character {position}: {text[:80]!r}")
        position += 1
