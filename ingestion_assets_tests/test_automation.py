"""Schedules, new-data sensors, the automation sensor and the failure sensor, evaluated against
real sources and instances."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import sqlite3
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from dagster import (
    AssetKey,
    AutomationConditionSensorDefinition,
    DagsterInstance,
    DefaultSensorStatus,
    SensorDefinition,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
)
from hypothesis import given
from hypothesis import strategies as st

from ingestion_assets.automation import (
    day_ranges,
    describe_failed_run,
    failed_run_partitions,
    previous_day,
)
from ingestion_assets.definitions import build_definitions
from ingestion_assets.demo.api import DemoApi
from ingestion_assets.demo.generate import DemoScale, create_demo_sqlite
from ingestion_assets.errors import ConfigError
from ingestion_assets.policies import follows_upstream
from ingestion_assets.project import parse_project
from ingestion_assets_tests.conftest import (
    IngestProject,
    SourceDatabase,
    build_project,
    table_entry,
)


def _sensor(project: IngestProject) -> SensorDefinition:
    return project.defs.get_sensor_def("src_new_data")


def _tick(project: IngestProject, instance: DagsterInstance, cursor: str | None) -> Any:
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=project.defs.resources, definitions=project.defs
    ) as context:
        return _sensor(project).evaluate_tick(context)


def _requested(result: Any) -> set[str]:
    keys = set()
    for request in result.run_requests:
        if request.partition_key:
            keys.add(request.partition_key)
        else:
            first = datetime.date.fromisoformat(request.tags["dagster/asset_partition_range_start"])
            last = datetime.date.fromisoformat(request.tags["dagster/asset_partition_range_end"])
            while first <= last:
                keys.add(first.isoformat())
                first += datetime.timedelta(days=1)
    return keys


def test_the_sql_sensor_requests_exactly_the_changed_days_once(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    # the demo's order tables carry LoadedAt, the time each row was written
    postgres_database.load_demo()
    engine = postgres_database.engine()
    project = build_project(
        postgres_database,
        tmp_path / "lake",
        [table_entry(postgres_database, "Sales.SalesOrderHeader")],
        sensor={"enabled": True, "change_column": "LoadedAt"},
    )

    first = _tick(project, instance, None)
    assert not first.run_requests
    assert "cursor set" in first.skip_message
    unchanged = _tick(project, instance, first.cursor)
    assert not unchanged.run_requests
    assert unchanged.cursor == first.cursor

    today = datetime.datetime.now(datetime.UTC).date()
    late_days = [datetime.date(2024, 1, 3), datetime.date(2024, 1, 9)]
    with engine.begin() as connection:
        for offset, day in enumerate([*late_days, today]):
            row = (
                connection.execute(
                    sa.text(
                        'SELECT * FROM "Sales"."SalesOrderHeader" ORDER BY "SalesOrderID" LIMIT 1'
                    )
                )
                .mappings()
                .one()
            )
            values = dict(row)
            values["LoadedAt"] = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            values["SalesOrderID"] = 900_000 + offset
            values["rowguid"] = f"00000000-0000-0000-0000-00000000000{offset}"
            values["ModifiedDate"] = datetime.datetime.combine(day, datetime.time(12))
            columns = ", ".join(f'"{name}"' for name in values)
            placeholders = ", ".join(f":{name}" for name in values)
            connection.execute(
                sa.text(
                    f'INSERT INTO "Sales"."SalesOrderHeader" ({columns}) VALUES ({placeholders})'
                ),
                values,
            )
    engine.dispose()

    changed = _tick(project, instance, unchanged.cursor)
    assert _requested(changed) == {day.isoformat() for day in [*late_days, today]}
    assert len({request.run_key for request in changed.run_requests}) == 3
    again = _tick(project, instance, changed.cursor)
    assert not again.run_requests

    # a restart: new definitions, the stored cursor
    restarted = build_project(
        postgres_database,
        tmp_path / "lake",
        [table_entry(postgres_database, "Sales.SalesOrderHeader")],
        sensor={"enabled": True, "change_column": "LoadedAt"},
    )
    after_restart = _tick(restarted, instance, changed.cursor)
    assert not after_restart.run_requests
    assert json.loads(after_restart.cursor) == json.loads(changed.cursor)


def test_a_sensor_on_a_source_that_is_down_skips_with_a_reason(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    database = SourceDatabase(
        "postgresql", "postgresql+psycopg2://postgres@127.0.0.1:1/absent", {"Sales": "Sales"}
    )
    project = build_project(
        database,
        tmp_path / "lake",
        [table_entry(database, "Sales.SalesOrderHeader")],
        sensor={"enabled": True},
    )
    result = _tick(project, instance, None)
    assert not result.run_requests
    assert "source 'src' is not reachable" in result.skip_message
    assert "cannot connect" in result.skip_message


@pytest.mark.parametrize(
    ("execution_utc", "zone", "expected"),
    [
        # 03:30 on the day New York moves to summer time
        ("2024-03-10T07:30:00", "America/New_York", "2024-03-09"),
        # 01:30, the second time, on the day New York moves back
        ("2024-11-03T06:30:00", "America/New_York", "2024-11-02"),
        # still the evening before in New York, already the next day in UTC
        ("2024-03-10T03:00:00", "America/New_York", "2024-03-08"),
        ("2024-03-31T01:30:00", "Europe/Paris", "2024-03-30"),
        ("2024-06-01T00:30:00", "UTC", "2024-05-31"),
    ],
)
def test_the_schedule_requests_yesterday_in_its_zone(
    sqlite_database: SourceDatabase,
    tmp_path: pathlib.Path,
    execution_utc: str,
    zone: str,
    expected: str,
) -> None:
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [table_entry(sqlite_database, "Sales.SalesOrderHeader")],
        timezone=zone,
        schedule={"cron": "30 2 * * *"},
    )
    schedule = project.defs.get_schedule_def("ingest_src_daily")
    assert schedule.cron_schedule == "30 2 * * *"
    assert schedule.execution_timezone == zone
    moment = datetime.datetime.fromisoformat(execution_utc).replace(tzinfo=datetime.UTC)
    context = build_schedule_context(
        scheduled_execution_time=moment, repository_def=project.defs.get_repository_def()
    )
    result = schedule.evaluate_tick(context)
    assert [request.partition_key for request in result.run_requests] == [expected]


@given(st.sets(st.integers(0, 60), max_size=30), st.integers(1, 5))
def test_changed_days_become_few_contiguous_ranges_covering_each_day(
    offsets: set[int], max_ranges: int
) -> None:
    start = datetime.date(2024, 1, 1)
    days = {start + datetime.timedelta(days=offset) for offset in offsets}
    ranges = day_ranges(days, max_ranges)
    assert len(ranges) <= max_ranges
    covered = set()
    for first, last in ranges:
        assert first <= last
        while first <= last:
            covered.add(first)
            first += datetime.timedelta(days=1)
    assert days <= covered
    if len(ranges) > 1:
        assert covered == days  # exact unless collapsed into one span


def test_previous_day_and_failed_run_partitions() -> None:
    moment = datetime.datetime(2024, 1, 2, 1, 0, tzinfo=datetime.UTC)
    assert previous_day(moment, "UTC") == datetime.date(2024, 1, 1)
    assert previous_day(moment, "America/Los_Angeles") == datetime.date(2023, 12, 31)
    assert failed_run_partitions({"dagster/partition": "2024-01-05"}) == "2024-01-05"
    assert (
        failed_run_partitions(
            {
                "dagster/asset_partition_range_start": "2024-01-01",
                "dagster/asset_partition_range_end": "2024-01-31",
            }
        )
        == "2024-01-01..2024-01-31"
    )
    assert failed_run_partitions({}) == "unpartitioned"


def test_the_failure_sensor_names_the_failed_run_and_its_partitions(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    sqlite_database.load_demo()
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [{"schema": "Sales", "name": "Missing", "partition_column": "ModifiedDate"}],
    )
    failed = project.materialize(
        ["missing"], instance, partition_range=("2024-01-02", "2024-01-05"), raise_on_error=False
    )
    assert not failed.success
    run = instance.get_run_by_id(failed.run_id)
    assert run is not None
    failure = next(
        event
        for event in instance.all_logs(failed.run_id)
        if event.dagster_event is not None
        and event.dagster_event.event_type_value == "PIPELINE_FAILURE"
    )
    context = build_run_status_sensor_context(
        sensor_name="ingestion_run_failures",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure.dagster_event,
    ).for_run_failure()
    text = describe_failed_run(context)
    assert failed.run_id in text
    assert "partitions 2024-01-02..2024-01-05" in text
    # the root cause, the project's message, not "Execution of run ... failed"
    assert "src__missing: source 'src', table 'Sales.Missing'" in text, text
    assert "Execution of run" not in text
    project.defs.resolve_sensor_def("ingestion_run_failures")(context)


def test_the_rest_sensor_finds_new_records_through_the_api_date_filter(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    demo = tmp_path / "demo"
    create_demo_sqlite(demo, DemoScale(days=5, orders_per_day=5))
    with DemoApi(demo, "demo", "sensor-secret") as api:
        text = yaml.safe_dump(
            {
                "lake": {"root": str(tmp_path / "lake")},
                "sources": {
                    "src": {
                        "type": "rest",
                        "base_url": api.url,
                        "auth": {"type": "basic", "username": "demo", "password": "${SENSOR_PW}"},
                        "pagination": {
                            "type": "offset",
                            "limit": 50,
                            "total_header": "X-Total-Count",
                        },
                        "start_date": "2024-01-01",
                        "sensor": {"enabled": True},
                        "streams": [
                            {
                                "name": "SalesOrderHeader",
                                "path": "/api/SalesOrderHeader",
                                "records_path": "data",
                                "params": {
                                    "ModifiedDate_gte": "{start}",
                                    "ModifiedDate_lt": "{end}",
                                },
                                "partition_field": "ModifiedDate",
                                "fields": {"SalesOrderID": "int32", "ModifiedDate": "timestamp"},
                            }
                        ],
                    }
                },
            }
        )
        spec = parse_project(text, "rest-sensor.yaml", {"SENSOR_PW": "sensor-secret"})
        os.environ["SENSOR_PW"] = "sensor-secret"
        try:
            project = IngestProject(spec, build_definitions(spec), tmp_path / "lake")
            first = _tick(project, instance, None)
            assert not first.run_requests
            quiet = _tick(project, instance, first.cursor)
            assert not quiet.run_requests

            # a record changed just after the cursor (the API's clock: naive UTC)
            cursor_value = datetime.datetime.fromisoformat(
                json.loads(quiet.cursor)["sales_order_header"]
            )
            changed_at = cursor_value + datetime.timedelta(milliseconds=1)
            connection = sqlite3.connect(demo / "Sales.db")
            connection.execute(
                'UPDATE "SalesOrderHeader" SET "ModifiedDate" = ? WHERE "SalesOrderID" = '
                '(SELECT min("SalesOrderID") FROM "SalesOrderHeader")',
                (changed_at.isoformat(sep=" "),),
            )
            connection.commit()
            connection.close()
            changed = _tick(project, instance, quiet.cursor)
            assert _requested(changed) == {changed_at.date().isoformat()}
            assert not _tick(project, instance, changed.cursor).run_requests
        finally:
            os.environ.pop("SENSOR_PW", None)


def test_the_maintenance_job_has_an_op_per_table_and_its_own_schedule(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    tables = [
        table_entry(sqlite_database, "Sales.SalesOrderHeader"),
        table_entry(sqlite_database, "Sales.Customer", partition_column=None),
    ]
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        tables,
        lake_options={"maintenance": {"cron": "0 5 * * 6", "timezone": "Europe/Paris"}},
    )
    job = project.defs.resolve_job_def("maintain_tables")
    assert sorted(node.name for node in job.graph.nodes) == [
        "maintain__src__customer",
        "maintain__src__sales_order_header",
    ]
    schedule = project.defs.resolve_schedule_def("maintain_tables_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 5 * * 6", "Europe/Paris")
    assert schedule.job_name == "maintain_tables"
    assert schedule.default_status.value == "RUNNING"

    off = build_project(
        sqlite_database,
        tmp_path / "lake",
        tables,
        lake_options={"maintenance": {"enabled": False}},
    )
    assert "maintain_tables_schedule" not in {s.name for s in off.defs.schedules or []}
    with pytest.raises(
        ConfigError, match=r"lake\.maintenance\.cron: cron 'weekly' needs five fields"
    ):
        parse_project(
            yaml.safe_dump(
                {
                    "lake": {"maintenance": {"cron": "weekly"}},
                    "sources": {
                        "src": {
                            "type": "sql",
                            "connection": {"url": "sqlite://"},
                            "start_date": "2024-01-01",
                            "tables": [{"name": "t", "partition_column": "d"}],
                        }
                    },
                }
            ),
            "bad.yaml",
        )


def test_the_daily_schedule_leaves_the_tables_with_their_own_cron_to_it(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    tables = [
        table_entry(sqlite_database, "Sales.SalesOrderHeader", automation={"on_cron": "0 5 * * *"}),
        table_entry(sqlite_database, "Sales.SalesOrderDetail"),
    ]
    project = build_project(sqlite_database, tmp_path / "lake", tables)
    schedule = project.defs.resolve_schedule_def("ingest_src_daily")
    context = build_schedule_context(
        scheduled_execution_time=datetime.datetime(2024, 1, 9, 2, 15, tzinfo=datetime.UTC),
        repository_def=project.defs.get_repository_def(),
    )
    (request,) = schedule.evaluate_tick(context).run_requests
    # the header table runs at its own cron, once: the schedule takes the detail table only
    assert request.partition_key == "2024-01-08"
    assert request.asset_selection == [AssetKey(["src", "sales_order_detail"])]

    # without the override every table has the source's cron: no schedule is left to run
    everything = build_project(
        sqlite_database,
        tmp_path / "lake",
        [table_entry(sqlite_database, "Sales.SalesOrderDetail")],
        automation={"on_cron": "0 5 * * *"},
    )
    assert "ingest_src_daily" not in {s.name for s in everything.defs.schedules or []}
    assert "ingest_src" in {job.name for job in everything.defs.jobs or []}


def test_the_automation_sensor_exists_only_for_assets_with_a_condition_and_runs_at_once(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    tables = [
        table_entry(sqlite_database, "Sales.SalesOrderHeader", automation={"on_cron": "0 5 * * *"}),
        table_entry(sqlite_database, "Sales.SalesOrderDetail"),
    ]
    project = build_project(sqlite_database, tmp_path / "lake", tables)
    sensor = project.defs.resolve_sensor_def("default_automation_condition_sensor")
    assert isinstance(sensor, AutomationConditionSensorDefinition)
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    graph = project.defs.resolve_asset_graph()
    assert sensor.asset_selection.resolve(graph) == {AssetKey(["src", "sales_order_header"])}

    plain = build_project(sqlite_database, tmp_path / "lake", tables[1:])
    names = {s.name for s in plain.defs.get_repository_def().sensor_defs}
    assert names == {"src_new_data", "ingestion_run_failures"}


def test_the_demo_transform_follows_the_ingested_tables_through_the_automation_sensor(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [
            table_entry(sqlite_database, "Sales.SalesOrderHeader"),
            table_entry(sqlite_database, "Sales.SalesOrderDetail"),
        ],
        project_options={"transforms": {"daily_sales_by_product": {"source": "src"}}},
    )
    transform = AssetKey(["src", "daily_sales_by_product"])
    condition = project.defs.get_assets_def(transform).automation_conditions_by_key[transform]
    assert condition == follows_upstream()
    sensor = project.defs.resolve_sensor_def("default_automation_condition_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.asset_selection.resolve(project.defs.resolve_asset_graph()) == {transform}
