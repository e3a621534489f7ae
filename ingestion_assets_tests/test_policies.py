"""Freshness policies and automation conditions from the project file: on the assets, evaluated
by Dagster's own daemons on a real instance, and shown through the UI's GraphQL."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import yaml
from dagster import (
    AssetKey,
    AutomationCondition,
    DagsterInstance,
    DailyPartitionsDefinition,
    Definitions,
    FreshnessPolicy,
    asset,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
)
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.asset_daemon import AssetDaemon
from dagster._daemon.freshness import FreshnessDaemon
from dagster_graphql.test.utils import execute_dagster_graphql

from ingestion_assets.definitions import build_definitions
from ingestion_assets.errors import DeprecatedSettingWarning
from ingestion_assets.policies import follows_upstream
from ingestion_assets.project import PROJECT_FILE_VARIABLE, load_project
from ingestion_assets_tests.conftest import (
    SOURCE,
    TEST_SCALE,
    IngestProject,
    SourceDatabase,
    build_project,
    table_entry,
)

HEADER = AssetKey([SOURCE, "sales_order_header"])
DETAIL = AssetKey([SOURCE, "sales_order_detail"])
CUSTOMER = AssetKey([SOURCE, "customer"])
QUEUED_RUNS = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}


def _utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)


def _tables(database: SourceDatabase, **header: Any) -> list[dict[str, Any]]:
    return [
        table_entry(database, "Sales.SalesOrderHeader", **header),
        table_entry(database, "Sales.SalesOrderDetail"),
        table_entry(database, "Sales.Customer", partition_column=None),
    ]


def _requested(result: Any) -> dict[str, set[str]]:
    """Asset -> the partitions (`*` for an unpartitioned asset) an evaluation requests."""
    requested: dict[str, set[str]] = {}
    for item in result.results:
        subset = item.true_subset
        if subset.size:
            requested[item.key.to_user_string()] = (
                set(subset.expensively_compute_partition_keys()) if subset.is_partitioned else {"*"}
            )
    return requested


# ---- freshness -------------------------------------------------------------------------------


def test_each_freshness_form_is_the_assets_policy_and_a_table_overrides_its_source(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    tables = _tables(
        sqlite_database,
        freshness={"type": "cron", "deadline_cron": "0 6 * * *", "lower_bound": "1d"},
    )
    tables[2]["freshness"] = None
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        tables,
        timezone="Europe/Paris",
        freshness={"type": "time_window", "fail_after": "1d2h", "warn_after": "25h"},
    )

    def policy(key: AssetKey) -> FreshnessPolicy | None:
        return project.defs.get_assets_def(key).specs_by_key[key].freshness_policy

    # the table's own, in the source's zone
    assert policy(HEADER) == FreshnessPolicy.cron(
        deadline_cron="0 6 * * *",
        lower_bound_delta=datetime.timedelta(hours=24),
        timezone="Europe/Paris",
    )
    # the source's
    assert policy(DETAIL) == FreshnessPolicy.time_window(
        fail_window=datetime.timedelta(hours=26), warn_window=datetime.timedelta(hours=25)
    )
    # `null`: none
    assert policy(CUSTOMER) is None


def test_a_deprecated_freshness_check_becomes_a_time_window_policy_and_says_so(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    with pytest.warns(DeprecatedSettingWarning) as warned:
        project = build_project(
            sqlite_database,
            tmp_path / "lake",
            _tables(sqlite_database, checks={"freshness": {"enabled": True, "max_age_hours": 30}}),
        )
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "sources.src.tables[0] (Sales.SalesOrderHeader).checks.freshness is deprecated" in (
        message
    )
    assert "write `freshness: {type: time_window, fail_after: 30h}` on the entry" in message
    header = project.asset("sales_order_header")
    assert header.specs_by_key[HEADER].freshness_policy == FreshnessPolicy.time_window(
        fail_window=datetime.timedelta(hours=30)
    )
    # no asset check of that name any more: Dagster's freshness took its place
    checks = {key.name for key in project.defs.resolve_asset_graph().asset_check_keys}
    assert "freshness" not in checks
    assert project.asset("sales_order_detail").specs_by_key[DETAIL].freshness_policy is None


def _project_file(
    database: SourceDatabase,
    tmp_path: pathlib.Path,
    tables: Sequence[Mapping[str, Any]],
    **source: Any,
) -> pathlib.Path:
    """A project file on disk, for a code location that loads it as `dagster dev` does."""
    path = tmp_path / "ingestion.yaml"
    entry = {
        "type": "sql",
        "connection": database.connection_spec(),
        "start_date": TEST_SCALE.start_date.isoformat(),
        "tables": list(tables),
        **source,
    }
    path.write_text(
        yaml.safe_dump({"lake": {"root": str(tmp_path / "lake")}, "sources": {SOURCE: entry}})
    )
    return path


@pytest.fixture
def queued_instance() -> Iterator[DagsterInstance]:
    """An instance whose runs wait in the queue: a daemon's requests are recorded, not run."""
    with instance_for_test(overrides={"run_coordinator": QUEUED_RUNS}) as instance:
        yield instance


@pytest.fixture
def code_location(
    monkeypatch: pytest.MonkeyPatch, queued_instance: DagsterInstance
) -> Iterator[Any]:
    """`(project file path) -> workspace`: the project's `defs` loaded as a code location of
    the instance, as `dagster dev` and the daemon load it."""
    stack: list[Any] = []

    def load(path: pathlib.Path) -> WorkspaceProcessContext:
        monkeypatch.setenv(PROJECT_FILE_VARIABLE, str(path))
        origin = LoadableTargetOrigin(module_name="ingestion_assets.definitions", attribute="defs")
        target = InProcessWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin))
        context = create_test_daemon_workspace_context(target, queued_instance)
        stack.append(context)
        return context.__enter__()

    yield load
    for context in reversed(stack):
        context.__exit__(None, None, None)


FRESHNESS_QUERY = """
query Freshness($path: [String!]!) {
  assetNodes(assetKeys: [{path: $path}]) {
    internalFreshnessPolicy {
      __typename
      ... on TimeWindowFreshnessPolicy { failWindowSeconds warnWindowSeconds }
      ... on CronFreshnessPolicy { deadlineCron lowerBoundDeltaSeconds timezone }
    }
    freshnessStatusInfo { freshnessStatus }
  }
}
"""


def _freshness_seen_by_the_ui(workspace: WorkspaceProcessContext, key: AssetKey) -> Any:
    result = execute_dagster_graphql(
        workspace.create_request_context(), FRESHNESS_QUERY, {"path": key.path}
    )
    assert not result.errors, result.errors
    return result.data["assetNodes"][0]


def _freshness_at(
    workspace: WorkspaceProcessContext, moment: datetime.datetime
) -> dict[AssetKey, FreshnessState]:
    """One iteration of Dagster's freshness daemon at `moment`; the states it stored."""
    with freeze_time(moment):
        for _ in FreshnessDaemon().run_iteration(workspace):
            pass
    records = workspace.instance.get_freshness_state_records([HEADER, DETAIL, CUSTOMER])
    return {key: record.freshness_state for key, record in records.items()}


def test_the_freshness_daemon_judges_a_materialized_asset_and_the_ui_shows_it(
    sqlite_database: SourceDatabase,
    tmp_path: pathlib.Path,
    queued_instance: DagsterInstance,
    code_location: Any,
) -> None:
    sqlite_database.load_demo()
    tables = _tables(
        sqlite_database,
        freshness={"type": "time_window", "fail_after": "26h", "warn_after": "25h"},
    )
    tables[1]["freshness"] = {"type": "cron", "deadline_cron": "0 6 * * *", "lower_bound": "24h"}
    path = _project_file(sqlite_database, tmp_path, tables)
    workspace = code_location(path)
    shown = _freshness_seen_by_the_ui(workspace, HEADER)
    assert shown["internalFreshnessPolicy"] == {
        "__typename": "TimeWindowFreshnessPolicy",
        "failWindowSeconds": 26 * 3600,
        "warnWindowSeconds": 25 * 3600,
    }
    assert _freshness_seen_by_the_ui(workspace, DETAIL)["internalFreshnessPolicy"] == {
        "__typename": "CronFreshnessPolicy",
        "deadlineCron": "0 6 * * *",
        "lowerBoundDeltaSeconds": 24 * 3600,
        "timezone": "UTC",
    }
    assert _freshness_seen_by_the_ui(workspace, CUSTOMER)["internalFreshnessPolicy"] is None

    # never materialized: Dagster cannot say
    now = datetime.datetime.now(datetime.UTC)
    states = _freshness_at(workspace, now)
    assert states[HEADER] == states[DETAIL] == FreshnessState.UNKNOWN
    assert states[CUSTOMER] == FreshnessState.NOT_APPLICABLE

    project = IngestProject(load_project(path), build_definitions(load_project(path)), tmp_path)
    day = (TEST_SCALE.start_date + datetime.timedelta(days=3)).isoformat()
    assert project.materialize(["sales_order_header", "sales_order_detail"], queued_instance, day)
    event = queued_instance.get_latest_materialization_event(HEADER)
    assert event is not None
    materialized = datetime.datetime.fromtimestamp(event.timestamp, datetime.UTC)

    hours = datetime.timedelta(hours=1)
    expected = [
        (materialized + 1 * hours, FreshnessState.PASS, FreshnessState.PASS, "HEALTHY"),
        (materialized + 25.5 * hours, FreshnessState.WARN, None, "WARNING"),
        # past the next 06:00 deadline and a whole day after it: the cron policy fails too
        (materialized + 49 * hours, FreshnessState.FAIL, FreshnessState.FAIL, "DEGRADED"),
    ]
    for moment, header_state, detail_state, status in expected:
        states = _freshness_at(workspace, moment)
        assert states[HEADER] == header_state, moment
        if detail_state is not None:
            assert states[DETAIL] == detail_state, moment
        shown = _freshness_seen_by_the_ui(workspace, HEADER)
        assert shown["freshnessStatusInfo"]["freshnessStatus"] == status, moment


# ---- automation ------------------------------------------------------------------------------


def test_on_cron_requests_the_last_complete_day_after_the_tick_and_nothing_before(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    tables = _tables(sqlite_database)
    tables[1]["automation"] = {}  # back to the daily schedule
    project = build_project(
        sqlite_database, tmp_path / "lake", tables, automation={"on_cron": "15 2 * * *"}
    )
    header = project.asset("sales_order_header")
    assert header.automation_conditions_by_key[HEADER] is not None
    assert project.asset("sales_order_detail").automation_conditions_by_key.get(DETAIL) is None

    before = evaluate_automation_conditions(
        defs=project.defs, instance=instance, evaluation_time=_utc("2024-03-10T02:14:00")
    )
    assert _requested(before) == {}
    after = evaluate_automation_conditions(
        defs=project.defs,
        instance=instance,
        evaluation_time=_utc("2024-03-10T02:16:00"),
        cursor=before.cursor,
    )
    # yesterday's partition (the latest, today's, is still filling) and the snapshot whole
    assert _requested(after) == {"src/sales_order_header": {"2024-03-09"}, "src/customer": {"*"}}
    later = evaluate_automation_conditions(
        defs=project.defs,
        instance=instance,
        evaluation_time=_utc("2024-03-10T03:00:00"),
        cursor=after.cursor,
    )
    assert _requested(later) == {}
    next_day = evaluate_automation_conditions(
        defs=project.defs,
        instance=instance,
        evaluation_time=_utc("2024-03-11T02:16:00"),
        cursor=later.cursor,
    )
    assert _requested(next_day)["src/sales_order_header"] == {"2024-03-10"}

    # why the condition is not Dagster's on_cron as it is: that one asks for today
    @asset(
        key=["plain"],
        partitions_def=header.partitions_def,
        automation_condition=AutomationCondition.on_cron("15 2 * * *"),
    )
    def plain() -> None: ...

    with instance_for_test() as other:
        first = evaluate_automation_conditions(
            defs=[plain], instance=other, evaluation_time=_utc("2024-03-10T02:14:00")
        )
        second = evaluate_automation_conditions(
            defs=[plain],
            instance=other,
            evaluation_time=_utc("2024-03-10T02:16:00"),
            cursor=first.cursor,
        )
    assert _requested(second) == {"plain": {"2024-03-10"}}


@pytest.mark.parametrize(
    ("zone", "tick", "expected"),
    [
        # 00:15 in Paris is still the day before in UTC: the day is the zone's
        ("Europe/Paris", "2024-03-09T23:16:00", "2024-03-09"),
        ("UTC", "2024-03-10T00:16:00", "2024-03-09"),
        # the day after New York moved to summer time (a day of 23 hours)
        ("America/New_York", "2024-03-11T04:16:00", "2024-03-10"),
        # the day after New York moved back (25 hours)
        ("America/New_York", "2024-11-04T05:16:00", "2024-11-03"),
    ],
)
def test_on_cron_takes_the_last_complete_day_of_the_sources_zone(
    sqlite_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    zone: str,
    tick: str,
    expected: str,
) -> None:
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [table_entry(sqlite_database, "Sales.SalesOrderHeader")],
        timezone=zone,
        automation={"on_cron": "15 0 * * *"},
    )
    moment = _utc(tick)
    before = evaluate_automation_conditions(
        defs=project.defs, instance=instance, evaluation_time=moment - datetime.timedelta(minutes=2)
    )
    after = evaluate_automation_conditions(
        defs=project.defs, instance=instance, evaluation_time=moment, cursor=before.cursor
    )
    assert _requested(before) == {}
    assert _requested(after) == {"src/sales_order_header": {expected}}


def test_a_source_that_ended_gets_its_last_day_from_on_cron(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    # with end_date, today is no partition: Dagster's latest partition is the last complete day
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [table_entry(sqlite_database, "Sales.SalesOrderHeader")],
        end_date="2024-04-30",
        automation={"on_cron": "15 2 * * *"},
    )
    before = evaluate_automation_conditions(
        defs=project.defs, instance=instance, evaluation_time=_utc("2024-03-10T02:14:00")
    )
    after = evaluate_automation_conditions(
        defs=project.defs,
        instance=instance,
        evaluation_time=_utc("2024-03-10T02:16:00"),
        cursor=before.cursor,
    )
    assert _requested(after) == {"src/sales_order_header": {"2024-03-09"}}


def test_the_automation_daemon_runs_the_sensor_from_the_start_and_queues_yesterday_once(
    sqlite_database: SourceDatabase,
    tmp_path: pathlib.Path,
    queued_instance: DagsterInstance,
    code_location: Any,
) -> None:
    tables = _tables(sqlite_database, automation={"on_cron": "15 2 * * *"})
    workspace = code_location(_project_file(sqlite_database, tmp_path, tables))
    daemon = AssetDaemon(
        settings=queued_instance.get_settings("auto_materialize"), pre_sensor_interval_seconds=30
    )
    queued: list[list[tuple[str | None, list[str]]]] = []
    for moment in ("2024-03-10T02:14:00", "2024-03-10T02:16:00", "2024-03-10T03:00:00"):
        # no one turned the sensor on: it runs because its default status is RUNNING
        with freeze_time(_utc(moment)):
            # one tick of the real daemon
            daemon._run_iteration_impl(
                workspace, threadpool_executor=None, amp_tick_futures={}, debug_crash_flags={}
            )
        queued.append(
            [
                (
                    run.tags.get("dagster/partition"),
                    sorted(key.to_user_string() for key in run.asset_selection or []),
                )
                for run in queued_instance.get_runs()
            ]
        )
    assert queued == [
        [],
        [("2024-03-09", ["src/sales_order_header"])],
        [("2024-03-09", ["src/sales_order_header"])],
    ]
    run = queued_instance.get_runs()[0]
    assert run.tags["dagster/sensor_name"] == "default_automation_condition_sensor"


def test_a_downstream_asset_follows_every_day_its_inputs_update_once_both_are_done(
    instance: DagsterInstance,
) -> None:
    days = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-10")

    @asset(key=["src", "header"], partitions_def=days)
    def header() -> None: ...

    @asset(key=["src", "detail"], partitions_def=days)
    def detail() -> None: ...

    @asset(
        key=["src", "daily"],
        partitions_def=days,
        deps=[header, detail],
        automation_condition=follows_upstream(),
    )
    def daily() -> None: ...

    defs = Definitions(assets=[header, detail, daily])
    # history before the first evaluation is left to a backfill
    materialize([header, detail], instance=instance, partition_key="2024-01-02")
    result = evaluate_automation_conditions(defs=defs, instance=instance)
    assert _requested(result) == {}
    # a late day, not the latest: followed
    materialize([header, detail], instance=instance, partition_key="2024-01-03")
    result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert _requested(result) == {"src/daily": {"2024-01-03"}}
    result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert _requested(result) == {}
    # one input of a day that never had the other: it waits for it
    materialize([header], instance=instance, partition_key="2024-01-05")
    result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert _requested(result) == {}
    materialize([detail], instance=instance, partition_key="2024-01-05")
    result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert _requested(result) == {"src/daily": {"2024-01-05"}}
