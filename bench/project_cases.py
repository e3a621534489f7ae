"""The benchmark cases that run in this project's virtualenv, one per process.

`python bench/project_cases.py CASE SETTINGS.json` runs one case and prints one JSON line:
`rows` landed, `seconds` of the timed part, `bytes_written` (Parquet bytes of the Delta table) and
`note` (empty, or what a person should know, such as a failed check). `bench/run.py` starts these
processes and measures their peak RSS; nothing here is meant to be run by hand except to debug.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from instance_cases import INSTANCE_CASES
from peers.landed import delta_landed

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
SQL_SOURCE = "bench"
REST_SOURCE = "bench_api"
API_USER = "demo"
API_URL_VARIABLE = "BENCH_API_URL"
API_PASSWORD_VARIABLE = "BENCH_API_PASSWORD"  # noqa: S105 - a variable name
# the benchmark's PostgreSQL through the Debian psqlODBC driver (odbc-postgresql), for the
# reflection of PostgreSQL's dialect: parameters bound by the driver (the server cannot type the
# untyped ones of `json_build_object(?, ...)`), booleans as booleans (not as '0'/'1' text, which
# would make every column NOT NULL)
POSTGRES_ODBC_URL = (
    "postgresql+pyodbc://postgres@127.0.0.1:5432/postgres"
    "?driver=PostgreSQL+Unicode&UseServerSidePrepare=0&BoolsAsChar=0"
)
# the demo API's SalesOrderDetail, typed as the demo project declares it
REST_FIELDS = {
    "SalesOrderID": "int32",
    "SalesOrderDetailID": "int32",
    "CarrierTrackingNumber": "string",
    "OrderQty": "int16",
    "ProductID": "int32",
    "SpecialOfferID": "int32",
    "UnitPrice": "decimal(19,4)",
    "UnitPriceDiscount": "decimal(19,4)",
    "LineTotal": "decimal(38,6)",
    "rowguid": "string",
    "ModifiedDate": "timestamp",
}


@dataclasses.dataclass(frozen=True)
class CaseSettings:
    """Everything a case needs to know, written by the harness as JSON."""

    work_dir: str
    postgres_url: str = ""
    schema: str = ""
    table: str = "SalesOrderDetail"
    first_day: str = ""
    last_day: str = ""
    one_day: str = ""
    parquet_path: str = ""
    sqlite_dir: str = ""
    sqlite_attach: dict[str, str] = dataclasses.field(default_factory=dict)
    # the MariaDB copy (bench/mysql_source.py): its SQLAlchemy URL and database
    mysql_url: str = ""
    mysql_database: str = ""
    api_url: str = ""
    api_path: str = "/api/SalesOrderDetail"
    page_size: int = 1000
    parallel_requests: int = 4

    def save(self, path: pathlib.Path) -> None:
        """Write the settings for a case process."""
        path.write_text(json.dumps(dataclasses.asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: pathlib.Path) -> CaseSettings:
        """Read the settings the harness wrote."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """What one run of a case reports."""

    rows: int
    seconds: float
    bytes_written: int = 0
    note: str = ""


def _day_after(day: str) -> str:
    return (datetime.date.fromisoformat(day) + datetime.timedelta(days=1)).isoformat()


# the benchmark schema's order tables and their primary keys (bench/source.py)
ORDER_TABLES = {
    "SalesOrderDetail": ["SalesOrderID", "SalesOrderDetailID"],
    "SalesOrderHeader": ["SalesOrderID"],
    "PurchaseOrderHeader": ["PurchaseOrderID"],
    "PurchaseOrderDetail": ["PurchaseOrderID", "PurchaseOrderDetailID"],
}


def _libpq_url(settings: CaseSettings) -> str:
    """The benchmark's PostgreSQL as the PostgreSQL writer's libpq URL."""
    import sqlalchemy as sa

    url = sa.make_url(settings.postgres_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _writer_lake(settings: CaseSettings, lake: pathlib.Path, writer: str) -> dict[str, Any]:
    """The `lake:` of a project writing through `writer` (delta, iceberg or postgres)."""
    if writer == "iceberg":
        warehouse = pathlib.Path(settings.work_dir) / "iceberg"
        warehouse.mkdir(parents=True, exist_ok=True)
        return {
            "root": str(lake),
            "io_manager": "iceberg",
            "iceberg": {
                "catalog_uri": f"sqlite:///{warehouse / 'catalog.db'}",
                "warehouse": str(warehouse),
            },
        }
    if writer == "postgres":
        return {
            "root": str(lake),
            "io_manager": "postgres",
            "postgres": {"url": _libpq_url(settings), "schema": _writer_schema(settings)},
        }
    return {"root": str(lake)}


def _writer_schema(settings: CaseSettings) -> str:
    """The schema the PostgreSQL writer's case lands in (dropped by the case)."""
    return f"{settings.schema}_writer"


def _sql_project(
    settings: CaseSettings,
    lake: pathlib.Path,
    sqlite: bool,
    all_tables: bool = False,
    writer: str = "delta",
) -> str:
    """The project file of the SQL cases: one partitioned table, as the README documents (with
    `all_tables`, the four order tables of the source, each partitioned alike), written by
    `writer`."""
    import yaml

    connection: dict[str, Any] = {"url": settings.postgres_url}
    names = list(ORDER_TABLES) if all_tables else [settings.table]
    tables: list[dict[str, Any]] = [
        {
            "schema": settings.schema,
            "name": name,
            "partition_column": "ModifiedDate",
            "primary_key": ORDER_TABLES[name],
        }
        for name in names
    ]
    if sqlite:
        connection = {
            "url": f"sqlite:///{pathlib.Path(settings.sqlite_dir) / 'main.db'}",
            "sqlite_attach": settings.sqlite_attach,
        }
        for table in tables:
            table["schema"] = "Sales"
    source = {
        "type": "sql",
        "connection": connection,
        "start_date": settings.first_day,
        "end_date": _day_after(settings.last_day),
        "timezone": "UTC",
        "tables": tables,
    }
    lake_settings = _writer_lake(settings, lake, writer)
    return yaml.safe_dump({"lake": lake_settings, "sources": {SQL_SOURCE: source}})


def _rest_project(settings: CaseSettings, lake: pathlib.Path) -> str:
    """The project file of the REST case: the demo API's SalesOrderDetail stream."""
    import yaml

    source = {
        "type": "rest",
        "base_url": "${" + API_URL_VARIABLE + "}",
        "auth": {
            "type": "basic",
            "username": API_USER,
            "password": "${" + API_PASSWORD_VARIABLE + "}",
        },
        "pagination": {
            "type": "offset",
            "limit": settings.page_size,
            "total_header": "X-Total-Count",
        },
        "parallel_requests": settings.parallel_requests,
        "start_date": settings.first_day,
        "end_date": _day_after(settings.last_day),
        "timezone": "UTC",
        "streams": [
            {
                "name": "SalesOrderDetail",
                "path": settings.api_path,
                "records_path": "data",
                "params": {"ModifiedDate_gte": "{start}", "ModifiedDate_lt": "{end}"},
                "partition_field": "ModifiedDate",
                "primary_key": ["SalesOrderID", "SalesOrderDetailID"],
                "fields": REST_FIELDS,
            }
        ],
    }
    return yaml.safe_dump({"lake": {"root": str(lake)}, "sources": {REST_SOURCE: source}})


@dataclasses.dataclass(frozen=True)
class _Run:
    """How one Dagster run is made: the whole job (assets and checks) or the asset alone, on an
    in-memory instance or on one storing runs and events in SQLite files (`dagster dev`'s)."""

    source: str
    with_checks: bool
    partition_range: tuple[str, str] | None = None
    partition_key: str | None = None
    sqlite_storage: bool = False
    # (rows, bytes) landed, read from the definitions' writer (None: the Delta tables' files)
    landed: Callable[[Any], tuple[int, int]] | None = None


def _dagster_run(settings: CaseSettings, project_text: str, run: _Run) -> CaseResult:
    """Build definitions from the project text and run them once in this process, timed."""
    from dagster import (
        AssetKey,
        AssetSelection,
        BetaWarning,
        DagsterInstance,
        PreviewWarning,
        materialize,
    )

    from ingestion_assets.definitions import build_definitions, ingest_job_name
    from ingestion_assets.project import parse_project

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
    tags = (
        {RANGE_START_TAG: run.partition_range[0], RANGE_END_TAG: run.partition_range[1]}
        if run.partition_range
        else {}
    )
    no_telemetry = {"telemetry": {"enabled": False}}
    if run.sqlite_storage:
        home = pathlib.Path(settings.work_dir) / "dagster"
        home.mkdir(parents=True, exist_ok=True)
        instance = DagsterInstance.local_temp(str(home), overrides=no_telemetry)
    else:
        instance = DagsterInstance.ephemeral(settings=no_telemetry)
    try:
        started = time.perf_counter()
        spec = parse_project(project_text, "bench-project.yaml")
        defs = build_definitions(spec)
        if run.with_checks:
            result = defs.resolve_job_def(ingest_job_name(run.source)).execute_in_process(
                instance=instance, tags=tags, partition_key=run.partition_key
            )
        else:
            dataset = next(iter(spec.sources[run.source].datasets))
            asset = defs.get_assets_def(AssetKey([run.source, dataset.key_name]))
            # the checks still judge the rows before the commit; none is recorded
            result = materialize(
                [asset],
                instance=instance,
                resources=defs.resources,
                tags=tags,
                partition_key=run.partition_key,
                selection=AssetSelection.assets(asset.key).without_checks(),
            )
        seconds = time.perf_counter() - started
    finally:
        instance.dispose()
    if not result.success:
        raise RuntimeError(f"the Dagster run {result.run_id} failed")
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    note = "; ".join(f"check {e.check_name} failed: {e.description}" for e in failed)
    materializations = result.get_asset_materialization_events()
    if run.landed is not None:
        rows, written = run.landed(defs)
        return CaseResult(rows, seconds, written, note)
    uris = {str(event.materialization.metadata["dagster/uri"].value) for event in materializations}
    rows = written = 0
    for uri in sorted(uris):
        landed_rows, landed_bytes = delta_landed(pathlib.Path(uri))
        rows, written = rows + landed_rows, written + landed_bytes
    return CaseResult(rows, seconds, written, note)


def _iceberg_landed(defs: Any) -> tuple[int, int]:
    """Rows and data-file bytes of the Iceberg table, counted from its current snapshot."""
    manager = defs.resources["iceberg_io_manager"]
    table = manager.open_table((SQL_SOURCE, "sales_order_detail"))
    files = list(table.scan().plan_files())
    return sum(f.file.record_count for f in files), sum(f.file.file_size_in_bytes for f in files)


def _postgres_landed(settings: CaseSettings) -> Callable[[Any], tuple[int, int]]:
    def landed(defs: Any) -> tuple[int, int]:
        """Rows of the PostgreSQL table, counted by the server, and its size on disk."""
        import psycopg2

        table = f'"{_writer_schema(settings)}"."{SQL_SOURCE}__sales_order_detail"'
        with psycopg2.connect(_libpq_url(settings)) as connection:
            cursor = connection.cursor()
            cursor.execute(f"SELECT count(*), pg_table_size('{table}') FROM {table}")
            rows, size = cursor.fetchone()
        return int(rows), int(size)

    return landed


def project_backfill_iceberg(settings: CaseSettings) -> CaseResult:
    """The full backfill of the source's job (asset and checks) into an Iceberg table of a
    SQLite catalog: one overwrite snapshot."""
    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(SQL_SOURCE, True, (settings.first_day, settings.last_day), landed=_iceberg_landed)
    return _dagster_run(settings, _sql_project(settings, lake, False, writer="iceberg"), run)


def project_backfill_postgres_writer(settings: CaseSettings) -> CaseResult:
    """The full backfill of the source's job into a table of the local PostgreSQL (COPY into a
    staging table, one transaction); the schema is dropped afterwards."""
    import psycopg2

    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(
        SQL_SOURCE,
        True,
        (settings.first_day, settings.last_day),
        landed=_postgres_landed(settings),
    )
    try:
        return _dagster_run(settings, _sql_project(settings, lake, False, writer="postgres"), run)
    finally:
        connection = psycopg2.connect(_libpq_url(settings))
        connection.autocommit = True
        connection.cursor().execute(f'DROP SCHEMA IF EXISTS "{_writer_schema(settings)}" CASCADE')
        connection.close()


def project_backfill(settings: CaseSettings) -> CaseResult:
    """Every partition as one single-run backfill of the source's job (asset and checks)."""
    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(SQL_SOURCE, True, (settings.first_day, settings.last_day))
    return _dagster_run(settings, _sql_project(settings, lake, sqlite=False), run)


def project_backfill_four(settings: CaseSettings) -> CaseResult:
    """Every partition of the four order tables as one single-run backfill of the source's job
    (four assets and their checks, one after the other in one process)."""
    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(SQL_SOURCE, True, (settings.first_day, settings.last_day))
    return _dagster_run(settings, _sql_project(settings, lake, sqlite=False, all_tables=True), run)


def project_backfill_sqlite_storage(settings: CaseSettings) -> CaseResult:
    """The full backfill of the source's job on an instance that stores events in SQLite."""
    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(SQL_SOURCE, True, (settings.first_day, settings.last_day), sqlite_storage=True)
    return _dagster_run(settings, _sql_project(settings, lake, sqlite=False), run)


def project_backfill_asset(settings: CaseSettings) -> CaseResult:
    """Every partition as one run of the asset without its checks' evaluations recorded (they
    still judge the staged rows: the difference is Dagster's bookkeeping of the evaluations)."""
    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(SQL_SOURCE, False, (settings.first_day, settings.last_day))
    return _dagster_run(settings, _sql_project(settings, lake, sqlite=False), run)


def project_one_day(settings: CaseSettings) -> CaseResult:
    """One day's partition through the source's job (asset and checks)."""
    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(SQL_SOURCE, True, partition_key=settings.one_day)
    return _dagster_run(settings, _sql_project(settings, lake, sqlite=False), run)


def project_sqlite(settings: CaseSettings) -> CaseResult:
    """The full backfill of the source's job, reading the SQLite copy of the table."""
    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(SQL_SOURCE, True, (settings.first_day, settings.last_day))
    return _dagster_run(settings, _sql_project(settings, lake, sqlite=True), run)


def project_rest(settings: CaseSettings) -> CaseResult:
    """Every partition of the REST stream as one run of the source's job (asset and checks)."""
    os.environ[API_URL_VARIABLE] = settings.api_url
    os.environ[API_PASSWORD_VARIABLE] = sys.stdin.readline().strip()
    lake = pathlib.Path(settings.work_dir) / "lake"
    run = _Run(REST_SOURCE, True, (settings.first_day, settings.last_day))
    return _dagster_run(settings, _rest_project(settings, lake), run)


def _register_postgres_odbc() -> None:
    """Make `postgresql+pyodbc://` URLs work: PostgreSQL's dialect on a pyodbc connection.

    SQLAlchemy ships no pyodbc driver for PostgreSQL; this one is the benchmark's own, so that the
    project's reader can be timed on the ODBC paths SQL Server sources take (arrow-odbc bulk
    fetches, pyodbc row batches) against a PostgreSQL server."""
    from sqlalchemy.connectors.pyodbc import PyODBCConnector
    from sqlalchemy.dialects import registry
    from sqlalchemy.dialects.postgresql.base import PGDialect

    class PostgresPyodbcDialect(PyODBCConnector, PGDialect):  # type: ignore[misc]
        supports_statement_cache = True

        def create_connect_args(self, url: Any) -> Any:
            # PyODBCConnector writes SQL Server's `Server=host,port`; psqlODBC wants `Port=`
            parts = [
                f"DRIVER={{{url.query['driver']}}}",
                f"Server={url.host}",
                f"Port={url.port or 5432}",
                f"Database={url.database}",
                f"UID={url.username}",
            ]
            if url.password:
                parts.append(f"PWD={url.password}")
            # the URL's other query items are psqlODBC settings
            parts += [f"{key}={value}" for key, value in url.query.items() if key != "driver"]
            return [";".join(parts)], {}

        def _get_server_version_info(self, connection: Any) -> Any:
            return PGDialect._get_server_version_info(self, connection)

        # PostgreSQL's reflection reads these as arrays, which psqlODBC returns as text; the
        # reader uses a table's columns alone, so they are left out
        def get_multi_indexes(self, *args: Any, **kwargs: Any) -> Any:
            return {}

        def get_multi_unique_constraints(self, *args: Any, **kwargs: Any) -> Any:
            return {}

    registry.impls["postgresql.pyodbc"] = lambda: PostgresPyodbcDialect


def _extract(settings: CaseSettings, fast_path: bool = True, sqlite: bool = False) -> CaseResult:
    """The SQL source's reader alone: every partition's rows into Arrow, no Dagster, no Delta."""
    from ingestion_assets.project import parse_project
    from ingestion_assets.resources import SqlSourceResource
    from ingestion_assets.sources.sql import SqlTableReader
    from ingestion_assets.sources.window import PartitionWindow
    from ingestion_assets.specs import SqlSourceSpec, TableSpec

    lake = pathlib.Path(settings.work_dir) / "lake"
    spec = parse_project(_sql_project(settings, lake, sqlite=sqlite), "bench-project.yaml")
    source = spec.sources[SQL_SOURCE]
    assert isinstance(source, SqlSourceSpec)
    table = source.tables[0]
    assert isinstance(table, TableSpec)
    start = datetime.datetime.fromisoformat(settings.first_day).replace(tzinfo=datetime.UTC)
    end = datetime.datetime.fromisoformat(_day_after(settings.last_day)).replace(
        tzinfo=datetime.UTC
    )
    started = time.perf_counter()
    resource = SqlSourceResource.from_spec(SQL_SOURCE, source)
    reader = (
        resource.reader(table)
        if fast_path
        # what `resource.reader(table)` builds, the COPY fast path off
        else SqlTableReader(
            resource.engine(), resource.source_name, table, resource.batch_size, fast_path=False
        )
    )
    batches = reader.read(PartitionWindow(start, end, "every partition"))
    rows = sum(batch.num_rows for batch in batches)
    seconds = time.perf_counter() - started
    resource.engine().dispose()
    return CaseResult(rows, seconds)


def project_extract(settings: CaseSettings) -> CaseResult:
    """The reader alone, as the project reads PostgreSQL: COPY parsed by Arrow (psycopg2)."""
    return _extract(settings)


def project_extract_batches(settings: CaseSettings) -> CaseResult:
    """The reader alone without the COPY fast path: SQLAlchemy + psycopg2 row batches."""
    return _extract(settings, fast_path=False)


def project_extract_odbc(settings: CaseSettings) -> CaseResult:
    """The reader alone over ODBC (psqlODBC), as ODBC sources read: arrow-odbc bulk fetches."""
    _register_postgres_odbc()
    return _extract(dataclasses.replace(settings, postgres_url=POSTGRES_ODBC_URL))


def project_extract_odbc_rows(settings: CaseSettings) -> CaseResult:
    """The reader alone over ODBC with the bulk path off: pyodbc row batches."""
    _register_postgres_odbc()
    return _extract(dataclasses.replace(settings, postgres_url=POSTGRES_ODBC_URL), fast_path=False)


def project_extract_mysql(settings: CaseSettings) -> CaseResult:
    """The reader alone over the MariaDB copy, as MySQL/MariaDB sources read: ConnectorX."""
    return _extract(
        dataclasses.replace(
            settings, postgres_url=settings.mysql_url, schema=settings.mysql_database
        )
    )


def project_extract_sqlite(settings: CaseSettings) -> CaseResult:
    """The reader alone over the SQLite copy, as SQLite sources read: ADBC."""
    return _extract(settings, sqlite=True)


def _driver_window(settings: CaseSettings) -> tuple[str, str]:
    return f"{settings.first_day} 00:00:00", f"{_day_after(settings.last_day)} 00:00:00"


def _driver_result(rows: int, seconds: float, schema: Any) -> CaseResult:
    typed = ("UnitPrice", "LineTotal", "rowguid", "ModifiedDate")
    note = "Arrow types: " + ", ".join(
        f"{name} {schema.field(name).type}" for name in typed if name in schema.names
    )
    return CaseResult(rows, seconds, note=note)


def driver_mysql(settings: CaseSettings) -> CaseResult:
    """ConnectorX alone over the MariaDB copy: the window's query as one Arrow stream."""
    import connectorx
    import sqlalchemy as sa

    from ingestion_assets.sources.columnar import connectorx_url

    start, end = _driver_window(settings)
    query = (
        f"SELECT * FROM `{settings.mysql_database}`.`{settings.table}` "
        f"WHERE `ModifiedDate` >= '{start}' AND `ModifiedDate` < '{end}'"
    )
    url = connectorx_url(sa.make_url(settings.mysql_url))
    started = time.perf_counter()
    reader = connectorx.read_sql(url, query, return_type="arrow_stream", batch_size=50_000)
    rows = sum(batch.num_rows for batch in reader)
    return _driver_result(rows, time.perf_counter() - started, reader.schema)


def driver_sqlite(settings: CaseSettings) -> CaseResult:
    """ADBC's SQLite driver alone over the SQLite copy: the window's query (as the project
    compares SQLite's text dates) as Arrow batches of 50,000 rows."""
    import adbc_driver_sqlite.dbapi

    start, end = _driver_window(settings)
    query = (
        f'SELECT * FROM "Sales"."{settings.table}" '
        'WHERE datetime("ModifiedDate") >= ? AND datetime("ModifiedDate") < ?'
    )
    started = time.perf_counter()
    connection = adbc_driver_sqlite.dbapi.connect(
        str(pathlib.Path(settings.sqlite_dir) / "main.db")
    )
    try:
        cursor = connection.cursor()
        for name, path in settings.sqlite_attach.items():
            cursor.execute(f'ATTACH DATABASE ? AS "{name}"', (path,))
        cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "50000"})
        cursor.execute(query, (start, end))
        reader = cursor.fetch_record_batch()
        rows = sum(batch.num_rows for batch in reader)
        cursor.close()
    finally:
        connection.close()
    return _driver_result(rows, time.perf_counter() - started, reader.schema)


def _write_delta(settings: CaseSettings, partitioned: bool, day: str | None) -> CaseResult:
    """write_deltalake of the exported rows, loaded from Parquet before the clock starts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    table = pq.read_table(settings.parquet_path)
    if day is not None:
        start = pa.scalar(datetime.datetime.fromisoformat(day), pa.timestamp("us"))
        end = pa.scalar(datetime.datetime.fromisoformat(_day_after(day)), pa.timestamp("us"))
        modified = table["ModifiedDate"]
        table = table.filter(pc.and_(pc.greater_equal(modified, start), pc.less(modified, end)))
    partition_by = None
    if partitioned:
        table = table.append_column("_partition_date", pc.cast(table["ModifiedDate"], pa.date32()))
        partition_by = ["_partition_date"]
    uri = pathlib.Path(settings.work_dir) / "delta"
    started = time.perf_counter()
    write_deltalake(str(uri), table, partition_by=partition_by)
    seconds = time.perf_counter() - started
    rows, written = delta_landed(uri)
    return CaseResult(rows, seconds, written)


def limit_write(settings: CaseSettings) -> CaseResult:
    """Delta write of the whole table from memory, one unpartitioned table."""
    return _write_delta(settings, partitioned=False, day=None)


def limit_write_partitioned(settings: CaseSettings) -> CaseResult:
    """Delta write of the whole table from memory, Hive-partitioned by day (reference only)."""
    return _write_delta(settings, partitioned=True, day=None)


def limit_write_day(settings: CaseSettings) -> CaseResult:
    """Delta write of one day's rows from memory."""
    return _write_delta(settings, partitioned=False, day=settings.one_day)


def limit_api(settings: CaseSettings) -> CaseResult:
    """Every page of the stream fetched `parallel_requests` at a time and JSON-decoded, no more."""
    import requests

    password = sys.stdin.readline().strip()
    url = settings.api_url.rstrip("/") + settings.api_path
    session = requests.Session()
    session.auth = (API_USER, password)

    def fetch(offset: int) -> list[Any]:
        response = session.get(
            url, params={"offset": offset, "limit": settings.page_size}, timeout=(10, 60)
        )
        response.raise_for_status()
        records: list[Any] = response.json()["data"]
        return records

    started = time.perf_counter()
    first = session.get(url, params={"offset": 0, "limit": settings.page_size}, timeout=(10, 60))
    first.raise_for_status()
    total = int(first.headers["X-Total-Count"])
    rows = len(first.json()["data"])
    offsets: Iterator[int] = iter(range(settings.page_size, total, settings.page_size))
    with ThreadPoolExecutor(max_workers=settings.parallel_requests) as executor:
        rows += sum(len(records) for records in executor.map(fetch, offsets))
    seconds = time.perf_counter() - started
    return CaseResult(rows, seconds)


CASES: dict[str, Callable[[CaseSettings], CaseResult]] = {
    "project-backfill": project_backfill,
    "project-backfill-four": project_backfill_four,
    "project-backfill-sqlite-storage": project_backfill_sqlite_storage,
    "project-backfill-asset": project_backfill_asset,
    "project-backfill-iceberg": project_backfill_iceberg,
    "project-backfill-postgres-writer": project_backfill_postgres_writer,
    "project-one-day": project_one_day,
    "project-sqlite": project_sqlite,
    "project-extract": project_extract,
    "project-extract-batches": project_extract_batches,
    "project-extract-odbc": project_extract_odbc,
    "project-extract-odbc-rows": project_extract_odbc_rows,
    "project-extract-mysql": project_extract_mysql,
    "project-extract-sqlite": project_extract_sqlite,
    "driver-mysql": driver_mysql,
    "driver-sqlite": driver_sqlite,
    "project-rest": project_rest,
    "limit-write": limit_write,
    "limit-write-partitioned": limit_write_partitioned,
    "limit-write-day": limit_write_day,
    "limit-api": limit_api,
}


# the cases of Dagster's bookkeeping (instances, the CLI, a launch as from the UI)
CASES.update(
    {
        name: (lambda settings, case=case: CaseResult(**case(settings)))
        for name, case in INSTANCE_CASES.items()
    }
)


def main() -> None:
    """Run the case named on the command line and print its result as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("settings", type=pathlib.Path)
    args = parser.parse_args()
    result = CASES[args.case](CaseSettings.load(args.settings))
    print(json.dumps(dataclasses.asdict(result)), flush=True)


if __name__ == "__main__":
    main()
