"""The time window a run reads: one day's partition, or a backfill's range of days.

`PartitionWindow` is the one place a window and its label are made: the asset, the IO managers,
the checks and the sensors build it from bounds (or days) and read its days back as dates, never
by parsing the label.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class PartitionWindow:
    """Rows whose partition column falls in `[start, end)`; bounds are zone-aware.

    `name` replaces the label for windows that are not partitions (a sensor's "changes since")."""

    start: datetime.datetime
    end: datetime.datetime
    name: str | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a partition window needs zone-aware bounds")
        if self.end <= self.start:
            raise ValueError(f"empty partition window {self.start} .. {self.end}")

    @classmethod
    def of_days(
        cls, first_day: datetime.date, last_day: datetime.date, timezone: str = "UTC"
    ) -> PartitionWindow:
        """The window of the days `first_day..last_day` (inclusive), days beginning in `timezone`."""
        zone = ZoneInfo(timezone)
        start = datetime.datetime.combine(first_day, datetime.time(), zone)
        end = datetime.datetime.combine(
            last_day + datetime.timedelta(days=1), datetime.time(), zone
        )
        return cls(start, end)

    @property
    def timezone(self) -> str:
        """The IANA zone in which the window's days begin."""
        return str(self.start.tzinfo)

    @property
    def first_day(self) -> datetime.date:
        """The first partition day in the window's zone."""
        return self.start.date()

    @property
    def last_day(self) -> datetime.date:
        """The last partition day in the window's zone (the window's end is exclusive)."""
        return (self.end - datetime.timedelta(microseconds=1)).date()

    def days(self) -> list[datetime.date]:
        """Every partition day of the window, in order."""
        count = (self.last_day - self.first_day).days + 1
        return [self.first_day + datetime.timedelta(days=offset) for offset in range(count)]

    @property
    def days_text(self) -> str:
        """`2024-01-05`, or `2024-01-01..2024-01-31` for a range."""
        if self.first_day == self.last_day:
            return self.first_day.isoformat()
        return f"{self.first_day.isoformat()}..{self.last_day.isoformat()}"

    @property
    def label(self) -> str:
        """How messages name the window: `partition D`, `partitions A..B`, or its name."""
        if self.name is not None:
            return self.name
        plural = "s" if self.first_day != self.last_day else ""
        return f"partition{plural} {self.days_text}"
