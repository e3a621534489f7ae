"""What a source hands the IO manager: Arrow batches plus what it learned while producing them."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("record", pa.string()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("day", pa.date32()),
    ]
)


@dataclass(frozen=True)
class RejectedRecord:
    """A record that did not fit the declared schema, kept with the reason."""

    record: str
    field: str
    reason: str
    day: datetime.date | None


@dataclass
class SourceStream:
    """A stream of record batches; `metadata()` and `rejected` are complete once it is consumed.

        `path` says how the source fetches it (`copy`, `odbc bulk fetch`, `rows`, `api pages`);
        `reported_total` is the count the source itself reported for the window while it was read
        (an API's filtered total), which the audit reconciles with instead of asking again;
        `source_types` is each column's type as the source declares it (`DECIMAL(19, 4) NOT NULL`),
        which the materialization's column descriptions show; `position` is where a change feed's
        read reached (a version, an LSN) when the source knows it before any row is read, so that
        a first read of an empty table still leaves a cursor; `files` is what a files source read, for
    the table's ledger."""

    reader: pa.RecordBatchReader
    path: str = "rows"
    metadata: Callable[[], dict[str, Any]] = dict
    rejected: list[RejectedRecord] = field(default_factory=list)
    quarantine: bool = False
    reported_total: int | None = None
    source_types: dict[str, str] = field(default_factory=dict)
    position: str | None = None
    # a files source: the ledger entries of the files the read covered (lake/ledger.py's
    # columns), complete once `reader` was consumed; and whether the rows of files gone from
    # the landing zone stay in the table
    files: Callable[[], pa.Table] | None = None
    keeps_gone_files: bool = True
    # the files unchanged since the table took them in (path -> rows): not read again, their
    # committed rows carried over into the replace
    carried_files: dict[str, int] = field(default_factory=dict)

    def rejected_by_day(self) -> dict[datetime.date | None, int]:
        """How many records of each day were set aside (kept in the rejected table)."""
        counts: dict[datetime.date | None, int] = {}
        for record in self.rejected:
            counts[record.day] = counts.get(record.day, 0) + 1
        return counts

    def rejected_table(self) -> pa.Table:
        """The rejected records as an Arrow table (`record`, `field`, `reason`, `day`)."""
        return pa.Table.from_pylist(
            [
                {"record": r.record, "field": r.field, "reason": r.reason, "day": r.day}
                for r in self.rejected
            ],
            schema=REJECTED_SCHEMA,
        )
