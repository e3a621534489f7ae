"""The time window a run reads: one day's partition, or a backfill's range of days."""

from __future__ import annotations

import datetime
from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionWindow:
    """Rows whose partition column falls in `[start, end)`; bounds are zone-aware."""

    start: datetime.datetime
    end: datetime.datetime
    label: str

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a partition window needs zone-aware bounds")
        if self.end <= self.start:
            raise ValueError(f"empty partition window {self.start} .. {self.end}")

    @property
    def first_day(self) -> datetime.date:
        """The first partition day in the window's zone."""
        return self.start.date()

    @property
    def last_day(self) -> datetime.date:
        """The last partition day in the window's zone (the window's end is exclusive)."""
        return (self.end - datetime.timedelta(microseconds=1)).date()
