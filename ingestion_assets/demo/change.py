"""`python -m ingestion_assets.demo change`: new and corrected orders in the demo database, for
the new-data sensor to find.

Two days change: orders of an old day are corrected (a late change) and orders are added to it
and to the newest day. Every row written gets LoadedAt = now and keeps its ModifiedDate, the day
it is partitioned by, so the sensor (`change_column: LoadedAt`) requests exactly those two days of
the two Sales tables. The demo API reads the same SQLite files: it serves the change too.
"""

from __future__ import annotations

import datetime
import pathlib
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa

from ingestion_assets.demo.api import demo_engine
from ingestion_assets.demo.schema import LOADED_AT, demo_metadata, table_for

HEADER = "Sales.SalesOrderHeader"
DETAIL = "Sales.SalesOrderDetail"
CHANGED_TABLES = (HEADER, DETAIL)
# the old day is about a quarter before the newest: a correction that arrives late
OLD_DAY_DISTANCE = datetime.timedelta(days=90)
ADDED_ORDERS_PER_DAY = 3
CORRECTED_ORDERS = 2
CORRECTION = "corrected by `make demo-change`"


@dataclass
class DemoChange:
    """What one change wrote: rows added and updated per table and day, all at `loaded_at`."""

    loaded_at: datetime.datetime
    old_day: datetime.date
    new_day: datetime.date
    added: dict[str, dict[datetime.date, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    updated: dict[str, dict[datetime.date, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )

    @property
    def days(self) -> list[datetime.date]:
        """The days whose rows changed: the partitions the sensor should request."""
        return sorted({self.old_day, self.new_day})

    def describe(self) -> list[str]:
        """One line per table: its days and what was written to each."""
        lines = []
        for table in CHANGED_TABLES:
            parts = []
            for day in self.days:
                done = [
                    f"{count:,} {verb}"
                    for verb, count in (
                        ("updated", self.updated[table][day]),
                        ("added", self.added[table][day]),
                    )
                    if count
                ]
                parts.append(f"{day}: {', '.join(done)}")
            lines.append(f"{table}  {'; '.join(parts)}")
        return lines


def _days(connection: sa.Connection, header: sa.Table) -> tuple[datetime.date, datetime.date]:
    """The newest day with orders, and the latest day with orders a quarter before it."""
    modified = header.c.ModifiedDate
    newest = connection.execute(sa.select(sa.func.max(modified))).scalar()
    if newest is None:
        raise LookupError(f"{HEADER} has no orders: build the demo database with `make demo`")
    cut = datetime.datetime.combine(newest.date() - OLD_DAY_DISTANCE, datetime.time())
    # the oldest order when the data is shorter than that distance
    old = connection.execute(
        sa.select(
            sa.func.coalesce(
                sa.select(sa.func.max(modified))
                .where(modified < cut + datetime.timedelta(days=1))
                .scalar_subquery(),
                sa.select(sa.func.min(modified)).scalar_subquery(),
            )
        )
    ).scalar_one()
    return old.date(), newest.date()


def _orders_of(
    connection: sa.Connection, header: sa.Table, day: datetime.date, count: int
) -> list[dict[str, object]]:
    """The first `count` orders of `day`, by key."""
    start = datetime.datetime.combine(day, datetime.time())
    query = (
        sa.select(header)
        .where(
            header.c.ModifiedDate >= start, header.c.ModifiedDate < start + datetime.timedelta(1)
        )
        .order_by(header.c.SalesOrderID)
        .limit(count)
    )
    return [dict(row) for row in connection.execute(query).mappings()]


def _add_orders(
    connection: sa.Connection,
    tables: tuple[sa.Table, sa.Table],
    day: datetime.date,
    change: DemoChange,
) -> None:
    """Copies of the day's first orders with their lines, under new keys, loaded now."""
    header, detail = tables
    next_order = connection.execute(sa.select(sa.func.max(header.c.SalesOrderID))).scalar_one()
    next_line = connection.execute(sa.select(sa.func.max(detail.c.SalesOrderDetailID))).scalar_one()
    for order in _orders_of(connection, header, day, ADDED_ORDERS_PER_DAY):
        next_order += 1
        lines = connection.execute(
            sa.select(detail)
            .where(detail.c.SalesOrderID == order["SalesOrderID"])
            .order_by(detail.c.SalesOrderDetailID)
        ).mappings()
        copies = []
        for line in lines:
            next_line += 1
            copies.append(
                {
                    **line,
                    "SalesOrderID": next_order,
                    "SalesOrderDetailID": next_line,
                    "rowguid": uuid.uuid4(),
                    LOADED_AT: change.loaded_at,
                }
            )
        connection.execute(
            header.insert(),
            {
                **order,
                "SalesOrderID": next_order,
                "SalesOrderNumber": f"SO{next_order}",
                "rowguid": uuid.uuid4(),
                LOADED_AT: change.loaded_at,
            },
        )
        if copies:
            connection.execute(detail.insert(), copies)
        change.added[HEADER][day] += 1
        change.added[DETAIL][day] += len(copies)


def _correct_orders(
    connection: sa.Connection, header: sa.Table, day: datetime.date, change: DemoChange
) -> None:
    """A new revision of the day's first orders: same day, new LoadedAt."""
    for order in _orders_of(connection, header, day, CORRECTED_ORDERS):
        connection.execute(
            header.update()
            .where(header.c.SalesOrderID == order["SalesOrderID"])
            .values(
                RevisionNumber=header.c.RevisionNumber + 1,
                Comment=CORRECTION,
                **{LOADED_AT: change.loaded_at},
            )
        )
        change.updated[HEADER][day] += 1


def change_demo_database(
    demo_dir: pathlib.Path, loaded_at: datetime.datetime | None = None
) -> DemoChange:
    """Correct and add orders of an old and the newest day in one transaction; what was written."""
    if not (demo_dir / "Sales.db").exists():
        raise FileNotFoundError(f"no demo database in {demo_dir}: build it first with `make demo`")
    metadata = demo_metadata()
    tables = (table_for(metadata, HEADER), table_for(metadata, DETAIL))
    # the demo stores naive UTC times, as its generator writes them
    moment = loaded_at or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    engine = demo_engine(demo_dir)
    try:
        with engine.begin() as connection:
            old_day, new_day = _days(connection, tables[0])
            change = DemoChange(moment, old_day, new_day)
            # added first: the copies are of orders as they were, the corrections stay two
            for day in change.days:
                _add_orders(connection, tables, day, change)
            _correct_orders(connection, tables[0], old_day, change)
    finally:
        engine.dispose()
    return change
