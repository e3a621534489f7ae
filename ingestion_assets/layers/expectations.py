"""Expectations applied to a layer's rows as they stream: counted per partition day, the rows a
`drop` expectation rejects set aside (spilled to a local Arrow file, so a run's memory does not
grow with them) for `<asset>_quarantine`, the rest passed on to the writer."""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ingestion_assets.layers.engine import FAILED, held_columns
from ingestion_assets.specs import ExpectationSpec

FAILED_EXPECTATIONS = "_failed_expectations"


@dataclass
class ExpectationTally:
    """Each expectation's violations per day, the rows per day before any was dropped, and the
    rows set aside."""

    expectations: Sequence[ExpectationSpec]
    violations: dict[str, dict[datetime.date, int]] = field(default_factory=dict)
    rows_by_day: dict[datetime.date, int] = field(default_factory=dict)
    quarantined_by_day: dict[datetime.date, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for expectation in self.expectations:
            self.violations.setdefault(expectation.name, {})

    @property
    def quarantined(self) -> int:
        """Rows set aside in all."""
        return sum(self.quarantined_by_day.values())

    def failed(self) -> list[tuple[str, int]]:
        """The `fail` expectations that were violated, with their violations."""
        return [
            (expectation.name, sum(self.violations[expectation.name].values()))
            for expectation in self.expectations
            if expectation.on_violation == "fail"
            and any(self.violations[expectation.name].values())
        ]


def _add_counts(into: dict[datetime.date, int], days: pa.Array) -> None:
    if not len(days):
        return
    counts = pc.value_counts(days)
    for day, rows in zip(
        counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
    ):
        into[day] = into.get(day, 0) + rows


class ExpectationSplit:
    """Splits judged batches (the layer's columns, `__held_<i>`, `__failed`) into the rows the
    table gets and the rows `drop` expectations reject, counting as it goes."""

    def __init__(
        self,
        expectations: Sequence[ExpectationSpec],
        day_of: Callable[[pa.RecordBatch], pa.Array],
        spill_dir: str | None = None,
    ) -> None:
        self.expectations = list(expectations)
        self.tally = ExpectationTally(self.expectations)
        self.day_of = day_of
        self.held = held_columns(len(self.expectations))
        self._drop = [
            column
            for column, expectation in zip(self.held, self.expectations, strict=True)
            if expectation.on_violation == "drop"
        ]
        self._spill_dir = spill_dir
        self._spill_path: str | None = None
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._quarantine_schema: pa.Schema | None = None

    def kept(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The batches without the rows a `drop` expectation rejects (and without the verdict
        columns); each violation counted on its row's day."""
        for batch in batches:
            if not self.expectations:
                _add_counts(self.tally.rows_by_day, self.day_of(batch))
                yield batch
                continue
            days = self.day_of(batch)
            _add_counts(self.tally.rows_by_day, days)
            for column, expectation in zip(self.held, self.expectations, strict=True):
                violated = pc.invert(batch.column(column))
                if pc.any(violated).as_py():
                    _add_counts(self.tally.violations[expectation.name], days.filter(violated))
            values = batch.drop_columns([*self.held, FAILED])
            if not self._drop:
                yield values
                continue
            dropped = pc.invert(batch.column(self._drop[0]))
            for column in self._drop[1:]:
                dropped = pc.or_(dropped, pc.invert(batch.column(column)))
            if pc.any(dropped).as_py():
                rejected = values.filter(dropped).append_column(
                    FAILED_EXPECTATIONS, batch.column(FAILED).filter(dropped)
                )
                _add_counts(self.tally.quarantined_by_day, days.filter(dropped))
                self._spill(rejected)
                values = values.filter(pc.invert(dropped))
            yield values

    def _spill(self, rejected: pa.RecordBatch) -> None:
        if self._writer is None:
            handle, self._spill_path = tempfile.mkstemp(
                prefix="quarantine-", suffix=".arrow", dir=self._spill_dir
            )
            os.close(handle)
            self._quarantine_schema = rejected.schema
            self._writer = ipc.new_file(self._spill_path, rejected.schema)
        assert self._quarantine_schema is not None
        self._writer.write_batch(rejected.cast(self._quarantine_schema))

    def quarantine_schema(self, layer_schema: pa.Schema) -> pa.Schema:
        """The quarantine table's columns: the layer's, then the failed expectations' names."""
        if self._quarantine_schema is not None:
            return self._quarantine_schema
        return layer_schema.append(pa.field(FAILED_EXPECTATIONS, pa.list_(pa.string())))

    def quarantined(self, layer_schema: pa.Schema) -> pa.RecordBatchReader:
        """The rejected rows, read back from the spill file (none when nothing was dropped)."""
        schema = self.quarantine_schema(layer_schema)
        if self._writer is None or self._spill_path is None:
            return pa.RecordBatchReader.from_batches(schema, iter(()))
        self._writer.close()
        self._writer = None
        return pa.RecordBatchReader.from_batches(schema, _file_batches(self._spill_path))

    def close(self) -> None:
        """Remove the spill file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._spill_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._spill_path)
            self._spill_path = None


def _file_batches(path: str) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(path) as source:
        reader = ipc.open_file(source)
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
