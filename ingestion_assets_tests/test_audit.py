"""Audit before publish: a run's rows are judged by the blocking checks before the commit, and
readers never see what a check rejected; every check records one evaluation per partition."""

from __future__ import annotations

import datetime
import pathlib
import re
import tempfile
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    materialize,
)
from deltalake import DeltaTable

from ingestion_assets.definitions import build_definitions
from ingestion_assets.lake import keys
from ingestion_assets.project import parse_project
from ingestion_assets_tests.conftest import RANGE_END_TAG, RANGE_START_TAG
from ingestion_assets_tests.memory_source import (
    FIRST_DAY,
    KEY,
    LOST,
    REPEATED,
    ROWS,
    memory_kind,
    memory_project,
)

__all__ = ["memory_kind"]  # the fixture, used by name

COPY_KEY = AssetKey(["mem", "orders_copy"])
DAY = FIRST_DAY.isoformat()  # ids 0..3
NEXT_DAY = (FIRST_DAY + datetime.timedelta(days=1)).isoformat()  # ids 4..7


def _defs(lake: pathlib.Path, *tables: dict[str, Any]) -> Definitions:
    source = {"tables": list(tables)} if tables else {}
    return build_definitions(parse_project(memory_project(lake, **source), "memory.yaml"))


def _run(
    defs: Definitions,
    instance: DagsterInstance,
    partition: str | None = None,
    days: tuple[str, str] | None = None,
    keys: tuple[AssetKey, ...] = (KEY,),
) -> ExecuteInProcessResult:
    return materialize(
        [defs.get_assets_def(key) for key in keys],
        resources=defs.resources,
        instance=instance,
        partition_key=partition,
        tags={RANGE_START_TAG: days[0], RANGE_END_TAG: days[1]} if days else None,
        raise_on_error=False,
    )


def _table(lake: pathlib.Path, name: str = "orders") -> DeltaTable:
    return DeltaTable(str(lake / "mem" / name))


def _ids(table: DeltaTable, day: str) -> list[int]:
    rows = table.to_pyarrow_table()
    return sorted(
        row["id"]
        for row in rows.select(["id", "_partition_date"]).to_pylist()
        if row["_partition_date"].isoformat() == day
    )


def _failure(result: ExecuteInProcessResult) -> str:
    failures = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    assert failures, "the run should have failed"
    error = failures[0].step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def test_a_day_read_short_of_the_source_count_is_never_published(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    lake = tmp_path / "lake"
    defs = _defs(lake)
    assert _run(defs, instance, DAY).success
    version = _table(lake).version()
    ROWS[2]["changed"] = 2
    LOST["Orders"] = {2}  # the read loses a row the source still counts

    result = _run(defs, instance, DAY)

    assert not result.success
    assert _table(lake).version() == version, "nothing may be committed"
    assert _ids(_table(lake), DAY) == [0, 1, 2, 3]
    message = _failure(result)
    # the run's error leads with the project's message, not with Dagster's wrapper around it
    assert message.splitlines()[0].endswith(
        "Failure: mem.orders (partition 2024-03-01): nothing was committed, the table is "
        "unchanged: blocking checks rejected the staged rows. row_count failed on 1 "
        "partition(s): 2024-03-01: 3 rows, the source has 4. Find why the source and what was "
        "read disagree, fix it and re-run the partitions; a check that should not hold the data "
        "back can be set to severity WARN in the project file."
    )
    assert "row_count failed on 1 partition(s): 2024-03-01: 3 rows, the source has 4" in (message)
    row_count = next(e for e in result.get_asset_check_evaluations() if e.check_name == "row_count")
    assert (row_count.passed, row_count.partition) == (False, DAY)
    assert row_count.metadata["difference"].value == -1
    assert not result.asset_materializations_for_node("mem__orders")
    # the source healed: the same run lands the day
    LOST.clear()
    assert _run(defs, instance, DAY).success
    assert _table(lake).version() == version + 1


def test_keys_repeated_in_the_staged_rows_or_colliding_with_kept_rows_are_never_published(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    lake = tmp_path / "lake"
    defs = _defs(
        lake,
        {"name": "Orders", "primary_key": ["id"], "checks": {"row_count": {"reconcile": False}}},
    )
    assert _run(defs, instance, DAY).success
    version = _table(lake).version()

    REPEATED["Orders"] = {5}  # the next day's read delivers id 5 twice
    repeated = _run(defs, instance, NEXT_DAY)
    assert not repeated.success
    assert (
        "primary_key failed on 1 partition(s): 2024-03-02: 1 duplicated key(s) (e.g. [{'id': 5, 'copies': 2}])"
        in _failure(repeated)
    )

    REPEATED.clear()
    # a row of the next day carries the key of a row the table keeps on the first day
    ROWS[100] = {"id": 1, "day": FIRST_DAY + datetime.timedelta(days=1), "changed": 1}
    colliding = _run(defs, instance, NEXT_DAY)
    assert not colliding.success
    evaluation = next(
        e for e in colliding.get_asset_check_evaluations() if e.check_name == "primary_key"
    )
    assert (evaluation.passed, evaluation.partition) == (False, NEXT_DAY)
    assert evaluation.metadata["duplicate_keys"].value == 1
    assert _table(lake).version() == version
    assert _ids(_table(lake), NEXT_DAY) == []


def test_a_key_repeated_days_apart_in_a_range_is_caught_when_the_keys_spill_to_disk(
    memory_kind: None,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # two rows of keys in memory: the twelve are spilled to bucket files and split again
    monkeypatch.setattr(keys, "BUFFER_ROWS", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    lake = tmp_path / "lake"
    defs = _defs(lake)
    days = [(FIRST_DAY + datetime.timedelta(days=offset)).isoformat() for offset in range(3)]
    # the last day repeats the key of a row of the first day, in another batch of the stream
    ROWS[100] = {"id": 1, "day": FIRST_DAY + datetime.timedelta(days=2), "changed": 1}

    repeated = _run(defs, instance, days=(days[0], days[-1]))

    assert not repeated.success
    assert (
        "primary_key failed on 2 partition(s): 2024-03-01: 1 duplicated key(s) (e.g. "
        "[{'id': 1, 'copies': 2}]); 2024-03-03: 1 duplicated key(s) (e.g. [{'id': 1, 'copies': 2}])"
        in _failure(repeated)
    )
    assert not (lake / "mem" / "orders" / "_delta_log").exists() or _ids(_table(lake), DAY) == []
    del ROWS[100]
    landed = _run(defs, instance, days=(days[0], days[-1]))
    assert landed.success
    assert {
        m.partition: m.metadata["dagster/partition_row_count"].value
        for m in landed.asset_materializations_for_node("mem__orders")
    } == {day: 4 for day in days}
    assert list((tmp_path / "tmp").iterdir()) == [], "the spilled keys are removed"


def test_a_range_run_records_one_current_evaluation_per_check_and_partition_in_one_step(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    lake = tmp_path / "lake"
    defs = _defs(lake)
    days = [(FIRST_DAY + datetime.timedelta(days=offset)).isoformat() for offset in range(3)]

    result = _run(defs, instance, days=(days[0], days[-1]))

    assert result.success
    evaluations = result.get_asset_check_evaluations()
    by_check: dict[str, list[str | None]] = {}
    for evaluation in evaluations:
        assert evaluation.passed, evaluation.description
        by_check.setdefault(evaluation.check_name, []).append(evaluation.partition)
    assert {name: sorted(map(str, parts)) for name, parts in by_check.items()} == {
        name: days for name in ("schema_contract", "row_count", "primary_key")
    }
    # the checks ran in the asset's own step: one step, one process
    started = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert started == ["mem__orders"]
    # each partition's evaluation judged that partition's materialization of this run
    storage = instance.event_log_storage
    infos = storage.get_asset_check_partition_info([AssetCheckKey(KEY, name) for name in by_check])
    assert len(infos) == 9
    assert all(info.is_current for info in infos)
    assert {info.latest_execution_status.value for info in infos} == {"SUCCEEDED"}
    materializations = result.asset_materializations_for_node("mem__orders")
    assert {
        m.partition: m.metadata["dagster/partition_row_count"].value for m in materializations
    } == {day: 4 for day in days}
    assert {m.metadata["dagster/row_count"].value for m in materializations} == {12}


def test_a_failing_warn_check_is_recorded_and_the_rows_are_published(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    lake = tmp_path / "lake"
    defs = _defs(
        lake,
        {"name": "Orders", "primary_key": ["id"], "checks": {"row_count": {"severity": "WARN"}}},
    )
    LOST["Orders"] = {2}

    result = _run(defs, instance, DAY)

    assert result.success
    assert _ids(_table(lake), DAY) == [0, 1, 3]
    row_count = next(e for e in result.get_asset_check_evaluations() if e.check_name == "row_count")
    assert (row_count.passed, row_count.severity.value, row_count.partition) == (False, "WARN", DAY)


def test_checks_executed_alone_judge_the_committed_table(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    lake = tmp_path / "lake"
    defs = _defs(lake)
    assert _run(defs, instance, days=(DAY, NEXT_DAY)).success
    version = _table(lake).version()
    ROWS[100] = {"id": 100, "day": FIRST_DAY, "changed": 1}  # arrives after the run

    result = materialize(
        [defs.get_assets_def(KEY)],
        resources=defs.resources,
        instance=instance,
        tags={RANGE_START_TAG: DAY, RANGE_END_TAG: NEXT_DAY},
        selection=AssetSelection.checks_for_assets(KEY),
        raise_on_error=False,
    )

    assert _table(lake).version() == version, "checks alone write nothing"
    row_counts = {
        e.partition: e for e in result.get_asset_check_evaluations() if e.check_name == "row_count"
    }
    assert set(row_counts) == {DAY, NEXT_DAY}
    assert not row_counts[DAY].passed
    assert row_counts[DAY].metadata["difference"].value == -1
    assert row_counts[NEXT_DAY].passed
    assert not result.asset_materializations_for_node("mem__orders")


def test_reconcile_with_compares_the_days_and_keys_of_two_assets_holding_the_same_data(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    lake = tmp_path / "lake"
    defs = _defs(
        lake,
        {"name": "Orders", "primary_key": ["id"]},
        {
            "name": "OrdersCopy",
            "primary_key": ["id"],
            # like an API whose window filter is misread: its own total agrees with what it sends
            "checks": {
                "row_count": {"reconcile": False},
                "reconcile_with": {"asset": "mem/orders", "keys": True},
            },
        },
    )
    LOST["OrdersCopy"] = {2, 5}
    check = next(
        definition
        for definition in defs.asset_checks or []
        if AssetCheckKey(COPY_KEY, "reconciled_with_mem__orders") in definition.check_keys
    )

    result = materialize(
        [defs.get_assets_def(KEY), defs.get_assets_def(COPY_KEY), check],
        resources=defs.resources,
        instance=instance,
        tags={RANGE_START_TAG: DAY, RANGE_END_TAG: NEXT_DAY},
        raise_on_error=False,
    )

    assert result.success, "a WARN reconciliation does not fail the run"
    evaluations = {
        e.partition: e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "reconciled_with_mem__orders"
    }
    assert set(evaluations) == {DAY, NEXT_DAY}
    for day, missing in ((DAY, 2), (NEXT_DAY, 5)):
        evaluation = evaluations[day]
        assert not evaluation.passed
        assert evaluation.metadata["rows"].value == 3
        assert evaluation.metadata["other_rows"].value == 4
        assert evaluation.metadata["sample_only_in_other"].value == [{"id": missing}]
    # the check waits for both tables
    order = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert order.index("mem__orders_copy_reconciled_with_mem__orders") > max(
        order.index("mem__orders"), order.index("mem__orders_copy")
    )


@pytest.mark.parametrize(
    ("reconcile_with", "message"),
    [
        ({"asset": "mem/nowhere"}, "no asset 'mem/nowhere' in the project; use one of: mem/orders"),
        ({"asset": "mem/orders_copy"}, "an asset cannot be reconciled with itself"),
        ({"asset": "orders"}, "'orders' is no asset key; write it as source/table"),
    ],
)
def test_a_reconciliation_with_an_unknown_asset_is_a_load_time_error(
    memory_kind: None, tmp_path: pathlib.Path, reconcile_with: dict[str, Any], message: str
) -> None:
    from ingestion_assets.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        _defs(
            tmp_path,
            {"name": "Orders"},
            {"name": "OrdersCopy", "checks": {"reconcile_with": reconcile_with}},
        )


def test_checks_executed_before_the_first_materialization_fail_saying_so(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    defs = _defs(tmp_path / "lake")

    result = materialize(
        [defs.get_assets_def(KEY)],
        resources=defs.resources,
        instance=instance,
        # a checks-only selection has no asset to take the partition from: name it by tag
        tags={"dagster/partition": DAY},
        selection=AssetSelection.checks_for_assets(KEY),
        raise_on_error=False,
    )

    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == {"schema_contract", "row_count", "primary_key"}
    for evaluation in evaluations:
        assert (evaluation.passed, evaluation.partition) == (False, DAY)
        assert evaluation.description == "no table yet: materialize the asset first"
