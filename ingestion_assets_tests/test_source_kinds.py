"""A source kind defined here, in one module plus one registry line, becomes assets, checks and a
new-data sensor: nothing else in the package knows about it."""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pytest
from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    build_sensor_context,
    materialize,
)
from deltalake import DeltaTable
from pydantic import Field

from ingestion_assets.definitions import build_definitions
from ingestion_assets.project import parse_project
from ingestion_assets.resources import SourceResource
from ingestion_assets.sources import base
from ingestion_assets.sources.base import ChangedDays, Source, SourceKind, register_source_kind
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec, SourceSpecBase

FIRST_DAY = datetime.date(2024, 3, 1)
KEY = AssetKey(["mem", "orders"])
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("day", pa.date32()),
        pa.field("changed", pa.int64()),
    ]
)
# the "database" of the memory kind: rows by id, shared by the test and the source
ROWS: dict[int, dict[str, Any]] = {}


class MemoryTableSpec(DatasetSpec):
    """A table of the in-memory source."""

    name: str
    partition_field: str | None = "day"

    @property
    def qualified_name(self) -> str:
        return self.name

    @property
    def partition_column(self) -> str | None:
        return self.partition_field


class MemorySourceSpec(SourceSpecBase):
    """The in-memory source kind's spec."""

    type: Literal["memory"] = "memory"
    tables: tuple[MemoryTableSpec, ...] = Field(min_length=1)
    reports_counts: bool = True

    @property
    def datasets(self) -> tuple[DatasetSpec, ...]:
        return self.tables


class MemorySource(Source):
    """Reads `ROWS`: a day's rows, their count, and the days whose `changed` moved."""

    def __init__(self, source_name: str, reports_counts: bool) -> None:
        super().__init__(source_name)
        self.reports_counts = reports_counts

    def _rows(self, window: PartitionWindow | None) -> list[dict[str, Any]]:
        rows = sorted(ROWS.values(), key=lambda row: row["id"])
        if window is None:
            return rows
        return [row for row in rows if window.first_day <= row["day"] <= window.last_day]

    def read(self, dataset: DatasetSpec, window: PartitionWindow | None) -> SourceStream:
        table = pa.Table.from_pylist(self._rows(window), schema=SCHEMA)
        return SourceStream(reader=table.to_reader(), path="memory")

    def count(self, dataset: DatasetSpec, window: PartitionWindow | None) -> int | None:
        return len(self._rows(window)) if self.reports_counts else None

    def changed_days(self, dataset: DatasetSpec, since: str | None) -> ChangedDays:
        newest = max((row["changed"] for row in ROWS.values()), default=0)
        if since is None:
            return ChangedDays([], str(newest))
        days = sorted({row["day"] for row in ROWS.values() if row["changed"] > int(since)})
        return ChangedDays(days, str(newest))


class MemorySourceResource(SourceResource):
    """The in-memory kind's Dagster resource."""

    source_class: ClassVar[type[Source]] = MemorySource

    reports_counts: bool = Field(True, description="Whether counts are known to the source.")

    @classmethod
    def from_spec(cls, source_name: str, spec: SourceSpecBase) -> MemorySourceResource:
        assert isinstance(spec, MemorySourceSpec)
        return cls(source_name=source_name, reports_counts=spec.reports_counts)

    def open_source(self) -> Source:
        return MemorySource(self.source_name, self.reports_counts)


@pytest.fixture
def memory_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The memory kind registered for one test (the registry as it was afterwards)."""
    monkeypatch.setattr(base, "_KINDS", dict(base.source_kinds()))
    # the one line a new kind needs
    register_source_kind(SourceKind("memory", MemorySourceSpec, f"{__name__}:MemorySourceResource"))
    ROWS.clear()
    for index in range(12):
        day = FIRST_DAY + datetime.timedelta(days=index // 4)
        ROWS[index] = {"id": index, "day": day, "changed": 1}
    yield
    ROWS.clear()


def _project(lake: pathlib.Path, **source: Any) -> str:
    return json.dumps(
        {
            "lake": {"root": str(lake)},
            "sources": {
                "mem": {
                    "type": "memory",
                    "start_date": FIRST_DAY.isoformat(),
                    "end_date": (FIRST_DAY + datetime.timedelta(days=5)).isoformat(),
                    "tables": [{"name": "Orders", "primary_key": ["id"]}],
                    "sensor": {"enabled": True},
                    **source,
                }
            },
        }
    )


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
