"""The columnar paths of MySQL/MariaDB (ConnectorX) and SQLite (ADBC) against the row path."""

from __future__ import annotations

import datetime
import logging
import pathlib
import threading
import time
import uuid
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.cancel import CancelScope
from ingestion_assets.sources.columnar import connectorx_url, redacted
from ingestion_assets.sources.sql import SqlTableReader, create_source_engine
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import TableSpec
from ingestion_assets_tests.conftest import SourceDatabase

SOURCE = "src"
DAY = datetime.date(2024, 1, 4)
PATHS = {"mysql": "connectorx", "sqlite": "adbc"}


@pytest.fixture(params=[pytest.param("mysql", marks=pytest.mark.mariadb), "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> SourceDatabase:
    """A MariaDB database or a SQLite file (with an attached `Sales` file, as the demo's)."""
    if request.param == "mysql":
        mariadb: SourceDatabase = request.getfixturevalue("mariadb_database")
        return mariadb
    directory = tmp_path / "sqlite"
    directory.mkdir()
    return SourceDatabase(
        "sqlite",
        f"sqlite:///{directory / 'main.db'}",
        {"Sales": "Sales"},
        {"Sales": str(directory / "Sales.db")},
    )


def _columns(dialect: str) -> list[sa.Column[Any]]:
    mysql_dialect = dialect == "mysql"
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", mysql.DATETIME(fsp=6) if mysql_dialect else sa.DateTime()),
        sa.Column("money", sa.Numeric(19, 4)),
        sa.Column("total", sa.Numeric(38, 6)),
        sa.Column("flag", mysql.TINYINT(1) if mysql_dialect else sa.Boolean()),
        sa.Column("small", sa.SmallInteger),
        sa.Column("note", sa.String(60)),
        sa.Column("guid", sa.CHAR(36) if mysql_dialect else sa.Uuid()),
        sa.Column("payload", sa.LargeBinary if not mysql_dialect else mysql.VARBINARY(16)),
        sa.Column("day", sa.Date),
        sa.Column("ratio", sa.Double),
    ]


def _at(day: datetime.date, *time: int) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(*time))


def _rows(dialect: str) -> list[dict[str, Any]]:
    """Edge values; SQLite keeps decimals as REAL (or INTEGER), so its are a REAL's."""
    exact = dialect == "mysql"
    decimals = (
        [
            ("999999999999999.9999", "99999999999999999999999999999999.999999"),
            ("-999999999999999.9999", "-99999999999999999999999999999999.999999"),
            ("0.0001", "-0.000001"),
            ("12345.6789", "1.5"),
        ]
        if exact
        else [
            # a tie of the binary value (0.03125 at 4 places), values near ties, an integer
            ("0.03125", "2.675"),
            ("-12345.6789", "-0.0000005"),
            ("5", "99999999.999999"),
            ("1.00005", "0.1234565"),
        ]
    )
    guid = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
    moments = [
        _at(DAY),  # the window's first instant
        _at(DAY, 23, 59, 59, 999999),  # its last
        _at(DAY + datetime.timedelta(days=1)),  # the next day's first
        _at(DAY - datetime.timedelta(days=1), 23, 59, 59, 999999),  # the day before's last
    ]
    rows = [
        {
            "id": index + 1,
            "at": at,
            "money": float(money) if not exact else money,
            "total": float(total) if not exact else total,
            "flag": index % 2 == 0,
            "small": [-32768, 32767, 0, 1][index],
            "note": ["Łódź ☕ 配送", "", 'a,b;"c"\nd', "x" * 60][index],
            "guid": str(guid) if exact else guid,
            "payload": [b"\x00\xff", b"", b"\x00", b"\xff" * 16][index],
            "day": at.date(),
            "ratio": [1 / 3, -0.0, 5e-324, 1.7976931348623157e308][index],
        }
        for index, (at, (money, total)) in enumerate(zip(moments, decimals, strict=True))
    ]
    # NULL in every column but the key and the partition column
    rows.append({"id": 5, "at": _at(DAY, 12)} | {c.name: None for c in _columns(dialect)[2:]})
    return rows


def _create(database: SourceDatabase, name: str, columns: list[sa.Column[Any]]) -> sa.Table:
    table = sa.Table(name, sa.MetaData(), *columns, schema=database.schema("Sales"))
    engine = database.engine()
    try:
        with engine.begin() as connection:
            table.create(connection)
    finally:
        engine.dispose()
    return table


def _insert(database: SourceDatabase, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    engine = database.engine()
    try:
        with engine.begin() as connection:
            connection.execute(table.insert(), rows)
    finally:
        engine.dispose()


def _read(
    database: SourceDatabase, name: str, window: PartitionWindow | None, fast_path: bool
) -> tuple[pa.Table, str]:
    engine = create_source_engine(sa.make_url(database.url), database.sqlite_attach)
    spec = TableSpec(
        schema=database.schema("Sales"), name=name, partition_column="at" if window else None
    )
    try:
        reader = SqlTableReader(engine, SOURCE, spec, 2, fast_path=fast_path)
        table = reader.read(window).read_all()
    finally:
        engine.dispose()
    return table.sort_by("id"), reader.path


def test_the_columnar_path_reads_exactly_what_the_row_path_reads_edge_values_included(
    database: SourceDatabase,
) -> None:
    _insert(
        database, _create(database, "edges", _columns(database.dialect)), _rows(database.dialect)
    )
    extra = []
    if database.dialect == "sqlite":
        # values of another storage class than the column's: a BLOB in a text column, text
        # and REAL in a boolean one, an INTEGER in a decimal one; a time written to the
        # millisecond, as many tools write it
        extra = [6, 7, 8]
        engine = database.engine()
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    'INSERT INTO "Sales".edges (id, at, note, guid, flag, money) VALUES '
                    "(6, '2024-01-04 13:00:00.000000', x'ff00', x'', 'yes', 2), "
                    "(7, '2024-01-04 14:00:00.000000', 'x', 'y', 0.5, -3), "
                    "(8, '2024-01-04 15:00:00.250', NULL, NULL, NULL, NULL)"
                )
            )
        engine.dispose()
    windows = {
        "one day": (PartitionWindow.of_days(DAY, DAY), [1, 2, 5, *extra]),
        "two days": (
            PartitionWindow.of_days(DAY - datetime.timedelta(days=1), DAY),
            [1, 2, 4, 5, *extra],
        ),
        "no rows": (
            PartitionWindow.of_days(datetime.date(2030, 1, 1), datetime.date(2030, 1, 1)),
            [],
        ),
    }
    for label, (window, ids) in windows.items():
        fast, path = _read(database, "edges", window, fast_path=True)
        rows, row_path = _read(database, "edges", window, fast_path=False)
        assert (path, row_path) == (PATHS[database.dialect], "rows"), label
        assert fast.schema == rows.schema, label
        assert fast.equals(rows), f"{label}: {fast.to_pylist()} != {rows.to_pylist()}"
        assert fast["id"].to_pylist() == ids, label
    fast, _ = _read(database, "edges", windows["one day"][0], fast_path=True)
    first = fast.to_pylist()[0]
    assert first["at"] == _at(DAY)
    assert first["note"] == "Łódź ☕ 配送"
    assert first["flag"] is True
    assert fast.schema.field("money").type == pa.decimal128(19, 4)
    assert fast.schema.field("total").type == pa.decimal128(38, 6)
    assert fast.schema.field("at").type == pa.timestamp("us")
    if database.dialect == "mysql":
        assert str(first["total"]) == "99999999999999999999999999999999.999999"
    else:
        # "%.4f" rounds the binary tie 0.03125 half to even, as the row path does
        assert str(first["money"]) == "0.0312"
        odd = fast.to_pylist()[3]
        assert (odd["note"], odd["guid"], odd["flag"], str(odd["money"])) == (
            "ff00",
            "",
            True,
            "2.0000",
        )
        assert fast.to_pylist()[5]["at"] == _at(DAY, 15).replace(microsecond=250_000)
    assert fast.to_pylist()[2] == {"id": 5, "at": _at(DAY, 12)} | {
        c.name: None for c in _columns(database.dialect)[2:]
    }


def test_a_column_the_fast_driver_cannot_read_exactly_keeps_the_table_on_the_row_path_and_says_why_once(
    database: SourceDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    columns = [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime()),
        # a TIME holds no date (and MySQL's spans -838:59:59..838:59:59): read as rows read it
        sa.Column("odd", sa.Time()),
    ]
    table = _create(database, "odd", columns)
    _insert(database, table, [{"id": 1, "at": _at(DAY, 9), "odd": datetime.time(12, 30)}])
    window = PartitionWindow.of_days(DAY, DAY)
    with caplog.at_level(logging.WARNING, logger="ingestion_assets.sources.columnar"):
        fast, path = _read(database, "odd", window, fast_path=True)
        _read(database, "odd", window, fast_path=True)
    assert path == "rows"
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1, said
    assert said[0].startswith(
        f"source '{SOURCE}', table {database.schema('Sales')}.odd: read row by row: column odd"
    )
    rows, _ = _read(database, "odd", window, fast_path=False)
    assert fast.equals(rows)


def test_a_mysql_zero_date_fails_the_columnar_read_as_it_fails_the_row_path(
    mariadb_database: SourceDatabase,
) -> None:
    table = _create(mariadb_database, "zero", [*_columns("mysql")[:2], sa.Column("day", sa.Date)])
    engine = mariadb_database.engine()
    with engine.begin() as connection:
        connection.execute(sa.text("SET SESSION sql_mode = ''"))
        connection.execute(
            sa.text(
                f"INSERT INTO {table.schema}.zero VALUES (1, '2024-01-04 10:00:00', '0000-00-00')"
            )
        )
    engine.dispose()
    window = PartitionWindow.of_days(DAY, DAY)
    for fast_path in (True, False):
        with pytest.raises(SourceError) as raised:
            _read(mariadb_database, "zero", window, fast_path)
        message = str(raised.value)
        assert message.startswith(
            f"source '{SOURCE}', table '{table.schema}.zero', partition {DAY.isoformat()}: "
        )
        assert "0000-00-00" in message or "does not fit" in message, message


def _tagged_queries(database: SourceDatabase) -> list[str]:
    engine = database.engine()
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(
                    sa.text(
                        "SELECT INFO FROM information_schema.PROCESSLIST "
                        "WHERE INFO LIKE '%ingest-read-%' AND ID <> CONNECTION_ID()"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()


def test_a_cancelled_mysql_read_is_killed_on_the_server_and_fails_the_read(
    mariadb_database: SourceDatabase,
) -> None:
    schema = mariadb_database.schema("Sales")
    _insert(
        mariadb_database,
        _create(mariadb_database, "waiting", _columns("mysql")[:2]),
        [{"id": 1, "at": _at(DAY, 9)}],
    )
    engine = mariadb_database.engine()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                f"CREATE VIEW {schema}.slow AS SELECT id, at, SLEEP(60) AS slept "
                f"FROM {schema}.waiting"
            )
        )
    engine.dispose()
    engine = create_source_engine(sa.make_url(mariadb_database.url))
    spec = TableSpec(schema=schema, name="slow", partition_column="at")
    reader = SqlTableReader(engine, SOURCE, spec, 10)
    scope = CancelScope()
    failures: list[BaseException] = []

    def consume() -> None:
        with scope.entered():
            try:
                reader.read(PartitionWindow.of_days(DAY, DAY)).read_all()
            except SourceError as error:
                failures.append(error)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not _tagged_queries(mariadb_database):
            assert time.monotonic() < deadline, "the columnar read's query never started"
            time.sleep(0.05)
        assert reader.path == "connectorx"
        scope.cancel()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert len(failures) == 1
        assert str(failures[0]).startswith(
            f"source '{SOURCE}', table '{schema}.slow', partition {DAY.isoformat()}: "
            "the source query failed after it started: "
        )
        assert "interrupted" in str(failures[0])
        deadline = time.monotonic() + 30
        while _tagged_queries(mariadb_database):
            assert time.monotonic() < deadline, "the killed query still runs"
            time.sleep(0.05)
    finally:
        scope.cancel()
        engine.dispose()


def test_the_connectorx_url_carries_the_credentials_encoded_and_its_errors_never_show_them() -> (
    None
):
    url = sa.make_url(
        "mysql+pymysql://app%40x:p%40ss%2Fw0rd@db.internal:3307/sales?charset=utf8mb4"
    )
    text = connectorx_url(url)
    assert text == "mysql://app%40x:p%40ss%2Fw0rd@db.internal:3307/sales?prefer_socket=false"
    said = redacted(f"cannot connect to {text}: access denied (password p@ss/w0rd)", url.password)
    assert "p@ss/w0rd" not in said
    assert "p%40ss%2Fw0rd" not in said
    assert said.startswith("cannot connect to mysql://*** ")
    assert said.endswith("access denied (password ***)")
