"""An in-memory source kind defined outside the package (spec, Source, resource, registry line),
with faults a test can switch on: rows the read loses or repeats while the count stays true."""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pytest
from dagster import AssetKey
from pydantic import Field

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
# faults by table name: ids its reads lose, and ids its reads deliver twice (counts stay true)
LOST: dict[str, set[int]] = {}
REPEATED: dict[str, set[int]] = {}


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
        name = dataset.qualified_name
        rows = [row for row in self._rows(window) if row["id"] not in LOST.get(name, set())]
        rows += [row for row in rows if row["id"] in REPEATED.get(name, set())]
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
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
    LOST.clear()
    REPEATED.clear()
    for index in range(12):
        day = FIRST_DAY + datetime.timedelta(days=index // 4)
        ROWS[index] = {"id": index, "day": day, "changed": 1}
    yield
    ROWS.clear()


def memory_project(
    lake: pathlib.Path, lake_options: Mapping[str, Any] | None = None, **source: Any
) -> str:
    """A project file (JSON) with the memory source `mem`: its table Orders keyed by `id`, days
    from FIRST_DAY to five days later, on the lake `lake` (with `lake_options`); `source`
    adds or replaces keys of the source."""
    return json.dumps(
        {
            "lake": {"root": str(lake), **(lake_options or {})},
            "sources": {
                "mem": {
                    "type": "memory",
                    "start_date": FIRST_DAY.isoformat(),
                    "end_date": (FIRST_DAY + datetime.timedelta(days=5)).isoformat(),
                    "tables": [{"name": "Orders", "primary_key": ["id"]}],
                    **source,
                }
            },
        }
    )
