"""Shared fixtures: real PostgreSQL, MariaDB and SQLite source databases, and project builders."""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    instance_for_test,
    materialize,
)
from deltalake import DeltaTable
from pytest_httpserver import HTTPServer

from ingestion_assets.definitions import build_definitions
from ingestion_assets.demo.generate import DemoScale, create_demo_database, create_demo_sqlite
from ingestion_assets.demo.schema import DEMO_SCHEMAS
from ingestion_assets.project import parse_project
from ingestion_assets.sources.sql import create_source_engine
from ingestion_assets.specs import ProjectSpec

POSTGRES_URL = os.environ.get(
    "INGEST_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
MARIADB_URL = os.environ.get("INGEST_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/")
# opt-in: there is no SQL Server on the development and CI machines (../shared/SERVICES.md)
MSSQL_URL_VARIABLE = "INGEST_TEST_MSSQL_URL"
# the ODBC login timeout: a wrong host fails the test in seconds instead of hanging it
MSSQL_LOGIN_TIMEOUT_SECONDS = 10
DIALECTS = ("postgresql", "mysql", "sqlite")
SOURCE = "src"
# small enough to build per test, large enough to have several batches and an empty day
TEST_SCALE = DemoScale(days=20, orders_per_day=12)

# the test files that take longest (`make test` prints the slowest tests), longest first
LONGEST_FILES = (
    "test_ui.py",
    "test_component.py",
    "test_demo.py",
    "test_layers.py",
    "test_concurrency.py",
    "test_soak.py",
    "test_delta_io.py",
    "test_destination_faults.py",
    "test_layout.py",
    "test_destinations.py",
    "test_schema_evolution.py",
    "test_s3.py",
    "test_stopping.py",
    "test_cli.py",
)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--dialects postgresql`: the dialect-parametrized tests run on PostgreSQL only."""
    parser.addoption(
        "--dialects",
        default=",".join(DIALECTS),
        help=f"comma-separated dialects the `source_database` tests run on (default: "
        f"{','.join(DIALECTS)}); tests written for one database are not affected",
    )


def _chosen_dialects(config: pytest.Config) -> set[str]:
    chosen = {name.strip() for name in str(config.getoption("--dialects")).split(",")} - {""}
    if not chosen or chosen - set(DIALECTS):
        raise pytest.UsageError(
            f"--dialects {config.getoption('--dialects')!r}: choose one or more of "
            f"{', '.join(DIALECTS)}, separated by commas"
        )
    return chosen


@pytest.hookimpl(tryfirst=True)  # before `-m` is applied, so that it sees the marks set here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that need MariaDB; leave out the dialect runs `--dialects` does not name."""
    chosen = _chosen_dialects(config)
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        if not isinstance(item, pytest.Function):
            kept.append(item)
            continue
        # `source_database` takes its database fixture by name at run time, so the dialect
        # run is known from the parameter; the other tests name their database fixture
        dialect = item.callspec.params.get("source_database") if hasattr(item, "callspec") else None
        if dialect == "mysql" or "mariadb_database" in item.fixturenames:
            item.add_marker(pytest.mark.mariadb)
        (left_out if dialect is not None and dialect not in chosen else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
    # the longest files first: `--dist loadfile` hands files to workers in this order, so a
    # long file taken last would leave the other workers idle at the end of the run
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items[:] = sorted(kept, key=lambda item: rank.get(item.path.name, len(rank)))


def require_service(
    url: str,
    name: str,
    fix: str = "start it as described in ../shared/SERVICES.md (.ci/run does this in CI)",
    connect_args: Mapping[str, Any] | None = None,
) -> sa.Engine:
    """An engine for a service the tests need; a missing service fails the test, never skips it."""
    engine = sa.create_engine(
        url, isolation_level="AUTOCOMMIT", connect_args=dict(connect_args or {})
    )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as error:  # pyodbc reports a missing ODBC driver as an InterfaceError
        engine.dispose()
        # the URL as SQLAlchemy prints it: its password masked
        pytest.fail(f"{name} is not reachable at {sa.make_url(url)} ({error.orig}); {fix}")
    return engine


@dataclass
class SourceDatabase:
    """An empty database (with the demo's schemas) on one dialect, dropped after the test."""

    dialect: str
    url: str
    schemas: dict[str, str]
    sqlite_attach: dict[str, str] = field(default_factory=dict)
    # the environment variable holding `url`, when the URL carries a password: the project file
    # names the variable, since a password is never written in it
    url_variable: str | None = None

    def engine(self) -> sa.Engine:
        """A new engine on the database (schemas attached for SQLite)."""
        return create_source_engine(sa.make_url(self.url), self.sqlite_attach)

    def schema(self, logical: str) -> str:
        """The real schema name of a demo schema (`Sales` -> `ia1234_sales` on MariaDB)."""
        return self.schemas[logical]

    def load_demo(self, scale: DemoScale = TEST_SCALE) -> dict[str, int]:
        """Fill the database with the deterministic demo data."""
        if self.dialect == "sqlite":
            directory = pathlib.Path(self.sqlite_attach["Sales"]).parent
            return create_demo_sqlite(directory, scale)
        engine = self.engine()
        try:
            return create_demo_database(engine, scale, self.schemas)
        finally:
            engine.dispose()

    def connection_spec(self) -> dict[str, Any]:
        """The `connection:` block of a project file for this database."""
        spec: dict[str, Any] = {
            "url": f"${{{self.url_variable}}}" if self.url_variable else self.url
        }
        if self.sqlite_attach:
            spec["sqlite_attach"] = self.sqlite_attach
        return spec


@pytest.fixture
def postgres_database() -> Iterator[SourceDatabase]:
    """A new PostgreSQL database with schemas Sales, Purchasing, Production."""
    admin = require_service(POSTGRES_URL, "PostgreSQL")
    name = f"ia_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL).set(database=name)
    try:
        yield SourceDatabase(
            "postgresql", url.render_as_string(), {schema: schema for schema in DEMO_SCHEMAS}
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def mariadb_database() -> Iterator[SourceDatabase]:
    """New MariaDB databases (MySQL's schemas), one per demo schema, with unique names."""
    admin = require_service(MARIADB_URL, "MariaDB")
    prefix = f"ia{uuid.uuid4().hex[:8]}"
    schemas = {schema: f"{prefix}_{schema.lower()}" for schema in DEMO_SCHEMAS}
    with admin.connect() as connection:
        for database in schemas.values():
            connection.execute(sa.text(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4"))
    try:
        yield SourceDatabase("mysql", MARIADB_URL.rstrip("/") + "/?charset=utf8mb4", schemas)
    finally:
        with admin.connect() as connection:
            for database in schemas.values():
                connection.execute(sa.text(f"DROP DATABASE IF EXISTS `{database}`"))
        admin.dispose()


@pytest.fixture
def mssql_database() -> Iterator[SourceDatabase]:
    """New SQL Server schemas, one per demo schema, on the server INGEST_TEST_MSSQL_URL names."""
    url = os.environ.get(MSSQL_URL_VARIABLE)
    if not url:
        pytest.skip(
            f"{MSSQL_URL_VARIABLE} is not set: set it to the SQLAlchemy URL of a SQL Server "
            "(mssql+pyodbc://user:password@host:1433/database?driver=ODBC+Driver+18+for+SQL+Server)"
            " to run the SQL Server tests; they create and drop schemas of their own there"
        )
    scheme = url.partition("://")[0]
    if scheme != "mssql+pyodbc":
        # the rest of the URL is not shown: it may hold a password
        pytest.fail(f"{MSSQL_URL_VARIABLE} must be a mssql+pyodbc:// URL, not {scheme}://...")
    admin = require_service(
        url,
        "SQL Server",
        fix=f"check the server and the URL in {MSSQL_URL_VARIABLE}",
        connect_args={"timeout": MSSQL_LOGIN_TIMEOUT_SECONDS},
    )
    prefix = f"ia{uuid.uuid4().hex[:8]}"
    schemas = {schema: f"{prefix}_{schema.lower()}" for schema in DEMO_SCHEMAS}
    try:
        with admin.connect() as connection:
            for schema in schemas.values():
                connection.execute(sa.schema.CreateSchema(schema))
        yield SourceDatabase("mssql", url, schemas, url_variable=MSSQL_URL_VARIABLE)
    finally:
        with admin.connect() as connection:
            for schema in schemas.values():
                # SQL Server drops only an empty schema
                tables = sa.MetaData()
                tables.reflect(connection, schema=schema)
                tables.drop_all(connection)
                connection.execute(sa.schema.DropSchema(schema, if_exists=True))
        admin.dispose()


@pytest.fixture
def sqlite_database(tmp_path: pathlib.Path) -> SourceDatabase:
    """SQLite files in a temporary folder, one attached file per schema."""
    directory = tmp_path / "sqlite"
    directory.mkdir()
    (directory / "main.db").touch()
    return SourceDatabase(
        "sqlite",
        f"sqlite:///{directory / 'main.db'}",
        {schema: schema for schema in DEMO_SCHEMAS},
        {schema: str(directory / f"{schema}.db") for schema in DEMO_SCHEMAS},
    )


@pytest.fixture(params=DIALECTS)
def source_database(request: pytest.FixtureRequest) -> SourceDatabase:
    """The same test on PostgreSQL, MariaDB and SQLite."""
    fixture = {"postgresql": "postgres_database", "mysql": "mariadb_database"}.get(
        request.param, "sqlite_database"
    )
    database: SourceDatabase = request.getfixturevalue(fixture)
    return database


ORDER_TABLE_KEYS = {
    "Sales.SalesOrderHeader": ("sales_order_header", ["SalesOrderID"]),
    "Sales.SalesOrderDetail": ("sales_order_detail", ["SalesOrderID", "SalesOrderDetailID"]),
    "Purchasing.PurchaseOrderHeader": ("purchase_order_header", ["PurchaseOrderID"]),
    "Purchasing.PurchaseOrderDetail": (
        "purchase_order_detail",
        ["PurchaseOrderID", "PurchaseOrderDetailID"],
    ),
}


def table_entry(
    database: SourceDatabase,
    logical: str,
    partition_column: str | None = "ModifiedDate",
    **extra: Any,
) -> dict[str, Any]:
    """A `tables:` entry for a demo table on this database."""
    schema, name = logical.split(".")
    entry: dict[str, Any] = {"schema": database.schema(schema), "name": name}
    if partition_column:
        entry["partition_column"] = partition_column
    if logical in ORDER_TABLE_KEYS:
        entry["primary_key"] = ORDER_TABLE_KEYS[logical][1]
    entry.update(extra)
    return entry


@dataclass
class IngestProject:
    """A project file built in a test, its definitions, and helpers to run and read it."""

    spec: ProjectSpec
    defs: Definitions
    lake: pathlib.Path

    def asset(self, name: str) -> Any:
        """The assets definition of `[src, name]`."""
        return self.defs.get_assets_def(AssetKey([SOURCE, name]))

    def materialize(
        self,
        names: Sequence[str],
        instance: DagsterInstance,
        partition: str | None = None,
        partition_range: tuple[str, str] | None = None,
        raise_on_error: bool = True,
    ) -> ExecuteInProcessResult:
        """Materialize some tables for one partition or a range (one run)."""
        tags = (
            {RANGE_START_TAG: partition_range[0], RANGE_END_TAG: partition_range[1]}
            if partition_range
            else None
        )
        return materialize(
            [self.asset(name) for name in names],
            instance=instance,
            resources=self.defs.resources,
            partition_key=partition,
            tags=tags,
            raise_on_error=raise_on_error,
        )

    def table_uri(self, name: str) -> str:
        """Where the Delta table of `[src, name]` is."""
        return str(self.lake / SOURCE / name)

    def delta(self, name: str) -> DeltaTable:
        """The Delta table of `[src, name]` at its latest version."""
        return DeltaTable(self.table_uri(name))


def build_project(
    database: SourceDatabase,
    lake: pathlib.Path,
    tables: Sequence[Mapping[str, Any]],
    lake_options: Mapping[str, Any] | None = None,
    project_options: Mapping[str, Any] | None = None,
    **source_options: Any,
) -> IngestProject:
    """Write a project file for `database` and load it the way Dagster would."""
    source: dict[str, Any] = {
        "type": "sql",
        "connection": database.connection_spec(),
        "start_date": TEST_SCALE.start_date.isoformat(),
        "tables": list(tables),
    }
    source.update(source_options)
    text = yaml.safe_dump(
        {
            "lake": {"root": str(lake), **(lake_options or {})},
            "sources": {SOURCE: source},
            **(project_options or {}),
        }
    )
    spec = parse_project(text, "test-project.yaml")
    return IngestProject(spec, build_definitions(spec), lake)


def failure_message(result: ExecuteInProcessResult) -> str:
    """The failed step's error, with its causes, as text."""
    failures = [event for event in result.all_events if event.is_step_failure]
    assert failures, "the run should have failed a step"
    data = failures[0].step_failure_data
    error = data.error if data else None
    texts = []
    while error is not None:
        texts.append(error.message)
        error = error.cause
    return "\n".join(texts)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """A temporary Dagster instance."""
    with instance_for_test() as test_instance:
        yield test_instance


@contextlib.contextmanager
def started_http_server() -> Iterator[HTTPServer]:
    """A pytest-httpserver on a free port of 127.0.0.1 (whatever the environment says), stopped
    afterwards."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


@pytest.fixture(scope="session")
def loopback_server() -> Iterator[HTTPServer]:
    """One pytest-httpserver for the session."""
    with started_http_server() as server:
        yield server


@pytest.fixture
def httpserver(loopback_server: HTTPServer) -> HTTPServer:
    """The loopback server with no handlers and an empty log."""
    loopback_server.clear()
    return loopback_server
