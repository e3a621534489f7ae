"""The Unity Catalog IO manager against a local fake of the Files and SQL Statement APIs."""

from __future__ import annotations

import datetime
import io
import json
import pathlib
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import sqlglot
from dagster import DagsterInstance
from dagster._serdes import serialize_value
from pytest_httpserver import HTTPServer
from sqlglot import exp
from werkzeug import Request, Response

from ingestion_assets.errors import ConfigError
from ingestion_assets.io_managers.contract import DATABRICKS_IO_MANAGER_KEY
from ingestion_assets.io_managers.databricks import (
    DatabricksIOManager,
    create_table_sql,
    databricks_type,
    replace_sql,
)
from ingestion_assets.lake.rows import PARTITION_DATE, RUN_ID, lake_schema
from ingestion_assets.project import parse_project
from ingestion_assets_tests.conftest import (
    SOURCE,
    TEST_SCALE,
    IngestProject,
    SourceDatabase,
    build_project,
    failure_message,
    table_entry,
)

pytestmark = pytest.mark.databricks

FILES = "/api/2.0/fs/files"
DIRECTORIES = "/api/2.0/fs/directories"
STATEMENTS = "/api/2.0/sql/statements/"
STAGING = "/Volumes/main/ingest/landing/_staging"
TABLE = "`main`.`ingest`.`src__sales_order_header`"
DAY = TEST_SCALE.start_date + datetime.timedelta(days=3)


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeWorkspace:
    """Files API and SQL Statement Execution API of a workspace, in memory."""

    calls: list[Call] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    statements: dict[str, dict[str, Any]] = field(default_factory=dict)
    # a statement containing this text fails with the message
    failing: tuple[str, str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: Request) -> Response:
        body = request.get_data()
        with self.lock:
            self.calls.append(
                Call(
                    request.method,
                    request.path,
                    request.query_string.decode(),
                    dict(request.headers),
                    body,
                )
            )
            if request.path.startswith(FILES):
                path = request.path.removeprefix(FILES)
                if request.method == "PUT":
                    self.files[path] = body
                    return Response(status=204)
                if request.method == "DELETE" and self.files.pop(path, None) is not None:
                    return Response(status=204)
                return _error(404, "NOT_FOUND", f"no file {path}")
            if request.path.startswith(DIRECTORIES) and request.method == "DELETE":
                directory = request.path.removeprefix(DIRECTORIES)
                if any(name.startswith(directory + "/") for name in self.files):
                    return _error(409, "DIRECTORY_NOT_EMPTY", f"{directory} is not empty")
                return Response(status=204)
            if request.path == STATEMENTS and request.method == "POST":
                statement = json.loads(body)["statement"]
                statement_id = f"stmt-{len(self.statements) + 1}"
                status: dict[str, Any] = {"state": "SUCCEEDED"}
                if self.failing and self.failing[0] in statement:
                    status = {
                        "state": "FAILED",
                        "error": {"error_code": "BAD_REQUEST", "message": self.failing[1]},
                    }
                self.statements[statement_id] = {"statement": statement, "status": status}
                # the warehouse answers PENDING first: the IO manager has to poll
                return _json({"statement_id": statement_id, "status": {"state": "PENDING"}})
            if request.path.startswith(STATEMENTS) and request.method == "GET":
                statement_id = request.path.removeprefix(STATEMENTS)
                status = self.statements[statement_id]["status"]
                return _json({"statement_id": statement_id, "status": status})
        return _error(404, "ENDPOINT_NOT_FOUND", f"{request.method} {request.path}")

    def sql(self) -> list[str]:
        """Every statement executed, in order."""
        return [json.loads(call.body)["statement"] for call in self.statement_posts()]

    def statement_posts(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path == STATEMENTS]

    def uploads(self) -> list[Call]:
        return [c for c in self.calls if c.method == "PUT" and c.path.startswith(FILES)]

    def uploaded_rows(self) -> pa.Table:
        """Every uploaded Parquet file, read back as one table."""
        return pa.concat_tables(pq.read_table(io.BytesIO(call.body)) for call in self.uploads())

    def shape(self) -> list[tuple[str, str]]:
        """(method, path with the run id and part numbers generalised) of every call."""
        return [
            (
                call.method,
                re.sub(r"/[0-9a-f-]{36}", "/<run>", call.path),
            )
            for call in self.calls
        ]


def _json(payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status=200, content_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json_status({"error_code": code, "message": message}, status)


def _json_status(payload: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")


@pytest.fixture
def token() -> str:
    return f"dapi{uuid.uuid4().hex}"


@pytest.fixture
def workspace(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, token: str) -> FakeWorkspace:
    """The fake workspace on 127.0.0.1, and the environment that points the project at it."""
    fake = FakeWorkspace()
    httpserver.expect_request(re.compile(".*")).respond_with_handler(fake.handle)
    monkeypatch.setenv("DATABRICKS_HOST", httpserver.url_for("/").rstrip("/"))
    monkeypatch.setenv("DATABRICKS_TOKEN", token)
    monkeypatch.setenv("DATABRICKS_WAREHOUSE_ID", "wh-123")
    return fake


def databricks_lake(**extra: Any) -> dict[str, Any]:
    """The `lake:` options that send every source to the fake workspace."""
    settings = {
        "host": "${DATABRICKS_HOST}",
        "token": "${DATABRICKS_TOKEN}",
        "warehouse_id": "${DATABRICKS_WAREHOUSE_ID}",
        "catalog": "main",
        "schema": "ingest",
        "volume": "landing",
        "poll_interval_seconds": 0.01,
        **extra,
    }
    return {"io_manager": "databricks", "databricks": settings}


@pytest.fixture
def project(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, workspace: FakeWorkspace
) -> IngestProject:
    sqlite_database.load_demo()
    return build_project(
        sqlite_database,
        tmp_path / "lake",
        [
            table_entry(sqlite_database, "Sales.SalesOrderHeader"),
            table_entry(sqlite_database, "Production.Product", partition_column=None),
        ],
        lake_options=databricks_lake(rows_per_file=3),
    )


def source_orders(database: SourceDatabase, first: datetime.date, last: datetime.date) -> list[int]:
    """SalesOrderIDs the source has for the days first..last."""
    engine = database.engine()
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT SalesOrderID FROM Sales.SalesOrderHeader "
                    "WHERE date(ModifiedDate) >= :first AND date(ModifiedDate) <= :last"
                ),
                {"first": first.isoformat(), "last": last.isoformat()},
            )
            return sorted(row[0] for row in rows)
    finally:
        engine.dispose()


def parse(statement: str) -> exp.Expression:
    """The statement as Databricks SQL; fails the test if sqlglot cannot read it."""
    parsed = sqlglot.parse_one(statement, read="databricks")
    assert parsed is not None
    return parsed


def read_files_path(parsed: exp.Expression) -> str:
    call = next(
        node for node in parsed.find_all(exp.Anonymous) if node.name.lower() == "read_files"
    )
    kwargs = {arg.this.name: arg.expression.name for arg in call.expressions[1:]}
    assert kwargs == {"format": "parquet"}
    return str(call.expressions[0].name)


def replace_bounds(parsed: exp.Expression) -> tuple[str, str]:
    """(low, high) of `_partition_date >= low AND _partition_date <= high`."""
    where = parsed.args["where"]
    low, high = where.find(exp.GTE), where.find(exp.LTE)
    assert low.this.name == PARTITION_DATE
    assert high.this.name == PARTITION_DATE
    return low.expression.this.name, high.expression.this.name


def test_first_write_creates_table_then_replaces_partition(
    project: IngestProject,
    workspace: FakeWorkspace,
    sqlite_database: SourceDatabase,
    instance: DagsterInstance,
) -> None:
    result = project.materialize(["sales_order_header"], instance, partition=DAY.isoformat())
    run_id = result.run_id
    staging = f"{STAGING}/src__sales_order_header/{run_id}"
    expected_orders = source_orders(sqlite_database, DAY, DAY)
    files = -(-len(expected_orders) // 3)
    assert files > 1, "the demo day should need several files of 3 rows"
    parts = [f"{staging}/part-{index:05d}.parquet" for index in range(files)]

    calls = [(call.method, call.path) for call in workspace.calls]
    assert calls == [
        *[("PUT", FILES + part) for part in parts],
        ("POST", STATEMENTS),
        ("GET", STATEMENTS + "stmt-1"),
        ("POST", STATEMENTS),
        ("GET", STATEMENTS + "stmt-2"),
        *[("DELETE", FILES + part) for part in parts],
        ("DELETE", DIRECTORIES + staging),
    ]
    create, insert = workspace.sql()
    assert create.startswith(f"CREATE TABLE IF NOT EXISTS {TABLE} (`SalesOrderID` BIGINT")
    assert create.endswith(
        "`_partition_date` DATE, `_ingested_at` TIMESTAMP, `_run_id` STRING) USING DELTA"
    )
    staged = workspace.uploaded_rows()
    selected = ", ".join(f"`{name}`" for name in staged.schema.names)
    assert insert == (
        f"INSERT INTO {TABLE} REPLACE WHERE `_partition_date` >= DATE'{DAY}' AND "
        f"`_partition_date` <= DATE'{DAY}' SELECT {selected} FROM read_files('{staging}', "
        "format => 'parquet')"
    )
    body = json.loads(workspace.statement_posts()[1].body)
    assert body["warehouse_id"] == "wh-123"
    assert body["wait_timeout"] == "30s"

    parsed_create = parse(create)
    assert isinstance(parsed_create, exp.Create)
    parsed_insert = parse(insert)
    assert isinstance(parsed_insert, exp.Insert)
    assert replace_bounds(parsed_insert) == (DAY.isoformat(), DAY.isoformat())
    assert read_files_path(parsed_insert) == staging
    table_columns = [column.name for column in parsed_create.find_all(exp.ColumnDef)]
    assert [column.alias_or_name for column in parsed_insert.expression.expressions] == (
        table_columns
    )
    assert table_columns == staged.schema.names

    assert sorted(staged.column("SalesOrderID").to_pylist()) == expected_orders
    assert set(staged.column(PARTITION_DATE).to_pylist()) == {DAY}
    assert set(staged.column(RUN_ID).to_pylist()) == {run_id}
    assert workspace.files == {}, "every staged file is deleted after the commit"

    materialization = result.asset_materializations_for_node(
        project.asset("sales_order_header").node_def.name
    )[0]
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["dagster/partition_row_count"] == len(expected_orders)
    assert metadata["dagster/table_name"] == "main.ingest.src__sales_order_header"
    assert metadata["statement_id"] == "stmt-2"
    assert metadata["files_staged"] == files
    assert metadata["partitions"] == f"{DAY}..{DAY}"

    # a partition replaced again: the same swap, the table already there
    workspace.calls.clear()
    again = project.materialize(["sales_order_header"], instance, partition=DAY.isoformat())
    create_again, insert_again = workspace.sql()
    assert create_again == create
    assert insert_again == insert.replace(run_id, again.run_id)
    assert workspace.files == {}


def test_backfill_range_is_one_statement(
    project: IngestProject,
    workspace: FakeWorkspace,
    sqlite_database: SourceDatabase,
    instance: DagsterInstance,
) -> None:
    first, last = DAY, DAY + datetime.timedelta(days=4)
    result = project.materialize(
        ["sales_order_header"], instance, partition_range=(first.isoformat(), last.isoformat())
    )
    inserts = [sql for sql in workspace.sql() if sql.startswith("INSERT")]
    assert len(inserts) == 1
    assert replace_bounds(parse(inserts[0])) == (first.isoformat(), last.isoformat())
    expected_orders = source_orders(sqlite_database, first, last)
    staged = workspace.uploaded_rows()
    assert sorted(staged.column("SalesOrderID").to_pylist()) == expected_orders
    assert {call.path for call in workspace.uploads()} == {
        call.path for call in workspace.calls if call.method == "DELETE" and FILES in call.path
    }
    assert workspace.files == {}
    # each day of the range reports its own row count
    records = instance.fetch_materializations(
        project.asset("sales_order_header").key, limit=100
    ).records
    row_counts = {
        record.asset_materialization.partition: record.asset_materialization.metadata[
            "dagster/partition_row_count"
        ].value
        for record in records
        if record.asset_materialization is not None and record.run_id == result.run_id
    }
    for offset in range(5):
        day = first + datetime.timedelta(days=offset)
        assert row_counts[day.isoformat()] == len(source_orders(sqlite_database, day, day))


def test_snapshot_overwrites_the_table(
    project: IngestProject, workspace: FakeWorkspace, instance: DagsterInstance
) -> None:
    project.materialize(["product"], instance)
    create, insert = workspace.sql()
    staging = read_files_path(parse(insert))
    assert create.startswith("CREATE TABLE IF NOT EXISTS `main`.`ingest`.`src__product` (")
    selected = ", ".join(f"`{name}`" for name in workspace.uploaded_rows().schema.names)
    assert insert == (
        f"INSERT OVERWRITE `main`.`ingest`.`src__product` SELECT {selected} FROM "
        f"read_files('{staging}', format => 'parquet')"
    )
    assert staging.startswith(f"{STAGING}/src__product/")
    assert isinstance(parse(insert), exp.Insert)
    assert parse(insert).args["overwrite"]
    assert workspace.uploaded_rows().num_rows > 0
    assert workspace.files == {}


def test_warehouse_error_fails_the_run_and_leaves_nothing_staged(
    project: IngestProject, workspace: FakeWorkspace, instance: DagsterInstance, token: str
) -> None:
    warehouse_message = "[DELTA_FAILED_TO_MERGE_FIELDS] Failed to merge fields 'TotalDue'"
    workspace.failing = ("REPLACE WHERE", warehouse_message)
    result = project.materialize(
        ["sales_order_header"], instance, partition=DAY.isoformat(), raise_on_error=False
    )
    assert not result.success
    message = failure_message(result)
    assert warehouse_message in message
    assert "`main`.`ingest`.`src__sales_order_header`" in message
    assert f"partition {DAY}" in message
    assert "FAILED" in message
    uploaded = {call.path for call in workspace.uploads()}
    assert uploaded
    deleted = {call.path for call in workspace.calls if call.method == "DELETE"}
    assert uploaded <= deleted
    assert workspace.files == {}, "nothing is left staged"
    assert token not in message


def test_token_is_only_in_the_authorization_header(
    project: IngestProject, workspace: FakeWorkspace, instance: DagsterInstance, token: str
) -> None:
    project.materialize(["sales_order_header"], instance, partition=DAY.isoformat())
    workspace.failing = ("REPLACE WHERE", "boom")
    failed = project.materialize(
        ["sales_order_header"], instance, partition=DAY.isoformat(), raise_on_error=False
    )
    assert not failed.success
    assert workspace.calls
    for call in workspace.calls:
        assert call.headers["Authorization"] == f"Bearer {token}"
        others = {k: v for k, v in call.headers.items() if k != "Authorization"}
        assert token not in json.dumps(others)
        assert token.encode() not in call.body
        assert token not in call.path + call.query
    for run in instance.get_runs():
        assert token not in serialize_value(run)
        for entry in instance.all_logs(run.run_id):
            assert token not in serialize_value(entry)
    assert token not in repr(project.defs.resources[DATABRICKS_IO_MANAGER_KEY])


def test_table_types() -> None:
    arrow = pa.schema(
        [
            ("flag", pa.bool_()),
            ("tiny", pa.int8()),
            ("small", pa.int16()),
            ("count", pa.int32()),
            ("big", pa.int64()),
            ("unsigned", pa.uint32()),
            ("ratio", pa.float32()),
            ("amount", pa.float64()),
            ("money", pa.decimal128(19, 4)),
            ("wide", pa.decimal256(50, 2)),
            ("day", pa.date32()),
            ("at_utc", pa.timestamp("us", "UTC")),
            ("at_local", pa.timestamp("ms")),
            ("at_nanos", pa.timestamp("ns", "Europe/Paris")),
            ("name", pa.large_string()),
            ("blob", pa.binary()),
            ("odd`name", pa.string()),
        ]
    )
    statement = create_table_sql("`c`.`s`.`t`", lake_schema(arrow, "truncate"))
    assert statement == (
        "CREATE TABLE IF NOT EXISTS `c`.`s`.`t` (`flag` BOOLEAN, `tiny` TINYINT, "
        "`small` SMALLINT, `count` INT, `big` BIGINT, `unsigned` BIGINT, `ratio` FLOAT, "
        "`amount` DOUBLE, `money` DECIMAL(19,4), `wide` STRING, `day` DATE, "
        "`at_utc` TIMESTAMP, `at_local` TIMESTAMP_NTZ, `at_nanos` TIMESTAMP, `name` STRING, "
        "`blob` BINARY, `odd``name` STRING, `_partition_date` DATE, `_ingested_at` TIMESTAMP, "
        "`_run_id` STRING) USING DELTA"
    )
    parsed = parse(statement)
    columns = {
        column.name: column.args["kind"].sql("databricks")
        for column in parsed.find_all(exp.ColumnDef)
    }
    assert columns["odd`name"] == "STRING"
    assert columns["money"] == "DECIMAL(19, 4)"
    assert columns["at_local"] == "TIMESTAMP_NTZ"
    with pytest.raises(Exception, match="no Databricks SQL column type"):
        databricks_type(pa.list_(pa.int32()))


def test_replace_sql_quotes_the_staging_path() -> None:
    statement = replace_sql("`c`.`s`.`t`", "/Volumes/c/s/v/_staging/it's", ["a"], None)
    assert read_files_path(parse(statement)) == "/Volumes/c/s/v/_staging/it's"


def test_project_selection(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, workspace: FakeWorkspace
) -> None:
    lake = databricks_lake()
    delta_source = build_project(
        sqlite_database,
        tmp_path / "lake",
        [table_entry(sqlite_database, "Sales.SalesOrderHeader")],
        lake_options=lake,
        io_manager="delta",
    )
    assert (
        delta_source.asset("sales_order_header").get_io_manager_key_for_asset_key(
            delta_source.asset("sales_order_header").key
        )
        == "io_manager"
    )
    assert DATABRICKS_IO_MANAGER_KEY not in delta_source.defs.resources
    to_databricks = build_project(
        sqlite_database,
        tmp_path / "lake",
        [table_entry(sqlite_database, "Sales.SalesOrderHeader")],
        lake_options={"io_manager": "delta", "databricks": lake["databricks"]},
        io_manager="databricks",
    )
    asset = to_databricks.asset("sales_order_header")
    assert asset.get_io_manager_key_for_asset_key(asset.key) == DATABRICKS_IO_MANAGER_KEY
    resource = to_databricks.defs.resources[DATABRICKS_IO_MANAGER_KEY]
    assert isinstance(resource, DatabricksIOManager)
    assert workspace.calls == [], "loading definitions connects to nothing"


@pytest.mark.parametrize(
    ("lake", "error"),
    [
        ({"io_manager": "databricks"}, "lake.databricks is not set"),
        (
            {"databricks": {**databricks_lake()["databricks"], "token": "dapi-literal"}},
            "token must come from the environment",
        ),
        ({"io_manager": "spark"}, "io_manager"),
    ],
)
def test_project_file_errors(lake: dict[str, Any], error: str) -> None:
    text = json.dumps(
        {
            "lake": lake,
            "sources": {
                SOURCE: {
                    "type": "sql",
                    "connection": {"url": "sqlite://"},
                    "tables": [{"name": "T"}],
                }
            },
        }
    )
    environment = {"DATABRICKS_HOST": "h", "DATABRICKS_TOKEN": "t", "DATABRICKS_WAREHOUSE_ID": "w"}
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse_project(text, "ingestion.yaml", environment)
