"""Deterministic AdventureWorks-shaped demo data and loaders for it.

Run ``python -m ingestion_assets.demo.generate --dir .data/demo`` to write the
SQLite variant and print the row counts.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import random
import sys
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ingestion_assets.demo.schema import (
    ALL_TABLES,
    DEMO_SCHEMAS,
    demo_metadata,
    resolve_schema,
    table_for,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping, Sequence

Row = dict[str, object]

_DEFAULT_START = datetime.date(2024, 1, 1)
# A day without any orders checks that empty partitions are handled.
ZERO_ORDER_DAY_INDEX = 7
INSERT_CHUNK_SIZE = 5_000

PRODUCT_COUNT = 300
VENDOR_COUNT = 100
CUSTOMER_COUNT = 2_000
FIRST_SALES_ORDER_ID = 43_659
FIRST_PURCHASE_ORDER_ID = 1
FIRST_VENDOR_ID = 1_492

_MONEY = Decimal("0.0001")
_LINE_TOTAL = Decimal("0.000001")
_QUANTITY = Decimal("0.01")
_TAX_RATE = Decimal("0.08")
_FREIGHT_RATE = Decimal("0.025")
_RESELLER_PRICE_FACTOR = Decimal("0.6")
_VENDOR_PRICE_FACTOR = Decimal("0.85")

_SHIPPED_SALES = 5
_COMPLETE_PURCHASE = 4
_COMMENT_SLOT = 5

_MS_PER_DAY = 86_400_000
# The last time of day a 1/300-second datetime can hold, as in the source data.
_DAY_LAST_MS = _MS_PER_DAY - 3

_COMMENTS: tuple[str, ...] = (
    "Livraison à Zürich \u2013 café ☕",
    "Łódź 配送",
    'O\'Brien "rush"',
    "Leave at the loading dock",
)
# Weighted towards no discount, as in the source data.
_DISCOUNTS: tuple[Decimal, ...] = (
    *(Decimal("0.0000"),) * 6,
    Decimal("0.0200"),
    Decimal("0.0500"),
    Decimal("0.1000"),
    Decimal("0.1500"),
)
_PRODUCT_KINDS: tuple[tuple[str, str], ...] = (
    ("Road Frame", "FR"),
    ("Mountain Frame", "FR"),
    ("Touring Frame", "FR"),
    ("Road Bike", "BK"),
    ("Mountain Bike", "BK"),
    ("Handlebars", "HB"),
    ("Headset", "HS"),
    ("Crankset", "CS"),
    ("Chainring", "CR"),
    ("Pedal", "PD"),
    ("Tire Tube", "TT"),
    ("Maillot Été", "LJ"),
)
_GRADES: tuple[str, ...] = ("LL", "ML", "HL")
_COLORS: tuple[str | None, ...] = (
    None,
    "Black",
    "Silver",
    "Red",
    "Yellow",
    "Blue",
    "Multi",
    "Silver/Black",
)
_SIZES: tuple[str | None, ...] = (None, "S", "M", "L", "XL", "44", "48", "52", "58")
_PRODUCT_LINES: tuple[str | None, ...] = (None, "R", "M", "T", "S")
_VENDOR_WORDS: tuple[str, ...] = (
    "Australia",
    "Bicycle",
    "Cycling",
    "Electronic",
    "Fahrradwerk",
    "Greenwood",
    "Hybrid",
    "Mountain",
    "Vélo",
    "Zenith",
)
_VENDOR_SUFFIXES: tuple[str, ...] = (
    "Bike Retailer",
    "Supply",
    "Sport Goods",
    "Components",
    "München GmbH",
    "Lumière SA",
)


@dataclass(frozen=True)
class DemoScale:
    """Size and seed of the generated demo data."""

    days: int = 120
    start_date: datetime.date = _DEFAULT_START
    orders_per_day: int = 40
    seed: int = 7

    def __post_init__(self) -> None:
        """Reject sizes that cannot produce data."""
        if self.days < 0 or self.orders_per_day < 0:
            msg = f"days and orders_per_day must be >= 0, got {self}"
            raise ValueError(msg)


DEFAULT_SCALE = DemoScale()


@dataclass(frozen=True)
class _Product:
    product_id: int
    standard_cost: Decimal
    list_price: Decimal


@dataclass(frozen=True)
class _Customer:
    customer_id: int
    is_store: bool
    territory_id: int | None


def _money(rng: random.Random, low: Decimal, high: Decimal) -> Decimal:
    # Drawing integer ten-thousandths keeps every value exact with 4 decimals.
    units = rng.randrange(int(low / _MONEY), int(high / _MONEY))
    return Decimal(units).scaleb(-4)


# deliberate data-entry errors, for the demo's silver expectations to find (no random draw, so
# the rest of the data is as it was): every n-th sales order line a return with a negative
# quantity, every n-th sales order shipped the day before it was ordered
RETURN_LINE_EVERY = 997
MISTYPED_SHIP_DATE_EVERY = 211


def _chance(rng: random.Random, probability: float) -> bool:
    return rng.random() < probability


def _round(value: Decimal, exponent: Decimal) -> Decimal:
    return value.quantize(exponent, rounding=ROUND_HALF_UP)


def _guid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _midnight(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time())


def _before(rng: random.Random, day: datetime.date) -> datetime.datetime:
    earlier = day - datetime.timedelta(days=rng.randint(30, 900))
    return _midnight(earlier) + datetime.timedelta(milliseconds=rng.randrange(_MS_PER_DAY))


def _day_times(rng: random.Random, day: datetime.date, count: int) -> list[datetime.datetime]:
    offsets = [rng.randrange(1, _DAY_LAST_MS) for _ in range(count)]
    # Pin rows to both ends of the day so off-by-one window bounds lose data.
    for index in range(min(count, 4)):
        offsets[index] = 0 if index % 2 == 0 else _DAY_LAST_MS
    midnight = _midnight(day)
    return [midnight + datetime.timedelta(milliseconds=ms) for ms in sorted(offsets)]


def _products(rng: random.Random, start: datetime.date) -> tuple[list[Row], list[_Product]]:
    rows: list[Row] = []
    products: list[_Product] = []
    for product_id in range(1, PRODUCT_COUNT + 1):
        kind, code = rng.choice(_PRODUCT_KINDS)
        grade = rng.choice(_GRADES)
        color = rng.choice(_COLORS)
        size = rng.choice(_SIZES)
        line = rng.choice(_PRODUCT_LINES)
        standard_cost = _money(rng, Decimal(1), Decimal(2_000))
        markup = Decimal(rng.randint(120, 190)) / 100
        list_price = _round(standard_cost * markup, _MONEY)
        safety_stock = rng.choice((4, 100, 500, 1_000))
        weight = None if _chance(rng, 0.4) else Decimal(rng.randrange(100, 150_000)).scaleb(-2)
        sell_start = _midnight(start) - datetime.timedelta(days=rng.randint(365, 1_500))
        sell_end = sell_start + datetime.timedelta(days=365) if _chance(rng, 0.15) else None
        name = f"{grade} {kind} {product_id:03d}"
        if color is not None:
            name = f"{name} - {color}"
        rows.append(
            {
                "ProductID": product_id,
                "Name": name,
                "ProductNumber": f"{code}-{line or 'X'}{product_id:04d}",
                "MakeFlag": _chance(rng, 0.5),
                "FinishedGoodsFlag": _chance(rng, 0.7),
                "Color": color,
                "SafetyStockLevel": safety_stock,
                "ReorderPoint": safety_stock * 3 // 4,
                "StandardCost": standard_cost,
                "ListPrice": list_price,
                "Size": size,
                "Weight": weight,
                "DaysToManufacture": rng.randint(0, 4),
                "ProductLine": line,
                "SellStartDate": sell_start,
                "SellEndDate": sell_end,
                "rowguid": _guid(rng),
                "ModifiedDate": _before(rng, start),
            }
        )
        products.append(_Product(product_id, standard_cost, list_price))
    return rows, products


def _vendors(rng: random.Random, start: datetime.date) -> tuple[list[Row], list[int]]:
    rows: list[Row] = []
    vendor_ids: list[int] = []
    for index in range(VENDOR_COUNT):
        vendor_id = FIRST_VENDOR_ID + index
        word = rng.choice(_VENDOR_WORDS)
        suffix = rng.choice(_VENDOR_SUFFIXES)
        url = f"www.{word.lower()}{index}.com/" if _chance(rng, 0.15) else None
        rows.append(
            {
                "BusinessEntityID": vendor_id,
                "AccountNumber": f"{word.upper()[:8]}{index:04d}",
                "Name": f"{word} {suffix}",
                "CreditRating": rng.randint(1, 5),
                "PreferredVendorStatus": _chance(rng, 0.8),
                "ActiveFlag": _chance(rng, 0.9),
                "PurchasingWebServiceURL": url,
                "ModifiedDate": _before(rng, start),
            }
        )
        vendor_ids.append(vendor_id)
    return rows, vendor_ids


def _customers(rng: random.Random, start: datetime.date) -> tuple[list[Row], list[_Customer]]:
    rows: list[Row] = []
    customers: list[_Customer] = []
    for customer_id in range(1, CUSTOMER_COUNT + 1):
        # Individuals only have a person, stores only a store, store contacts both.
        role = rng.choices(("person", "store", "contact"), weights=(7, 2, 1))[0]
        person_id = None if role == "store" else rng.randint(1_000, 20_000)
        store_id = None if role == "person" else rng.randint(292, 2_051)
        territory_id = None if _chance(rng, 0.02) else rng.randint(1, 10)
        rows.append(
            {
                "CustomerID": customer_id,
                "PersonID": person_id,
                "StoreID": store_id,
                "TerritoryID": territory_id,
                "AccountNumber": f"AW{customer_id:08d}",
                "rowguid": _guid(rng),
                "ModifiedDate": _before(rng, start),
            }
        )
        customers.append(_Customer(customer_id, store_id is not None, territory_id))
    return rows, customers


def _tracking_number(rng: random.Random) -> str:
    return f"{rng.randrange(16**4):04X}-{rng.randrange(16**4):04X}-{rng.randrange(16**2):02X}"


class _OrderBuilder:
    """Accumulates order rows day by day, drawing from one shared generator; each row is
    loaded when it was last modified (LoadedAt = ModifiedDate) until `demo change` writes it."""

    def __init__(
        self,
        rng: random.Random,
        products: Sequence[_Product],
        vendor_ids: Sequence[int],
        customers: Sequence[_Customer],
    ) -> None:
        self.rng = rng
        self.products = products
        self.vendor_ids = vendor_ids
        self.customers = customers
        self.sales_headers: list[Row] = []
        self.sales_details: list[Row] = []
        self.purchase_headers: list[Row] = []
        self.purchase_details: list[Row] = []

    def add_day(self, day: datetime.date, sales: int, purchases: int) -> None:
        for modified in _day_times(self.rng, day, sales):
            self._sales_order(day, modified)
        for modified in _day_times(self.rng, day, purchases):
            self._purchase_order(day, modified)

    def _sales_order(self, day: datetime.date, modified: datetime.datetime) -> None:
        rng = self.rng
        order_index = len(self.sales_headers)
        order_id = FIRST_SALES_ORDER_ID + order_index
        customer = rng.choice(self.customers)
        online = not customer.is_store
        order_date = _midnight(day)
        shipped = not _chance(rng, 0.1)
        sub_total = Decimal(0)
        for _ in range(rng.randint(1, 6)):
            product = rng.choice(self.products)
            quantity = rng.randint(1, 12)
            if len(self.sales_details) % RETURN_LINE_EVERY == RETURN_LINE_EVERY - 1:
                # a return keyed as a negative line: what silver's expectation drops
                quantity = -quantity
            unit_price = (
                product.list_price
                if online
                else _round(product.list_price * _RESELLER_PRICE_FACTOR, _MONEY)
            )
            discount = rng.choice(_DISCOUNTS)
            line_total = _round(quantity * unit_price * (1 - discount), _LINE_TOTAL)
            sub_total += line_total
            self.sales_details.append(
                {
                    "SalesOrderID": order_id,
                    "SalesOrderDetailID": len(self.sales_details) + 1,
                    "CarrierTrackingNumber": None if online else _tracking_number(rng),
                    "OrderQty": quantity,
                    "ProductID": product.product_id,
                    "SpecialOfferID": 1 if discount == 0 else rng.randint(2, 16),
                    "UnitPrice": unit_price,
                    "UnitPriceDiscount": discount,
                    "LineTotal": line_total,
                    "rowguid": _guid(rng),
                    "ModifiedDate": modified,
                    "LoadedAt": modified,
                }
            )
        sub_total = _round(sub_total, _MONEY)
        tax = _round(sub_total * _TAX_RATE, _MONEY)
        freight = _round(sub_total * _FREIGHT_RATE, _MONEY)
        credit_card_id = None if _chance(rng, 0.05) else rng.randint(1, 19_237)
        approval_code = (
            None
            if credit_card_id is None
            else f"{rng.randint(100_000, 999_999)}Vi{rng.randint(10_000, 99_999)}"
        )
        bill_to = rng.randint(1, 29_000)
        # a ship date keyed a week early, before the order: what silver's expectation warns of
        mistyped_ship_date = order_index % MISTYPED_SHIP_DATE_EVERY == MISTYPED_SHIP_DATE_EVERY - 1
        # Spread the awkward comments evenly so even small scales contain each one.
        comment = (
            _COMMENTS[(order_index // 11) % len(_COMMENTS)]
            if order_index % 11 == _COMMENT_SLOT
            else None
        )
        self.sales_headers.append(
            {
                "SalesOrderID": order_id,
                "RevisionNumber": rng.choice((8, 9)),
                "OrderDate": order_date,
                "DueDate": order_date + datetime.timedelta(days=12),
                "ShipDate": (
                    order_date + datetime.timedelta(days=-1 if mistyped_ship_date else 7)
                    if shipped
                    else None
                ),
                "Status": _SHIPPED_SALES if shipped else rng.choice((1, 2, 3)),
                "OnlineOrderFlag": online,
                "SalesOrderNumber": f"SO{order_id}",
                "PurchaseOrderNumber": (None if online else f"PO{rng.randrange(10**8, 10**10)}"),
                "AccountNumber": f"10-4030-{customer.customer_id:06d}",
                "CustomerID": customer.customer_id,
                "SalesPersonID": None if online else rng.randint(274, 290),
                "TerritoryID": customer.territory_id,
                "BillToAddressID": bill_to,
                "ShipToAddressID": (bill_to if _chance(rng, 0.8) else rng.randint(1, 29_000)),
                "ShipMethodID": 1 if online else 5,
                "CreditCardID": credit_card_id,
                "CreditCardApprovalCode": approval_code,
                "CurrencyRateID": (rng.randint(1, 13_532) if _chance(rng, 0.2) else None),
                "SubTotal": sub_total,
                "TaxAmt": tax,
                "Freight": freight,
                "TotalDue": sub_total + tax + freight,
                "Comment": comment,
                "rowguid": _guid(rng),
                "ModifiedDate": modified,
                "LoadedAt": modified,
            }
        )

    def _purchase_order(self, day: datetime.date, modified: datetime.datetime) -> None:
        rng = self.rng
        order_id = FIRST_PURCHASE_ORDER_ID + len(self.purchase_headers)
        order_date = _midnight(day)
        shipped = not _chance(rng, 0.1)
        sub_total = Decimal("0.0000")
        for _ in range(rng.randint(1, 4)):
            product = rng.choice(self.products)
            quantity = rng.randint(3, 600)
            unit_price = _round(product.standard_cost * _VENDOR_PRICE_FACTOR, _MONEY)
            line_total = _round(quantity * unit_price, _MONEY)
            sub_total += line_total
            # Partial and half-unit receipts exercise the 2-decimal quantities.
            received = (
                Decimal(rng.randint(0, quantity * 2)) / 2
                if _chance(rng, 0.15)
                else Decimal(quantity)
            )
            rejected = (
                min(received, Decimal(rng.randint(1, 10))) if _chance(rng, 0.1) else Decimal(0)
            )
            self.purchase_details.append(
                {
                    "PurchaseOrderID": order_id,
                    "PurchaseOrderDetailID": len(self.purchase_details) + 1,
                    "DueDate": order_date + datetime.timedelta(days=14),
                    "OrderQty": quantity,
                    "ProductID": product.product_id,
                    "UnitPrice": unit_price,
                    "LineTotal": line_total,
                    "ReceivedQty": _round(received, _QUANTITY),
                    "RejectedQty": _round(rejected, _QUANTITY),
                    "StockedQty": _round(received - rejected, _QUANTITY),
                    "ModifiedDate": modified,
                    "LoadedAt": modified,
                }
            )
        tax = _round(sub_total * _TAX_RATE, _MONEY)
        freight = _round(sub_total * _FREIGHT_RATE, _MONEY)
        self.purchase_headers.append(
            {
                "PurchaseOrderID": order_id,
                "RevisionNumber": rng.randint(1, 30),
                "Status": _COMPLETE_PURCHASE if shipped else rng.choice((1, 2, 3)),
                "EmployeeID": rng.randint(250, 261),
                "VendorID": rng.choice(self.vendor_ids),
                "ShipMethodID": rng.randint(1, 5),
                "OrderDate": order_date,
                "ShipDate": (order_date + datetime.timedelta(days=9) if shipped else None),
                "SubTotal": sub_total,
                "TaxAmt": tax,
                "Freight": freight,
                "TotalDue": sub_total + tax + freight,
                "ModifiedDate": modified,
                "LoadedAt": modified,
            }
        )


def demo_rows(scale: DemoScale) -> dict[str, list[Row]]:
    """Map each logical table name to its rows, keyed by column name.

    The result depends only on ``scale``; fewer days yield a prefix of more days.
    """
    rng = random.Random(scale.seed)
    product_rows, products = _products(rng, scale.start_date)
    vendor_rows, vendor_ids = _vendors(rng, scale.start_date)
    customer_rows, customers = _customers(rng, scale.start_date)

    builder = _OrderBuilder(rng, products, vendor_ids, customers)
    low = scale.orders_per_day // 2
    high = scale.orders_per_day + scale.orders_per_day // 2
    for day_index in range(scale.days):
        day = scale.start_date + datetime.timedelta(days=day_index)
        sales = rng.randint(low, high)
        purchases = (sales + rng.randint(0, 3)) // 4
        if day_index == ZERO_ORDER_DAY_INDEX:
            sales = purchases = 0
        builder.add_day(day, sales, purchases)

    by_name = {
        "Production.Product": product_rows,
        "Purchasing.Vendor": vendor_rows,
        "Sales.Customer": customer_rows,
        "Sales.SalesOrderHeader": builder.sales_headers,
        "Sales.SalesOrderDetail": builder.sales_details,
        "Purchasing.PurchaseOrderHeader": builder.purchase_headers,
        "Purchasing.PurchaseOrderDetail": builder.purchase_details,
    }
    return {name: by_name[name] for name in ALL_TABLES}


def _create_schemas(engine: sa.Engine, schemas: Mapping[str, str] | None) -> None:
    dialect = engine.dialect
    if dialect.name == "sqlite":
        return
    names = sorted({resolve_schema(schema, schemas) for schema in DEMO_SCHEMAS})
    with engine.begin() as conn:
        for name in names:
            if dialect.name in ("mysql", "mariadb"):
                # A database's default charset must hold the non-ASCII demo text.
                quoted = dialect.identifier_preparer.quote_identifier(name)
                conn.exec_driver_sql(
                    f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4"
                )
            elif dialect.name == "mssql":
                # SQL Server has no CREATE SCHEMA IF NOT EXISTS
                if not sa.inspect(conn).has_schema(name):
                    conn.execute(sa.schema.CreateSchema(name))
            else:
                conn.execute(sa.schema.CreateSchema(name, if_not_exists=True))


def create_demo_database(
    engine: sa.Engine,
    scale: DemoScale = DEFAULT_SCALE,
    schemas: Mapping[str, str] | None = None,
    *,
    drop_existing: bool = True,
) -> dict[str, int]:
    """Create the demo schemas and tables on ``engine``, load the rows, return counts.

    SQLite schemas must already be attached by the caller.
    """
    metadata = demo_metadata(schemas)
    tables = [table_for(metadata, name, schemas) for name in ALL_TABLES]
    rows = demo_rows(scale)
    _create_schemas(engine, schemas)
    if drop_existing:
        metadata.drop_all(engine, tables=tables, checkfirst=True)
    metadata.create_all(engine, tables=tables, checkfirst=True)

    counts: dict[str, int] = {}
    for name, table in zip(ALL_TABLES, tables, strict=True):
        table_rows = rows[name]
        with engine.begin() as conn:
            for start in range(0, len(table_rows), INSERT_CHUNK_SIZE):
                conn.execute(table.insert(), table_rows[start : start + INSERT_CHUNK_SIZE])
        counts[name] = len(table_rows)
    return counts


def sqlite_attachments(directory: pathlib.Path) -> dict[str, str]:
    """Map each logical schema to the SQLite file attached under that name."""
    return {schema: str(directory / f"{schema}.db") for schema in DEMO_SCHEMAS}


def create_demo_sqlite(directory: pathlib.Path, scale: DemoScale = DEFAULT_SCALE) -> dict[str, int]:
    """Write ``main.db`` and one attached file per schema under ``directory``.

    Existing files are replaced; returns row counts per logical table.
    """
    directory.mkdir(parents=True, exist_ok=True)
    attachments = sqlite_attachments(directory)
    main_path = directory / "main.db"
    for path in (str(main_path), *attachments.values()):
        for suffix in ("", "-journal", "-wal", "-shm"):
            pathlib.Path(path + suffix).unlink(missing_ok=True)

    engine = sa.create_engine(sa.URL.create("sqlite", database=str(main_path)))

    @sa.event.listens_for(engine, "connect")
    def _attach(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        for schema, path in attachments.items():
            dbapi_connection.execute(f'ATTACH DATABASE ? AS "{schema}"', (path,))

    try:
        counts = create_demo_database(engine, scale)
        # SQLite only creates a file on its first write; main.db must exist too.
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA main.user_version = 1")
    finally:
        engine.dispose()
    return counts


def main() -> None:
    """Write the SQLite demo database and print its row counts."""
    parser = argparse.ArgumentParser(description="Write the SQLite demo database.")
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path(".data/demo"))
    parser.add_argument("--days", type=int, default=DEFAULT_SCALE.days)
    parser.add_argument("--orders-per-day", type=int, default=DEFAULT_SCALE.orders_per_day)
    parser.add_argument("--seed", type=int, default=DEFAULT_SCALE.seed)
    args = parser.parse_args()
    scale = DemoScale(days=args.days, orders_per_day=args.orders_per_day, seed=args.seed)
    counts = create_demo_sqlite(args.dir, scale)
    width = max(len(name) for name in counts)
    for name, count in counts.items():
        sys.stdout.write(f"{name:<{width}}  {count:>7,}\n")


if __name__ == "__main__":
    main()
