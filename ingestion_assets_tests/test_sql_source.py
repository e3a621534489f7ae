"""SQL tables to Delta, end to end on PostgreSQL, MariaDB and SQLite, read back and compared."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from deltalake import DeltaTable
from hypothesis import given
from hypothesis import strategies as st

from ingestion_assets.demo.generate import demo_rows
from ingestion_assets.demo.schema import ORDER_TABLES, demo_metadata, table_for
from ingestion_assets.errors import ConfigError, SourceError
from ingestion_assets.lake.rows import LINEAGE_COLUMNS, PARTITION_DATE
from ingestion_assets.resources import SqlSourceResource
from ingestion_assets.sources.sql import SqlTableReader, create_source_engine, source_url
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import TableSpec
from ingestion_assets_tests.conftest import (
    ORDER_TABLE_KEYS,
    POSTGRES_URL,
    SOURCE,
    TEST_SCALE,
    SourceDatabase,
    build_project,
    failure_message,
    require_service,
    table_entry,
)

DAY = TEST_SCALE.start_date + datetime.timedelta(days=3)
REFUSED_AT = (
    "the connection url has more than one '@' before its host, so its host cannot be told from "
    "its password: percent-encode every '@' in the user name or password as %40 (e.g. "
    "postgresql://user:p%40ss@host/db), or give the password on its own as "
    "password: ${DB_PASSWORD}"
)
NOT_A_URL = (
    "the connection url is not a SQLAlchemy URL (scheme 'postgresql+psycopg2'); write it as "
    "dialect+driver://user:password@host:port/db, with reserved characters in the password "
    "percent-encoded (@ as %40, ? as %3F)"
)


def normalized(value: Any) -> Any:
    """A value in a form comparable across drivers: uuids as UUID, decimals exact, booleans."""
    if isinstance(value, str):
        try:
            return (
                uuid.UUID(value) if len(value) in (32, 36) and value.count("-") in (0, 4) else value
            )
        except ValueError:
            return value
    if isinstance(value, float):
        raise AssertionError(f"a float reached the lake: {value!r}")
    return value


def expected_rows(logical: str, day: datetime.date) -> list[dict[str, Any]]:
    """The generated source rows whose ModifiedDate falls in [day, day + 1)."""
    start = datetime.datetime.combine(day, datetime.time())
    end = start + datetime.timedelta(days=1)
    return [
        row
        for row in demo_rows(TEST_SCALE)[logical]
        if start <= row["ModifiedDate"] < end  # type: ignore[operator]
    ]


def assert_same_rows(
    actual: pa.Table, expected: list[dict[str, Any]], key: list[str], label: str
) -> None:
    """Every column of every row equal, after sorting both sides by the primary key."""
    lake_rows = sorted(
        actual.drop_columns(list(LINEAGE_COLUMNS)).to_pylist(), key=lambda r: [r[k] for k in key]
    )
    source_rows = sorted(expected, key=lambda r: [r[k] for k in key])
    assert len(lake_rows) == len(source_rows), f"{label}: row count"
    assert len(source_rows) > 0, f"{label}: the test day must have rows"
    for lake_row, source_row in zip(lake_rows, source_rows, strict=True):
        assert set(lake_row) == set(source_row), f"{label}: columns"
        for column, source_value in source_row.items():
            lake_value = lake_row[column]
            assert normalized(lake_value) == normalized(source_value), (
                f"{label} {column}: lake {lake_value!r} != source {source_value!r}"
            )
            if isinstance(source_value, decimal.Decimal):
                # exact digits: the lake keeps the declared scale, never a float
                assert isinstance(lake_value, decimal.Decimal)


def test_one_day_of_each_order_table_equals_the_source(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    source_database.load_demo()
    project = build_project(
        source_database,
        tmp_path / "lake",
        [table_entry(source_database, logical) for logical in ORDER_TABLES],
    )
    names = [ORDER_TABLE_KEYS[logical][0] for logical in ORDER_TABLES]
    result = project.materialize(names, instance, partition=DAY.isoformat())
    assert result.success
    for logical in ORDER_TABLES:
        name, key = ORDER_TABLE_KEYS[logical]
        table = project.delta(name).to_pyarrow_table()
        assert set(table.column(PARTITION_DATE).to_pylist()) == {DAY}
        assert_same_rows(
            table, expected_rows(logical, DAY), key, f"{source_database.dialect} {logical}"
        )
        materialization = result.asset_materializations_for_node(f"src__{name}")[0]
        assert materialization.metadata["dagster/row_count"].value == table.num_rows


def test_rematerializing_a_day_replaces_it_and_leaves_other_days_untouched(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    source_database.load_demo()
    project = build_project(
        source_database, tmp_path / "lake", [table_entry(source_database, "Sales.SalesOrderHeader")]
    )
    other_day = DAY + datetime.timedelta(days=1)
    project.materialize(["sales_order_header"], instance, partition=DAY.isoformat())
    project.materialize(["sales_order_header"], instance, partition=other_day.isoformat())
    other_files_before = _files_of_day(project.delta("sales_order_header"), other_day)

    # change the source for DAY: one row updated, one deleted, one inserted
    day_rows = expected_rows("Sales.SalesOrderHeader", DAY)
    updated, deleted = day_rows[0]["SalesOrderID"], day_rows[1]["SalesOrderID"]
    engine = source_database.engine()
    header = table_for(
        demo_metadata(source_database.schemas), "Sales.SalesOrderHeader", source_database.schemas
    )
    new_row = dict(day_rows[2], SalesOrderID=999_999, rowguid=uuid.UUID(int=7))
    with engine.begin() as connection:
        connection.execute(
            header.update().where(header.c.SalesOrderID == updated).values(Comment="changed ✓")
        )
        connection.execute(header.delete().where(header.c.SalesOrderID == deleted))
        connection.execute(header.insert().values(**new_row))
    engine.dispose()

    result = project.materialize(["sales_order_header"], instance, partition=DAY.isoformat())
    assert result.success
    table = project.delta("sales_order_header").to_pyarrow_table()
    day_table = table.filter(pa.compute.equal(table.column(PARTITION_DATE), pa.scalar(DAY)))
    ids = day_table.column("SalesOrderID").to_pylist()
    assert len(ids) == len(set(ids)), "no duplicates after a re-run"
    assert deleted not in ids
    assert 999_999 in ids
    assert len(ids) == len(day_rows)  # one deleted, one inserted
    comments = dict(zip(ids, day_table.column("Comment").to_pylist(), strict=True))
    assert comments[updated] == "changed ✓"
    # the other day's files are the very same files
    assert _files_of_day(project.delta("sales_order_header"), other_day) == other_files_before
    assert len(other_files_before) > 0


def _files_of_day(table: Any, day: datetime.date) -> set[str]:
    """The files whose `_partition_date` statistics cover `day`."""
    actions = pa.table(table.get_add_actions(flatten=True))
    return {
        path
        for path, low, high in zip(
            actions.column("path").to_pylist(),
            actions.column(f"min.{PARTITION_DATE}").to_pylist(),
            actions.column(f"max.{PARTITION_DATE}").to_pylist(),
            strict=True,
        )
        if low <= day <= high
    }


def test_a_missing_table_fails_with_the_source_the_table_and_what_exists(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    source_database.load_demo()
    project = build_project(
        source_database,
        tmp_path / "lake",
        [
            {
                "schema": source_database.schema("Sales"),
                "name": "SalesOrderHeadr",
                "partition_column": "ModifiedDate",
            }
        ],
    )
    result = project.materialize(
        ["sales_order_headr"], instance, partition=DAY.isoformat(), raise_on_error=False
    )
    assert not result.success
    message = failure_message(result)
    assert "source 'src'" in message
    assert "SalesOrderHeadr" in message
    assert "did you mean SalesOrderHeader" in message
    assert "SalesOrderDetail" in message  # what exists instead


def test_reading_streams_a_million_rows_in_bounded_batches() -> None:
    admin = require_service(POSTGRES_URL, "PostgreSQL")
    schema = f"ia_stream_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            connection.execute(
                sa.text(
                    f'CREATE TABLE "{schema}".big AS SELECT i AS id, '
                    "timestamp '2024-01-01' + (i % 86400) * interval '1 second' AS ts, "
                    "(i * 1.25)::numeric(12, 2) AS amount, md5(i::text) AS note "
                    "FROM generate_series(1, 1000000) AS i"
                )
            )
        engine = create_source_engine(sa.make_url(POSTGRES_URL))
        reader = SqlTableReader(
            engine, "bench", TableSpec(schema=schema, name="big", partition_column="ts"), 100_000
        )
        window = PartitionWindow(
            datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
            datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC),
            "partition 2024-01-01",
        )
        sizes = [batch.num_rows for batch in reader.read(window)]
        assert sum(sizes) == 1_000_000
        assert len(sizes) >= 10
        assert max(sizes) <= 100_000
        engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def test_a_source_connection_killed_mid_stream_fails_clearly_and_leaves_the_table(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    postgres_database.load_demo()
    engine = postgres_database.engine()
    # a view that terminates its own connection after the first rows have been sent
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                """
                CREATE FUNCTION "Sales".kill_after(id integer, last_id integer) RETURNS boolean
                LANGUAGE plpgsql AS $$
                BEGIN
                  IF id > last_id THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                  RETURN true;
                END $$
                """
            )
        )
        first_id = connection.execute(
            sa.text('SELECT min("SalesOrderDetailID") FROM "Sales"."SalesOrderDetail"')
        ).scalar_one()
        connection.execute(
            sa.text(
                'CREATE VIEW "Sales"."FragileDetail" AS SELECT * FROM "Sales"."SalesOrderDetail" '
                'WHERE "Sales".kill_after("SalesOrderDetailID", 2147483647)'
            )
        )
    engine.dispose()
    project = build_project(
        postgres_database,
        tmp_path / "lake",
        [{"schema": "Sales", "name": "FragileDetail", "partition_column": "ModifiedDate"}],
        batch_size=10,
    )
    first = project.materialize(
        ["fragile_detail"], instance, partition_range=("2024-01-01", "2024-01-10")
    )
    assert first.success
    before = project.delta("fragile_detail")
    version, rows = before.version(), before.to_pyarrow_table().num_rows

    engine = postgres_database.engine()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                'CREATE OR REPLACE VIEW "Sales"."FragileDetail" AS SELECT * FROM '
                '"Sales"."SalesOrderDetail" '
                f'WHERE "Sales".kill_after("SalesOrderDetailID", {first_id + 40})'
            )
        )
    engine.dispose()
    failed = project.materialize(
        ["fragile_detail"],
        instance,
        partition_range=("2024-01-01", "2024-01-10"),
        raise_on_error=False,
    )
    assert not failed.success
    message = failure_message(failed)
    assert "source 'src'" in message
    assert "Sales.FragileDetail" in message
    assert "partitions 2024-01-01..2024-01-10" in message
    assert "server closed the connection" in message
    after = project.delta("fragile_detail")
    assert after.version() == version
    assert after.to_pyarrow_table().num_rows == rows


def test_window_bounds_are_bound_parameters_not_sql_text(sqlite_database: SourceDatabase) -> None:
    sqlite_database.load_demo()
    engine = sqlite_database.engine()
    statements: list[tuple[str, Mapping[str, Any] | Any]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    reader = SqlTableReader(
        engine,
        "src",
        TableSpec(schema="Sales", name="SalesOrderHeader", partition_column="ModifiedDate"),
        1000,
    )
    window = PartitionWindow(
        datetime.datetime(2024, 1, 4, tzinfo=datetime.UTC),
        datetime.datetime(2024, 1, 5, tzinfo=datetime.UTC),
        "partition 2024-01-04",
    )
    rows = sum(batch.num_rows for batch in reader.read(window))
    assert rows == len(expected_rows("Sales.SalesOrderHeader", DAY))
    selects = [
        (s, p)
        for s, p in statements
        if '"SalesOrderHeader"' in s and "SELECT" in s and "ModifiedDate" in s and ">=" in s
    ]
    assert len(selects) == 1
    statement, parameters = selects[0]
    assert "2024-01-04" not in statement
    assert any("2024-01-04" in str(value) for value in parameters)
    with pytest.raises(SourceError, match="does not exist"):
        SqlTableReader(
            engine,
            "src",
            TableSpec(schema="Sales", name="x; DROP TABLE y", partition_column="a"),
            10,
        ).read(window)
    engine.dispose()


def test_days_begin_in_the_source_time_zone_across_a_dst_change(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    engine = postgres_database.engine()
    with engine.begin() as connection:
        connection.execute(sa.text('CREATE SCHEMA "Sales"'))
        connection.execute(sa.text('CREATE TABLE "Sales".aware (id int, at timestamptz)'))
        connection.execute(sa.text('CREATE TABLE "Sales".naive (id int, at timestamp)'))
        # 2024-03-10 is a 23-hour day in New York (clocks go forward at 02:00)
        connection.execute(
            sa.text(
                "INSERT INTO \"Sales\".aware VALUES (1, '2024-03-10 04:59:59+00'), "
                "(2, '2024-03-10 05:00:00+00'), (3, '2024-03-11 03:59:59+00'), "
                "(4, '2024-03-11 04:00:00+00')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO \"Sales\".naive VALUES (1, '2024-03-09 23:59:59'), "
                "(2, '2024-03-10 00:00:00'), (3, '2024-03-10 23:59:59.999999'), "
                "(4, '2024-03-11 00:00:00')"
            )
        )
    engine.dispose()
    project = build_project(
        postgres_database,
        tmp_path / "lake",
        [
            {"schema": "Sales", "name": "aware", "partition_column": "at"},
            {"schema": "Sales", "name": "naive", "partition_column": "at"},
        ],
        timezone="America/New_York",
    )
    assert project.materialize(["aware", "naive"], instance, partition="2024-03-10").success
    for name in ("aware", "naive"):
        table = project.delta(name).to_pyarrow_table()
        assert sorted(table.column("id").to_pylist()) == [2, 3], name
        assert set(table.column(PARTITION_DATE).to_pylist()) == {datetime.date(2024, 3, 10)}
    aware = project.delta("aware").to_pyarrow_table()
    assert str(aware.schema.field("at").type) == "timestamp[us, tz=UTC]"


def test_the_postgresql_copy_path_reads_exactly_what_the_row_path_reads(
    postgres_database: SourceDatabase,
) -> None:
    postgres_database.load_demo()
    engine = postgres_database.engine()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                'CREATE TABLE "Sales".awkward AS SELECT i AS id, '
                "timestamp '2024-01-04' + i * interval '1 minute' AS at, "
                "(timestamptz '2024-01-04 00:00:00+00' + i * interval '1 minute') AS at_zone, "
                "CASE i % 5 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'line one\nline \"two\"' "
                "WHEN 3 THEN 'a,b;c' ELSE 'Łódź ☕ 配送' END AS note, "
                "(i * 12345.6789)::numeric(20, 4) AS amount, (i % 2 = 0) AS flag, "
                "CASE WHEN i % 7 = 0 THEN NULL ELSE i::float8 / 3 END AS ratio, "
                "date '2024-01-01' + i AS day "
                "FROM generate_series(1, 2000) AS i"
            )
        )
    window = PartitionWindow(
        datetime.datetime(2024, 1, 4, tzinfo=datetime.UTC),
        datetime.datetime(2024, 1, 6, tzinfo=datetime.UTC),
        "partitions 2024-01-04..2024-01-05",
    )
    for name, partition in (("awkward", "at"), ("SalesOrderDetail", "ModifiedDate")):
        spec = TableSpec(schema="Sales", name=name, partition_column=partition)
        fast = SqlTableReader(engine, "src", spec, 300).read(window).read_all()
        rows = SqlTableReader(engine, "src", spec, 300, fast_path=False).read(window).read_all()
        assert fast.num_rows > 0
        assert fast.schema == rows.schema
        assert fast.equals(rows), name
    engine.dispose()


@pytest.mark.parametrize(
    ("userinfo", "leaked"),
    [
        ("postgres:Zq@7xK", "7xK"),
        ("postgres:Zq@7xK@Wv", "7xK"),
        ("postgres:Zq@7x:K", "7x"),
        ("postgres:Zq?7x@K", "7x"),
    ],
    ids=["password", "password with two", "password and a colon", "password and a question mark"],
)
def test_a_url_from_the_environment_with_a_raw_at_sign_is_refused_with_the_fix_and_never_echoed(
    postgres_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    userinfo: str,
    leaked: str,
) -> None:
    url = sa.make_url(postgres_database.url)
    raw = f"postgresql+psycopg2://{userinfo}@127.0.0.1:{url.port}/{url.database}"
    monkeypatch.setenv("INGEST_TEST_RAW_AT_URL", raw)
    database = dataclasses.replace(postgres_database, url_variable="INGEST_TEST_RAW_AT_URL")
    database.load_demo()
    tables = [table_entry(database, "Sales.SalesOrderHeader")]

    # refused when the project file loads, naming the key
    with pytest.raises(ConfigError) as refused:
        build_project(database, tmp_path / "lake", tables)
    loading = str(refused.value)
    assert "sources.src.connection.url (${INGEST_TEST_RAW_AT_URL})" in loading
    assert "percent-encode every '@' in the user name or password as %40" in loading
    assert leaked not in loading
    assert userinfo.partition(":")[2] not in loading

    # and when the variable changed after the definitions loaded, as the run's resources start
    monkeypatch.setenv("INGEST_TEST_RAW_AT_URL", postgres_database.url)
    project = build_project(database, tmp_path / "lake", tables)
    monkeypatch.setenv("INGEST_TEST_RAW_AT_URL", raw)
    result = project.materialize(
        ["sales_order_header"], instance, partition=DAY.isoformat(), raise_on_error=False
    )

    assert not result.success
    # the run fails as its resources are set up, before any step reads
    message = "\n".join(
        event.event_specific_data.error.message
        for event in result.all_events
        if getattr(event.event_specific_data, "error", None) is not None
    )
    assert f"source '{SOURCE}': the connection url has more than one '@' before its host" in message
    assert "percent-encode every '@' in the user name or password as %40" in message
    logs = "\n".join(str(event.user_message) for event in instance.all_logs(result.run_id))
    for text in (message, logs):
        assert leaked not in text
        assert userinfo.partition(":")[2] not in text
    assert not (tmp_path / "lake" / SOURCE / "sales_order_header").exists()


def test_a_url_with_the_at_sign_percent_encoded_connects(
    postgres_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # trust authentication: the server takes any password, so the URL's is only parsed
    url = sa.make_url(postgres_database.url)
    monkeypatch.setenv(
        "INGEST_TEST_ENCODED_URL",
        f"postgresql+psycopg2://postgres:p%40ss@127.0.0.1:{url.port}/{url.database}",
    )
    database = dataclasses.replace(postgres_database, url_variable="INGEST_TEST_ENCODED_URL")
    database.load_demo()
    project = build_project(
        database, tmp_path / "lake", [table_entry(database, "Sales.SalesOrderHeader")]
    )
    assert project.materialize(["sales_order_header"], instance, partition=DAY.isoformat()).success
    assert project.delta("sales_order_header").to_pyarrow_table().num_rows == len(
        expected_rows("Sales.SalesOrderHeader", DAY)
    )


@given(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=24)
)
def test_a_password_either_parses_whole_or_is_refused_with_a_message_that_quotes_none_of_it(
    password: str,
) -> None:
    text = f"postgresql+psycopg2://reader:{password}@db.example.com:5432/sales"
    outcome: sa.URL | SourceError
    try:
        outcome = source_url(text, "erp")
    except SourceError as error:
        outcome = error
    if isinstance(outcome, SourceError):
        assert str(outcome) in (f"source 'erp': {REFUSED_AT}", f"source 'erp': {NOT_A_URL}")
        return
    url = outcome
    assert url.host == "db.example.com"
    assert url.port == 5432
    assert url.username == "reader"
    if "%" not in password:
        assert url.password == password


UNREACHABLE_START = datetime.date(2024, 1, 1)
UNREACHABLE_END = datetime.date(2024, 2, 1)
# id -> partition column value; None, before the first day and on the end day reach no partition
EDGE_ROWS: dict[int, datetime.datetime | None] = {
    1: None,
    2: datetime.datetime(2023, 12, 31, 23, 59, 59),
    3: datetime.datetime(2024, 1, 1),
    4: datetime.datetime(2024, 1, 10, 12),
    5: datetime.datetime(2024, 1, 31, 23, 59, 59),
    6: datetime.datetime(2024, 2, 1),
    7: datetime.datetime(2031, 5, 1),
}


def _edges_table(source_database: SourceDatabase) -> str:
    """Create `edges` (EDGE_ROWS) at the source; its schema."""
    schema = source_database.schema("Sales")
    table = sa.Table(
        "edges",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime, nullable=True),
        schema=schema,
    )
    engine = source_database.engine()
    with engine.begin() as connection:
        if source_database.dialect == "postgresql":
            connection.execute(sa.text('CREATE SCHEMA IF NOT EXISTS "Sales"'))
        table.create(connection)
        connection.execute(table.insert(), [{"id": k, "at": v} for k, v in EDGE_ROWS.items()])
    engine.dispose()
    return schema


@pytest.mark.parametrize("end_date", [UNREACHABLE_END, None], ids=["end date", "open end"])
def test_rows_no_partition_reaches_are_counted_and_read_exactly_at_the_source(
    source_database: SourceDatabase, tmp_path: pathlib.Path, end_date: datetime.date | None
) -> None:
    schema = _edges_table(source_database)
    options: dict[str, Any] = {"start_date": UNREACHABLE_START.isoformat()}
    if end_date:
        options["end_date"] = end_date.isoformat()
    project = build_project(
        source_database,
        tmp_path / "lake",
        [
            {
                "schema": schema,
                "name": "edges",
                "partition_column": "at",
                "unpartitioned_rows": "quarantine",
            }
        ],
        **options,
    )
    spec = project.spec.sources[SOURCE]
    dataset = spec.datasets[0]
    assert isinstance(dataset, TableSpec)
    assert dataset.unpartitioned_rows == "quarantine"
    resource = SqlSourceResource.from_spec(SOURCE, spec)
    try:
        unreachable = [1, 2, 6, 7] if end_date else [1, 2]
        assert resource.unreachable_rows(dataset) == len(unreachable)
        stream = resource.read_unreachable(dataset)
        rows = pa.Table.from_batches(list(stream.reader), schema=stream.reader.schema)
        assert sorted(rows.column("id").to_pylist()) == unreachable
        assert rows.schema.names == ["id", "at"]
        assert [rows.column("at")[i].as_py() for i in range(rows.num_rows)] == [
            EDGE_ROWS[k] for k in rows.column("id").to_pylist()
        ]
    finally:
        resource.teardown_after_execution(None)  # type: ignore[arg-type]


def test_a_snapshot_table_leaves_no_row_unreached(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    sqlite_database.load_demo()
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [table_entry(sqlite_database, "Sales.SalesOrderHeader", partition_column=None)],
    )
    spec = project.spec.sources[SOURCE]
    resource = SqlSourceResource.from_spec(SOURCE, spec)
    assert resource.unreachable_rows(spec.datasets[0]) == 0
    resource.teardown_after_execution(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["warn", "fail", "quarantine"])
def test_rows_no_partition_reaches_are_reported_refused_or_quarantined_by_every_run(
    source_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    policy: str,
) -> None:
    schema = _edges_table(source_database)
    project = build_project(
        source_database,
        tmp_path / "lake",
        [
            {
                "schema": schema,
                "name": "edges",
                "partition_column": "at",
                "unpartitioned_rows": policy,
            }
        ],
        start_date=UNREACHABLE_START.isoformat(),
        end_date=UNREACHABLE_END.isoformat(),
    )

    result = project.materialize(
        ["edges"], instance, partition_range=("2024-01-01", "2024-01-31"), raise_on_error=False
    )

    evaluation = next(
        e for e in result.get_asset_check_evaluations() if e.check_name == "unpartitioned_rows"
    )
    assert not evaluation.passed
    assert evaluation.partition is None, "a table-wide check"
    assert evaluation.metadata["unpartitioned_rows"].value == 4
    assert "4 row(s) at the source have no partition (at NULL or outside" in (
        evaluation.description or ""
    )
    sibling = tmp_path / "lake" / SOURCE / "edges_unpartitioned"
    if policy == "fail":
        assert not result.success
        assert evaluation.severity.value == "ERROR"
        assert not (tmp_path / "lake" / SOURCE / "edges" / "_delta_log").exists()
        return
    assert result.success
    assert evaluation.severity.value == "WARN"
    assert sorted(project.delta("edges").to_pyarrow_table().column("id").to_pylist()) == [3, 4, 5]
    if policy == "warn":
        assert not sibling.exists()
        return
    quarantined = DeltaTable(str(sibling)).to_pyarrow_table()
    reasons = dict(
        zip(
            quarantined.column("id").to_pylist(),
            quarantined.column("_unpartitioned_reason").to_pylist(),
            strict=True,
        )
    )
    assert reasons == {
        1: "at is NULL",
        2: "at before the first partition (2024-01-01)",
        6: "at on or after end_date (2024-02-01)",
        7: "at on or after end_date (2024-02-01)",
    }


# --- MySQL/MariaDB booleans: TINYINT(1) -------------------------------------------------------

# BOOLEAN and BOOL are stored as TINYINT(1); an unsigned TINYINT(1) or a plain TINYINT is a number
FLAG_COLUMNS = {
    "id": "INT NOT NULL PRIMARY KEY",
    "ModifiedDate": "DATETIME NOT NULL",
    "IsActive": "TINYINT(1)",
    "declared_boolean": "BOOLEAN NOT NULL",
    "declared_bool": "BOOL",
    "unsigned_flag": "TINYINT(1) UNSIGNED",
    "tiny": "TINYINT",
}
# (id, IsActive, declared_boolean, declared_bool, unsigned_flag, tiny)
FLAG_ROWS: list[tuple[Any, ...]] = [
    (1, 1, 0, 1, 200, 5),
    (2, 0, 1, None, 0, -5),
    (3, None, 1, 0, None, None),
]
FLAG_DAY = datetime.datetime.combine(DAY, datetime.time(9))


def flags_table(database: SourceDatabase, rows: list[tuple[Any, ...]] = FLAG_ROWS) -> str:
    """Create `flags` (FLAG_COLUMNS, the rows dated DAY) at the MariaDB source; its schema."""
    schema = database.schema("Sales")
    columns = ", ".join(f"`{name}` {ddl}" for name, ddl in FLAG_COLUMNS.items())
    names = [name for name in FLAG_COLUMNS if name != "ModifiedDate"]
    engine = database.engine()
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE TABLE `{schema}`.flags ({columns})"))
            markers = ", ".join(f":{name}" for name in FLAG_COLUMNS)
            connection.execute(
                sa.text(f"INSERT INTO `{schema}`.flags VALUES ({markers})"),
                [{"ModifiedDate": FLAG_DAY, **dict(zip(names, row, strict=True))} for row in rows],
            )
    finally:
        engine.dispose()
    return schema


def flags_entry(schema: str, **extra: Any) -> dict[str, Any]:
    """The `tables:` entry of `flags`."""
    return {
        "schema": schema,
        "name": "flags",
        "partition_column": "ModifiedDate",
        "primary_key": ["id"],
        **extra,
    }


def test_mysql_boolean_columns_land_as_booleans_and_other_tinyints_as_numbers(
    mariadb_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    schema = flags_table(mariadb_database)
    project = build_project(mariadb_database, tmp_path / "lake", [flags_entry(schema)])

    result = project.materialize(["flags"], instance, partition=DAY.isoformat())

    assert result.success
    # the source's count, the key and the schema contract agree with what landed
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} >= {"row_count", "primary_key", "schema_contract"}
    assert all(e.passed for e in evaluations), [e.description for e in evaluations]
    table = project.delta("flags").to_pyarrow_table().sort_by("id")
    types = {name: table.schema.field(name).type for name in FLAG_COLUMNS}
    assert types["IsActive"] == types["declared_boolean"] == types["declared_bool"] == pa.bool_()
    # Delta has no unsigned byte: 0..255 widens to a short
    assert (types["unsigned_flag"], types["tiny"]) == (pa.int16(), pa.int8())
    assert table.column("IsActive").to_pylist() == [True, False, None]
    assert table.column("declared_boolean").to_pylist() == [False, True, True]
    assert table.column("declared_bool").to_pylist() == [True, None, False]
    assert table.column("unsigned_flag").to_pylist() == [200, 0, None]
    assert table.column("tiny").to_pylist() == [5, -5, None]


@pytest.mark.parametrize(
    ("on_source", "on_table", "lands_as"),
    [
        (None, None, pa.bool_()),
        (False, None, pa.int8()),
        (False, True, pa.bool_()),
        (True, False, pa.int8()),
    ],
    ids=["default", "source opts out", "table opts back in", "table opts out"],
)
def test_tinyint1_as_bool_is_a_source_default_a_table_may_override(
    mariadb_database: SourceDatabase,
    tmp_path: pathlib.Path,
    on_source: bool | None,
    on_table: bool | None,
    lands_as: pa.DataType,
) -> None:
    schema = flags_table(mariadb_database)
    table_options = {} if on_table is None else {"tinyint1_as_bool": on_table}
    source_options = {} if on_source is None else {"tinyint1_as_bool": on_source}
    project = build_project(
        mariadb_database,
        tmp_path / "lake",
        [flags_entry(schema, **table_options)],
        **source_options,
    )
    spec = project.spec.sources[SOURCE]
    resource = SqlSourceResource.from_spec(SOURCE, spec)
    window = PartitionWindow.of_days(DAY, DAY, "UTC")
    try:
        rows = resource.read(spec.datasets[0], window).reader.read_all().sort_by("id")
    finally:
        resource.teardown_after_execution(None)  # type: ignore[arg-type]
    for name in ("IsActive", "declared_boolean", "declared_bool"):
        assert rows.schema.field(name).type == lands_as, name
    expected = [True, False, None] if lands_as == pa.bool_() else [1, 0, None]
    assert rows.column("IsActive").to_pylist() == expected
    assert rows.schema.field("tiny").type == pa.int8()


def test_a_tinyint1_holding_another_number_fails_the_run_naming_the_column_and_the_opt_out(
    mariadb_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    schema = flags_table(mariadb_database, [*FLAG_ROWS, (4, 2, 1, 1, 1, 1)])
    project = build_project(mariadb_database, tmp_path / "lake", [flags_entry(schema)])

    result = project.materialize(
        ["flags"], instance, partition=DAY.isoformat(), raise_on_error=False
    )

    assert not result.success
    message = failure_message(result)
    assert (
        f"source 'src', table '{schema}.flags', partition {DAY.isoformat()}: column IsActive is "
        "a TINYINT(1), which MySQL and MariaDB store for BOOLEAN and which lands as a boolean "
        "(`tinyint1_as_bool`), but 2 is neither 0 nor 1, so it is no boolean. Nothing was "
        "written. If the column holds numbers, set `tinyint1_as_bool: false` on the table"
    ) in message
    assert not (tmp_path / "lake" / SOURCE / "flags" / "_delta_log").exists()

    # the opt-out the message names lands the numbers as they are
    numbers = build_project(
        mariadb_database, tmp_path / "lake", [flags_entry(schema, tinyint1_as_bool=False)]
    )
    assert numbers.materialize(["flags"], instance, partition=DAY.isoformat()).success
    table = numbers.delta("flags").to_pyarrow_table().sort_by("id")
    assert table.schema.field("IsActive").type == pa.int8()
    assert table.column("IsActive").to_pylist() == [1, 0, None, 2]


def test_a_table_written_with_tinyint1_as_numbers_refuses_booleans_and_names_the_setting(
    mariadb_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    # a table ingested before TINYINT(1) landed as boolean holds the column as byte (int8)
    schema = flags_table(mariadb_database)
    lake = tmp_path / "lake"
    before = build_project(mariadb_database, lake, [flags_entry(schema, tinyint1_as_bool=False)])
    assert before.materialize(["flags"], instance, partition=DAY.isoformat()).success
    version = before.delta("flags").version()

    after = build_project(mariadb_database, lake, [flags_entry(schema)])
    result = after.materialize(["flags"], instance, partition=DAY.isoformat(), raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert "column IsActive changed type from byte to boolean" in message
    assert (
        "set `tinyint1_as_bool` on the table (or its source) to what the table was written "
        "with (`false` for byte), or write to a new table (asset_name)"
    ) in message
    assert after.delta("flags").version() == version
    # the setting the message names keeps the table writable
    assert before.materialize(["flags"], instance, partition=DAY.isoformat()).success
