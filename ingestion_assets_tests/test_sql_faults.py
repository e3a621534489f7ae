"""SQL sources that misbehave: a server that stops sending mid-result, a query past its statement
timeout, a server that never answers. Every read fails within its bound, naming source, table,
partition and the setting to change; real PostgreSQL and MariaDB behind a TCP proxy on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from deltalake.exceptions import TableNotFoundError

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.postgres import send_cancel
from ingestion_assets.sources.sql import SessionLimits, SqlTableReader, create_source_engine
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import TableSpec
from ingestion_assets_tests.conftest import SOURCE, SourceDatabase, build_project, failure_message

DAY = datetime.date(2024, 1, 4)
WINDOW = PartitionWindow.of_days(DAY, DAY)
ROWS = 60_000
# the one column name only the data query sends: the proxy stalls the answer to that query
MARKER = "stall_marker_payload"
# bytes of the answer forwarded before the stall: several batches, far from all of them
FORWARDED_BYTES = 6_000_000
STALL_SECONDS = 1.0
# generous: the read fails at STALL_SECONDS; this only proves that it does not hang
BOUND_SECONDS = 30.0
ODBC_DRIVER = "MariaDB Unicode"


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of a real server. On each connection it forwards both
    ways; once the client has sent `marker`, it forwards `forward_bytes` more of the server's
    answer and then stops forwarding, keeping both connections open (a stalled source). With
    `marker=b""` it stalls from the first byte (a server that accepts and never answers)."""

    def __init__(self, upstream_port: int, marker: bytes, forward_bytes: int) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.forward_bytes = forward_bytes
        self.stalled = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._start(self._accept)

    def _start(self, target: Any, *arguments: Any) -> None:
        thread = threading.Thread(target=target, args=arguments, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.marker:
                # hold the connection, answer nothing
                self._sockets.append(client)
                self.stalled.set()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            self._sockets += [client, upstream]
            armed = threading.Event()
            self._start(self._client_to_server, client, upstream, armed)
            self._start(self._server_to_client, upstream, client, armed)

    def _client_to_server(
        self, client: socket.socket, upstream: socket.socket, armed: threading.Event
    ) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                if self.marker in tail + chunk:
                    armed.set()
                tail = chunk[-len(self.marker) :]
                upstream.sendall(chunk)

    def _server_to_client(
        self, upstream: socket.socket, client: socket.socket, armed: threading.Event
    ) -> None:
        budget = self.forward_bytes
        with contextlib.suppress(OSError):
            while chunk := upstream.recv(65536):
                if armed.is_set():
                    chunk, budget = chunk[:budget], budget - len(chunk)
                client.sendall(chunk)
                if armed.is_set() and budget <= 0:
                    # stop forwarding; both connections stay open until the proxy closes
                    self.stalled.set()
                    self._closed.wait()
                    return

    def close(self) -> None:
        """Stop forwarding and close every connection."""
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                # shutdown, not just close: a thread blocked in recv on it (the forwarding one,
                # and the driver on the other end) sees the end of the connection at once
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=10)


@contextlib.contextmanager
def stalling_proxy(
    upstream_port: int, marker: bytes = MARKER.encode(), forward_bytes: int = FORWARDED_BYTES
) -> Iterator[StallingProxy]:
    """A StallingProxy, closed afterwards."""
    proxy = StallingProxy(upstream_port, marker, forward_bytes)
    try:
        yield proxy
    finally:
        proxy.close()


def create_stalling_table(database: SourceDatabase) -> sa.Table:
    """`Sales.stalling`: ROWS rows of DAY, about 220 bytes each."""
    table = sa.Table(
        "stalling",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime),
        sa.Column(MARKER, sa.String(250)),
        schema=database.schema("Sales"),
    )
    engine = database.engine()
    try:
        with engine.begin() as connection:
            if database.dialect == "postgresql":
                connection.execute(sa.text('CREATE SCHEMA IF NOT EXISTS "Sales"'))
            table.create(connection)
            at = datetime.datetime.combine(DAY, datetime.time(9, 30))
            connection.execute(
                table.insert(),
                [{"id": n, "at": at, MARKER: f"{n:08d}" + "x" * 200} for n in range(ROWS)],
            )
    finally:
        engine.dispose()
    return table


def through(database: SourceDatabase, url: sa.URL, port: int) -> sa.URL:
    """The database's URL with its host and port replaced by the proxy's."""
    del database
    if url.get_backend_name() == "mysql" and url.get_driver_name() == "pyodbc":
        return url.update_query_dict({"port": str(port)})
    return url.set(host="127.0.0.1", port=port)


def mariadb_odbc_url(database: SourceDatabase) -> sa.URL:
    """MariaDB through its ODBC driver (the arrow-odbc path)."""
    return sa.URL.create(
        "mysql+pyodbc",
        username="root",
        host="127.0.0.1",
        database=database.schema("Sales"),
        query={"driver": ODBC_DRIVER, "port": "3306", "charset": "utf8mb4"},
    )


def odbc_driver_installed() -> bool:
    """Whether pyodbc loads and the MariaDB ODBC driver is registered."""
    try:
        import pyodbc
    except ImportError:
        return False
    return ODBC_DRIVER in pyodbc.drivers()


PATHS = [
    pytest.param("postgres_database", True, "copy", id="postgresql-copy"),
    pytest.param("postgres_database", False, "rows", id="postgresql-rows"),
    pytest.param("mariadb_database", False, "rows", id="mariadb-rows"),
    pytest.param("mariadb_database", True, "odbc bulk fetch", id="mariadb-arrow-odbc"),
    pytest.param("mariadb_database", True, "connectorx", id="mariadb-connectorx"),
]


def read_until_failure(reader: SqlTableReader) -> tuple[int, SourceError, float]:
    """Rows read before the read failed, the failure, and the seconds it took."""
    started = time.monotonic()
    rows = 0
    batches = reader.read(WINDOW)
    try:
        for batch in batches:
            rows += batch.num_rows
    except SourceError as error:
        return rows, error, time.monotonic() - started
    raise AssertionError(f"the read ended after {rows} rows instead of failing")


def _wait_for_reading_threads(seconds: float = 30.0) -> None:
    """Poll until the read's threads have ended (bounded: a thread still stuck is left)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(
        thread.name in ("source-read", "source-call") for thread in threading.enumerate()
    ):
        time.sleep(0.05)


@pytest.mark.parametrize(("fixture", "fast_path", "path"), PATHS)
def test_a_source_that_stops_sending_mid_result_fails_the_read_within_the_stall_timeout(
    request: pytest.FixtureRequest, fixture: str, fast_path: bool, path: str
) -> None:
    database: SourceDatabase = request.getfixturevalue(fixture)
    if path == "odbc bulk fetch" and not odbc_driver_installed():
        # a required part, as in test_odbc.py: missing, the test fails rather than skips
        pytest.fail(f"the {ODBC_DRIVER} ODBC driver is not installed: run make system-deps")
    create_stalling_table(database)
    url = mariadb_odbc_url(database) if path == "odbc bulk fetch" else sa.make_url(database.url)
    upstream = 5432 if database.dialect == "postgresql" else 3306
    limits = SessionLimits(connect_timeout=10, read_stall_timeout=STALL_SECONDS)
    spec = TableSpec(schema=database.schema("Sales"), name="stalling", partition_column="at")
    engine: sa.Engine | None = None
    try:
        with stalling_proxy(upstream) as proxy:
            engine = create_source_engine(
                through(database, url, proxy.port), database.sqlite_attach, limits
            )
            reader = SqlTableReader(
                engine, SOURCE, spec, batch_size=500, fast_path=fast_path, limits=limits
            )
            rows, error, seconds = read_until_failure(reader)
            assert proxy.stalled.is_set(), f"{rows} rows, {error}"
    finally:
        # the proxy has shut its connections: a driver call the watchdog could not break
        # (arrow-odbc's, ConnectorX's) returns now. The test ends once it has, so that no thread
        # of it is still inside a driver while the next test uses the same driver
        _wait_for_reading_threads()
        if engine is not None:
            engine.dispose()
    assert reader.path == path
    message = str(error)
    assert message.startswith(
        f"source '{SOURCE}', table '{spec.qualified_name}', partition {DAY.isoformat()}: "
        f"the source sent no rows for {STALL_SECONDS:g} s (read_stall_timeout) after {rows} row(s)"
    )
    assert "raise `read_stall_timeout` on the source in the project file" in message
    # rows flowed first (a long read is fine while they do), then the stall failed it; MariaDB's
    # ODBC driver and ConnectorX read the whole result (of a chunk) before they hand over a row
    assert 0 < rows < ROWS if path not in ("odbc bulk fetch", "connectorx") else rows == 0
    assert seconds < BOUND_SECONDS


@pytest.mark.parametrize("fixture", ["postgres_database", "mariadb_database"])
def test_a_count_query_the_source_never_answers_fails_within_the_stall_timeout(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    # every run's audit counts the window at the source: that query is bounded like a read
    database: SourceDatabase = request.getfixturevalue(fixture)
    create_stalling_table(database)
    upstream = 5432 if database.dialect == "postgresql" else 3306
    limits = SessionLimits(connect_timeout=10, read_stall_timeout=STALL_SECONDS)
    spec = TableSpec(schema=database.schema("Sales"), name="stalling", partition_column="at")
    with stalling_proxy(upstream, marker=b"count(", forward_bytes=0) as proxy:
        engine = create_source_engine(
            through(database, sa.make_url(database.url), proxy.port), database.sqlite_attach, limits
        )
        try:
            reader = SqlTableReader(engine, SOURCE, spec, batch_size=500, limits=limits)
            started = time.monotonic()
            with pytest.raises(SourceError) as caught:
                reader.count(WINDOW)
            seconds = time.monotonic() - started
        finally:
            engine.dispose()
        assert proxy.stalled.is_set()
    message = str(caught.value)
    assert message.startswith(f"source '{SOURCE}', table '{spec.qualified_name}', partition ")
    # the watchdog's bound, or (MariaDB) PyMySQL's read timeout at twice the stall timeout
    assert (
        f"did not answer a count query within {STALL_SECONDS + 10:g} s (read_stall_timeout "
        f"{STALL_SECONDS:g} s after connect_timeout 10 s)"
        in message
        or ("timed out" in message and "raise `read_stall_timeout`" in message)
    ), message
    assert seconds < BOUND_SECONDS


def test_a_stalled_postgresql_source_fails_the_run_and_writes_nothing(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    create_stalling_table(postgres_database)
    with stalling_proxy(5432) as proxy:
        url = sa.make_url(postgres_database.url).set(host="127.0.0.1", port=proxy.port)
        database = dataclasses.replace(postgres_database, url=url.render_as_string())
        project = build_project(
            database,
            tmp_path / "lake",
            [{"schema": "Sales", "name": "stalling", "partition_column": "at"}],
            read_stall_timeout=STALL_SECONDS,
            batch_size=500,
        )
        started = time.monotonic()
        result = project.materialize(
            ["stalling"], instance, partition=DAY.isoformat(), raise_on_error=False
        )
        seconds = time.monotonic() - started
    assert not result.success
    message = failure_message(result)
    assert f"source '{SOURCE}', table 'Sales.stalling', partition {DAY.isoformat()}" in message
    assert "(read_stall_timeout)" in message
    assert seconds < BOUND_SECONDS
    # no table version was committed (staged files, if any, are not part of a table)
    with pytest.raises(TableNotFoundError):
        project.delta("stalling")


@pytest.mark.parametrize("fixture", ["postgres_database", "mariadb_database"])
def test_a_server_that_accepts_but_never_answers_fails_within_the_connect_timeout(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    database: SourceDatabase = request.getfixturevalue(fixture)
    upstream = 5432 if database.dialect == "postgresql" else 3306
    limits = SessionLimits(connect_timeout=2, read_stall_timeout=STALL_SECONDS)
    spec = TableSpec(schema=database.schema("Sales"), name="stalling", partition_column="at")
    with stalling_proxy(upstream, marker=b"") as proxy:
        url = sa.make_url(database.url).set(host="127.0.0.1", port=proxy.port)
        engine = create_source_engine(url, None, limits)
        started = time.monotonic()
        try:
            with pytest.raises(SourceError) as raised:
                SqlTableReader(engine, SOURCE, spec, batch_size=500, limits=limits).read(WINDOW)
        finally:
            engine.dispose()
        seconds = time.monotonic() - started
        assert proxy.stalled.is_set()
    message = str(raised.value)
    assert message.startswith(
        f"source '{SOURCE}', table '{spec.qualified_name}', partition {DAY.isoformat()}: "
        "cannot connect to "
    )
    assert "raise `connect_timeout`, now 2 s" in message
    assert seconds < BOUND_SECONDS


SLOW_VIEWS = {
    "postgresql": 'CREATE VIEW "Sales".slow AS SELECT id, at, pg_sleep(3) IS NULL AS slept '
    'FROM "Sales".stalling WHERE id < 2',
    "mysql": "CREATE VIEW {schema}.slow AS SELECT id, at, SLEEP(3) AS slept "
    "FROM {schema}.stalling WHERE id < 2",
}


@pytest.mark.parametrize("fixture", ["postgres_database", "mariadb_database"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "rows"])
def test_a_query_past_the_statement_timeout_is_cancelled_by_the_server_naming_the_setting(
    request: pytest.FixtureRequest, fixture: str, fast_path: bool
) -> None:
    database: SourceDatabase = request.getfixturevalue(fixture)
    create_stalling_table(database)
    engine = database.engine()
    with engine.begin() as connection:
        connection.execute(
            sa.text(SLOW_VIEWS[database.dialect].format(schema=database.schema("Sales")))
        )
    engine.dispose()
    limits = SessionLimits(statement_timeout=0.5, read_stall_timeout=60)
    engine = create_source_engine(sa.make_url(database.url), None, limits)
    spec = TableSpec(schema=database.schema("Sales"), name="slow", partition_column="at")
    try:
        reader = SqlTableReader(
            engine, SOURCE, spec, batch_size=500, fast_path=fast_path, limits=limits
        )
        with pytest.raises(SourceError) as raised:
            pa.Table.from_batches(list(reader.read(WINDOW)))
    finally:
        engine.dispose()
    message = str(raised.value)
    assert message.startswith(
        f"source '{SOURCE}', table '{spec.qualified_name}', partition {DAY.isoformat()}: "
        "the source query failed after it started: "
    )
    assert "The server cancelled the query at the source's `statement_timeout`" in message


# ---- every path reads the same values, or fails the same way ----------------------------------

TRICKY_COLUMNS = [
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.DateTime),
    sa.Column("moment", sa.DateTime),
    sa.Column("instant", sa.DateTime(timezone=True)),
    sa.Column("day", sa.Date),
    sa.Column("amount", sa.Numeric(12, 2)),
    sa.Column("ratio", sa.Float(53)),
    sa.Column("note", sa.String(40)),
]
TRICKY_AT = datetime.datetime.combine(DAY, datetime.time(9, 30))
TRICKY_ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "at": TRICKY_AT,
        "moment": datetime.datetime(1, 1, 1),
        "instant": datetime.datetime(1, 1, 1, tzinfo=datetime.UTC),
        "day": datetime.date(1, 1, 1),
        "amount": -9_999_999_999.99,
        "ratio": float("nan"),
        "note": "Łódź ☕",
    },
    {
        "id": 2,
        "at": TRICKY_AT,
        "moment": datetime.datetime(9999, 12, 31, 23, 59, 59, 999999),
        "instant": datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC),
        "day": datetime.date(9999, 12, 31),
        "amount": 0.01,
        "ratio": float("inf"),
        "note": "",
    },
    {
        "id": 3,
        "at": TRICKY_AT,
        # a wall time that does not exist in Paris, and an instant given in another zone
        "moment": datetime.datetime(2024, 3, 31, 2, 30),
        "instant": datetime.datetime(
            2024, 10, 27, 2, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
        ),
        "day": datetime.date(2024, 2, 29),
        "amount": 12.34,
        "ratio": -0.0,
        "note": None,
    },
    {"id": 4, "at": TRICKY_AT},
]
# the columns arrow-odbc fetches exactly (it never serves zone-aware timestamps)
ODBC_COLUMNS = ("id", "at", "moment", "day", "amount", "ratio", "note")
BAD_VALUES = [
    pytest.param("moment", "infinity", id="timestamp infinity"),
    pytest.param("moment", "-infinity", id="timestamp -infinity"),
    pytest.param("instant", "-infinity", id="timestamptz -infinity"),
    pytest.param("day", "infinity", id="date infinity"),
    pytest.param("amount", "NaN", id="numeric NaN"),
]
READ_PATHS = ["copy", "rows", "arrow-odbc"]


def create_tricky_table(database: SourceDatabase, bad: tuple[str, str] | None = None) -> None:
    """`Sales.tricky` with TRICKY_ROWS, and one row holding `bad` (column, PostgreSQL text)."""
    table = sa.Table("tricky", sa.MetaData(), *[c.copy() for c in TRICKY_COLUMNS], schema="Sales")
    engine = database.engine()
    try:
        with engine.begin() as connection:
            connection.execute(sa.text('CREATE SCHEMA IF NOT EXISTS "Sales"'))
            table.create(connection)
            full = [{c.name: row.get(c.name) for c in TRICKY_COLUMNS} for row in TRICKY_ROWS]
            connection.execute(table.insert(), full)
            if bad is not None:
                column, text = bad
                value = sa.cast(sa.literal(text), table.c[column].type)
                connection.execute(table.insert().values(id=5, at=TRICKY_AT, **{column: value}))
    finally:
        engine.dispose()


def read_through(database: SourceDatabase, path: str) -> pa.Table:
    """The tricky table's day through one path (raises the path's error)."""
    columns = ODBC_COLUMNS if path == "arrow-odbc" else None
    spec = TableSpec(schema="Sales", name="tricky", partition_column="at", columns=columns)
    engine = database.engine()
    try:
        reader = SqlTableReader(engine, SOURCE, spec, batch_size=2, fast_path=path == "copy")
        if path != "arrow-odbc":
            table = reader.read(WINDOW).read_all()
            assert reader.path == path
            return table
        from arrow_odbc import Error as OdbcError

        from ingestion_assets.sources.odbc import odbc_batches, odbc_supported
        from ingestion_assets.sources.postgres import not_finite_message

        query, schema = reader.select_query(WINDOW)
        assert odbc_supported(schema, [c.type for c in TRICKY_COLUMNS if c.name in ODBC_COLUMNS])
        compiled = query.compile(dialect=postgresql_qmark())
        assert compiled.positiontup is not None
        parameters = [str(compiled.params[name]) for name in compiled.positiontup]
        database_name = sa.make_url(database.url).database
        connection_string = (
            "DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;PORT=5432;"
            f"DATABASE={database_name};UID=postgres;"
        )
        try:
            batches = list(odbc_batches(connection_string, str(compiled), parameters, schema, 2))
        except OdbcError as error:
            refused = not_finite_message(" ".join(str(error).split()))
            raise SourceError(f"{reader._where(WINDOW)}: {refused}.") from None
        return pa.Table.from_batches(batches, schema=schema)
    finally:
        engine.dispose()


def postgresql_qmark() -> sa.Dialect:
    """PostgreSQL's dialect printing `?` markers, as ODBC binds."""
    from sqlalchemy.dialects import postgresql

    return postgresql.psycopg2.dialect(paramstyle="qmark")  # type: ignore[no-any-return]


def needs_odbc(path: str) -> None:
    """Fail the arrow-odbc path where the PostgreSQL ODBC driver is not installed (a required
    part, as in test_odbc.py: never a skip)."""
    if path != "arrow-odbc":
        return
    try:
        import pyodbc
    except ImportError:
        pytest.fail("pyodbc cannot load the ODBC driver manager: run make system-deps")
    if "PostgreSQL Unicode" not in pyodbc.drivers():
        pytest.fail("the PostgreSQL ODBC driver is not installed: run make system-deps")


def comparable(table: pa.Table) -> list[dict[str, Any]]:
    """Rows by id, NaN made comparable."""
    rows = sorted(table.to_pylist(), key=lambda row: row["id"])
    for row in rows:
        for name, value in row.items():
            if isinstance(value, float) and value != value:
                row[name] = "NaN"
    return rows


@pytest.mark.parametrize("path", READ_PATHS)
def test_every_read_path_lands_the_same_extreme_values(
    postgres_database: SourceDatabase, path: str
) -> None:
    needs_odbc(path)
    create_tricky_table(postgres_database)
    reference = read_through(postgres_database, "rows")
    table = read_through(postgres_database, path)
    assert table.schema == reference.select(table.schema.names).schema
    assert comparable(table) == comparable(reference.select(table.schema.names))
    moments = {row["id"]: row["moment"] for row in table.to_pylist()}
    assert moments[2] == datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert moments[3] == datetime.datetime(2024, 3, 31, 2, 30)


@pytest.mark.parametrize(
    ("path", "column", "text"),
    [
        pytest.param(path, *bad.values, id=f"{bad.id}-{path}")
        for path in READ_PATHS
        for bad in BAD_VALUES
        # arrow-odbc never reads zone-aware timestamps: the table takes the row path there
        if path != "arrow-odbc" or bad.values[0] in ODBC_COLUMNS
    ],
)
def test_infinity_and_nan_fail_every_read_path_with_the_same_message(
    postgres_database: SourceDatabase, path: str, column: str, text: str
) -> None:
    needs_odbc(path)
    create_tricky_table(postgres_database, (column, text))
    with pytest.raises(SourceError) as raised:
        read_through(postgres_database, path)
    message = str(raised.value)
    where = f"source '{SOURCE}', table 'Sales.tricky', partition {DAY.isoformat()}"
    if text == "NaN":
        assert message.startswith(f"{where}: column amount holds NaN, which no decimal holds.")
        assert "NULLIF(column, 'NaN')" in message
    else:
        assert message == (
            f"{where}: column {column} holds {text}, which no date or timestamp in the lake "
            "holds (read as 9999-12-31 it would pass for a real value). Nothing was written. "
            "Replace it at the source: read the table through a view that casts it, e.g. CASE "
            f"WHEN isfinite({column}) THEN {column} END (NULL), or a date of your choosing."
        )


def test_a_driver_that_is_not_installed_fails_the_run_naming_the_source_and_the_extra(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    # mysqlclient (MySQLdb) is not a dependency of the project: the driver a user may name
    database = SourceDatabase(
        dialect="mysql", url="mysql+mysqldb://root@127.0.0.1:3306/absent", schemas={}
    )
    project = build_project(
        database,
        tmp_path / "lake",
        [{"schema": "Sales", "name": "orders", "partition_column": "at"}],
    )
    result = project.materialize(
        ["orders"], instance, partition=DAY.isoformat(), raise_on_error=False
    )
    assert not result.success
    message = failure_message(result)
    assert (
        f"source '{SOURCE}': the database driver of 'mysql+mysqldb' URLs" in message.splitlines()[0]
    )
    assert "No module named 'MySQLdb'" in message
    assert "--extra mysql" in message
    assert "'mysql+pymysql://...'" in message


def test_a_cancel_the_server_never_answers_does_not_hold_the_reader_that_stops() -> None:
    # PQcancel waits, without a limit, for the server to close its cancel connection: a stalled
    # server held a stopping COPY there for good. The cancel goes out from a thread of its own.
    answered, asked = threading.Event(), threading.Event()

    class StalledConnection:
        def cancel(self) -> None:
            asked.set()
            answered.wait(30)

    started = time.monotonic()
    send_cancel(StalledConnection())
    assert time.monotonic() - started < 1
    assert asked.wait(5), "the cancel was never sent"
    answered.set()
