"""The ODBC path: SQL Server statements as compiled, and pyodbc through real ODBC drivers."""

from __future__ import annotations

import datetime
import pathlib
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyodbc
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from sqlalchemy.dialects import mssql, mysql, postgresql
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc

from ingestion_assets.demo.schema import ORDER_TABLES
from ingestion_assets.errors import SourceError
from ingestion_assets.lake.rows import INGESTED_AT, RUN_ID
from ingestion_assets.resources import SqlSourceResource
from ingestion_assets.sources.odbc import (
    odbc_batches,
    odbc_connection_string,
    odbc_statement,
    odbc_supported,
    redact_connection_string,
)
from ingestion_assets.sources.sql import (
    SqlTableReader,
    create_source_engine,
    install_odbc_converters,
    mssql_select_expression,
    window_query,
)
from ingestion_assets.sources.types import array_builder, arrow_type
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import TableSpec
from ingestion_assets_tests.conftest import (
    MARIADB_URL,
    ORDER_TABLE_KEYS,
    POSTGRES_URL,
    TEST_SCALE,
    SourceDatabase,
    build_project,
    require_service,
    table_entry,
)
from ingestion_assets_tests.test_sql_source import FLAG_ROWS, flags_table

DAY = TEST_SCALE.start_date + datetime.timedelta(days=3)
WINDOW = PartitionWindow(
    datetime.datetime.combine(DAY, datetime.time(), datetime.UTC),
    datetime.datetime.combine(DAY + datetime.timedelta(days=1), datetime.time(), datetime.UTC),
    f"partition {DAY.isoformat()}",
)
POSTGRES_ODBC_DRIVER = "PostgreSQL Unicode"
MARIADB_ODBC_DRIVER = "MariaDB Unicode"


# --- SQL Server, compiled without a server ------------------------------------------------------


@pytest.fixture(params=["mssql", "mssql+pyodbc", "engine"])
def sql_server(request: pytest.FixtureRequest) -> Iterator[sa.Dialect]:
    """SQL Server 2022 as the bare dialect, the pyodbc dialect, and an engine's (never connected)."""
    engine = sa.create_engine(
        "mssql+pyodbc://ingest@sql.example.com/AdventureWorks2022"
        "?driver=ODBC+Driver+18+for+SQL+Server"
    )
    # a dialect built without its dbapi prints :named parameters; an engine's uses pyodbc's
    dialect = {
        "mssql": lambda: mssql.dialect(paramstyle=pyodbc.paramstyle),
        "mssql+pyodbc": lambda: mssql_pyodbc.dialect(paramstyle=pyodbc.paramstyle),
        "engine": lambda: engine.dialect,
    }[request.param]()
    dialect.server_version_info = (16, 0)
    yield dialect
    engine.dispose()


def test_pyodbc_binds_with_question_marks() -> None:
    assert pyodbc.paramstyle == "qmark"


def test_the_window_query_binds_naive_bounds_on_sql_server(sql_server: sa.Dialect) -> None:
    table = sa.Table(
        "SalesOrderHeader",
        sa.MetaData(),
        sa.Column("SalesOrderID", sa.Integer),
        sa.Column("ModifiedDate", mssql.DATETIME2(7)),
        schema="Sales",
    )
    compiled = window_query(table, list(table.c), "ModifiedDate", WINDOW).compile(
        dialect=sql_server
    )
    text = str(compiled)
    assert "FROM [Sales].[SalesOrderHeader]" in text
    assert "[ModifiedDate] >= ?" in text
    assert "[ModifiedDate] < ?" in text
    assert DAY.isoformat() not in text
    assert "2024" not in text
    assert compiled.positiontup is not None
    params = [compiled.params[name] for name in compiled.positiontup]
    # datetime2 holds local times of the source's zone: the bounds go in without a zone
    assert params == [WINDOW.start.replace(tzinfo=None), WINDOW.end.replace(tzinfo=None)]
    assert all(isinstance(value, datetime.datetime) for value in params)
    assert all(value.tzinfo is None for value in params)


def test_a_datetimeoffset_partition_keeps_the_zone_of_its_bounds(sql_server: sa.Dialect) -> None:
    table = sa.Table(
        "Events", sa.MetaData(), sa.Column("At", mssql.DATETIMEOFFSET(7)), schema="dbo"
    )
    compiled = window_query(table, list(table.c), "At", WINDOW).compile(dialect=sql_server)
    assert compiled.positiontup is not None
    params = [compiled.params[name] for name in compiled.positiontup]
    assert params == [WINDOW.start, WINDOW.end]
    assert all(value.tzinfo is not None for value in params)


def test_reserved_and_odd_names_are_bracket_quoted(sql_server: sa.Dialect) -> None:
    table = sa.Table(
        "Order]s",
        sa.MetaData(),
        sa.Column("select", mssql.DATETIME2(3)),
        sa.Column("Unit Price", mssql.MONEY()),
        schema="Sales Data",
    )
    text = str(window_query(table, list(table.c), "select", WINDOW).compile(dialect=sql_server))
    # a closing bracket inside a name is doubled
    assert "FROM [Sales Data].[Order]]s]" in text
    assert "[Sales Data].[Order]]s].[select] >= ?" in text
    assert "[Sales Data].[Order]]s].[select] < ?" in text
    assert "[Sales Data].[Order]]s].[Unit Price]" in text


@pytest.mark.parametrize(
    ("table_name", "column_name", "data_type", "expected"),
    [
        # AdventureWorks' own hierarchyid and geography columns
        ("Employee", "OrganizationNode", "hierarchyid", "[Employee].[OrganizationNode].ToString()"),
        ("Address", "SpatialLocation", "geography", "[Address].[SpatialLocation].STAsText()"),
        ("Address", "SpatialLocation", "GEOGRAPHY", "[Address].[SpatialLocation].STAsText()"),
        ("Shape", "Outline", "geometry", "[Shape].[Outline].STAsText()"),
        ("Order]s", "select", "hierarchyid", "[Order]]s].[select].ToString()"),
        # like everywhere else in the statement, plain lower-case names need no brackets
        ("t", "c", "hierarchyid", "t.c.ToString()"),
    ],
)
def test_unknown_sql_server_types_are_read_through_their_text_method(
    sql_server: sa.Dialect, table_name: str, column_name: str, data_type: str, expected: str
) -> None:
    table = sa.Table(
        table_name, sa.MetaData(), sa.Column(column_name, sa.types.NullType()), schema="HR"
    )
    expression = mssql_select_expression(table, table.c[column_name], data_type)
    text = str(sa.select(expression).select_from(table).compile(dialect=sql_server))
    quoted_label = sql_server.identifier_preparer.quote(column_name)
    assert f"SELECT {expected} AS {quoted_label}" in text
    assert expression.name == column_name


def test_sql_variant_is_cast_to_nvarchar_max(sql_server: sa.Dialect) -> None:
    table = sa.Table(
        "Setting", sa.MetaData(), sa.Column("Value", sa.types.NullType()), schema="dbo"
    )
    expression = mssql_select_expression(table, table.c.Value, "sql_variant")
    text = str(sa.select(expression).compile(dialect=sql_server))
    assert "CAST(dbo.[Setting].[Value] AS NVARCHAR(max)) AS [Value]" in text


def test_a_url_from_parts_becomes_an_odbc_driver_18_connection_string() -> None:
    password = "s3cr;et}pw"
    resource = SqlSourceResource(
        source_name="erp",
        drivername="mssql+pyodbc",
        host="sql.example.com",
        port=1433,
        username="ingest",
        password=password,
        database="AdventureWorks2022",
        query={
            "driver": "ODBC Driver 18 for SQL Server",
            "Encrypt": "yes",
            "TrustServerCertificate": "yes",
        },
    )
    url = resource.sqlalchemy_url()
    (connection_string,), connect_kwargs = mssql_pyodbc.dialect().create_connect_args(url)
    parts = connection_string.split(";")
    assert parts[0] == "DRIVER={ODBC Driver 18 for SQL Server}"
    assert "Server=sql.example.com,1433" in parts
    assert "Database=AdventureWorks2022" in parts
    assert "UID=ingest" in parts
    assert "Encrypt=yes" in parts
    assert "TrustServerCertificate=yes" in parts
    # braced, with '}' doubled: the ';' in the password cannot start a new keyword
    assert "PWD={s3cr;et}}pw}" in connection_string
    assert connect_kwargs == {}
    shown = url.render_as_string(hide_password=True)
    assert password not in shown
    assert "s3cr" not in shown
    assert "***" in shown
    assert "sql.example.com" in shown


# --- PostgreSQL through its Debian ODBC driver --------------------------------------------------


def _installed_odbc_drivers() -> list[str]:
    listing = subprocess.run(["odbcinst", "-q", "-d"], capture_output=True, text=True, check=True)
    return [line.strip().strip("[]") for line in listing.stdout.splitlines() if line.strip()]


def test_the_debian_odbc_drivers_are_registered() -> None:
    drivers = _installed_odbc_drivers()
    assert POSTGRES_ODBC_DRIVER in drivers
    assert MARIADB_ODBC_DRIVER in drivers
    assert set(pyodbc.drivers()) >= {POSTGRES_ODBC_DRIVER, MARIADB_ODBC_DRIVER}


def _odbc_table(
    connection: Any, query: sa.Select[Any], schema: pa.Schema, batch_size: int
) -> pa.Table:
    """Run `query` on a pyodbc connection and build Arrow batches the reader's way."""
    compiled = query.compile(dialect=postgresql.psycopg2.dialect(paramstyle="qmark"))
    assert compiled.positiontup is not None
    parameters = [compiled.params[name] for name in compiled.positiontup]
    builders = [array_builder(field.type) for field in schema]
    cursor = connection.cursor()
    cursor.execute(str(compiled), parameters)
    batches = []
    while rows := cursor.fetchmany(batch_size):
        columns = list(zip(*rows, strict=True))
        arrays = [build(values) for build, values in zip(builders, columns, strict=True)]
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    cursor.close()
    return pa.Table.from_batches(batches, schema=schema)


def test_postgres_through_odbc_equals_the_native_driver(
    postgres_database: SourceDatabase,
) -> None:
    # both ODBC paths, pyodbc rows and arrow-odbc bulk fetches, through psqlODBC
    postgres_database.load_demo()
    database = sa.make_url(postgres_database.url).database
    connection_string = (
        f"DRIVER={{{POSTGRES_ODBC_DRIVER}}};SERVER=127.0.0.1;PORT=5432;"
        f"DATABASE={database};UID=postgres;"
    )
    odbc = pyodbc.connect(connection_string)
    engine = postgres_database.engine()
    dialect = postgresql.psycopg2.dialect(paramstyle="qmark")
    try:
        install_odbc_converters(odbc)
        for logical in ORDER_TABLES:
            schema_name, name = logical.split(".")
            spec = TableSpec(schema=schema_name, name=name, partition_column="ModifiedDate")
            reader = SqlTableReader(engine, "src", spec, batch_size=5)
            native = reader.read(WINDOW).read_all()
            with engine.connect() as connection:
                table = reader.reflect(connection)
            schema = reader.arrow_schema(table, "postgresql")
            columns = [table.c[field.name] for field in schema]
            query = window_query(table, columns, "ModifiedDate", WINDOW)
            key, uuids = ORDER_TABLE_KEYS[logical][1], _uuid_columns(table)
            through_pyodbc = _odbc_table(odbc, query, schema, batch_size=5)
            _assert_same_columns(native, through_pyodbc, logical, key, uuids)
            assert odbc_supported(schema, [c.type for c in columns]), logical
            statement, parameters = odbc_statement(query, dialect)
            assert parameters == [
                WINDOW.start.replace(tzinfo=None).isoformat(),
                WINDOW.end.replace(tzinfo=None).isoformat(),
            ]
            batches = odbc_batches(connection_string, statement, parameters, schema, 5)
            through_arrow_odbc = pa.Table.from_batches(list(batches), schema=schema)
            _assert_same_columns(native, through_arrow_odbc, logical, key, uuids)
    finally:
        odbc.close()
        engine.dispose()


def _uuid_columns(table: sa.Table) -> set[str]:
    return {column.name for column in table.c if isinstance(column.type, sa.Uuid)}


def _assert_same_columns(
    native: pa.Table, through_odbc: pa.Table, label: str, key: list[str], uuid_columns: set[str]
) -> None:
    assert through_odbc.schema == native.schema, label
    assert native.num_rows > 0, f"{label}: the test day must have rows"
    native = native.sort_by([(k, "ascending") for k in key])
    through_odbc = through_odbc.sort_by([(k, "ascending") for k in key])
    for name in native.column_names:
        expected = native.column(name).to_pylist()
        actual = through_odbc.column(name).to_pylist()
        if name in uuid_columns:
            # psqlODBC sends uuid as upper-case text, psycopg2 as a UUID object; only case differs
            assert all(value is None or value == value.upper() for value in actual), label
            actual = [None if value is None else value.lower() for value in actual]
        assert actual == expected, f"{label}.{name}"
    if label == "Sales.SalesOrderHeader":
        # the day covers what an ODBC driver tends to get wrong
        assert any(
            value is not None and not value.isascii() for value in native["Comment"].to_pylist()
        )
        assert None in native["Comment"].to_pylist()
        assert set(native["OnlineOrderFlag"].to_pylist()) == {True, False}
        assert native.schema.field("TotalDue").type == pa.decimal128(19, 4)


@pytest.mark.parametrize(
    ("service_url", "connection_string", "timestamp_sql"),
    [
        (
            POSTGRES_URL,
            f"DRIVER={{{POSTGRES_ODBC_DRIVER}}};SERVER=127.0.0.1;PORT=5432;DATABASE=postgres;"
            "UID=postgres;",
            "CAST('2024-01-04 10:11:12.123456' AS timestamp(6))",
        ),
        pytest.param(
            MARIADB_URL,
            f"DRIVER={{{MARIADB_ODBC_DRIVER}}};SERVER=127.0.0.1;PORT=3306;UID=root;",
            "CAST('2024-01-04 10:11:12.123456' AS DATETIME(6))",
            marks=pytest.mark.mariadb,
        ),
    ],
    ids=["postgresql", "mariadb"],
)
def test_odbc_converters_leave_other_databases_timestamps_exact(
    service_url: str, connection_string: str, timestamp_sql: str
) -> None:
    # the converters read SQL Server's binary timestamp structs; other drivers send no such struct
    require_service(service_url, "the database").dispose()
    connection = pyodbc.connect(connection_string)
    try:
        install_odbc_converters(connection)
        cursor = connection.cursor()
        cursor.execute(f"SELECT {timestamp_sql}, CAST(NULL AS {timestamp_sql.split(' AS ')[1]}")
        row = cursor.fetchone()
        assert tuple(row) == (datetime.datetime(2024, 1, 4, 10, 11, 12, 123456), None)
    finally:
        connection.close()


# --- MariaDB through mysql+pyodbc, end to end ---------------------------------------------------


def _mariadb_odbc_url(database: SourceDatabase) -> str:
    native = sa.make_url(MARIADB_URL)
    url = sa.URL.create(
        "mysql+pyodbc",
        username=native.username,
        host=native.host,
        # a database keeps SQLAlchemy from taking the host for a DSN name; a port in the query
        # becomes Port= (the URL's port would become SQL Server's "Server=host,port")
        database=database.schema("Sales"),
        query={
            "driver": MARIADB_ODBC_DRIVER,
            "port": str(native.port or 3306),
            "charset": "utf8mb4",
        },
    )
    return url.render_as_string(hide_password=False)


def test_mariadb_through_odbc_lands_the_same_delta_tables_as_pymysql(
    mariadb_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    mariadb_database.load_demo()
    tables = [table_entry(mariadb_database, logical) for logical in ORDER_TABLES]
    names = [ORDER_TABLE_KEYS[logical][0] for logical in ORDER_TABLES]
    native = build_project(mariadb_database, tmp_path / "native", tables)
    odbc = build_project(
        mariadb_database,
        tmp_path / "odbc",
        tables,
        connection={"url": _mariadb_odbc_url(mariadb_database)},
    )
    assert str(odbc.spec.sources["src"].connection.url).startswith("mysql+pyodbc://")
    assert native.materialize(names, instance, partition=DAY.isoformat()).success
    through_odbc = odbc.materialize(names, instance, partition=DAY.isoformat())
    assert through_odbc.success
    messages = [event.user_message for event in instance.all_logs(through_odbc.run_id)]
    for logical in ORDER_TABLES:
        name = logical.split(".")[1]
        assert any(
            message.startswith("fetching ") and name in message and "odbc bulk fetch" in message
            for message in messages
        ), logical
    for logical in ORDER_TABLES:
        name, key = ORDER_TABLE_KEYS[logical]
        expected = _lake_rows(native.delta(name).to_pyarrow_table(), key)
        actual = _lake_rows(odbc.delta(name).to_pyarrow_table(), key)
        assert actual.schema == expected.schema, logical
        assert expected.num_rows > 0, f"{logical}: the test day must have rows"
        for column in expected.column_names:
            assert actual.column(column).equals(expected.column(column)), f"{logical}.{column}"
    header = native.delta("sales_order_header").to_pyarrow_table()
    comments = header.column("Comment").to_pylist()
    # the compared day holds non-ASCII text, NULLs and exact decimals
    assert any(value is not None and not value.isascii() for value in comments)
    assert None in comments
    assert header.schema.field("TotalDue").type == pa.decimal128(19, 4)


def _lake_rows(table: pa.Table, key: list[str]) -> pa.Table:
    return table.drop_columns([INGESTED_AT, RUN_ID]).sort_by([(k, "ascending") for k in key])


# --- the arrow-odbc bulk path ------------------------------------------------------------------


def _mariadb_odbc_engine(database: SourceDatabase, **query: str) -> sa.Engine:
    url = sa.make_url(_mariadb_odbc_url(database)).update_query_dict(query)
    return create_source_engine(url)


def test_odbc_sources_read_through_arrow_odbc_the_same_rows_as_pyodbc_and_pymysql(
    mariadb_database: SourceDatabase,
) -> None:
    mariadb_database.load_demo()
    native_engine = mariadb_database.engine()
    odbc_engine = _mariadb_odbc_engine(mariadb_database)
    try:
        for logical in ORDER_TABLES:
            schema_name, name = logical.split(".")
            spec = TableSpec(
                schema=mariadb_database.schema(schema_name),
                name=name,
                partition_column="ModifiedDate",
            )
            bulk = SqlTableReader(odbc_engine, "src", spec, batch_size=7)
            rows = SqlTableReader(odbc_engine, "src", spec, batch_size=7, fast_path=False)
            native = SqlTableReader(native_engine, "src", spec, batch_size=7)
            from_bulk = bulk.read(WINDOW).read_all()
            from_rows = rows.read(WINDOW).read_all()
            expected = native.read(WINDOW).read_all()
            assert (bulk.path, rows.path, native.path) == ("odbc bulk fetch", "rows", "connectorx")
            key = ORDER_TABLE_KEYS[logical][1]
            _assert_same_columns(expected, from_bulk, logical, key, set())
            _assert_same_columns(expected, from_rows, logical, key, set())
            # bounded batches, NOT NULL kept from the declared schema
            assert max(len(batch) for batch in from_bulk.to_batches()) <= 7
            assert from_bulk.schema.field(key[0]).nullable is False
    finally:
        native_engine.dispose()
        odbc_engine.dispose()


EDGE_COLUMNS = {
    "id": "INT NOT NULL PRIMARY KEY",
    "ModifiedDate": "DATETIME(6) NOT NULL",
    "tiny": "TINYINT",
    "tiny_unsigned": "TINYINT UNSIGNED",
    "small": "SMALLINT",
    "big": "BIGINT",
    "amount": "DECIMAL(38, 10)",
    "ratio": "DOUBLE",
    "single": "FLOAT",
    "code": "VARCHAR(3)",
    "fixed": "CHAR(2)",
    "day": "DATE",
    "moment": "DATETIME(6)",
    "flag": "BIT(1)",
    "raw": "VARBINARY(16)",
}
EDGE_ROWS = [
    {
        "id": 1,
        "tiny": -128,
        "tiny_unsigned": 255,
        "small": -32768,
        "big": -(2**63),
        "amount": "-9999999999999999999999999999.9999999999",
        "ratio": -1.7976931348623157e308,
        "single": 1.5,
        "code": "😀é✓",
        "fixed": "é😀",
        "day": "1000-01-01",
        "moment": "1000-01-01 00:00:00.000000",
        "flag": 1,
        "raw": b"\x00\xff" * 8,
    },
    {
        "id": 2,
        "tiny": 127,
        "tiny_unsigned": 0,
        "small": 32767,
        "big": 2**63 - 1,
        "amount": "0.0000000001",
        "ratio": 5e-324,
        "single": -0.0,
        "code": "",
        "fixed": "a",
        "day": "9999-12-31",
        "moment": "9999-12-31 23:59:59.999999",
        "flag": 0,
        "raw": b"",
    },
    {"id": 3},
]


@pytest.mark.parametrize("with_bit", [False, True], ids=["bulk", "bit-column"])
def test_arrow_odbc_keeps_edge_values_exact(
    mariadb_database: SourceDatabase, with_bit: bool
) -> None:
    # MariaDB's driver bulk-fetches BIT(1) as NULLs: a table with one keeps the row path
    edge_columns = {name: ddl for name, ddl in EDGE_COLUMNS.items() if with_bit or name != "flag"}
    schema = mariadb_database.schema("Sales")
    native_engine = mariadb_database.engine()
    columns = ", ".join(f"`{name}` {ddl}" for name, ddl in edge_columns.items())
    with native_engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE `{schema}`.edges ({columns})"))
        for row in EDGE_ROWS:
            values = {name: row.get(name) for name in edge_columns}
            values["ModifiedDate"] = datetime.datetime.combine(DAY, datetime.time(1))
            names = ", ".join(f"`{name}`" for name in values)
            markers = ", ".join(f":{name}" for name in values)
            connection.execute(
                sa.text(f"INSERT INTO `{schema}`.edges ({names}) VALUES ({markers})"), values
            )
    odbc_engine = _mariadb_odbc_engine(mariadb_database)
    spec = TableSpec(schema=schema, name="edges", partition_column="ModifiedDate")
    try:
        bulk = SqlTableReader(odbc_engine, "src", spec, batch_size=2)
        from_bulk = bulk.read(WINDOW).read_all().sort_by("id")
        expected = SqlTableReader(native_engine, "src", spec, 2).read(WINDOW).read_all()
    finally:
        native_engine.dispose()
        odbc_engine.dispose()
    assert bulk.path == ("rows" if with_bit else "odbc bulk fetch")
    assert from_bulk.num_rows == len(EDGE_ROWS)
    assert from_bulk.schema == expected.schema
    expected = expected.sort_by("id")
    for name in expected.column_names:
        assert from_bulk.column(name).to_pylist() == expected.column(name).to_pylist(), name
    first = from_bulk.slice(0, 1).to_pylist()[0]
    assert first["code"] == "😀é✓"
    assert first["big"] == -(2**63)
    assert str(first["amount"]) == "-9999999999999999999999999999.9999999999"
    assert first["moment"] == datetime.datetime(1000, 1, 1)
    assert from_bulk.slice(1, 1).to_pylist()[0]["moment"] == datetime.datetime(
        9999, 12, 31, 23, 59, 59, 999999
    )
    assert all(
        value is None
        for key, value in from_bulk.slice(2, 1).to_pylist()[0].items()
        if key not in ("id", "ModifiedDate")
    )


@pytest.mark.parametrize("fast_path", [True, False], ids=["bulk", "pyodbc rows"])
def test_mysql_booleans_through_odbc_land_as_through_pymysql_and_refuse_other_numbers(
    mariadb_database: SourceDatabase, fast_path: bool
) -> None:
    # MariaDB's driver bulk-fetches a TINYINT(1) asked for as a bit as NULLs: fetched as int8
    schema = flags_table(mariadb_database, [*FLAG_ROWS, (4, 1, 1, 1, 1, 1)])
    native_engine = mariadb_database.engine()
    odbc_engine = _mariadb_odbc_engine(mariadb_database)
    spec = TableSpec(schema=schema, name="flags", partition_column="ModifiedDate")
    try:
        odbc = SqlTableReader(odbc_engine, "src", spec, batch_size=2, fast_path=fast_path)
        through_odbc = odbc.read(WINDOW).read_all().sort_by("id")
        expected = SqlTableReader(native_engine, "src", spec, 2).read(WINDOW).read_all()
        assert odbc.path == ("odbc bulk fetch" if fast_path else "rows")
        assert through_odbc.schema == expected.schema
        assert through_odbc.schema.field("declared_boolean").type == pa.bool_()
        assert through_odbc.to_pylist() == expected.sort_by("id").to_pylist()
        assert through_odbc.column("IsActive").to_pylist() == [True, False, None, True]

        with native_engine.begin() as connection:
            connection.execute(sa.text(f"UPDATE `{schema}`.flags SET IsActive = -1 WHERE id = 4"))
        with pytest.raises(SourceError) as refused:
            SqlTableReader(odbc_engine, "src", spec, 2, fast_path=fast_path).read(WINDOW).read_all()
    finally:
        native_engine.dispose()
        odbc_engine.dispose()
    assert (
        f"source 'src', table '{schema}.flags', partition {DAY.isoformat()}: column IsActive is "
        "a TINYINT(1)"
    ) in str(refused.value)
    assert "but -1 is neither 0 nor 1, so it is no boolean" in str(refused.value)
    assert "set `tinyint1_as_bool: false` on the table" in str(refused.value)


def test_an_odbc_failure_names_the_table_and_partition_and_hides_the_password(
    mariadb_database: SourceDatabase,
) -> None:
    mariadb_database.load_demo()
    secret = "odbc-Secret-7f3a"
    user = f"u{uuid.uuid4().hex[:8]}"
    admin = require_service(MARIADB_URL, "MariaDB")
    sales = mariadb_database.schema("Sales")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{secret}'"))
        connection.execute(sa.text(f"GRANT ALL ON `{sales}`.* TO '{user}'@'%'"))
    url = sa.make_url(_mariadb_odbc_url(mariadb_database)).set(username=user, password=secret)
    engine = create_source_engine(url)
    spec = TableSpec(schema=sales, name="SalesOrderHeader", partition_column="ModifiedDate")
    try:
        reader = SqlTableReader(engine, "src", spec, batch_size=5)
        batches = reader.read(WINDOW)
        assert reader.path == "odbc bulk fetch"
        # the table goes away between planning the read and fetching it
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP TABLE `{sales}`.`SalesOrderHeader`"))
        with pytest.raises(SourceError) as raised:
            batches.read_all()
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP USER '{user}'@'%'"))
        admin.dispose()
    message = str(raised.value)
    assert f"source 'src', table '{sales}.SalesOrderHeader', partition {DAY.isoformat()}" in message
    assert "doesn't exist" in message
    assert "fast_path: false" in message
    assert secret not in message
    assert secret not in repr(raised.value.__cause__) + repr(raised.value.__context__)


def _mssql_column(type_: sa.types.TypeEngine[Any]) -> tuple[pa.Schema, list[Any]]:
    field = pa.field("c", arrow_type(type_, "mssql"))
    return pa.schema([field]), [type_]


@pytest.mark.parametrize(
    ("column_type", "bulk"),
    [
        (mssql.DATETIME(), True),
        (mssql.MONEY(), True),
        (mssql.TINYINT(), True),
        (mssql.BIT(), True),
        (mssql.NVARCHAR(25), True),
        (mssql.UNIQUEIDENTIFIER(), True),
        (sa.Numeric(19, 4), True),
        (mssql.DATETIME2(precision=7), False),
        (mssql.DATETIMEOFFSET(precision=7), False),
        (mssql.TIME(precision=7), False),
        (mssql.NVARCHAR(None), False),
        (mssql.VARBINARY(None), False),
        (mssql.XML(), False),
        (sa.types.NullType(), False),
        (sa.Numeric(None, None), False),
        (sa.Numeric(60, 2), False),
    ],
    ids=repr,
)
def test_only_columns_arrow_odbc_fetches_exactly_take_the_bulk_path(
    column_type: sa.types.TypeEngine[Any], bulk: bool
) -> None:
    assert odbc_supported(*_mssql_column(column_type)) is bulk


def test_unsigned_mysql_integers_above_a_byte_keep_the_row_path() -> None:
    for column_type, bulk in [
        (mysql.TINYINT(unsigned=True), True),
        (mysql.INTEGER(unsigned=True), False),
        (mysql.BIGINT(unsigned=True), False),
        (mysql.BIGINT(), True),
    ]:
        schema = pa.schema([pa.field("c", arrow_type(column_type, "mysql"))])
        assert odbc_supported(schema, [column_type]) is bulk, column_type


def test_the_sql_server_statement_binds_window_bounds_as_iso_text(sql_server: sa.Dialect) -> None:
    table = sa.Table(
        "SalesOrderHeader",
        sa.MetaData(),
        sa.Column("SalesOrderID", mssql.INTEGER),
        sa.Column("ModifiedDate", mssql.DATETIME),
        schema="Sales",
    )
    statement, parameters = odbc_statement(
        window_query(table, list(table.c), "ModifiedDate", WINDOW), sql_server
    )
    assert statement.count("?") == 2
    assert "[Sales].[SalesOrderHeader].[ModifiedDate] >= ?" in statement
    # no fractional digits: SQL Server's datetime rejects text with more than three
    assert parameters == [
        f"{DAY.isoformat()}T00:00:00",
        f"{(DAY + datetime.timedelta(days=1)).isoformat()}T00:00:00",
    ]


def test_a_url_becomes_the_odbc_connection_string_and_its_password_is_redacted() -> None:
    engine = sa.create_engine(
        sa.URL.create(
            "mssql+pyodbc",
            username="ingest",
            password="p;w}d",
            host="sql.example.com",
            database="AdventureWorks2022",
            query={"driver": "ODBC Driver 18 for SQL Server"},
        )
    )
    connection_string = odbc_connection_string(engine)
    engine.dispose()
    assert "DRIVER={ODBC Driver 18 for SQL Server}" in connection_string
    assert "Server=sql.example.com" in connection_string
    redacted = redact_connection_string(f"login failed: {connection_string}", connection_string)
    assert "p;w}d" not in redacted
    assert "p;w" not in redacted
