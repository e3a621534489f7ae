"""Schedules, new-data sensors, the automation condition sensor and the run-failure sensor,
generated from the sources' specs (the conditions themselves: policies.py)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo

from dagster import (
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    schedule,
    sensor,
)

from ingestion_assets.errors import IngestionError
from ingestion_assets.factory import partitions_definition, source_resource_key
from ingestion_assets.merge_asset import KEY_SCAN_TAG, read_spec, stored_cursor
from ingestion_assets.resources import SourceResource
from ingestion_assets.sources.base import ChangedDays
from ingestion_assets.specs import DatasetSpec, SourceSpecBase

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"


def previous_day(moment: datetime.datetime, zone: str) -> datetime.date:
    """The day before `moment`'s day in `zone`: the last complete partition."""
    return moment.astimezone(ZoneInfo(zone)).date() - datetime.timedelta(days=1)


def daily_schedule(
    source_name: str, spec: SourceSpecBase, job_name: str, asset_keys: Sequence[AssetKey]
) -> ScheduleDefinition | None:
    """Runs a source's job for the previous day's partition, at the spec's cron and zone; the
    assets with an `automation.on_cron` of their own are left to it (None: every one is)."""
    zone = spec.schedule.timezone or spec.timezone
    datasets = [d for d in spec.datasets if d.partition_column is not None]
    partitions = [p for p in (partitions_definition(spec, d) for d in datasets) if p is not None]
    own_cron = {AssetKey([source_name, d.key_name]) for d in spec.datasets if spec.automation_of(d)}
    scheduled = [key for key in asset_keys if key not in own_cron]
    if not scheduled:
        return None

    @schedule(
        name=f"{job_name}_daily",
        job_name=job_name,
        cron_schedule=spec.schedule.cron,
        execution_timezone=zone,
        description=f"Materializes yesterday's partition ({zone}) of source '{source_name}'.",
        default_status=DefaultScheduleStatus.RUNNING
        if spec.schedule.enabled
        else DefaultScheduleStatus.STOPPED,
    )
    def _daily(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        moment = context.scheduled_execution_time or datetime.datetime.now(datetime.UTC)
        day = previous_day(moment, zone).isoformat()
        if partitions and not any(day in p.get_partition_keys() for p in partitions):
            return SkipReason(f"{day} is outside the partitions of source '{source_name}'")
        return RunRequest(
            run_key=f"{job_name}:{day}",
            partition_key=day if partitions else None,
            # None: the whole job
            asset_selection=scheduled if len(scheduled) < len(asset_keys) else None,
        )

    return _daily


def day_ranges(
    days: Iterable[datetime.date], max_ranges: int
) -> list[tuple[datetime.date, datetime.date]]:
    """Contiguous runs of days; more than `max_ranges` collapse into one span (re-runs are idempotent)."""
    ordered = sorted(set(days))
    ranges: list[tuple[datetime.date, datetime.date]] = []
    for day in ordered:
        if ranges and ranges[-1][1] + datetime.timedelta(days=1) == day:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    if len(ranges) > max_ranges:
        return [(ordered[0], ordered[-1])]
    return ranges


def run_requests_for(
    asset_key: AssetKey,
    changed: ChangedDays,
    valid_days: set[str],
    max_ranges: int,
) -> list[RunRequest]:
    """One run per contiguous range of changed days (a backfill range is one run)."""
    days = [day for day in changed.days if day.isoformat() in valid_days]
    requests = []
    for first, last in day_ranges(days, max_ranges):
        key = f"{asset_key.to_user_string()}:{first}..{last}:{changed.newest}"
        if first == last:
            requests.append(
                RunRequest(
                    run_key=key, asset_selection=[asset_key], partition_key=first.isoformat()
                )
            )
        else:
            requests.append(
                RunRequest(
                    run_key=key,
                    asset_selection=[asset_key],
                    tags={RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()},
                )
            )
    return requests


def merge_datasets(spec: SourceSpecBase) -> list[DatasetSpec]:
    """The merge and cdc tables of a source that have a cursor (a sensor can ask for changes)."""
    return [d for d in spec.datasets if d.mode != "replace" and read_spec(d)[1] is not None]


def key_scan_schedule(
    source_name: str, spec: SourceSpecBase, dataset: DatasetSpec
) -> ScheduleDefinition:
    """A merge table's key scan at its `key_scan_cron`: one run of the asset with the tag that
    makes it compare the source's keys with the table's, to find the rows deleted at the
    source (the incremental runs never see them)."""
    key = AssetKey([source_name, dataset.key_name])
    name = f"{source_name}__{dataset.key_name}_key_scan"
    zone = spec.schedule.timezone or spec.timezone
    return ScheduleDefinition(
        name=name,
        target=[key],
        cron_schedule=str(dataset.key_scan_cron),
        execution_timezone=zone,
        tags={KEY_SCAN_TAG: "true"},
        description=f"Finds the rows of {dataset.qualified_name} deleted at source "
        f"'{source_name}': its keys compared with the table's ({zone}).",
        default_status=DefaultScheduleStatus.RUNNING
        if spec.schedule.enabled
        else DefaultScheduleStatus.STOPPED,
    )


def new_data_sensor(source_name: str, spec: SourceSpecBase) -> SensorDefinition:
    """Each tick: ask the source which days changed since the cursor; request runs for only those.
    A merge table (or cdc feed) with rows past the cursor of its last materialization gets one
    run."""
    datasets = [d for d in spec.datasets if d.partition_column is not None]
    merged = merge_datasets(spec)
    resource_key = source_resource_key(source_name)
    keys = {d.key_name: AssetKey([source_name, d.key_name]) for d in [*datasets, *merged]}

    @sensor(
        name=f"{source_name}_new_data",
        asset_selection=list(keys.values()),
        minimum_interval_seconds=spec.sensor.interval_seconds,
        required_resource_keys={resource_key},
        description=f"Requests the partitions of source '{source_name}' whose rows changed since "
        "the last tick (late-arriving days included).",
        default_status=DefaultSensorStatus.RUNNING
        if spec.sensor.enabled
        else DefaultSensorStatus.STOPPED,
    )
    def _new_data(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        resource: SourceResource = getattr(context.resources, resource_key)
        cursor: dict[str, str | None] = json.loads(context.cursor) if context.cursor else {}
        requests: list[RunRequest] = []
        notes = []
        for dataset in datasets:
            partitions = partitions_definition(spec, dataset)
            assert partitions is not None
            try:
                changed = resource.changed_days(dataset, cursor.get(dataset.key_name))
            except IngestionError as error:
                return SkipReason(f"source '{source_name}' is not reachable: {error}")
            if dataset.key_name not in cursor:
                # the first tick only marks where the source is now: nothing has changed yet
                cursor[dataset.key_name] = changed.newest
                notes.append(f"{dataset.key_name}: cursor set at {changed.newest}")
                continue
            if changed.newest is None or not changed.days:
                continue
            valid = set(partitions.get_partition_keys())
            requests += run_requests_for(
                keys[dataset.key_name], changed, valid, spec.sensor.max_runs_per_tick
            )
            cursor[dataset.key_name] = changed.newest
        for dataset in merged:
            key = keys[dataset.key_name]
            stored = stored_cursor(context.instance, key)
            if stored is None:
                # never loaded (or loaded without a cursor): the first load is the schedule's or
                # a person's, as a partitioned table's first tick only marks where it is
                continue
            try:
                newest = resource.newest_change(read_spec(dataset)[0], stored)
            except IngestionError as error:
                return SkipReason(f"source '{source_name}' is not reachable: {error}")
            if newest is not None:
                # one run per newest change: a tick that finds the same change again asks nothing
                requests.append(
                    RunRequest(run_key=f"{key.to_user_string()}:{newest}", asset_selection=[key])
                )
        new_cursor = json.dumps(cursor, sort_keys=True)
        if not requests:
            return SensorResult(
                skip_reason=SkipReason("; ".join(notes) or "no rows changed since the last tick"),
                cursor=new_cursor,
            )
        return SensorResult(run_requests=requests, cursor=new_cursor)

    return _new_data


def failed_run_partitions(tags: Mapping[str, str]) -> str:
    """`2024-01-05`, `2024-01-01..2024-01-31` or `unpartitioned`, from a run's tags."""
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG]
    if RANGE_START_TAG in tags:
        return f"{tags[RANGE_START_TAG]}..{tags.get(RANGE_END_TAG, tags[RANGE_START_TAG])}"
    return "unpartitioned"


def failure_sensor() -> SensorDefinition:
    """Logs every failed run with its job, partitions and error."""

    @run_failure_sensor(
        name="ingestion_run_failures",
        monitor_all_code_locations=False,
        default_status=DefaultSensorStatus.RUNNING,
        description="Logs each failed run with its partitions, so a night's failures are listed "
        "in one place.",
    )
    def _failures(context: RunFailureSensorContext) -> None:
        context.log.error(describe_failed_run(context))

    return _failures


def describe_failed_run(context: RunFailureSensorContext) -> str:
    """`run R of job J failed for partitions P: <step>: <root cause>`: each failed step's own
    error (the project's message: source, table, partition, fix), not only that the run failed."""
    run = context.dagster_run
    causes = [
        f"{event.step_key}: {_error_line(event.step_failure_data.error.message)}"
        for event in context.get_step_failure_events()
        if event.step_failure_data.error is not None
    ]
    message = "; ".join(causes) or context.failure_event.message or "no message"
    return (
        f"run {run.run_id} of job {run.job_name} failed for partitions "
        f"{failed_run_partitions(run.tags)}: {message}"
    )


def _error_line(message: str) -> str:
    """An error's first line, without the qualified name of Dagster's `Failure` before it."""
    first = message.strip().splitlines()[0] if message.strip() else "no message"
    return first.removeprefix("dagster._core.definitions.events.Failure: ")


AUTOMATION_SENSOR = "default_automation_condition_sensor"


def automation_condition_sensor(
    assets: Iterable[object],
) -> AutomationConditionSensorDefinition | None:
    """The sensor that evaluates the assets' automation conditions, running from the start as
    the schedules are; None when no asset has a condition. Named as the one Dagster would add
    (stopped) by itself."""
    keys = [
        key
        for definition in assets
        if isinstance(definition, AssetsDefinition)
        for key, condition in definition.automation_conditions_by_key.items()
        if condition is not None
    ]
    if not keys:
        return None
    return AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=AssetSelection.assets(*keys),
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests the runs the assets' automation conditions call for: "
        "`automation.on_cron` of ingested tables, downstream assets that follow their inputs.",
    )


def source_automation(
    source_name: str, spec: SourceSpecBase, jobs: Mapping[str, Sequence[AssetKey]]
) -> tuple[list[ScheduleDefinition], list[SensorDefinition]]:
    """A daily schedule per job of the source (unless its every asset has its own
    `automation.on_cron`), and its new-data sensor."""
    schedules = [
        schedule
        for name, keys in jobs.items()
        if (schedule := daily_schedule(source_name, spec, name, keys)) is not None
    ]
    schedules += [key_scan_schedule(source_name, spec, d) for d in spec.datasets if d.key_scan_cron]
    sensors = []
    if any(d.partition_column for d in spec.datasets) or merge_datasets(spec):
        sensors.append(new_data_sensor(source_name, spec))
    return schedules, sensors
