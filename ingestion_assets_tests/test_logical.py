"""The logical-decoding change reader, on a PostgreSQL 15 server of its own at wal_level=logical.

The shared server runs at the default wal_level (replica), where no slot can be made: the module
starts its own server in a temporary directory and removes it afterwards. That server's defaults
print values in other forms than the reader parses (SQL dates, an Indian time zone, escaped
bytea, rounded floats): the reader must set its own.
"""

from __future__ import annotations

import datetime
import decimal
import os
import pathlib
import random
import shutil
import socket
import string
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize

from ingestion_assets.merge_asset import CURSOR
from ingestion_assets.sources.logical import (
    LSN,
    OPERATION,
    LogicalDecodingError,
    advance_slot,
    ensure_slot,
    lsn_server,
    lsn_text,
    read_logical_changes,
)
from ingestion_assets_tests.conftest import (
    POSTGRES_URL,
    SourceDatabase,
    build_project,
    require_service,
)

BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
START_SECONDS = 30
SLOT = "lake_changes"
# defaults a role or database may have, under which the server prints values unlike ISO/UTC/hex
HOSTILE_SETTINGS = """
DateStyle = 'SQL, DMY'
TimeZone = 'Asia/Kolkata'
IntervalStyle = 'sql_standard'
bytea_output = 'escape'
extra_float_digits = 0
fsync = off
"""
# initdb and pg_ctl refuse to run as root
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
UTC = datetime.UTC


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(*command: str | pathlib.Path, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AS_POSTGRES, *map(str, command)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=START_SECONDS + 30,
        check=False,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[sa.URL]:
    """A PostgreSQL 15 server at wal_level=logical on a free loopback port, for this module."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="logical-pg-"))
    data, log = directory / "data", directory / "server.log"
    if AS_POSTGRES:
        shutil.chown(directory, "postgres")
    port = _free_port()
    options = (
        f"-p {port} -c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4 "
        f"-c listen_addresses=127.0.0.1 -c unix_socket_directories='{directory}'"
    )
    try:
        created = _run(
            BIN / "initdb",
            f"--pgdata={data}",
            "--auth=trust",
            "--username=postgres",
            "--no-sync",
            cwd=directory,
        )
        if created.returncode != 0:
            pytest.fail(f"initdb failed:\n{created.stdout}{created.stderr}")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(HOSTILE_SETTINGS)
        # pg_ctl waits until the server accepts connections, for at most START_SECONDS
        started = _run(
            BIN / "pg_ctl",
            "start",
            "--wait",
            f"--timeout={START_SECONDS}",
            f"--pgdata={data}",
            f"--log={log}",
            f"--options={options}",
            cwd=directory,
        )
        if started.returncode != 0:
            server_log = log.read_text() if log.exists() else "(no log)"
            pytest.fail(
                f"PostgreSQL did not start:\n{started.stdout}{started.stderr}\n{server_log}"
            )
        yield sa.URL.create(
            "postgresql+psycopg2",
            username="postgres",
            host="127.0.0.1",
            port=port,
            database="postgres",
        )
    finally:
        _run(BIN / "pg_ctl", "stop", f"--pgdata={data}", "--mode=fast", cwd=directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(server: sa.URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(server)
    yield engine
    engine.dispose()


@pytest.fixture
def slot(engine: sa.Engine) -> Iterator[str]:
    """The test's slot, made before its tables: it holds every change the test makes."""
    with engine.connect() as connection:
        assert ensure_slot(connection, SLOT) is True
        assert ensure_slot(connection, SLOT) is False
        connection.commit()
    yield SLOT
    with engine.connect() as connection:
        connection.execute(
            sa.text(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = :slot"
            ),
            {"slot": SLOT},
        )
        connection.commit()


def _execute(engine: sa.Engine, *statements: str | tuple[str, Any]) -> str:
    """Run the statements in one transaction; the WAL insert position after its commit."""
    with engine.begin() as connection:
        for statement in statements:
            sql, parameters = statement if isinstance(statement, tuple) else (statement, {})
            connection.execute(sa.text(sql), parameters)
    with engine.connect() as connection:
        position: str = connection.execute(
            sa.text("SELECT pg_current_wal_insert_lsn()::text")
        ).scalar_one()
        return lsn_text(position)


def _changes(
    engine: sa.Engine, table: str, columns: pa.Schema, since: str | None = None, **options: Any
) -> pa.Table:
    with engine.connect() as connection:
        reader = read_logical_changes(connection, SLOT, "public", table, columns, since, **options)
        return reader.read_all()


TYPED = pa.schema(
    [
        ("id", pa.int64()),
        ("amount", pa.decimal128(18, 4)),
        ("happened", pa.timestamp("us")),
        ("happened_at", pa.timestamp("us", "UTC")),
        ("Note Text", pa.string()),
        ("flag", pa.bool_()),
        ("ref", pa.string()),
        ("payload", pa.binary()),
        ("day", pa.date32()),
        ("ratio", pa.float64()),
        ("tags", pa.list_(pa.string())),
    ]
)
INSERT_TYPED = (
    "INSERT INTO typed VALUES (:id, :amount, :happened, :happened_at, :note, :flag, :ref, "
    ":payload, :day, :ratio, :tags)"
)
# quotes, a newline, non-ASCII, and text that looks like the decoder's own syntax
TRICKY_TEXT = "it's \"quoted\" ''twice''\nline two: ü ñ 日本 — x[text]:'y' new-tuple: z"


def test_inserts_updates_and_deletes_come_back_in_commit_order_with_exact_values(
    engine: sa.Engine, slot: str
) -> None:
    _execute(
        engine,
        "CREATE TABLE typed (id bigint PRIMARY KEY, amount numeric(18, 4), happened timestamp, "
        'happened_at timestamptz, "Note Text" text, flag boolean, ref uuid, payload bytea, '
        "day date, ratio double precision, tags text[])",
    )
    ref = uuid.UUID("6f1c2a4e-9b7d-4c3e-8a5f-0123456789ab")
    india = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    first = {
        "id": 9_007_199_254_740_993,  # not a float's: 2**53 + 1
        "amount": decimal.Decimal("12345678901234.5678"),
        "happened": datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
        "happened_at": datetime.datetime(2024, 3, 1, 4, 30, 0, 1, tzinfo=india),
        "note": TRICKY_TEXT,
        "flag": True,
        "ref": ref,
        "payload": bytes(range(256)),
        "day": datetime.date(1999, 12, 31),
        "ratio": 0.1 + 0.2,
        "tags": ["a b", 'c"d', None, "NULL", "", "back\\slash"],
    }
    # the text 'null' is a value, not NULL
    second = {key: None for key in first} | {"id": 2, "note": "null"}
    before = _execute(engine, "SELECT 1")
    inserted = _execute(engine, (INSERT_TYPED, first), (INSERT_TYPED, second))
    updated = _execute(
        engine,
        (
            "UPDATE typed SET amount = :amount, flag = false, ratio = 1e-300 WHERE id = :id",
            {"amount": decimal.Decimal("-0.0001"), "id": first["id"]},
        ),
    )
    rekeyed = _execute(engine, "UPDATE typed SET id = 3 WHERE id = 2")
    deleted = _execute(engine, ("DELETE FROM typed WHERE id = :id", {"id": first["id"]}))

    changes = _changes(engine, "typed", TYPED)

    assert changes.schema == pa.schema([(LSN, pa.string()), (OPERATION, pa.string()), *TYPED])
    rows = changes.to_pylist()
    assert [(row[OPERATION], row["id"]) for row in rows] == [
        ("insert", first["id"]),
        ("insert", 2),
        ("update", first["id"]),
        ("update", 3),
        ("delete", first["id"]),
    ]
    lsns = [row[LSN] for row in rows]
    # each change carries its transaction's commit LSN: after the transaction began, not after
    # its commit
    assert lsns[0] == lsns[1]
    assert (
        before < lsns[0] <= inserted < lsns[2] <= updated < lsns[3] <= rekeyed < lsns[4] <= deleted
    )
    assert all(len(lsn) == 16 and lsn == lsn.upper() for lsn in lsns)
    assert lsn_text(lsn_server(lsns[0])) == lsns[0]

    inserted_row = rows[0]
    assert str(inserted_row["amount"]) == "12345678901234.5678"
    assert inserted_row["happened"] == first["happened"]
    assert inserted_row["happened_at"] == datetime.datetime(2024, 2, 29, 23, 0, 0, 1, tzinfo=UTC)
    assert inserted_row["happened_at"].utcoffset() == datetime.timedelta(0)
    assert inserted_row["Note Text"] == TRICKY_TEXT
    assert inserted_row["flag"] is True
    assert inserted_row["ref"] == str(ref)
    assert inserted_row["payload"] == bytes(range(256))
    assert inserted_row["day"] == datetime.date(1999, 12, 31)
    assert inserted_row["ratio"] == 0.30000000000000004
    assert inserted_row["tags"] == first["tags"]
    assert rows[1] == {LSN: lsns[1], OPERATION: "insert"} | {
        field.name: None for field in TYPED
    } | {"id": 2, "Note Text": "null"}
    assert str(rows[2]["amount"]) == "-0.0001"
    assert (rows[2]["flag"], rows[2]["ratio"]) == (False, 1e-300)
    assert rows[2]["Note Text"] == TRICKY_TEXT
    assert rows[3]["Note Text"] == "null"
    # a delete carries the key alone (REPLICA IDENTITY DEFAULT)
    assert {name: value for name, value in rows[4].items() if value is not None} == {
        LSN: lsns[4],
        OPERATION: "delete",
        "id": first["id"],
    }


EVENTS = pa.schema([("id", pa.int32()), ("label", pa.string())])


def test_since_leaves_out_earlier_changes_a_peek_consumes_nothing_and_advancing_does(
    engine: sa.Engine, slot: str
) -> None:
    _execute(engine, "CREATE TABLE events (id int PRIMARY KEY, label text)")
    for number in range(1, 5):
        _execute(
            engine,
            ("INSERT INTO events VALUES (:id, :label)", {"id": number, "label": f"e{number}"}),
        )

    everything = _changes(engine, "events", EVENTS)
    assert everything["id"].to_pylist() == [1, 2, 3, 4]
    lsns = everything[LSN].to_pylist()
    assert lsns == sorted(set(lsns))

    assert _changes(engine, "events", EVENTS, since=lsns[1])["id"].to_pylist() == [3, 4]
    assert _changes(engine, "events", EVENTS, since=lsns[3]).num_rows == 0
    # the server stops after the transaction in which its output reaches 3 lines
    # (BEGIN, INSERT, COMMIT)
    assert _changes(engine, "events", EVENTS, upto_changes=3)["id"].to_pylist() == [1]
    with engine.connect() as connection:
        batches = list(
            read_logical_changes(connection, slot, "public", "events", EVENTS, None, batch_rows=3)
        )
    assert [batch.num_rows for batch in batches] == [3, 1]
    assert _changes(engine, "events", EVENTS).equals(everything)

    with engine.connect() as connection:
        advance_slot(connection, slot, lsns[1])
        connection.commit()
    assert _changes(engine, "events", EVENTS)["id"].to_pylist() == [3, 4]
    # a retried run may advance to where the slot already is, or behind it
    with engine.connect() as connection:
        advance_slot(connection, slot, lsns[0])
        advance_slot(connection, slot, lsn_server(lsns[1]))
        connection.commit()
    assert _changes(engine, "events", EVENTS)[LSN].to_pylist() == lsns[2:]


def test_changes_of_other_tables_in_the_slot_are_left_out(engine: sa.Engine, slot: str) -> None:
    # names that begin like the table's, or differ in case only
    _execute(
        engine,
        "CREATE TABLE orders (id int PRIMARY KEY, label text)",
        "CREATE TABLE orders_archive (id int PRIMARY KEY, label text)",
        'CREATE TABLE "Orders" (id int PRIMARY KEY, label text)',
    )
    _execute(
        engine,
        "INSERT INTO orders_archive VALUES (1, 'archived')",
        "INSERT INTO orders VALUES (1, 'table public.orders_archive: INSERT:')",
        """INSERT INTO "Orders" VALUES (1, 'other')""",
    )
    _execute(engine, "UPDATE orders_archive SET label = 'moved'", "TRUNCATE orders_archive")
    _execute(engine, "INSERT INTO orders VALUES (2, 'second')")

    changes = _changes(engine, "orders", EVENTS)

    assert changes.select(["id", "label", OPERATION]).to_pylist() == [
        {"id": 1, "label": "table public.orders_archive: INSERT:", OPERATION: "insert"},
        {"id": 2, "label": "second", OPERATION: "insert"},
    ]
    # a name the server prints quoted
    assert _changes(engine, "Orders", EVENTS)["label"].to_pylist() == ["other"]
    # a truncate that names the table (among others) carries no rows to delete
    _execute(engine, 'TRUNCATE "Orders", orders')
    with pytest.raises(LogicalDecodingError, match=r"table public\.orders was truncated"):
        _changes(engine, "orders", EVENTS)


def test_a_server_at_wal_level_replica_is_told_to_set_wal_level_logical() -> None:
    shared = require_service(
        sa.make_url(POSTGRES_URL).set(database="test").render_as_string(False), "PostgreSQL"
    )
    try:
        with shared.connect() as connection:
            if connection.execute(sa.text("SHOW wal_level")).scalar_one() == "logical":
                pytest.skip("the shared server runs at wal_level=logical")
            with pytest.raises(LogicalDecodingError) as raised:
                ensure_slot(connection, "lake_changes_never_made")
            slots = connection.execute(
                sa.text("SELECT count(*) FROM pg_replication_slots WHERE slot_name = :slot"),
                {"slot": "lake_changes_never_made"},
            ).scalar_one()
    finally:
        shared.dispose()
    message = str(raised.value)
    assert "wal_level = logical" in message
    assert "postgresql.conf" in message
    assert "restart" in message
    assert "REPLICATION" in message
    assert slots == 0


DOCUMENTS = pa.schema([("id", pa.int32()), ("body", pa.string()), ("version", pa.int32())])


def test_an_update_that_keeps_a_toasted_value_needs_replica_identity_full(
    engine: sa.Engine, slot: str
) -> None:
    # random letters do not compress: the value is stored out of line (TOAST)
    body = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=20_000))
    _execute(engine, "CREATE TABLE documents (id int PRIMARY KEY, body text, version int)")
    _execute(engine, ("INSERT INTO documents VALUES (1, :body, 1)", {"body": body}))
    kept = _execute(engine, "UPDATE documents SET version = 2")

    # the insert carries the whole value
    inserted = _changes(engine, "documents", DOCUMENTS, upto_changes=3).to_pylist()
    assert [(row[OPERATION], row["body"]) for row in inserted] == [("insert", body)]
    with pytest.raises(LogicalDecodingError, match="REPLICA IDENTITY FULL") as raised:
        _changes(engine, "documents", DOCUMENTS)
    assert "column 'body'" in str(raised.value)
    assert "public.documents" in str(raised.value)

    # under REPLICA IDENTITY FULL the change's old row carries the value the update kept
    _execute(engine, "ALTER TABLE documents REPLICA IDENTITY FULL")
    _execute(engine, "UPDATE documents SET version = 3")
    with engine.connect() as connection:
        advance_slot(connection, slot, kept)
        connection.commit()
    changes = _changes(engine, "documents", DOCUMENTS).to_pylist()
    assert [(row[OPERATION], row["id"], row["version"]) for row in changes] == [("update", 1, 3)]
    assert changes[0]["body"] == body


def test_an_altered_table_and_a_value_that_does_not_fit_are_errors_naming_the_column(
    engine: sa.Engine, slot: str
) -> None:
    _execute(engine, "CREATE TABLE prices (id int PRIMARY KEY, price numeric)")
    _execute(engine, "INSERT INTO prices VALUES (1, 1.23456)")
    declared = pa.schema([("id", pa.int32()), ("price", pa.decimal128(10, 2))])
    with pytest.raises(LogicalDecodingError, match=r"table public\.prices, column 'price'"):
        _changes(engine, "prices", declared)

    at = _execute(engine, "SELECT 1")
    _execute(
        engine,
        "ALTER TABLE prices ADD COLUMN currency text",
        "INSERT INTO prices VALUES (2, 2, 'EUR')",
    )
    columns = pa.schema([("id", pa.int32()), ("price", pa.string())])
    with pytest.raises(LogicalDecodingError, match=r"public\.prices.*'currency'"):
        _changes(engine, "prices", columns, since=at)


def test_a_cdc_table_kept_from_its_replication_slot_equals_the_source_after_every_run(
    server: sa.URL, engine: sa.Engine, tmp_path: pathlib.Path
) -> None:
    """`mode: cdc` with `feed: postgres_logical`, end to end: the first run makes the slot and
    loads the table whole; inserts, updates (one key twice in a transaction) and deletes after
    it arrive through the slot; a run with nothing new commits nothing; each committed run moves
    the slot to its cursor, so the server can let those changes go."""
    slot = "ingest_public_lake_customer"
    _execute(
        engine,
        "CREATE TABLE lake_customer (id bigint PRIMARY KEY, name text, credit numeric(12,2))",
        "INSERT INTO lake_customer VALUES (1, 'one', 1.10), (2, 'two', 2.20), (3, 'three', 3.30)",
    )
    database = SourceDatabase("postgresql", server.render_as_string(), {})
    project = build_project(
        database,
        tmp_path / "lake",
        [
            {
                "schema": "public",
                "name": "lake_customer",
                "primary_key": ["id"],
                "mode": "cdc",
                "cdc": {"feed": "postgres_logical"},
            }
        ],
    )
    key = AssetKey(["src", "lake_customer"])

    def run(instance: DagsterInstance) -> dict[str, Any]:
        result = materialize(
            [project.defs.get_assets_def(key)], instance=instance, resources=project.defs.resources
        )
        assert all(e.passed for e in result.get_asset_check_evaluations())
        metadata = result.asset_materializations_for_node("src__lake_customer")[0].metadata
        return {name: getattr(value, "value", value) for name, value in metadata.items()}

    def lake() -> dict[int, tuple[str, str]]:
        rows = project.delta("lake_customer").to_pyarrow_table().to_pylist()
        return {r["id"]: (r["name"], str(r["credit"])) for r in rows}

    def source() -> dict[int, tuple[str, str]]:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, name, credit FROM lake_customer"))
            return {r.id: (r.name, str(r.credit)) for r in rows}

    def confirmed() -> str:
        with engine.connect() as connection:
            value: str = connection.execute(
                sa.text(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = :s"
                ),
                {"s": slot},
            ).scalar_one()
            return lsn_text(value)

    try:
        with DagsterInstance.ephemeral() as instance:
            first = run(instance)
            assert lake() == source()
            assert first["rows_inserted"] == 3
            _execute(
                engine,
                "INSERT INTO lake_customer VALUES (4, 'four', 4.40)",
                "UPDATE lake_customer SET credit = 9.99 WHERE id = 1",
                "UPDATE lake_customer SET name = 'uno', credit = 1.11 WHERE id = 1",
            )
            _execute(engine, "DELETE FROM lake_customer WHERE id = 2")
            second = run(instance)
            assert (
                lake()
                == source()
                == {
                    1: ("uno", "1.11"),
                    3: ("three", "3.30"),
                    4: ("four", "4.40"),
                }
            )
            assert (second["rows_inserted"], second["rows_updated"], second["rows_deleted"]) == (
                1,
                1,
                1,
            )
            assert second[CURSOR] > first[CURSOR]
            # the slot moved to the cursor: those changes are released
            assert confirmed() == second[CURSOR]
            third = run(instance)
            assert third["delta_version"] == second["delta_version"]
            assert lake() == source()
    finally:
        with engine.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = :slot"
                ),
                {"slot": slot},
            )
            connection.execute(sa.text("DROP TABLE IF EXISTS lake_customer"))
            connection.commit()
