"""Bad input lands exactly, or fails naming source, table/stream, partition and fix, writing nothing.

Real PostgreSQL, MariaDB and SQLite sources and a real HTTP server on 127.0.0.1, materialized through
Dagster and read back from Delta; the properties (project-file names, type mapping, COPY text cut
into blocks) hold for every generated input.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import io
import math
import pathlib
import posixpath
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
import yaml
from dagster import DagsterInstance
from deltalake.exceptions import TableNotFoundError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from sqlalchemy.dialects import mssql, mysql, postgresql, sqlite
from sqlalchemy.types import TypeEngine

from ingestion_assets.definitions import build_definitions
from ingestion_assets.errors import ConfigError
from ingestion_assets.lake.rows import LINEAGE_COLUMNS
from ingestion_assets.project import parse_project
from ingestion_assets.sources.postgres import csv_blocks
from ingestion_assets.sources.types import array_builder, arrow_type
from ingestion_assets.specs import snake_case
from ingestion_assets_tests.conftest import (
    SOURCE,
    IngestProject,
    SourceDatabase,
    build_project,
    failure_message,
)

DAY = datetime.date(2024, 1, 4)
PARTITION = DAY.isoformat()
# the partition column of every row: the edge values live in other columns
AT = datetime.datetime(2024, 1, 4, 9, 30)
FIXTURE_OF = {
    "postgresql": "postgres_database",
    "mysql": "mariadb_database",
    "sqlite": "sqlite_database",
}


def database_of(request: pytest.FixtureRequest, dialect: str) -> SourceDatabase:
    """The source database fixture of a dialect."""
    database: SourceDatabase = request.getfixturevalue(FIXTURE_OF[dialect])
    return database


def create_table(
    database: SourceDatabase,
    name: str,
    columns: Sequence[sa.Column[Any]],
    rows: Sequence[Mapping[str, Any]] = (),
) -> sa.Table:
    """A table in the database's `Sales` schema, filled with `rows`."""
    table = sa.Table(name, sa.MetaData(), *columns, schema=database.schema("Sales"))
    engine = database.engine()
    try:
        with engine.begin() as connection:
            if database.dialect == "postgresql":
                connection.execute(sa.text('CREATE SCHEMA IF NOT EXISTS "Sales"'))
            table.create(connection)
            if rows:
                connection.execute(table.insert(), list(rows))
    finally:
        engine.dispose()
    return table


def sales_project(
    database: SourceDatabase, lake: pathlib.Path, name: str, **source_options: Any
) -> IngestProject:
    """A project with the `Sales` table `name`, partitioned on its `at` column."""
    entry = {"schema": database.schema("Sales"), "name": name, "partition_column": "at"}
    return build_project(database, lake, [entry], **source_options)


def insert(database: SourceDatabase, table: sa.Table, values: Mapping[str, Any]) -> None:
    """One more row (values may be SQL expressions)."""
    engine = database.engine()
    try:
        with engine.begin() as connection:
            connection.execute(table.insert().values(**values))
    finally:
        engine.dispose()


def lake_rows(project: IngestProject, name: str) -> list[dict[str, Any]]:
    """The rows of `[src, name]` in Delta without the lineage columns, ordered by id."""
    table = project.delta(name).to_pyarrow_table().drop_columns(list(LINEAGE_COLUMNS))
    return sorted(table.to_pylist(), key=lambda row: row["id"])


def same_value(lake: Any, source: Any) -> bool:
    """Equal and of the same type, with NaN equal to NaN and -0.0 told apart from 0.0."""
    if isinstance(source, float):
        if not isinstance(lake, float):
            return False
        if math.isnan(source):
            return math.isnan(lake)
        return lake == source and math.copysign(1, lake) == math.copysign(1, source)
    return type(lake) is type(source) and bool(lake == source)


def assert_same_rows(lake: list[dict[str, Any]], source: list[dict[str, Any]], label: str) -> None:
    """Every value of every row equal; long texts compared by length and digest."""
    assert len(lake) == len(source), f"{label}: row count"
    for lake_row, source_row in zip(lake, source, strict=True):
        assert set(lake_row) == set(source_row), f"{label}: columns"
        for column, value in source_row.items():
            landed = lake_row[column]
            if isinstance(value, str) and len(value) > 1000:
                assert isinstance(landed, str), f"{label} {column}"
                assert (len(landed), digest(landed)) == (len(value), digest(value)), (
                    f"{label} {column}: {len(landed)} characters landed of {len(value)}"
                )
                continue
            assert same_value(landed, value), f"{label} {column}: lake {landed!r} != {value!r}"


def files_of(project: IngestProject, name: str) -> set[pathlib.Path]:
    """Every file of the Delta table of `[src, name]`: its log and its data files."""
    return {path for path in pathlib.Path(project.table_uri(name)).rglob("*") if path.is_file()}


def digest(text: str) -> str:
    """A short fingerprint of a long text."""
    return hashlib.sha256(text.encode()).hexdigest()


# ---- 1. identifiers from the project file are quoted, never SQL --------------------------------

INJECTIONS = [
    "x; DROP TABLE y",
    'x"; DROP TABLE y; --',
    "x`; DROP TABLE y; --",
    "x]; DROP TABLE y; --",
    "x'); DROP TABLE y; --",
]


def create_victim(database: SourceDatabase) -> sa.Table:
    """Table `y`, which an injection would drop."""
    return create_table(database, "y", [sa.Column("id", sa.Integer)], [{"id": 1}])


def victim_rows(database: SourceDatabase, victim: sa.Table) -> list[int]:
    """The ids in table `y` (an error if the table is gone)."""
    engine = database.engine()
    try:
        with engine.connect() as connection:
            return [row.id for row in connection.execute(sa.select(victim.c.id))]
    finally:
        engine.dispose()


def test_an_injection_shaped_table_name_is_a_missing_table_and_drops_nothing(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    victim = create_victim(source_database)
    schema = source_database.schema("Sales")
    project = build_project(
        source_database,
        tmp_path / "lake",
        [
            {"schema": schema, "name": name, "partition_column": "at", "asset_name": f"t{index}"}
            for index, name in enumerate(INJECTIONS)
        ],
    )
    for index, name in enumerate(INJECTIONS):
        result = project.materialize(
            [f"t{index}"], instance, partition=PARTITION, raise_on_error=False
        )

        assert not result.success, name
        message = failure_message(result)
        assert f"source '{SOURCE}', table '{schema}.{name}'" in message
        assert "does not exist at the source" in message
        assert f"Tables in schema '{schema}': y." in message  # what exists instead
        assert "Fix `name`/`schema`" in message
        with pytest.raises(TableNotFoundError):
            project.delta(f"t{index}")
    assert victim_rows(source_database, victim) == [1]


def test_injection_shaped_column_names_are_missing_columns_and_drop_nothing(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    victim = create_victim(source_database)
    create_table(
        source_database,
        "orders",
        [sa.Column("id", sa.Integer), sa.Column("at", sa.DateTime)],
        [{"id": 1, "at": AT}],
    )
    partition_column, column = 'at"; DROP TABLE y; --', "id`]); DROP TABLE y; --"
    project = build_project(
        source_database,
        tmp_path / "lake",
        [
            {
                "schema": source_database.schema("Sales"),
                "name": "orders",
                "partition_column": partition_column,
                "columns": ["id", column],
            }
        ],
    )

    result = project.materialize(["orders"], instance, partition=PARTITION, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert f"source '{SOURCE}'" in message
    assert f"column(s) {column}, {partition_column} not found; the table has: id, at" in message
    assert victim_rows(source_database, victim) == [1]


@pytest.mark.parametrize(
    "dialect",
    [
        "postgresql",
        pytest.param("mysql", marks=pytest.mark.mariadb),
        "sqlite",
    ],
)
def test_an_injection_shaped_schema_is_a_missing_table_and_drops_nothing(
    request: pytest.FixtureRequest,
    dialect: str,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    database = database_of(request, dialect)
    victim = create_victim(database)
    schema = "s\"`]'; DROP TABLE y; --"
    project = build_project(
        database, tmp_path / "lake", [{"schema": schema, "name": "y", "asset_name": "y"}]
    )

    result = project.materialize(["y"], instance, raise_on_error=False)

    assert not result.success
    assert victim_rows(database, victim) == [1]
    message = failure_message(result)
    assert f"source '{SOURCE}', table '{schema}.y'" in message
    assert f"Tables in schema '{schema}': none" in message


# column names with quotes, brackets, backticks, percent signs and SQL in them
ODD_COLUMNS = [
    'we"ird',
    "br]acket [x]",
    "semi;colon -- x",
    "per%cent %s %(x)s",
    "q'uote",
    "spa ce",
    "back`tick",
]


def test_a_table_whose_names_look_like_injections_is_read_exactly(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    victim = create_victim(source_database)
    name = 'x`]"; DROP TABLE y; --'
    columns = ODD_COLUMNS
    rows = [
        {"id": index, "at": AT, **{column: f"{column} {index} '\";" for column in columns}}
        for index in range(3)
    ]
    create_table(
        source_database,
        name,
        [
            sa.Column("id", sa.Integer),
            sa.Column("at", sa.DateTime),
            *[sa.Column(column, sa.String(60)) for column in columns],
        ],
        rows,
    )
    project = sales_project(source_database, tmp_path / "lake", name)

    assert project.materialize([snake_case(name)], instance, partition=PARTITION).success

    assert snake_case(name) == "x_drop_table_y"
    assert_same_rows(lake_rows(project, snake_case(name)), rows, source_database.dialect)
    assert victim_rows(source_database, victim) == [1]


def test_a_backtick_in_a_mariadb_column_name_is_read_exactly(
    mariadb_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    rows = [{"id": 1, "at": AT, "back`tick": "value"}]
    create_table(
        mariadb_database,
        "ticks",
        [
            sa.Column("id", sa.Integer),
            sa.Column("at", sa.DateTime),
            sa.Column("back`tick", sa.String(20)),
        ],
        rows,
    )
    project = sales_project(mariadb_database, tmp_path / "lake", "ticks")

    result = project.materialize(["ticks"], instance, partition=PARTITION, raise_on_error=False)

    assert result.success, failure_message(result)
    assert_same_rows(lake_rows(project, "ticks"), rows, "mysql")


# ---- 2. names in the project file never leave the lake root ------------------------------------


def project_text(source_name: str = "src", table: Mapping[str, Any] | None = None) -> str:
    """A project file with one SQL and one REST source (the SQL one named `source_name`)."""
    return yaml.safe_dump(
        {
            "lake": {"root": "/lake"},
            "sources": {
                source_name: {
                    "type": "sql",
                    "connection": {"url": "sqlite://"},
                    "tables": [dict(table or {"name": "orders"})],
                },
                "api": {
                    "type": "rest",
                    "base_url": "http://127.0.0.1:9",
                    "streams": [{"name": "orders", "path": "/orders"}],
                },
            },
        }
    )


def stream_project_text(stream: Mapping[str, Any]) -> str:
    """A project file with one REST stream."""
    return yaml.safe_dump(
        {
            "sources": {
                "api": {
                    "type": "rest",
                    "base_url": "http://127.0.0.1:9",
                    "streams": [{"path": "/orders", **stream}],
                }
            }
        }
    )


ESCAPES = ["../x", "/abs/path", "..", ".", "a/b", "a\\b", "~/x"]


@pytest.mark.parametrize("name", ESCAPES)
def test_a_source_name_that_is_not_one_folder_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_project(project_text(source_name=name), "ingestion.yaml")

    message = str(raised.value)
    assert message.startswith("ingestion.yaml: invalid project file")
    assert f"  - sources: source name '{name}' must be snake_case" in message


@pytest.mark.parametrize("name", ESCAPES)
@pytest.mark.parametrize("kind", ["table", "stream"])
def test_an_asset_name_that_is_not_one_folder_is_rejected(name: str, kind: str) -> None:
    if kind == "table":
        text, path = project_text(table={"name": "orders", "asset_name": name}), "src.tables"
    else:
        text = stream_project_text({"name": "orders", "asset_name": name})
        path = "api.streams"

    with pytest.raises(ConfigError) as raised:
        parse_project(text, "ingestion.yaml")

    # the entry is named after its index: tables[0] (Sales.orders)
    message = str(raised.value)
    assert f"  - sources.{path}[0] (" in message
    assert f"orders).asset_name: asset_name '{name}' must be snake_case" in message


@pytest.mark.parametrize("name", ["..", ".", "/", "../..", "\\", "é", "__"])
@pytest.mark.parametrize("kind", ["table", "stream"])
def test_a_name_that_gives_no_asset_name_is_rejected_naming_the_key(name: str, kind: str) -> None:
    if kind == "table":
        text, path = project_text(table={"name": name}), "src.tables"
    else:
        text, path = stream_project_text({"name": name}), "api.streams"

    with pytest.raises(ConfigError) as raised:
        parse_project(text, "ingestion.yaml")

    message = str(raised.value)
    assert f"  - sources.{path}[0] (" in message
    assert f"{name}): '{name}' has no ASCII letter or digit in its name" in message
    assert "set asset_name" in message


@pytest.mark.parametrize(("source_name", "kind"), [("rest", "sql"), ("sql", "rest")])
def test_an_error_names_a_source_named_like_the_other_source_type(
    source_name: str, kind: str
) -> None:
    datasets = "tables" if kind == "sql" else "streams"
    text = yaml.safe_dump(
        {
            "sources": {
                source_name: {
                    "type": kind,
                    "connection": {"url": "sqlite://"},
                    "base_url": "http://127.0.0.1:9",
                    datasets: [{"name": "orders", "path": "/orders", "nmae": "x"}],
                }
            }
        }
    )

    with pytest.raises(ConfigError) as raised:
        parse_project(text, "ingestion.yaml")

    message = str(raised.value)
    assert f"  - sources.{source_name}.{datasets}[0] (orders).nmae: unknown key 'nmae'; " in message
    assert "did you mean 'name'?" in message


def test_a_table_named_like_a_path_lands_in_one_folder_under_its_source(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    name = "../../../escape/..\\x"
    rows = [{"id": 1, "at": AT}]
    create_table(
        sqlite_database, name, [sa.Column("id", sa.Integer), sa.Column("at", sa.DateTime)], rows
    )
    before = {path for path in tmp_path.rglob("*") if path.is_file()}
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [{"schema": "Sales", "name": name, "partition_column": "at"}],
    )

    assert project.materialize(["escape_x"], instance, partition=PARTITION).success

    folder = tmp_path / "lake" / SOURCE / "escape_x"
    written = {path for path in tmp_path.rglob("*") if path.is_file()} - before
    assert written
    assert all(folder in path.parents for path in written), sorted(map(str, written))
    assert_same_rows(lake_rows(project, "escape_x"), rows, "sqlite")


# ---- 3. NaN and infinities -----------------------------------------------------------------------


def float32(value: float) -> float:
    """The nearest single-precision value, as a Python float."""
    packed: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return packed


DOUBLES = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1]
SINGLES = [math.nan, math.inf, -math.inf, -0.0, float32(1e-45), float32(3.4e38), float32(0.1)]


@pytest.mark.parametrize(
    ("dialect", "fast_path"),
    [("postgresql", True), ("postgresql", False), ("sqlite", True)],
    ids=["postgresql-copy", "postgresql-rows", "sqlite"],
)
def test_nan_and_infinities_in_float_columns_land_exactly(
    request: pytest.FixtureRequest,
    dialect: str,
    fast_path: bool,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    database = database_of(request, dialect)
    if dialect == "sqlite":
        # SQLite itself stores NaN as NULL and -0.0 as 0.0: what it holds lands
        doubles = [value for value in DOUBLES if not math.isnan(value) and str(value) != "-0.0"]
        singles = doubles
        single_type: TypeEngine[Any] = sa.Double()
    else:
        doubles, singles, single_type = DOUBLES, SINGLES, sa.REAL()
    rows = [
        {"id": index, "at": AT, "single": single, "double": double}
        for index, (single, double) in enumerate(zip(singles, doubles, strict=True))
    ]
    table = create_table(
        database,
        "floats",
        [
            sa.Column("id", sa.Integer),
            sa.Column("at", sa.DateTime),
            sa.Column("single", single_type),
            sa.Column("double", sa.Double()),
        ],
    )
    for row in rows:
        if dialect == "postgresql":
            # as text: psycopg2 would send -0.0 as the SQL expression -0.0, which is 0
            row = {
                **row,
                "single": sa.cast(sa.literal(repr(row["single"])), single_type),
                "double": sa.cast(sa.literal(repr(row["double"])), sa.Double()),
            }
        insert(database, table, row)
    project = build_project(
        database,
        tmp_path / "lake",
        [{"schema": database.schema("Sales"), "name": "floats", "partition_column": "at"}],
        fast_path=fast_path,
    )

    assert project.materialize(["floats"], instance, partition=PARTITION).success

    assert_same_rows(lake_rows(project, "floats"), rows, f"{dialect} fast_path={fast_path}")
    if dialect == "postgresql":
        schema = project.delta("floats").schema().to_arrow()
        assert pa.field("single", pa.float32()) in list(schema)


@pytest.mark.parametrize("fast_path", [True, False], ids=["copy", "rows"])
def test_a_numeric_nan_fails_naming_the_column_and_the_fix_and_writes_nothing(
    postgres_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    fast_path: bool,
) -> None:
    good = [{"id": 1, "at": AT, "amount": decimal.Decimal("12.34")}]
    table = create_table(
        postgres_database,
        "amounts",
        [
            sa.Column("id", sa.Integer),
            sa.Column("at", sa.DateTime),
            sa.Column("amount", sa.Numeric(12, 2)),
        ],
        good,
    )
    project = sales_project(postgres_database, tmp_path / "lake", "amounts", fast_path=fast_path)
    assert project.materialize(["amounts"], instance, partition=PARTITION).success
    version, files = project.delta("amounts").version(), files_of(project, "amounts")
    # numeric(12, 2) takes NaN (PostgreSQL refuses Infinity there)
    insert(postgres_database, table, {"id": 2, "at": AT, "amount": sa.literal_column("'NaN'")})

    result = project.materialize(["amounts"], instance, partition=PARTITION, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert f"source '{SOURCE}', table 'Sales.amounts', partition {PARTITION}" in message
    assert "NULLIF(column, 'NaN')" in message
    assert "read the column as numeric without (precision, scale)" in message
    # the server refuses it in the select list: every path fails with the same words
    assert "column amount holds NaN, which no decimal holds. Nothing was written." in message
    assert project.delta("amounts").version() == version
    assert files_of(project, "amounts") == files  # no data file left behind
    assert_same_rows(lake_rows(project, "amounts"), good, "amounts")


@pytest.mark.parametrize("fast_path", [True, False], ids=["copy", "rows"])
def test_an_unconstrained_numeric_lands_nan_infinity_and_every_digit_as_text(
    postgres_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    fast_path: bool,
) -> None:
    texts = ["NaN", "Infinity", "-Infinity", "0.000000000000000000000000000001", "1" * 60 + ".50"]
    table = create_table(
        postgres_database,
        "measures",
        [sa.Column("id", sa.Integer), sa.Column("at", sa.DateTime), sa.Column("value", sa.Numeric)],
    )
    for index, text in enumerate(texts):
        insert(
            postgres_database,
            table,
            {"id": index, "at": AT, "value": sa.cast(sa.literal(text), sa.Numeric)},
        )
    project = sales_project(postgres_database, tmp_path / "lake", "measures", fast_path=fast_path)

    assert project.materialize(["measures"], instance, partition=PARTITION).success

    assert [row["value"] for row in lake_rows(project, "measures")] == texts


# ---- 4. the first and last instants each database holds ----------------------------------------


def edge_times(dialect: str) -> tuple[datetime.datetime, datetime.datetime]:
    """The earliest and the latest timestamp of the dialect (MariaDB starts at year 1000)."""
    first = datetime.datetime(1000 if dialect == "mysql" else 1, 1, 1)
    return first, datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)


def test_the_first_and_last_times_each_database_holds_land_exactly(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    dialect = source_database.dialect
    first, last = edge_times(dialect)
    moment: TypeEngine[Any] = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
    columns = [
        sa.Column("id", sa.Integer),
        sa.Column("at", sa.DateTime),
        sa.Column("moment", moment),
        sa.Column("day", sa.Date),
    ]
    rows: list[dict[str, Any]] = [
        {"id": 1, "at": AT, "moment": first, "day": first.date()},
        {"id": 2, "at": AT, "moment": last, "day": last.date()},
        {"id": 3, "at": AT, "moment": None, "day": None},
    ]
    if dialect == "postgresql":
        columns.append(sa.Column("instant", sa.DateTime(timezone=True)))
        for row, value in zip(rows, (first, last, None), strict=True):
            row["instant"] = value and value.replace(tzinfo=datetime.UTC)
    create_table(source_database, "edges", columns, rows)
    project = sales_project(source_database, tmp_path / "lake", "edges")

    assert project.materialize(["edges"], instance, partition=PARTITION).success

    assert_same_rows(lake_rows(project, "edges"), rows, dialect)


@pytest.mark.parametrize(
    "fast_path",
    [
        True,
        False,
    ],
    ids=["copy", "rows"],
)
def test_zone_aware_edge_times_land_exactly_whatever_the_session_time_zone(
    postgres_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    fast_path: bool,
) -> None:
    first, last = edge_times("postgresql")
    rows = [
        {"id": 1, "at": AT, "instant": first.replace(tzinfo=datetime.UTC)},
        {"id": 2, "at": AT, "instant": last.replace(tzinfo=datetime.UTC)},
    ]
    create_table(
        postgres_database,
        "instants",
        [
            sa.Column("id", sa.Integer),
            sa.Column("at", sa.DateTime),
            sa.Column("instant", sa.DateTime(timezone=True)),
        ],
        rows,
    )
    tokyo = sa.make_url(postgres_database.url).update_query_dict(
        {"options": "-c timezone=Asia/Tokyo"}
    )
    database = dataclasses.replace(postgres_database, url=tokyo.render_as_string())
    project = sales_project(database, tmp_path / "lake", "instants", fast_path=fast_path)

    result = project.materialize(["instants"], instance, partition=PARTITION, raise_on_error=False)

    assert result.success, failure_message(result)
    assert_same_rows(lake_rows(project, "instants"), rows, f"fast_path={fast_path}")


# ---- 5. text that is not UTF-8 -------------------------------------------------------------------


def test_invalid_utf8_in_sqlite_text_fails_naming_the_column_and_leaves_the_table(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    good = [{"id": 1, "at": AT, "note": "Łódź ☕"}]
    table = create_table(
        sqlite_database,
        "notes",
        [sa.Column("id", sa.Integer), sa.Column("at", sa.DateTime), sa.Column("note", sa.Text)],
        good,
    )
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [{"schema": "Sales", "name": "notes", "partition_column": "at"}],
    )
    assert project.materialize(["notes"], instance, partition=PARTITION).success
    version, files = project.delta("notes").version(), files_of(project, "notes")
    insert(
        sqlite_database,
        table,
        {"id": 2, "at": AT, "note": sa.literal_column("CAST(x'41ff42' AS TEXT)")},
    )

    result = project.materialize(["notes"], instance, partition=PARTITION, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert f"source '{SOURCE}', table 'Sales.notes', partition {PARTITION}" in message
    assert "Could not decode to UTF-8 column 'note'" in message
    assert "Nothing was written" in message
    assert project.delta("notes").version() == version
    assert files_of(project, "notes") == files  # no data file left behind
    assert_same_rows(lake_rows(project, "notes"), good, "notes")


REST_DAY = "2024-01-03"
NOTE_FIELDS = {"id": "int64", "modified": "timestamp_tz", "note": "string"}


def api_project(lake: pathlib.Path, server: HTTPServer, declared: bool) -> IngestProject:
    """A REST source with one `orders` stream, its fields declared or inferred."""
    stream: dict[str, Any] = {
        "name": "orders",
        "path": "/orders",
        "records_path": "data",
        "partition_field": "modified",
        "primary_key": ["id"],
    }
    if declared:
        stream["fields"] = NOTE_FIELDS
    source = {
        "type": "rest",
        "base_url": server.url_for("/"),
        "start_date": "2024-01-01",
        "retries": {"backoff_seconds": 0.01, "max_attempts": 3},
        "streams": [stream],
    }
    text = yaml.safe_dump({"lake": {"root": str(lake)}, "sources": {SOURCE: source}})
    spec = parse_project(text, "bad-input.yaml")
    return IngestProject(spec, build_definitions(spec), lake)


NOTE_PREFIX = b'{"data": [{"id": 1, "modified": "2024-01-03T10:00:00Z", "note": '
# the byte offset of the note's first character (after its opening quote)
NOTE_OFFSET = len(NOTE_PREFIX) + 1


def note_body(note: bytes) -> bytes:
    """A page with one record of REST_DAY whose note is the given JSON string literal."""
    return NOTE_PREFIX + note + b"}]}"


@pytest.mark.parametrize(
    ("note", "declared", "expected"),
    [
        (b'"A\xffB"', True, f"not utf-8 text (b'\\xff' at byte {NOTE_OFFSET + 1})"),
        (b'"A\xc3"', False, f"not utf-8 text (b'\\xc3' at byte {NOTE_OFFSET + 1})"),
        (b'"A\\udcffB"', True, "the escape of a lone surrogate ('\\udcff')"),
        (b'"\\ud83dA"', False, "the escape of a lone surrogate ('\\ud83d')"),
    ],
    ids=["invalid-byte", "cut-sequence", "lone-low-surrogate", "lone-high-surrogate"],
)
def test_json_that_is_not_unicode_fails_at_once_and_leaves_the_table(
    httpserver: HTTPServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    note: bytes,
    declared: bool,
    expected: str,
) -> None:
    project = api_project(tmp_path / "lake", httpserver, declared)
    httpserver.expect_ordered_request("/orders").respond_with_data(
        note_body(b'"fine"'), content_type="application/json"
    )
    httpserver.expect_ordered_request("/orders").respond_with_data(
        note_body(note), content_type="application/json"
    )
    assert project.materialize(["orders"], instance, partition=REST_DAY).success
    version, files = project.delta("orders").version(), files_of(project, "orders")
    before = project.delta("orders").to_pyarrow_table()

    result = project.materialize(["orders"], instance, partition=REST_DAY, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert f"source '{SOURCE}', table 'orders', partition {REST_DAY}" in message
    assert expected in message
    assert "nothing was written" in message
    assert "fix the text at the api" in message.lower()
    assert len(httpserver.log) == 2  # the same bytes again would not help: no retry
    assert project.delta("orders").version() == version
    assert files_of(project, "orders") == files  # no data file left behind
    assert project.delta("orders").to_pyarrow_table() == before


@pytest.mark.parametrize(
    ("body", "content_type", "note"),
    [
        (note_body('"Łódź"'.encode("iso-8859-2")), "application/json; charset=iso-8859-2", "Łódź"),
        (note_body('"☕ 😀"'.encode()), "application/json", "☕ 😀"),
        (note_body(b'"\\ud83d\\ude00 \\u00e9"'), "application/json", "😀 é"),
    ],
    ids=["declared-charset", "utf8", "escaped-pair"],
)
def test_json_text_in_its_declared_charset_or_escaped_lands_exactly(
    httpserver: HTTPServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    body: bytes,
    content_type: str,
    note: str,
) -> None:
    httpserver.expect_request("/orders").respond_with_data(body, content_type=content_type)
    project = api_project(tmp_path / "lake", httpserver, declared=True)

    assert project.materialize(["orders"], instance, partition=REST_DAY).success

    assert project.delta("orders").to_pyarrow_table().column("note").to_pylist() == [note]


# ---- 6. values of many megabytes -----------------------------------------------------------------

# MariaDB's default max_allowed_packet (16 MiB) bounds what one of its values can be
BIG_BYTES = {"postgresql": 12 << 20, "mysql": 10 << 20, "sqlite": 12 << 20}


def big_text(size: int, seed: str) -> str:
    """About `size` bytes of text with quotes, commas, newlines and multi-byte characters."""
    unit = f'{seed} "quoted", comma,\nnew line\r\n ☕ Łódź 配送 \\ backslash\t'
    return unit * (size // len(unit.encode())) + seed


def test_values_of_many_megabytes_land_exactly(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    size = BIG_BYTES[source_database.dialect]
    rows = [
        {"id": 1, "at": AT, "body": "small"},
        {"id": 2, "at": AT, "body": big_text(size, "first")},
        {"id": 3, "at": AT, "body": 'a "small" one,\nbetween'},
        {"id": 4, "at": AT, "body": big_text(size // 2, "second")},
        {"id": 5, "at": AT, "body": ""},
    ]
    create_table(
        source_database,
        "documents",
        [
            sa.Column("id", sa.Integer),
            sa.Column("at", sa.DateTime),
            sa.Column("body", sa.Text().with_variant(mysql.LONGTEXT(), "mysql")),
        ],
        rows,
    )
    project = build_project(
        source_database,
        tmp_path / "lake",
        [
            {
                "schema": source_database.schema("Sales"),
                "name": "documents",
                "partition_column": "at",
            }
        ],
    )

    result = project.materialize(["documents"], instance, partition=PARTITION, raise_on_error=False)

    assert result.success, failure_message(result)
    assert_same_rows(lake_rows(project, "documents"), rows, source_database.dialect)


def copy_csv(rows: Sequence[tuple[int, str | None]], quote_all: bool) -> bytes:
    """Rows as PostgreSQL's `COPY ... CSV` writes them: NULL empty, "" an empty text."""

    def field(value: str | None) -> str:
        if value is None:
            return ""
        if quote_all or value == "" or any(c in value for c in '",\n\r'):
            return '"' + value.replace('"', '""') + '"'
        return value

    return "".join(f"{key},{field(value)}\n" for key, value in rows).encode()


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(-(2**63), 2**63 - 1),
            st.none() | st.text(alphabet='a"\n\r, é☕', max_size=60),
        ),
        max_size=25,
    ),
    block_bytes=st.integers(1, 120),
    quote_all=st.booleans(),
)
def test_copy_text_parses_to_its_rows_whatever_the_block_size(
    rows: list[tuple[int, str | None]], block_bytes: int, quote_all: bool
) -> None:
    schema = pa.schema([("key", pa.int64()), ("value", pa.string())])
    text = io.BufferedReader(io.BytesIO(copy_csv(rows, quote_all)))

    batches = list(csv_blocks(text, schema, block_bytes))

    parsed = [row for batch in batches for row in zip(*batch.to_pydict().values(), strict=True)]
    assert parsed == rows
    assert all(batch.schema == schema for batch in batches)


# ---- 7. rows of a thousand columns ---------------------------------------------------------------

# MariaDB keeps a row within about 8 KB of an InnoDB page: a few hundred columns
WIDTH = {"postgresql": 1000, "sqlite": 1000, "mysql": 300}
# 8-byte types first, so PostgreSQL pads little between columns (a row fits its 8 KB page)
WIDE_KINDS: list[tuple[Callable[[], TypeEngine[Any]], Callable[[int], Any]]] = [
    (sa.BigInteger, lambda n: n * 1_000_003 - 2**40),
    (sa.Double, lambda n: n / 7 - 1e10),
    (sa.DateTime, lambda n: datetime.datetime(2001, 1, 1) + datetime.timedelta(seconds=n * 997)),
    (lambda: sa.Numeric(12, 2), lambda n: decimal.Decimal(n * 131) / 100),
    (sa.Integer, lambda n: -n * 7),
    (sa.Date, lambda n: datetime.date(1999, 1, 1) + datetime.timedelta(days=n)),
    (lambda: sa.String(6), lambda n: f"v{n % 99999}"),
    (sa.Boolean, lambda n: n % 2 == 0),
]


def test_rows_of_a_thousand_columns_of_mixed_types_land_exactly(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    width = WIDTH[source_database.dialect]
    kinds = [WIDE_KINDS[index % len(WIDE_KINDS)] for index in range(width)]
    names = [f"c{index:04d}" for index in range(width)]
    rows = [
        {
            "id": row,
            "at": AT,
            **{
                name: make(row * width + index)
                for index, (name, (_, make)) in enumerate(zip(names, kinds, strict=True))
            },
        }
        for row in range(3)
    ]
    rows.append({"id": 3, "at": AT, **dict.fromkeys(names)})
    create_table(
        source_database,
        "wide",
        [
            sa.Column("id", sa.Integer),
            sa.Column("at", sa.DateTime),
            *[sa.Column(name, kind()) for name, (kind, _) in zip(names, kinds, strict=True)],
        ],
        rows,
    )
    project = sales_project(source_database, tmp_path / "lake", "wide")

    assert project.materialize(["wide"], instance, partition=PARTITION).success

    lake = lake_rows(project, "wide")
    assert len(lake[0]) == width + 2
    assert_same_rows(lake, rows, source_database.dialect)


# ---- 8. properties: project-file names and the type mapping --------------------------------------

# names a project file may hold: plain, with path characters and SQL, or any text
NAMES = st.one_of(
    st.sampled_from(
        ["orders", "Sales Order", "SalesOrderHeader", "sql", "rest", "x; DROP TABLE y", "9lives"]
    ),
    st.sampled_from(["..", ".", "/", "../x", "/abs/path", "a/b", "a\\b", "~/x", "", " ", "é"]),
    st.from_regex(r"[A-Za-z0-9 ./\\;'\"`_-]{1,12}", fullmatch=True),
    st.text(max_size=10),
)
SNAKE_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
RARELY_BAD = st.sampled_from([True] * 9 + [False])


def mostly(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """A good value, and now and then a bad one (so that many generated files are valid)."""
    # sampled, not an integer compared: Hypothesis favours the bounds of integer ranges
    return draw(good) if draw(RARELY_BAD) else draw(bad)


@st.composite
def project_files(draw: st.DrawFn) -> dict[str, Any]:
    """Project dicts with generated names and option values, valid or not."""
    kind = draw(st.sampled_from(["sql", "rest"]))
    datasets = []
    for _ in range(draw(st.integers(1, 3))):
        dataset: dict[str, Any] = {"name": draw(NAMES)}
        if draw(st.booleans()):
            dataset["asset_name"] = mostly(draw, SNAKE_NAMES, NAMES)
        if draw(st.booleans()):
            dataset["schema_policy"] = mostly(
                draw, st.sampled_from(["evolve", "freeze"]), st.just("sometimes")
            )
        if draw(st.booleans()):
            dataset["primary_key"] = draw(st.lists(NAMES, max_size=2))
        partition_key = "partition_column" if kind == "sql" else "partition_field"
        if draw(st.booleans()):
            dataset[partition_key] = draw(NAMES)
        if kind == "sql" and draw(st.booleans()):
            dataset["schema"] = draw(NAMES)
        if kind == "rest":
            dataset["path"] = "/" + draw(NAMES)
            if draw(st.booleans()):
                fields = {draw(NAMES): mostly(draw, st.just("int64"), st.just("decimal(40,2)"))}
                fields.update(
                    {dataset[partition_key]: "timestamp"} if partition_key in dataset else {}
                )
                dataset["fields"] = fields
        if not draw(RARELY_BAD):
            dataset[draw(st.sampled_from(["nmae", "partition", "type"]))] = draw(NAMES)
        datasets.append(dataset)
    source: dict[str, Any] = {"type": kind}
    source["start_date"] = mostly(draw, st.just("2024-01-01"), st.sampled_from(["2024-13-45", ""]))
    if kind == "sql":
        source |= {"connection": {"url": "sqlite://"}, "tables": datasets}
        if draw(st.booleans()):
            source["batch_size"] = mostly(draw, st.integers(1, 10_000_000), st.integers(-5, 0))
    else:
        source |= {
            "base_url": mostly(
                draw, st.sampled_from(["http://127.0.0.1:9", "${API_URL}"]), st.just("ftp://x")
            ),
            "streams": datasets,
        }
        if draw(st.booleans()):
            kinds = st.sampled_from(["offset", "page", "cursor", "link_header", "next_url"])
            source["pagination"] = {"type": mostly(draw, kinds, st.just("bogus"))}
        if draw(st.booleans()):
            source["parallel_requests"] = mostly(draw, st.integers(1, 32), st.integers(33, 40))
    if draw(st.booleans()):
        source["timezone"] = mostly(
            draw, st.sampled_from(["UTC", "Europe/Paris"]), st.sampled_from(["Mars/Base", "../etc"])
        )
    # a source may be named like a source type: errors still name it, not its type
    source_name = mostly(draw, st.sampled_from(["sql", "rest"]) | SNAKE_NAMES, NAMES)
    return {"lake": {"root": "/lake/root"}, "sources": {source_name: source}}


SAFE_SEGMENT = re.compile(r"[a-z0-9][a-z0-9_]*")
KEY_PATH = re.compile(r"(sources|lake)(\.|\[|:)")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(project_files())
def test_a_project_file_gives_folders_under_the_lake_root_or_errors_naming_key_paths(
    project: dict[str, Any],
) -> None:
    text = yaml.safe_dump(project)
    try:
        spec = parse_project(text, "generated.yaml", environ={"API_URL": "http://127.0.0.1:9"})
    except ConfigError as error:
        # a name may hold a newline: problems are told apart by their "  - " bullets
        first, *problems = str(error).split("\n  - ")
        assert first.startswith("generated.yaml: ")
        assert problems
        (source_name,) = project["sources"]
        for problem in problems:
            assert KEY_PATH.match(problem), problem
            if problem.startswith("sources."):
                assert problem.startswith(f"sources.{source_name}"), problem
        return
    root = project["lake"]["root"]
    for source_name, source in spec.sources.items():
        for dataset in source.datasets:
            for segment in (source_name, dataset.key_name):
                assert SAFE_SEGMENT.fullmatch(segment), segment
            folder = posixpath.normpath(posixpath.join(root, source_name, dataset.key_name))
            assert posixpath.dirname(posixpath.dirname(folder)) == root


def exact_equal(landed: Any, value: Any) -> bool:
    """The value Arrow gives back is the value given: digits, bits and instants."""
    if isinstance(value, float):
        return isinstance(landed, float) and same_value(landed, value)
    if isinstance(value, decimal.Decimal):
        landed_number = decimal.Decimal(landed) if isinstance(landed, str) else landed
        return isinstance(landed_number, decimal.Decimal) and landed_number == value
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return (
            isinstance(landed, datetime.datetime) and landed.tzinfo is not None and landed == value
        )
    return bool(landed == value) and type(landed) is type(value)


GeneratedColumn = tuple[TypeEngine[Any], str, st.SearchStrategy[Any]]

INTEGER_COLUMNS: list[tuple[TypeEngine[Any], str, int, int]] = [
    (postgresql.SMALLINT(), "postgresql", -(2**15), 2**15 - 1),
    (postgresql.INTEGER(), "postgresql", -(2**31), 2**31 - 1),
    (postgresql.BIGINT(), "postgresql", -(2**63), 2**63 - 1),
    (sqlite.INTEGER(), "sqlite", -(2**63), 2**63 - 1),
    (mysql.TINYINT(), "mysql", -128, 127),
    (mysql.TINYINT(unsigned=True), "mysql", 0, 255),
    (mysql.SMALLINT(unsigned=True), "mysql", 0, 2**16 - 1),
    (mysql.MEDIUMINT(), "mysql", -(2**23), 2**23 - 1),
    (mysql.MEDIUMINT(unsigned=True), "mysql", 0, 2**24 - 1),
    (mysql.INTEGER(unsigned=True), "mysql", 0, 2**32 - 1),
    (mysql.BIGINT(unsigned=True), "mysql", 0, 2**64 - 1),
    (mssql.TINYINT(), "mssql", 0, 255),
]


@st.composite
def integer_columns(draw: st.DrawFn) -> GeneratedColumn:
    column_type, dialect, low, high = draw(st.sampled_from(INTEGER_COLUMNS))
    return column_type, dialect, st.integers(low, high)


@st.composite
def numeric_columns(draw: st.DrawFn) -> GeneratedColumn:
    make, dialect, max_precision = draw(
        st.sampled_from(
            [
                (postgresql.NUMERIC, "postgresql", 1000),
                (mysql.DECIMAL, "mysql", 65),
                (mssql.NUMERIC, "mssql", 38),
                (sqlite.NUMERIC, "sqlite", 60),
            ]
        )
    )
    precision = draw(st.integers(1, max_precision))
    if dialect == "postgresql":
        # PostgreSQL 15 also takes a scale above the precision, or below zero
        scale = draw(st.integers(-20, precision + 20))
    else:
        scale = draw(st.integers(0, min(precision, 30 if dialect == "mysql" else precision)))
    limit = 10**precision - 1
    values = st.integers(-limit, limit).map(
        # as drivers give them: the text the database prints, read into a Decimal
        # (built from text: Decimal arithmetic would round to the context's 28 digits)
        lambda unscaled: decimal.Decimal(format(decimal.Decimal(f"{unscaled}E{-scale}"), "f"))
    )
    return make(precision, scale), dialect, values


@st.composite
def float_columns(draw: st.DrawFn) -> GeneratedColumn:
    column_type, dialect = draw(
        st.sampled_from(
            [
                (sa.Float(precision=draw(st.integers(1, 53))), "postgresql"),
                (sa.Float(precision=draw(st.integers(1, 53))), "mssql"),
                (postgresql.REAL(), "postgresql"),
                (postgresql.DOUBLE_PRECISION(), "postgresql"),
                (mysql.DOUBLE(), "mysql"),
                (sqlite.REAL(), "sqlite"),
            ]
        )
    )
    width = 32 if arrow_type(column_type, dialect) == pa.float32() else 64
    return column_type, dialect, st.floats(width=width)


UTC_RANGE = (datetime.datetime(1, 1, 2), datetime.datetime(9999, 12, 30))


@st.composite
def timestamp_columns(draw: st.DrawFn) -> GeneratedColumn:
    precision = draw(st.integers(0, 6))
    column_type, dialect, aware = draw(
        st.sampled_from(
            [
                (postgresql.TIMESTAMP(precision=precision), "postgresql", False),
                (postgresql.TIMESTAMP(timezone=True, precision=precision), "postgresql", True),
                (mysql.DATETIME(fsp=precision), "mysql", False),
                (mssql.DATETIME2(precision), "mssql", False),
                (mssql.DATETIMEOFFSET(precision), "mssql", True),
                (sqlite.DATETIME(), "sqlite", False),
            ]
        )
    )
    step = 10 ** (6 - precision)

    def shaped(value: datetime.datetime, offset_minutes: int) -> datetime.datetime:
        value = value.replace(microsecond=value.microsecond // step * step)
        if not aware:
            return value
        zone = datetime.timezone(datetime.timedelta(minutes=offset_minutes))
        return value.replace(tzinfo=datetime.UTC).astimezone(zone)

    values = st.builds(shaped, st.datetimes(*UTC_RANGE), st.integers(-14 * 60, 14 * 60))
    return column_type, dialect, values


@st.composite
def text_columns(draw: st.DrawFn) -> GeneratedColumn:
    length = draw(st.integers(1, 40))
    column_type, dialect = draw(
        st.sampled_from(
            [
                (postgresql.VARCHAR(length), "postgresql"),
                (mysql.VARCHAR(length), "mysql"),
                (mssql.NVARCHAR(length), "mssql"),
                (sqlite.TEXT(), "sqlite"),
                (mysql.LONGTEXT(), "mysql"),
            ]
        )
    )
    return column_type, dialect, st.text(max_size=length)


OTHER_COLUMNS: list[GeneratedColumn] = [
    (sa.Date(), "postgresql", st.dates()),
    (postgresql.TIME(precision=6), "postgresql", st.times()),
    (sa.Boolean(), "postgresql", st.booleans()),
    (mssql.BIT(), "mssql", st.booleans()),
    (postgresql.BYTEA(), "postgresql", st.binary(max_size=20)),
]


@st.composite
def columns_and_values(draw: st.DrawFn) -> tuple[TypeEngine[Any], str, list[Any]]:
    """A source column type, its dialect, and values that fit the declared type (and NULLs)."""
    column_type, dialect, values = draw(
        st.one_of(
            integer_columns(),
            numeric_columns(),
            float_columns(),
            timestamp_columns(),
            text_columns(),
            st.sampled_from(OTHER_COLUMNS),
        )
    )
    return column_type, dialect, draw(st.lists(st.none() | values, min_size=1, max_size=8))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns_and_values())
def test_every_value_a_declared_type_holds_round_trips_through_its_arrow_array(
    column: tuple[TypeEngine[Any], str, list[Any]],
) -> None:
    column_type, dialect, values = column
    arrow = arrow_type(column_type, dialect)

    array = array_builder(arrow)(values)

    assert array.type == arrow
    landed = array.to_pylist()
    for landed_value, value in zip(landed, values, strict=True):
        if value is None:
            assert landed_value is None
        else:
            assert exact_equal(landed_value, value), (
                f"{column_type!r}: {landed_value!r} != {value!r}"
            )
