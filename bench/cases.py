"""The benchmark's cases: what each one runs, in which processes, and how its result is read.

A case is built per run into an `Invocation` (commands piped into each other, standard input,
how to turn the finished processes into a `Sample`). Everything a case needs that is not timed
(the PostgreSQL schema, the Parquet and SQLite exports, the demo API, a Singer catalog, a peer's
virtualenv) is prepared once in a `Bench` before any case runs."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pyarrow.parquet as pq
from measure import CaseError, ProcessRun, Sample, json_result
from peer_envs import ENVIRONMENTS
from project_cases import CaseSettings
from source import POSTGRES_URL, TABLE, PostgresSource, RestSource

BENCH_DIR = pathlib.Path(__file__).resolve().parent
PROJECT_CASES = BENCH_DIR / "project_cases.py"
PEER_SCRIPTS = BENCH_DIR / "peers"
# tap-postgres insists on a password; the benchmark server trusts 127.0.0.1 and ignores it
TAP_POSTGRES_PASSWORD = "unused-with-trust-auth"  # noqa: S105

Group = Literal["sql", "day", "rest"]
# "driver": a SQL driver read alone into Arrow, in a peer's venv but never a group's best peer
# (bench/report.py picks that among the "peer" cases, the full pipelines)
Kind = Literal["limit", "project", "peer", "driver"]
# the benchmark's PostgreSQL for the drivers: a libpq URI (ADBC, ConnectorX) and an ODBC
# connection string through the Debian psqlODBC driver (arrow-odbc)
POSTGRES_URI = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_ODBC = (
    "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=postgres;Uid=postgres;"
)


@dataclass
class Bench:
    """The prepared sources and settings every case of one `make bench` run shares."""

    work_dir: pathlib.Path
    page_size: int = 1000
    parallel_requests: int = 4
    postgres: PostgresSource | None = None
    parquet_path: pathlib.Path | None = None
    sql_arrow_bytes_per_row: float = 0.0
    sqlite_dir: pathlib.Path | None = None
    sqlite_attach: dict[str, str] = field(default_factory=dict)
    # the MariaDB copy of SalesOrderDetail (bench/mysql_source.py)
    mysql_database: str = ""
    mysql_url: str = ""
    rest: RestSource | None = None
    rest_arrow_bytes_per_row: float = 0.0
    api_url: str = ""
    api_password: str = ""
    tap_postgres_config: pathlib.Path | None = None
    tap_postgres_catalog: pathlib.Path | None = None

    @property
    def one_day(self) -> str:
        """The day of the one-day cases: the middle of the table's days."""
        source = self.require_postgres()
        return (source.first_day + (source.last_day - source.first_day) / 2).isoformat()

    def require_postgres(self) -> PostgresSource:
        """The PostgreSQL source (prepared for every SQL case)."""
        if self.postgres is None:
            raise CaseError("the PostgreSQL source was not built")
        return self.postgres

    def require_rest(self) -> RestSource:
        """The demo API's database (prepared for every REST case)."""
        if self.rest is None or not self.api_url:
            raise CaseError("the demo API is not running")
        return self.rest

    def settings(self, run_dir: pathlib.Path, rest: bool) -> CaseSettings:
        """What a case of this project needs, for one run in `run_dir`."""
        if rest:
            served = self.require_rest()
            return CaseSettings(
                work_dir=str(run_dir),
                first_day=served.first_day.isoformat(),
                last_day=served.last_day.isoformat(),
                api_url=self.api_url,
                page_size=self.page_size,
                parallel_requests=self.parallel_requests,
            )
        source = self.require_postgres()
        return CaseSettings(
            work_dir=str(run_dir),
            postgres_url=POSTGRES_URL,
            schema=source.schema,
            table=TABLE,
            first_day=source.first_day.isoformat(),
            last_day=source.last_day.isoformat(),
            one_day=self.one_day,
            parquet_path=str(self.parquet_path or ""),
            sqlite_dir=str(self.sqlite_dir or ""),
            sqlite_attach=self.sqlite_attach,
            mysql_url=self.mysql_url,
            mysql_database=self.mysql_database,
        )


@dataclass(frozen=True)
class Invocation:
    """One run of a case: commands (piped into each other), their input, how to read them."""

    commands: list[list[str]]
    read: Callable[[ProcessRun], Sample]
    stdin_text: str | None = None


@dataclass(frozen=True)
class Case:
    """A row of the results table."""

    name: str
    label: str
    group: Group
    kind: Kind
    needs: frozenset[str]
    invocation: Callable[[Bench, pathlib.Path], Invocation]
    # the rows it must land, when not its group's (a case loading more than SalesOrderDetail)
    expected_rows: Callable[[Bench], int] | None = None


def _four_tables_rows(bench: Bench) -> int:
    """Rows of the four order tables, counted by the server."""
    return sum(bench.require_postgres().table_counts().values())


def child_environment() -> dict[str, str]:
    """The environment of every case process: no telemetry, unbuffered output."""
    return {
        **os.environ,
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
    }


def _json_reader(case: str) -> Callable[[ProcessRun], Sample]:
    def read(run: ProcessRun) -> Sample:
        result = json_result(case, run)
        return Sample(
            rows=int(str(result["rows"])),
            seconds=float(str(result["seconds"])),
            peak_rss_mb=run.peak_rss_mb,
            process_seconds=run.wall_seconds,
            bytes_written=int(str(result.get("bytes_written", 0))),
            note=str(result.get("note", "")),
        )

    return read


def _project(case: str, rest: bool = False) -> Callable[[Bench, pathlib.Path], Invocation]:
    """A case of bench/project_cases.py, run by this project's interpreter."""

    def build(bench: Bench, run_dir: pathlib.Path) -> Invocation:
        settings_path = run_dir / "settings.json"
        bench.settings(run_dir, rest).save(settings_path)
        return Invocation(
            commands=[[sys.executable, str(PROJECT_CASES), case, str(settings_path)]],
            read=_json_reader(case),
            stdin_text=bench.api_password + "\n" if rest else None,
        )

    return build


def _psql_copy(one_day: bool) -> Callable[[Bench, pathlib.Path], Invocation]:
    """`psql -c "\\copy (SELECT * FROM ...) TO '/dev/null'"`, timed as a whole process."""
    case = "limit-read-day" if one_day else "limit-read"

    def build(bench: Bench, run_dir: pathlib.Path) -> Invocation:
        source = bench.require_postgres()
        query = f"SELECT * FROM {source.qualified_table}"
        if one_day:
            day = bench.one_day
            query += f""" WHERE "ModifiedDate" >= '{day}' AND "ModifiedDate" < date '{day}' + 1"""
        command = [
            "psql",
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"\\copy ({query}) TO '/dev/null'",
        ]

        def read(run: ProcessRun) -> Sample:
            if any(code != 0 for code in run.exit_codes):
                raise CaseError(
                    f"{case}: psql exited with {run.exit_codes}: {run.last_error_line()}"
                )
            match = re.search(r"COPY (\d+)", run.stdout())
            if match is None:
                raise CaseError(f"{case}: psql did not report a row count: {run.stdout()[:200]}")
            return Sample(
                rows=int(match.group(1)),
                seconds=run.wall_seconds,
                peak_rss_mb=run.peak_rss_mb,
                process_seconds=run.wall_seconds,
                bytes_written=0,
            )

        return Invocation(commands=[command], read=read)

    return build


def _peer_script(environment: str, script: str, arguments: list[str]) -> list[str]:
    return [str(ENVIRONMENTS[environment].python), str(PEER_SCRIPTS / script), *arguments]


def _dlt_sql(bench: Bench, run_dir: pathlib.Path) -> Invocation:
    source = bench.require_postgres()
    arguments = ["--url", POSTGRES_URL, "--schema", source.schema, "--table", TABLE]
    command = _peer_script("dlt", "dlt_sql.py", [*arguments, "--out", str(run_dir)])
    return Invocation(commands=[command], read=_json_reader("peer-dlt"))


def _dagster_deltalake_sql(bench: Bench, run_dir: pathlib.Path) -> Invocation:
    source = bench.require_postgres()
    arguments = ["--url", POSTGRES_URL, "--schema", source.schema, "--table", TABLE]
    command = _peer_script(
        "dagster-deltalake",
        "dagster_deltalake_sql.py",
        [*arguments, "--out", str(run_dir)],
    )
    return Invocation(commands=[command], read=_json_reader("peer-dagster-deltalake"))


def _driver(case: str) -> Callable[[Bench, pathlib.Path], Invocation]:
    """A case of bench/peers/drivers_sql.py: the query `project-extract` runs, read into Arrow."""

    def build(bench: Bench, _run_dir: pathlib.Path) -> Invocation:
        source = bench.require_postgres()
        first, last = source.first_day, source.last_day
        # every partition's window, as the project's reader bounds it
        query = (
            f"SELECT * FROM {source.qualified_table} "
            f"""WHERE "ModifiedDate" >= '{first.isoformat()}' """
            f"""AND "ModifiedDate" < '{(last + datetime.timedelta(days=1)).isoformat()}'"""
        )
        arguments = [case, "--query", query, "--uri", POSTGRES_URI]
        arguments += ["--odbc", POSTGRES_ODBC]
        command = _peer_script("drivers", "drivers_sql.py", arguments)
        return Invocation(commands=[command], read=_json_reader(case))

    return build


def _dlt_rest(bench: Bench, run_dir: pathlib.Path) -> Invocation:
    bench.require_rest()
    arguments = ["--url", bench.api_url, "--username", "demo", "--path", "/api/SalesOrderDetail"]
    arguments += ["--page-size", str(bench.page_size), "--out", str(run_dir)]
    command = _peer_script("dlt", "dlt_rest.py", arguments)
    return Invocation(
        commands=[command], read=_json_reader("peer-dlt-rest"), stdin_text=bench.api_password + "\n"
    )


def _singer_target(run_dir: pathlib.Path) -> tuple[list[str], pathlib.Path]:
    """The Parquet target's command, writing into `run_dir/parquet`."""
    out = run_dir / "parquet"
    config = run_dir / "target-config.json"
    config.write_text(json.dumps({"destination_path": str(out)}), encoding="utf-8")
    target = [
        str(ENVIRONMENTS["singer-parquet"].python),
        str(PEER_SCRIPTS / "singer_parquet_target.py"),
        "--config",
        str(config),
    ]
    return target, out


def _singer_reader(case: str, out: pathlib.Path) -> Callable[[ProcessRun], Sample]:
    """Rows and bytes of the Parquet files a Singer pipeline wrote; its wall time."""

    def read(run: ProcessRun) -> Sample:
        if any(code != 0 for code in run.exit_codes):
            raise CaseError(f"{case}: exited with {run.exit_codes}: {run.last_error_line()}")
        files = list(out.glob("*.parquet"))
        if not files:
            raise CaseError(f"{case}: the target wrote no Parquet file: {run.last_error_line()}")
        return Sample(
            rows=sum(pq.read_metadata(path).num_rows for path in files),
            seconds=run.wall_seconds,
            peak_rss_mb=run.peak_rss_mb,
            process_seconds=run.wall_seconds,
            bytes_written=sum(path.stat().st_size for path in files),
        )

    return read


def _singer_postgres(bench: Bench, run_dir: pathlib.Path) -> Invocation:
    if bench.tap_postgres_config is None or bench.tap_postgres_catalog is None:
        raise CaseError("peer-singer: the tap's catalog was not discovered")
    tap = [
        str(ENVIRONMENTS["tap-postgres"].executable("tap-postgres")),
        "--config",
        str(bench.tap_postgres_config),
        "--catalog",
        str(bench.tap_postgres_catalog),
    ]
    target, out = _singer_target(run_dir)
    return Invocation(commands=[tap, target], read=_singer_reader("peer-singer", out))


def _singer_rest(bench: Bench, run_dir: pathlib.Path) -> Invocation:
    bench.require_rest()
    config = run_dir / "tap-config.json"
    config.touch(mode=0o600)
    config.write_text(
        json.dumps(
            {
                "api_url": bench.api_url,
                "auth_method": "basic",
                "username": "demo",
                "password": bench.api_password,
                "pagination_request_style": "simple_offset_paginator",
                "pagination_response_style": "offset",
                "pagination_page_size": bench.page_size,
                "pagination_initial_offset": 0,
                "offset_records_jsonpath": "$.data",
                "streams": [
                    {
                        "name": TABLE,
                        "path": "/api/SalesOrderDetail",
                        "records_path": "$.data[*]",
                        "primary_keys": ["SalesOrderID", "SalesOrderDetailID"],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    tap = [
        str(ENVIRONMENTS["tap-rest-api-msdk"].executable("tap-rest-api-msdk")),
        "--config",
        str(config),
    ]
    target, out = _singer_target(run_dir)
    return Invocation(commands=[tap, target], read=_singer_reader("peer-singer-rest", out))


def _all(*names: str) -> frozenset[str]:
    return frozenset(names)


CASES: tuple[Case, ...] = (
    Case(
        "limit-read",
        "limit: PostgreSQL read (psql \\copy to /dev/null)",
        "sql",
        "limit",
        _all("postgres"),
        _psql_copy(one_day=False),
    ),
    Case(
        "limit-write",
        "limit: Delta write from memory (write_deltalake)",
        "sql",
        "limit",
        _all("postgres", "parquet"),
        _project("limit-write"),
    ),
    Case(
        "limit-write-partitioned",
        "  same, partitioned by day (not in the limit)",
        "sql",
        "limit",
        _all("postgres", "parquet"),
        _project("limit-write-partitioned"),
    ),
    Case(
        "project-backfill",
        "project: backfill, one run, job (asset + checks)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill"),
    ),
    Case(
        "project-backfill-sqlite-storage",
        "  same, Dagster instance storing events in SQLite",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-sqlite-storage"),
    ),
    Case(
        "project-backfill-asset",
        "project: backfill, one run, checks judged, none recorded",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-asset"),
    ),
    Case(
        "project-backfill-sqlite-batched",
        "  same, Dagster's SQLite storage, DAGSTER_EVENT_BATCH_SIZE=1000",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-sqlite-batched"),
    ),
    Case(
        "project-backfill-project-storage",
        "  same, SQLite storage through the project's event log class",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-project-storage"),
    ),
    Case(
        "project-backfill-postgres-storage",
        "  same, dagster-postgres instance, events one by one",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-postgres-storage"),
    ),
    Case(
        "project-backfill-postgres-batched",
        "  same, dagster-postgres, DAGSTER_EVENT_BATCH_SIZE=1000",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-postgres-batched"),
    ),
    Case(
        "project-backfill-postgres-project-storage",
        "  same, PostgreSQL through the project's event log class",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-postgres-project-storage"),
    ),
    Case(
        "project-backfill-iceberg",
        "  same, written to Iceberg (SQLite catalog, one snapshot)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-iceberg"),
    ),
    Case(
        "project-backfill-postgres-writer",
        "  same, written to a PostgreSQL table (COPY, one transaction)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-postgres-writer"),
    ),
    Case(
        "project-cli-backfill",
        "project: CLI `dagster asset materialize --partition-range`",
        "sql",
        "project",
        _all("postgres"),
        _project("project-cli-backfill"),
    ),
    Case(
        "project-cli-backfill-four",
        "  same, the four tables of the source (rows of all four)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-cli-backfill-four"),
        expected_rows=_four_tables_rows,
    ),
    Case(
        "project-cli-backfill-four-in-process",
        "  same, four tables, every step in the run's process",
        "sql",
        "project",
        _all("postgres"),
        _project("project-cli-backfill-four-in-process"),
        expected_rows=_four_tables_rows,
    ),
    Case(
        "project-cli-backfill-default-instance",
        "  same, one table, Dagster's default instance",
        "sql",
        "project",
        _all("postgres"),
        _project("project-cli-backfill-default-instance"),
    ),
    Case(
        "project-cli-backfill-four-default-instance",
        "  same, four tables, Dagster's default instance",
        "sql",
        "project",
        _all("postgres"),
        _project("project-cli-backfill-four-default-instance"),
        expected_rows=_four_tables_rows,
    ),
    Case(
        "project-backfill-four",
        "project: backfill, one run, job of the four order tables (+ checks)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-backfill-four"),
        expected_rows=_four_tables_rows,
    ),
    Case(
        "project-extract",
        "project: SQL reader to Arrow only (no Dagster/Delta)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-extract"),
    ),
    Case(
        "project-extract-batches",
        "  same, COPY fast path off (SQLAlchemy + psycopg2 rows)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-extract-batches"),
    ),
    Case(
        "project-extract-odbc",
        "  same, over ODBC (arrow-odbc bulk fetch, psqlODBC)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-extract-odbc"),
    ),
    Case(
        "project-extract-odbc-rows",
        "  same, over ODBC, bulk path off (pyodbc rows)",
        "sql",
        "project",
        _all("postgres"),
        _project("project-extract-odbc-rows"),
    ),
    Case(
        "driver-adbc",
        "driver: ADBC PostgreSQL to Arrow only (record batches)",
        "sql",
        "driver",
        _all("postgres", "peer:drivers"),
        _driver("driver-adbc"),
    ),
    Case(
        "driver-connectorx",
        "driver: ConnectorX to Arrow only (arrow_stream)",
        "sql",
        "driver",
        _all("postgres", "peer:drivers"),
        _driver("driver-connectorx"),
    ),
    Case(
        "driver-arrow-odbc",
        "driver: arrow-odbc (psqlODBC) to Arrow only",
        "sql",
        "driver",
        _all("postgres", "peer:drivers"),
        _driver("driver-arrow-odbc"),
    ),
    Case(
        "project-sqlite",
        "project: backfill from SQLite, job (asset + checks)",
        "sql",
        "project",
        _all("postgres", "parquet", "sqlite"),
        _project("project-sqlite"),
    ),
    Case(
        "project-extract-mysql",
        "project: SQL reader over MariaDB (ConnectorX) to Arrow only",
        "sql",
        "project",
        _all("postgres", "parquet", "mysql"),
        _project("project-extract-mysql"),
    ),
    Case(
        "driver-mysql",
        "driver: ConnectorX over MariaDB to Arrow only (arrow_stream)",
        "sql",
        "driver",
        _all("postgres", "parquet", "mysql"),
        _project("driver-mysql"),
    ),
    Case(
        "project-extract-sqlite",
        "project: SQL reader over SQLite (ADBC) to Arrow only",
        "sql",
        "project",
        _all("postgres", "parquet", "sqlite"),
        _project("project-extract-sqlite"),
    ),
    Case(
        "driver-sqlite",
        "driver: ADBC SQLite to Arrow only (record batches)",
        "sql",
        "driver",
        _all("postgres", "parquet", "sqlite"),
        _project("driver-sqlite"),
    ),
    Case(
        "peer-dlt",
        "dlt sql_database (pyarrow) -> Delta",
        "sql",
        "peer",
        _all("postgres", "peer:dlt"),
        _dlt_sql,
    ),
    Case(
        "peer-singer",
        "Singer: tap-postgres | Parquet target",
        "sql",
        "peer",
        _all("postgres", "peer:tap-postgres", "peer:singer-parquet", "catalog"),
        _singer_postgres,
    ),
    Case(
        "peer-dagster-deltalake",
        "dagster-deltalake IO manager <- pandas.read_sql",
        "sql",
        "peer",
        _all("postgres", "peer:dagster-deltalake"),
        _dagster_deltalake_sql,
    ),
    Case(
        "limit-read-day",
        "limit: PostgreSQL read of one day (psql \\copy)",
        "day",
        "limit",
        _all("postgres"),
        _psql_copy(one_day=True),
    ),
    Case(
        "limit-write-day",
        "limit: Delta write of one day from memory",
        "day",
        "limit",
        _all("postgres", "parquet"),
        _project("limit-write-day"),
    ),
    Case(
        "project-one-day",
        "project: one day's partition, job (asset + checks)",
        "day",
        "project",
        _all("postgres"),
        _project("project-one-day"),
    ),
    Case(
        "project-ui-launch-day",
        "project: one day launched as the UI does (dagster dev, GraphQL)",
        "day",
        "project",
        _all("postgres"),
        _project("project-ui-launch-day"),
    ),
    Case(
        "limit-api",
        "limit: demo API pages, 4 parallel, JSON decoded only",
        "rest",
        "limit",
        _all("rest"),
        _project("limit-api", rest=True),
    ),
    Case(
        "project-rest",
        "project: REST stream, 4 parallel, job (asset + checks)",
        "rest",
        "project",
        _all("rest"),
        _project("project-rest", rest=True),
    ),
    Case(
        "peer-singer-rest",
        "Singer: tap-rest-api-msdk | Parquet target",
        "rest",
        "peer",
        _all("rest", "peer:tap-rest-api-msdk", "peer:singer-parquet"),
        _singer_rest,
    ),
    Case(
        "peer-dlt-rest",
        "dlt rest_api -> Delta",
        "rest",
        "peer",
        _all("rest", "peer:dlt"),
        _dlt_rest,
    ),
)

CASES_BY_NAME: dict[str, Case] = {case.name: case for case in CASES}
