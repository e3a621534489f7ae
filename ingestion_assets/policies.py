"""What Dagster judges of an asset's timing, from its spec: the freshness policy (is it fresh?)
and the automation condition (when does it run?). Both are set on the asset's AssetSpec.

A source's days run up to today (`end_offset=1`, so that the new-data sensor can land rows that
arrive today), which makes today Dagster's "latest time partition". `AutomationCondition.on_cron`
would request that one, still filling, at 02:15 and never return to the day before; here it
requests the last complete day, as the daily schedule does. Measured on Dagster 1.13: at 02:16
after a `15 2 * * *` tick, `on_cron` alone requests `2024-03-10`, ours `2024-03-09`.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    AutomationCondition,
    DailyPartitionsDefinition,
    FreshnessPolicy,
)

from ingestion_assets.specs import (
    CronFreshnessSpec,
    DatasetSpec,
    SourceSpecBase,
    TimeWindowFreshnessSpec,
)

# an asset's condition, as Dagster types it
Condition = AutomationCondition[AssetKey | AssetCheckKey]
# partitions starting at or after (end of today - 60 h) are yesterday's and today's whatever
# the days' lengths (23 to 25 h around a DST change): more than two days, less than three
_TWO_DAYS = datetime.timedelta(hours=60)


def freshness_policy(spec: SourceSpecBase, dataset: DatasetSpec) -> FreshnessPolicy | None:
    """The dataset's Dagster freshness policy (a cron's zone defaults to the source's)."""
    freshness = spec.freshness_of(dataset)
    if isinstance(freshness, TimeWindowFreshnessSpec):
        return FreshnessPolicy.time_window(
            fail_window=freshness.fail_after, warn_window=freshness.warn_after
        )
    if isinstance(freshness, CronFreshnessSpec):
        return FreshnessPolicy.cron(
            deadline_cron=freshness.deadline_cron,
            lower_bound_delta=freshness.lower_bound,
            timezone=freshness.timezone or spec.timezone,
        )
    return None


def last_complete_day() -> Condition:
    """True for the partition before the latest: yesterday, when today is a partition."""
    return (
        AutomationCondition.in_latest_time_window(_TWO_DAYS)
        & ~AutomationCondition.in_latest_time_window()
    ).with_label("last complete day")


def on_cron(cron: str, zone: str, partitions_def: DailyPartitionsDefinition | None) -> Condition:
    """Dagster's `on_cron`, for the last complete day when the partitions include today; an
    unpartitioned snapshot is refreshed whole at each tick."""
    condition = AutomationCondition.on_cron(cron, zone)
    if partitions_def is None or partitions_def.end_offset == 0:
        # without today, Dagster's latest partition is the last complete day already
        return condition
    # Dagster's own composition with one operand exchanged (shown as "last complete day")
    return condition.replace("in_latest_time_window", last_complete_day())


def automation_condition(
    spec: SourceSpecBase, dataset: DatasetSpec, partitions_def: DailyPartitionsDefinition | None
) -> Condition | None:
    """The dataset's automation condition (`automation.on_cron`), or None."""
    automation = spec.automation_of(dataset)
    if automation is None or automation.on_cron is None:
        return None
    return on_cron(automation.on_cron, automation.timezone or spec.timezone, partitions_def)


def follows_upstream(ignore_updates_of: Sequence[AssetKey] = ()) -> Condition:
    """For a downstream asset: each partition runs once its inputs' same partition was updated
    (a backfill, a late day, today) and none of them is still running. Dagster's `eager()`
    without its limit to the latest partition; history before the condition is left alone.

    `ignore_updates_of`: inputs whose updates alone start nothing (an unpartitioned table read
    by a daily asset: each refresh would otherwise re-run every day)."""
    condition = AutomationCondition.eager().without(AutomationCondition.in_latest_time_window())
    if not ignore_updates_of:
        return condition
    return condition.replace(
        "any_deps_updated",
        AutomationCondition.any_deps_updated().ignore(AssetSelection.assets(*ignore_updates_of)),
    )
