"""`ingest check` and the check_sources job: every declared table, column, stream and credential
checked at real sources (PostgreSQL, MariaDB, SQLite, the demo API, a local HTTP server) before
any run, each problem named with its fix."""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from ingestion_assets.definitions import build_definitions
from ingestion_assets.demo.api import DemoApi
from ingestion_assets.demo.generate import DemoScale, create_demo_sqlite
from ingestion_assets.demo.schema import demo_metadata, table_for
from ingestion_assets.preflight import CHECK_JOB, SourceCheck, check_project, main, sample_window
from ingestion_assets.project import parse_project
from ingestion_assets.specs import ProjectSpec
from ingestion_assets_tests.conftest import (
    ORDER_TABLE_KEYS,
    SOURCE,
    TEST_SCALE,
    SourceDatabase,
    table_entry,
)
from ingestion_assets_tests.memory_source import memory_kind

DEMO_USER = "demo"
DEMO_PASSWORD = "right-Pa55word-for-the-demo"
WRONG_PASSWORD = "wrong-Pa55word-typed-in"
PASSWORD_VARIABLE = "PREFLIGHT_API_PASSWORD"
# the demo API's data: five days from 2024-01-01, so the last complete day is 2024-01-05
API_SCALE = DemoScale(days=5, orders_per_day=4)
API_END_DATE = "2024-01-06"
__all__ = ["memory_kind"]  # the fixture, used by name
# the columns of the demo's Sales.SalesOrderHeader, as the demo schema declares them
ORDER_COLUMNS = len(table_for(demo_metadata(), "Sales.SalesOrderHeader").columns)


def sql_source(database: SourceDatabase, tables: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A `sql` source entry for `database`."""
    return {
        "type": "sql",
        "connection": database.connection_spec(),
        "start_date": TEST_SCALE.start_date.isoformat(),
        "tables": list(tables),
    }


def project_of(sources: Mapping[str, Any], lake: pathlib.Path) -> ProjectSpec:
    """A project of these sources, validated as the command validates it."""
    text = yaml.safe_dump({"lake": {"root": str(lake)}, "sources": dict(sources)}, sort_keys=False)
    return parse_project(text, "preflight-test.yaml", require_secrets=False)


def checked(project: ProjectSpec, day: datetime.date | None = None) -> list[SourceCheck]:
    """Every source of the project checked."""
    return list(check_project(project, list(project.sources), day))


def problems(reports: Sequence[SourceCheck]) -> list[tuple[str, str]]:
    """Every line that is not `ok`, as (status, line)."""
    return [
        (status, line) for report in reports for status, line in report.lines() if status != "ok"
    ]


def header_table(database: SourceDatabase, **extra: Any) -> dict[str, Any]:
    """Sales.SalesOrderHeader of the database, with entries changed."""
    return table_entry(database, "Sales.SalesOrderHeader", **extra)


# ---- SQL: PostgreSQL, MariaDB, SQLite --------------------------------------------------------------


def test_a_good_project_passes_with_one_ok_line_per_table(
    source_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    source_database.load_demo()
    tables = [table_entry(source_database, logical) for logical in ORDER_TABLE_KEYS]
    tables.append(table_entry(source_database, "Production.Product", partition_column=None))
    project = project_of({SOURCE: sql_source(source_database, tables)}, tmp_path)
    (report,) = checked(project)
    assert not report.failed
    lines = report.lines()
    assert [status for status, _ in lines] == ["ok"] * 5
    schema = source_database.schema("Sales")
    assert lines[0][1] == (
        f"{SOURCE}/{schema}.SalesOrderHeader: {ORDER_COLUMNS} columns; partition column ModifiedDate"
    )
    assert lines[4][1].endswith(": 18 columns; a snapshot (read whole)")
    assert report.metadata()["tables_checked"] == 5
    assert report.metadata()["problems"] == 0


def test_a_misspelt_table_gives_the_did_you_mean_suggestion_and_the_key_to_fix(
    source_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    source_database.load_demo()
    table = header_table(source_database, name="SalesOrderHeadr")
    project = project_of({SOURCE: sql_source(source_database, [table])}, tmp_path)
    (report,) = checked(project)
    schema = source_database.schema("Sales")
    assert report.failed
    assert problems([report]) == [
        (
            "problem",
            f"{SOURCE}/{schema}.SalesOrderHeadr: there is no table or view 'SalesOrderHeadr' in "
            f"schema '{schema}'. Fix: did you mean SalesOrderHeader, SalesOrderDetail? Write "
            f"`name` as the source spells it (sources.{SOURCE}.tables[0] "
            f"({schema}.SalesOrderHeadr).name)",
        )
    ]


def test_a_missing_partition_column_and_primary_key_column_are_each_named(
    source_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    source_database.load_demo()
    table = header_table(
        source_database, partition_column="ModifedDate", primary_key=["SalesOrderID", "OrderNo"]
    )
    project = project_of({SOURCE: sql_source(source_database, [table])}, tmp_path)
    (report,) = checked(project)
    (item,) = report.datasets
    assert item.status == "problem"
    assert [(f.key, f.problem, f.fix) for f in item.findings] == [
        (
            "partition_column",
            "'ModifedDate' (partition_column) is not a column of the table",
            "did you mean ModifiedDate, OrderDate, DueDate? Write `partition_column` as the "
            "source spells it",
        ),
        (
            "primary_key",
            "'OrderNo' (primary_key) is not a column of the table",
            "did you mean OrderDate? Write `primary_key` as the source spells it",
        ),
    ]


def test_a_column_written_in_another_case_is_given_the_source_spelling(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    postgres_database.load_demo()
    # PostgreSQL keeps the quoted names' case: `modifieddate` is no column of the table
    table = header_table(postgres_database, partition_column="modifieddate")
    project = project_of({SOURCE: sql_source(postgres_database, [table])}, tmp_path)
    ((_, line),) = problems(checked(project))
    assert line.endswith(
        "'modifieddate' (partition_column) is not a column of the table. Fix: the source spells "
        "it 'ModifiedDate': write `partition_column` in that case (sources.src.tables[0] "
        "(Sales.SalesOrderHeader).partition_column)"
    )


def test_a_wrong_schema_is_named_with_the_schemas_there_are(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    postgres_database.load_demo()
    tables = [header_table(postgres_database, schema="sales"), header_table(postgres_database)]
    tables[1]["schema"] = "Purchase"
    tables[1]["name"] = "PurchaseOrderHeader"
    project = project_of({SOURCE: sql_source(postgres_database, tables)}, tmp_path)
    lines = problems(checked(project))
    assert [line.split(": ", 1)[1] for _, line in lines] == [
        "there is no schema 'sales' at the source. Fix: the source spells it 'Sales': write "
        "`schema` in that case (sources.src.tables[0] (sales.SalesOrderHeader).schema)",
        "there is no schema 'Purchase' at the source. Fix: did you mean Purchasing? Write "
        "`schema` as the source spells it (sources.src.tables[1] (Purchase.PurchaseOrderHeader)"
        ".schema)",
    ]


def test_a_partition_column_that_holds_no_dates_is_refused(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    postgres_database.load_demo()
    table = header_table(postgres_database, partition_column="SalesOrderNumber")
    project = project_of({SOURCE: sql_source(postgres_database, [table])}, tmp_path)
    ((status, line),) = problems(checked(project))
    assert status == "problem"
    assert "'SalesOrderNumber' is VARCHAR(25), not a date or timestamp" in line


def test_an_unreachable_database_is_one_problem_naming_the_password_variable_and_the_rest_wait(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("PREFLIGHT_DB_PASSWORD", "db-Secret-value")
    source = {
        "type": "sql",
        # nothing listens on port 1
        "connection": {
            "drivername": "postgresql+psycopg2",
            "host": "127.0.0.1",
            "port": 1,
            "username": "postgres",
            "password": "${PREFLIGHT_DB_PASSWORD}",
            "database": "postgres",
        },
        "connect_timeout": 2,
        "tables": [{"schema": "Sales", "name": "A"}, {"schema": "Sales", "name": "B"}],
    }
    (report,) = checked(project_of({SOURCE: source}, tmp_path))
    lines = report.lines()
    assert [status for status, _ in lines] == ["problem", "skipped", "skipped"]
    assert lines[0][1].startswith(
        "src: cannot connect to postgresql+psycopg2://postgres:***@127.0.0.1:1/postgres: "
    )
    assert lines[0][1].endswith(
        "Fix: check that the database is up, and the connection settings and credentials "
        "(sources.src.connection, which reads PREFLIGHT_DB_PASSWORD)"
    )
    assert lines[1][1] == "src/Sales.A: not checked, the source failed first (above)"
    assert "db-Secret-value" not in "\n".join(line for _, line in lines)


def test_a_driver_that_is_not_installed_is_named_with_what_to_install(
    tmp_path: pathlib.Path,
) -> None:
    source = {"type": "sql", "connection": {"url": "postgresql+pg8000://reader@127.0.0.1:1/erp"}}
    source["tables"] = [{"schema": "Sales", "name": "Orders"}]
    (report,) = checked(project_of({SOURCE: source}, tmp_path))
    assert report.lines() == [
        (
            "problem",
            "src: the database driver of 'postgresql+pg8000' URLs is not installed "
            "(No module named 'pg8000'). Fix: install the 'postgres' extra: `uv sync --inexact "
            "--extra postgres` in the repository, or `pip install 'ingestion_assets[postgres]'`, "
            "and name its driver in the URL: 'postgresql+psycopg2://...' "
            "(sources.src.connection)",
        ),
        ("skipped", "src/Sales.Orders: not checked, the source failed first (above)"),
    ]


def test_a_source_kind_without_a_check_of_its_own_is_a_warning_not_a_failure(
    memory_kind: None, tmp_path: pathlib.Path
) -> None:
    source = {"type": "memory", "start_date": "2024-03-01", "tables": [{"name": "Orders"}]}
    (report,) = checked(project_of({"mem": source}, tmp_path))
    assert not report.failed
    assert report.lines() == [
        (
            "warning",
            "mem/Orders: a MemorySource cannot be checked before a run. Fix: materialize one "
            "partition to test the dataset",
        )
    ]


# ---- REST: the demo API and a local HTTP server ------------------------------------------------


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("demo")
    create_demo_sqlite(directory, API_SCALE)
    return directory


@pytest.fixture
def demo_api(demo_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DemoApi]:
    monkeypatch.setenv(PASSWORD_VARIABLE, DEMO_PASSWORD)
    with DemoApi(demo_dir, DEMO_USER, DEMO_PASSWORD) as api:
        yield api


def api_source(base_url: str, streams: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A `rest` source entry for the demo API."""
    return {
        "type": "rest",
        "base_url": base_url,
        "auth": {"type": "basic", "username": DEMO_USER, "password": f"${{{PASSWORD_VARIABLE}}}"},
        "pagination": {"type": "offset", "limit": 500, "total_header": "X-Total-Count"},
        "start_date": "2024-01-01",
        "end_date": API_END_DATE,
        "streams": list(streams),
    }


def header_stream(**overrides: Any) -> dict[str, Any]:
    """The demo API's SalesOrderHeader stream, with explicit window formats."""
    stream: dict[str, Any] = {
        "name": "SalesOrderHeader",
        "path": "/api/SalesOrderHeader",
        "records_path": "data",
        "params": {
            "ModifiedDate_gte": "{start:%Y-%m-%dT%H:%M:%S}",
            "ModifiedDate_lt": "{end:%Y-%m-%dT%H:%M:%S}",
        },
        "partition_field": "ModifiedDate",
        "primary_key": ["SalesOrderID"],
        "fields": {"SalesOrderID": "int32", "ModifiedDate": "timestamp", "Status": "int16"},
    }
    stream.update(overrides)
    return stream


def demo_fields() -> list[str]:
    """The fields of a demo SalesOrderHeader record, in the order the API sends them."""
    return [
        str(column.name) for column in table_for(demo_metadata(), "Sales.SalesOrderHeader").columns
    ]


def every_field() -> dict[str, str]:
    """Every field of the demo record declared (as text, but for the key and the day)."""
    return {
        **{name: "string" for name in demo_fields()},
        "SalesOrderID": "int32",
        "ModifiedDate": "timestamp",
    }


def test_a_good_stream_passes_with_the_request_it_made_for_the_last_complete_day(
    demo_api: DemoApi, tmp_path: pathlib.Path
) -> None:
    stream = header_stream(fields=every_field())
    project = project_of({"api": api_source(demo_api.url, [stream])}, tmp_path)
    (report,) = checked(project)
    assert report.lines() == [
        (
            "ok",
            "api/SalesOrderHeader: GET /api/SalesOrderHeader?ModifiedDate_gte=2024-01-05T00:00:00"
            f"&ModifiedDate_lt=2024-01-06T00:00:00&offset=0&limit=1: {ORDER_COLUMNS} fields, schema declared",
        )
    ]


def test_a_wrong_password_is_one_finding_naming_its_variable_never_its_value(
    demo_api: DemoApi, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_VARIABLE, WRONG_PASSWORD)
    streams = [header_stream(), header_stream(name="Orders2", path="/api/SalesOrderDetail")]
    (report,) = checked(project_of({"api": api_source(demo_api.url, streams)}, tmp_path))
    lines = report.lines()
    assert lines[0] == (
        "problem",
        "api: the API refused the source's basic credentials (HTTP 401, GET "
        "/api/SalesOrderHeader). Fix: set the credentials the API expects in `auth` "
        f"(sources.api.auth, which reads {PASSWORD_VARIABLE})",
    )
    # the other stream is not asked with the same credentials again
    assert [status for status, _ in lines[1:]] == ["skipped", "skipped"]
    text = repr(report)
    assert WRONG_PASSWORD not in text
    assert DEMO_PASSWORD not in text


def test_a_wrong_records_path_gives_the_lists_the_body_has(
    demo_api: DemoApi, tmp_path: pathlib.Path
) -> None:
    streams = [header_stream(records_path="dat"), header_stream(name="S2", records_path="items")]
    (report,) = checked(project_of({"api": api_source(demo_api.url, streams)}, tmp_path))
    first, second = (item.findings[0] for item in report.datasets)
    assert first.key == "records_path"
    assert first.problem == (
        "no list of records at records_path 'dat' of GET /api/SalesOrderHeader?ModifiedDate_gte="
        "2024-01-05T00:00:00&ModifiedDate_lt=2024-01-06T00:00:00&offset=0&limit=1; the body is "
        "an object with keys data, total, offset, limit"
    )
    assert first.fix == "did you mean data? Write `records_path` as the source spells it"
    assert second.fix == "`records_path` must name one of the lists in the body: data"


def test_declared_fields_are_compared_with_the_first_record(
    demo_api: DemoApi, tmp_path: pathlib.Path
) -> None:
    stream = header_stream(
        fields={"SalesOrderID": "int32", "ModifiedDate": "timestamp", "Satus": "int16"},
        primary_key=["SalesOrderId"],
    )
    (report,) = checked(project_of({"api": api_source(demo_api.url, [stream])}, tmp_path))
    (item,) = report.datasets
    assert item.status == "problem"
    undeclared = [name for name in demo_fields() if name not in ("SalesOrderID", "ModifiedDate")]
    assert [(f.severity, f.key, f.problem, f.fix) for f in item.findings[:3]] == [
        (
            "error",
            "primary_key",
            "'SalesOrderId' (primary_key) is not a field of the first record",
            "the source spells it 'SalesOrderID': write `primary_key` in that case",
        ),
        (
            "warning",
            "fields",
            "declared field(s) Satus are not in the first record (they land as null)",
            "Satus: did you mean Status? Write `fields` as the source spells it",
        ),
        (
            "warning",
            "fields",
            f"the first record has field(s) {', '.join(undeclared)} that `fields` does not "
            "declare; they are not ingested",
            "declare them in `fields` to ingest them",
        ),
    ]


def test_a_placeholder_the_window_does_not_have_is_named_before_any_request(
    httpserver: HTTPServer, tmp_path: pathlib.Path
) -> None:
    stream = header_stream(params={"from": "{begin:%Y-%m-%d}"})
    source = api_source(httpserver.url_for("/"), [stream])
    source.pop("auth")
    (report,) = checked(project_of({"api": source}, tmp_path))
    ((status, line),) = report.lines()
    assert status == "problem"
    assert line == (
        "api/SalesOrderHeader: query parameter from='{begin:%Y-%m-%d}' cannot be filled "
        "('begin'); placeholders available: {start}, {end}, {end_inclusive}. Fix: write the "
        "window as {start}, {end} or {end_inclusive}, with a format if the API needs one "
        "({start:%Y-%m-%d}) (sources.api.streams[0] (SalesOrderHeader).params)"
    )
    assert httpserver.log == []


def test_each_stream_costs_one_request_of_one_record_and_a_missing_path_is_named(
    httpserver: HTTPServer, tmp_path: pathlib.Path
) -> None:
    def page(request: Request) -> Response:
        body = {"data": [{"SalesOrderID": 1, "ModifiedDate": "2024-01-05T10:00:00", "Status": 5}]}
        return Response(json.dumps(body), content_type="application/json")

    httpserver.expect_request("/api/SalesOrderHeader").respond_with_handler(page)
    httpserver.expect_request("/api/Gone").respond_with_data("no such thing", status=404)
    source = api_source(
        httpserver.url_for("/"), [header_stream(), header_stream(name="G", path="/api/Gone")]
    )
    source.pop("auth")
    (report,) = checked(project_of({"api": source}, tmp_path))
    assert [status for status, _ in report.lines()] == ["ok", "problem"]
    gone = report.datasets[1].findings[0]
    assert (gone.key, gone.fix) == ("path", "check the stream's `path`")
    assert gone.problem.startswith("HTTP 404 from http://127.0.0.1:")
    # one request per stream, each for one record of the sample day
    assert [dict(request.args) for request, _ in httpserver.log] == [
        {
            "ModifiedDate_gte": "2024-01-05T00:00:00",
            "ModifiedDate_lt": "2024-01-06T00:00:00",
            "offset": "0",
            "limit": "1",
        }
    ] * 2


def test_an_api_that_refuses_a_page_of_one_record_is_asked_at_the_streams_own_size(
    httpserver: HTTPServer, tmp_path: pathlib.Path
) -> None:
    def page(request: Request) -> Response:
        if int(request.args["limit"]) < 10:
            return Response('{"error": "limit must be 10..500"}', status=400)
        body = {"data": [{"SalesOrderID": 1, "ModifiedDate": "2024-01-05T10:00:00", "Status": 5}]}
        return Response(json.dumps(body), content_type="application/json")

    httpserver.expect_request("/api/SalesOrderHeader").respond_with_handler(page)
    source = api_source(httpserver.url_for("/"), [header_stream()])
    source.pop("auth")
    (report,) = checked(project_of({"api": source}, tmp_path))
    assert [status for status, _ in report.lines()] == ["ok"]
    assert [request.args["limit"] for request, _ in httpserver.log] == ["1", "500"]


def test_an_api_that_answers_nothing_is_one_problem_of_the_source(tmp_path: pathlib.Path) -> None:
    source = api_source("http://127.0.0.1:9", [header_stream(), header_stream(name="Two")])
    source.pop("auth")
    source["timeout"] = {"connect": 2, "read": 2}
    (report,) = checked(project_of({"api": source}, tmp_path))
    lines = report.lines()
    assert [status for status, _ in lines] == ["problem", "skipped", "skipped"]
    assert "failed after 2 attempt(s): connection failed" in lines[0][1]
    assert lines[0][1].endswith(
        "Fix: check `base_url` and that the API is up (sources.api.base_url)"
    )


def test_the_sample_day_is_the_last_complete_day_or_the_one_asked_for(
    tmp_path: pathlib.Path,
) -> None:
    source = api_source("http://127.0.0.1:9", [header_stream()])
    source.pop("end_date")
    spec = project_of({"api": source}, tmp_path).sources["api"]
    stream = spec.datasets[0]
    today = datetime.date(2024, 3, 10)

    def day(asked: datetime.date | None, today: datetime.date) -> str | None:
        window = sample_window(spec, stream, asked, today)
        return None if window is None else window.days_text

    assert day(None, today) == "2024-03-09"
    assert day(datetime.date(2024, 2, 1), today) == "2024-02-01"
    # never before the first partition, never past the source's end_date
    assert day(None, datetime.date(2024, 1, 1)) == "2024-01-01"
    ended = spec.model_copy(update={"end_date": datetime.date(2024, 2, 1)})
    window = sample_window(ended, stream, None, today)
    assert window is not None
    assert window.days_text == "2024-01-31"
    snapshot = stream.model_copy(update={"partition_field": None})
    assert sample_window(spec, snapshot, None, today) is None


# ---- the command, through a subprocess ----------------------------------------------------------


def run_check(
    project_file: pathlib.Path, environment: Mapping[str, str], *arguments: str
) -> subprocess.CompletedProcess[str]:
    """`python -m ingestion_assets check --project FILE ...` as a user runs it."""
    env = {key: value for key, value in os.environ.items() if key != "INGEST_PROJECT_FILE"}
    env.update(environment)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ingestion_assets",
            "check",
            "--project",
            str(project_file),
            *arguments,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_project(path: pathlib.Path, sources: Mapping[str, Any]) -> pathlib.Path:
    """A project file of these sources at `path`, in their order."""
    lake = {"root": str(path.parent / "lake")}
    path.write_text(yaml.safe_dump({"lake": lake, "sources": dict(sources)}, sort_keys=False))
    return path


def test_the_command_exits_0_on_a_good_project_and_1_on_a_wrong_password_without_showing_it(
    demo_api: DemoApi, sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    sqlite_database.load_demo()
    sources = {
        "erp": sql_source(sqlite_database, [header_table(sqlite_database)]),
        "api": api_source(demo_api.url, [header_stream(fields=every_field())]),
    }
    project_file = write_project(tmp_path / "ingestion.yaml", sources)
    good = run_check(project_file, {PASSWORD_VARIABLE: DEMO_PASSWORD})
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert lines[0] == f"checking 2 source(s) of {project_file}"
    assert (
        lines[1]
        == f"ok       erp/Sales.SalesOrderHeader: {ORDER_COLUMNS} columns; partition column ModifiedDate"
    )
    assert lines[2].startswith("ok       api/SalesOrderHeader: GET /api/SalesOrderHeader?")
    assert lines[3].startswith("2 source(s), 2 tables and streams in ")
    assert lines[3].endswith(": 2 ok, 0 with warnings, 0 with problems, 0 not checked")

    wrong = run_check(project_file, {PASSWORD_VARIABLE: WRONG_PASSWORD})
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert (
        "problem  api: the API refused the source's basic credentials (HTTP 401, GET "
        "/api/SalesOrderHeader)" in wrong.stdout
    )
    assert f"which reads {PASSWORD_VARIABLE})" in wrong.stdout
    assert "skipped  api/SalesOrderHeader: not checked" in wrong.stdout
    assert wrong.stdout.splitlines()[-1] == "fix the problems above, then check again: ingest check"
    assert WRONG_PASSWORD not in wrong.stdout + wrong.stderr


def run_main(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    """`ingest ...` in this process: its exit code, stdout and stderr."""
    code = main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_only_the_sources_asked_for_are_checked(
    demo_api: DemoApi,
    sqlite_database: SourceDatabase,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sqlite_database.load_demo()
    sources = {
        "erp": sql_source(sqlite_database, [header_table(sqlite_database)]),
        "api": api_source(demo_api.url, [header_stream(fields=every_field())]),
    }
    project_file = write_project(tmp_path / "ingestion.yaml", sources)
    # the API's password is wrong, but only the SQL source is checked
    monkeypatch.setenv(PASSWORD_VARIABLE, WRONG_PASSWORD)
    code, out, _ = run_main(capsys, "check", "--project", str(project_file), "--source", "erp")
    assert code == 0, out
    assert [line.split(":")[0] for line in out.splitlines()[1:-1]] == [
        "ok       erp/Sales.SalesOrderHeader"
    ]


def test_a_variable_that_is_not_set_is_a_problem_naming_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    source = api_source("http://127.0.0.1:9", [header_stream()])
    project_file = write_project(tmp_path / "ingestion.yaml", {"api": source})
    code, out, _ = run_main(capsys, "check", "--project", str(project_file))
    assert code == 1
    assert (
        f"problem  api: environment variable {PASSWORD_VARIABLE} is not set. Fix: export "
        f"{PASSWORD_VARIABLE}=... where the check and Dagster run (sources.api.auth.password)"
    ) in out.splitlines()


def test_a_dotenv_file_where_the_check_runs_sets_the_secrets_as_dagster_commands_do(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # set, then removed: the variable the .env file sets is removed again after the test
    monkeypatch.setenv(PASSWORD_VARIABLE, "from-the-shell")
    monkeypatch.delenv(PASSWORD_VARIABLE)
    source = api_source("http://127.0.0.1:9", [header_stream()])
    project_file = write_project(tmp_path / "ingestion.yaml", {"api": source})
    (tmp_path / ".env").write_text(f"{PASSWORD_VARIABLE}=from-the-env-file\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(capsys, "check", "--project", str(project_file))
    lines = out.splitlines()
    assert lines[0] == f"environment variables from .env: {PASSWORD_VARIABLE}"
    assert os.environ[PASSWORD_VARIABLE] == "from-the-env-file"
    # the secret is there: the check goes on to the API (which does not answer)
    assert code == 1
    assert lines[2].startswith("problem  api: GET http://127.0.0.1:9/api/SalesOrderHeader?")
    assert lines[2].endswith(
        "connection failed (ConnectionError). Fix: check `base_url` and that the API is up "
        "(sources.api.base_url)"
    )
    assert "is not set" not in out
    assert "from-the-env-file" not in out


def test_an_invalid_project_file_or_an_unknown_source_exits_2_with_the_message(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("sources:\n  erp: {type: sql, tables: []\n")
    code, _, err = run_main(capsys, "check", "--project", str(broken))
    assert code == 2
    assert err.startswith(f"{broken}: line 3, column 1: not valid YAML")

    source = api_source("http://127.0.0.1:9", [header_stream()])
    project_file = write_project(tmp_path / "ingestion.yaml", {"orders_api": source})
    code, out, _ = run_main(
        capsys, "check", "--project", str(project_file), "--source", "order_api"
    )
    assert code == 2
    assert out.strip() == (
        f"{project_file}: no source 'order_api'; did you mean orders_api? Write `--source` as "
        "the source spells it"
    )


# ---- the check_sources job, on a real instance --------------------------------------------------


def test_the_job_records_what_it_checked_and_fails_naming_each_problem(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    sqlite_database.load_demo()
    good = sql_source(sqlite_database, [header_table(sqlite_database)])
    bad = sql_source(
        sqlite_database,
        [header_table(sqlite_database), header_table(sqlite_database, name="SalesOrderHeadr")],
    )
    project = project_of({"good": good, "bad": bad}, tmp_path)
    job = build_definitions(project).resolve_job_def(CHECK_JOB)
    assert {node.name for node in job.nodes} == {"check__good", "check__bad"}
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success

    outputs = {
        event.step_key: event.event_specific_data.metadata  # type: ignore[union-attr]
        for event in result.all_events
        if event.event_type == DagsterEventType.STEP_OUTPUT
    }
    assert outputs["check__good"]["tables_checked"].value == 1
    assert outputs["check__good"]["problems"].value == 0
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_key == "check__bad"
    data = failure.step_failure_data.user_failure_data  # type: ignore[union-attr]
    assert data is not None
    assert data.metadata["tables_checked"].value == 2
    assert data.metadata["problems"].value == 1
    assert data.description is not None
    assert data.description.splitlines() == [
        "source 'bad': 1 problem(s) found, 0 table(s) or stream(s) not checked:",
        "problem: bad/Sales.SalesOrderHeadr: there is no table or view 'SalesOrderHeadr' in "
        "schema 'Sales'. Fix: did you mean SalesOrderHeader, SalesOrderDetail? Write `name` as "
        "the source spells it (sources.bad.tables[1] (Sales.SalesOrderHeadr).name)",
    ]
    # each finding is in the run's log as it was found, at the level of its status
    logged = [
        (entry.level, entry.user_message)
        for entry in instance.all_logs(result.run_id)
        if entry.step_key == "check__bad" and entry.dagster_event is None
    ]
    assert (
        logging.INFO,
        f"ok: bad/Sales.SalesOrderHeader: {ORDER_COLUMNS} columns; partition column ModifiedDate",
    ) in logged
    assert (logging.ERROR, data.description.splitlines()[1]) in logged
