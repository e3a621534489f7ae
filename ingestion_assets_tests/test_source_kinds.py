"""A source kind defined in the tests (`memory_source.py`: spec, Source, resource and one
registry line) becomes assets, checks and a new-data sensor: nothing else in the package knows
about it."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pytest
from dagster import (
    AssetSelection,
    DagsterInstance,
    build_sensor_context,
    materialize,
)
from deltalake import DeltaTable

from ingestion_assets.definitions import build_definitions
from ingestion_assets.project import parse_project
from ingestion_assets_tests.memory_source import FIRST_DAY, KEY, ROWS, memory_kind, memory_project

__all__ = ["memory_kind"]  # the fixture, used by name


def _project(lake: pathlib.Path, **source: Any) -> str:
    return memory_project(lake, sensor={"enabled": True}, **source)


def test_a_kind_defined_in_a_test_becomes_assets_checks_and_a_sensor(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    defs = build_definitions(parse_project(_project(tmp_path / "lake"), "memory.yaml"))
    asset = defs.get_assets_def(KEY)
    assert asset.partitions_def is not None
    assert "ingestion/partition_column" in asset.metadata_by_key[KEY]
    # the checks are the asset's own: judged in its step, before the commit
    assert {check.name for check in asset.check_keys} == {
        "schema_contract",
        "row_count",
        "primary_key",
    }
    assert defs.resolve_job_def("ingest_mem").name == "ingest_mem"
    assert defs.resolve_schedule_def("ingest_mem_daily").cron_schedule == "15 2 * * *"

    result = materialize(
        [asset], resources=defs.resources, instance=instance, partition_key="2024-03-02"
    )
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"schema_contract", "row_count", "primary_key"}
    assert all(evaluation.passed for evaluation in evaluations.values())
    assert evaluations["row_count"].metadata["source_rows"].value == 4
    landed = DeltaTable(str(tmp_path / "lake" / "mem" / "orders")).to_pyarrow_table()
    assert sorted(landed.column("id").to_pylist()) == [4, 5, 6, 7]
    assert set(landed.column("_partition_date").to_pylist()) == {datetime.date(2024, 3, 2)}

    sensor = defs.resolve_sensor_def("mem_new_data")
    with build_sensor_context(
        instance=instance, resources=defs.resources, definitions=defs
    ) as context:
        first = sensor.evaluate_tick(context)
    assert not first.run_requests
    for index in (1, 9):  # rows of 2024-03-01 and 2024-03-03 change
        ROWS[index]["changed"] = 2
    with build_sensor_context(
        instance=instance, cursor=first.cursor, resources=defs.resources, definitions=defs
    ) as context:
        second = sensor.evaluate_tick(context)
    assert sorted(str(request.partition_key) for request in second.run_requests) == [
        "2024-03-01",
        "2024-03-03",
    ]


def test_a_row_the_kind_did_not_deliver_fails_the_reconciliation(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    defs = build_definitions(parse_project(_project(tmp_path / "lake"), "memory.yaml"))
    asset = defs.get_assets_def(KEY)
    assert materialize(
        [asset], resources=defs.resources, instance=instance, partition_key="2024-03-01"
    ).success
    ROWS[99] = {"id": 99, "day": FIRST_DAY, "changed": 1}  # arrives after the run
    result = materialize(
        [asset],
        resources=defs.resources,
        instance=instance,
        tags={"dagster/partition": "2024-03-01"},
        selection=AssetSelection.checks_for_assets(KEY),
        raise_on_error=False,
    )
    row_count = next(e for e in result.get_asset_check_evaluations() if e.check_name == "row_count")
    assert not row_count.passed
    assert row_count.metadata["difference"].value == -1


def test_an_unknown_kind_is_a_load_time_error_naming_the_known_ones(
    tmp_path: pathlib.Path,
) -> None:
    from ingestion_assets.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sources\.mem\.type: unknown source type 'memory'; "):
        parse_project(_project(tmp_path / "lake"), "memory.yaml")
