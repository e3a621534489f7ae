"""The ODBC path: SQL Server statements as compiled, and pyodbc through real ODBC drivers."""

from __future__ import annotations

import datetime
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyodbc
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from sqlalchemy.dialects import mssql, postgresql
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc

from ingestion_assets.demo.schema import ORDER_TABLES
from ingestion_assets.io_managers.delta import INGESTED_AT, RUN_ID
from ingestion_assets.resources import SqlSourceResource
from ingestion_assets.sources.sql import (
    SqlTableReader,
    install_odbc_converters,
    mssql_select_expression,
    window_query,
)
from ingestion_assets.sources.types import array_builder
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
    postgres_database.load_demo()
    database = sa.make_url(postgres_database.url).database
    odbc = pyodbc.connect(
        f"DRIVER={{{POSTGRES_ODBC_DRIVER}}};SERVER=127.0.0.1;PORT=5432;"
        f"DATABASE={database};UID=postgres;"
    )
    engine = postgres_database.engine()
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
            query = window_query(
                table, [table.c[field.name] for field in schema], "ModifiedDate", WINDOW
            )
            through_odbc = _odbc_table(odbc, query, schema, batch_size=5)
            _assert_same_columns(
                native, through_odbc, logical, ORDER_TABLE_KEYS[logical][1], _uuid_columns(table)
            )
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
        (
            MARIADB_URL,
            f"DRIVER={{{MARIADB_ODBC_DRIVER}}};SERVER=127.0.0.1;PORT=3306;UID=root;",
            "CAST('2024-01-04 10:11:12.123456' AS DATETIME(6))",
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
    assert odbc.materialize(names, instance, partition=DAY.isoformat()).success
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
