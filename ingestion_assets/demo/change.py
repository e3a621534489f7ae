"""`python -m ingestion_assets.demo change`: new and corrected orders in the demo database, for
the new-data sensor to find, and changed customers and products for the merge table and the
product dimension.

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
CUSTOMER = "Sales.Customer"
PRODUCT = "Production.Product"
# the merge table's change: two customers move (their next run reads them, by ModifiedDate)
MOVED_CUSTOMERS = 2
# the SCD type 2 dimension's: one product's price rises (a new version), one is withdrawn
PRICE_RISE = 1.1
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
    # the keys changed in the merge table and the dimension
    customers_moved: list[int] = field(default_factory=list)
    product_repriced: int | None = None
    product_withdrawn: int | None = None

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
        if self.customers_moved:
            moved = ", ".join(str(key) for key in self.customers_moved)
            lines.append(f"{CUSTOMER}  customers {moved} updated (ModifiedDate now)")
        if self.product_repriced is not None:
            lines.append(
                f"{PRODUCT}  product {self.product_repriced} repriced (ListPrice +10%), product "
                f"{self.product_withdrawn} deleted"
            )
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


def _change_dimensions(
    connection: sa.Connection, metadata: sa.MetaData, change: DemoChange
) -> None:
    """Move two customers (the merge table's next run reads them) and, in the product
    dimension, raise one price (a new version) and delete one product (its version closes)."""
    customer, product = table_for(metadata, CUSTOMER), table_for(metadata, PRODUCT)
    keys = connection.execute(
        sa.select(customer.c.CustomerID).order_by(customer.c.CustomerID).limit(MOVED_CUSTOMERS)
    ).scalars()
    for key in keys:
        connection.execute(
            customer.update()
            .where(customer.c.CustomerID == key)
            .values(
                TerritoryID=sa.func.coalesce(customer.c.TerritoryID, 0) % 10 + 1,
                ModifiedDate=change.loaded_at,
            )
        )
        change.customers_moved.append(key)
    products = list(
        connection.execute(
            sa.select(product.c.ProductID).order_by(product.c.ProductID.desc()).limit(2)
        ).scalars()
    )
    if len(products) == 2:
        repriced, withdrawn = products
        connection.execute(
            product.update()
            .where(product.c.ProductID == repriced)
            .values(ListPrice=product.c.ListPrice * PRICE_RISE, ModifiedDate=change.loaded_at)
        )
        connection.execute(product.delete().where(product.c.ProductID == withdrawn))
        change.product_repriced, change.product_withdrawn = repriced, withdrawn


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
            _change_dimensions(connection, metadata, change)
    finally:
        engine.dispose()
    return change
