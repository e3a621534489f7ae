"""The benchmark's source data: an AdventureWorks-shaped PostgreSQL schema built by the server,
its SalesOrderDetail exported once to Parquet and SQLite, and a demo API database for REST."""

from __future__ import annotations

import datetime
import pathlib
import sqlite3
import uuid
from dataclasses import dataclass

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa

from ingestion_assets.demo.generate import DemoScale, create_demo_sqlite
from ingestion_assets.demo.schema import demo_metadata, table_for

POSTGRES_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
START_DATE = datetime.date(2021, 1, 1)
TABLE = "SalesOrderDetail"
# AdventureWorks averages 3.5 lines per sales order and 2.5 per purchase order; the demo places
# one purchase order per four sales orders
LINES_PER_ORDER = 3.5
SALES_PER_PURCHASE = 4

# the Arrow types this project maps SalesOrderDetail's PostgreSQL columns to
SALES_ORDER_DETAIL_SCHEMA = pa.schema(
    [
        pa.field("SalesOrderID", pa.int32(), nullable=False),
        pa.field("SalesOrderDetailID", pa.int32(), nullable=False),
        pa.field("CarrierTrackingNumber", pa.string()),
        pa.field("OrderQty", pa.int16(), nullable=False),
        pa.field("ProductID", pa.int32(), nullable=False),
        pa.field("SpecialOfferID", pa.int32(), nullable=False),
        pa.field("UnitPrice", pa.decimal128(19, 4), nullable=False),
        pa.field("UnitPriceDiscount", pa.decimal128(19, 4), nullable=False),
        pa.field("LineTotal", pa.decimal128(38, 6), nullable=False),
        pa.field("rowguid", pa.string(), nullable=False),
        pa.field("ModifiedDate", pa.timestamp("us"), nullable=False),
    ]
)

_DDL = """
CREATE TABLE {s}."SalesOrderDetail" (
    "SalesOrderID" int NOT NULL,
    "SalesOrderDetailID" int NOT NULL,
    "CarrierTrackingNumber" varchar(25),
    "OrderQty" smallint NOT NULL,
    "ProductID" int NOT NULL,
    "SpecialOfferID" int NOT NULL,
    "UnitPrice" numeric(19, 4) NOT NULL,
    "UnitPriceDiscount" numeric(19, 4) NOT NULL,
    "LineTotal" numeric(38, 6) NOT NULL,
    rowguid uuid NOT NULL,
    "ModifiedDate" timestamp NOT NULL
);
CREATE TABLE {s}."SalesOrderHeader" (
    "SalesOrderID" int NOT NULL,
    "RevisionNumber" smallint NOT NULL,
    "OrderDate" timestamp NOT NULL,
    "DueDate" timestamp NOT NULL,
    "ShipDate" timestamp,
    "Status" smallint NOT NULL,
    "OnlineOrderFlag" boolean NOT NULL,
    "SalesOrderNumber" varchar(25) NOT NULL,
    "PurchaseOrderNumber" varchar(25),
    "AccountNumber" varchar(15),
    "CustomerID" int NOT NULL,
    "SalesPersonID" int,
    "TerritoryID" int,
    "BillToAddressID" int NOT NULL,
    "ShipToAddressID" int NOT NULL,
    "ShipMethodID" int NOT NULL,
    "CreditCardID" int,
    "CreditCardApprovalCode" varchar(15),
    "CurrencyRateID" int,
    "SubTotal" numeric(19, 4) NOT NULL,
    "TaxAmt" numeric(19, 4) NOT NULL,
    "Freight" numeric(19, 4) NOT NULL,
    "TotalDue" numeric(19, 4) NOT NULL,
    "Comment" varchar(128),
    rowguid uuid NOT NULL,
    "ModifiedDate" timestamp NOT NULL
);
CREATE TABLE {s}."PurchaseOrderHeader" (
    "PurchaseOrderID" int NOT NULL,
    "RevisionNumber" smallint NOT NULL,
    "Status" smallint NOT NULL,
    "EmployeeID" int NOT NULL,
    "VendorID" int NOT NULL,
    "ShipMethodID" int NOT NULL,
    "OrderDate" timestamp NOT NULL,
    "ShipDate" timestamp,
    "SubTotal" numeric(19, 4) NOT NULL,
    "TaxAmt" numeric(19, 4) NOT NULL,
    "Freight" numeric(19, 4) NOT NULL,
    "TotalDue" numeric(19, 4) NOT NULL,
    "ModifiedDate" timestamp NOT NULL
);
CREATE TABLE {s}."PurchaseOrderDetail" (
    "PurchaseOrderID" int NOT NULL,
    "PurchaseOrderDetailID" int NOT NULL,
    "DueDate" timestamp NOT NULL,
    "OrderQty" smallint NOT NULL,
    "ProductID" int NOT NULL,
    "UnitPrice" numeric(19, 4) NOT NULL,
    "LineTotal" numeric(19, 4) NOT NULL,
    "ReceivedQty" numeric(8, 2) NOT NULL,
    "RejectedQty" numeric(8, 2) NOT NULL,
    "StockedQty" numeric(9, 2) NOT NULL,
    "ModifiedDate" timestamp NOT NULL
);
"""

# Line i belongs to order (i * 2) / 7: orders alternate 3 and 4 lines. An order's time is spread
# evenly over the days; `h` is a cheap deterministic scramble of the line number.
_FILL_SALES_ORDER_DETAIL = """
INSERT INTO {s}."SalesOrderDetail"
SELECT 43659 + o, i + 1,
       CASE WHEN o % 2 = 0 THEN NULL ELSE upper(substr(md5(o::text), 1, 4) || '-'
            || substr(md5(o::text), 5, 3) || '-' || substr(md5(o::text), 8, 2)) END,
       qty, product, CASE WHEN discount = 0 THEN 1 ELSE 2 + h % 15 END,
       price, discount, round(price * (1 - discount) * qty, 6),
       md5('sod' || i)::uuid, modified
FROM (
    SELECT i, o, h, (1 + h % 12)::smallint AS qty, 707 + (h / 13) % 293 AS product,
           round((((707 + (h / 13) % 293) * 7919) % 3500000)::numeric / 1000 + 2.29, 4) AS price,
           (CASE (h / 7) % 10 WHEN 7 THEN 0.02 WHEN 8 THEN 0.05 WHEN 9 THEN 0.10
                 ELSE 0 END)::numeric(19, 4) AS discount,
           timestamp '{start}' + make_interval(secs => o * {step}) AS modified
    FROM (SELECT i, (i * 2) / 7 AS o, (i * 2654435761) % 4294967296 AS h
          FROM generate_series(0::bigint, {rows} - 1) AS i) AS lines
) AS detail
"""

_FILL_SALES_ORDER_HEADER = """
INSERT INTO {s}."SalesOrderHeader"
SELECT id, 8, date_trunc('day', modified), date_trunc('day', modified) + interval '12 days',
       CASE WHEN id % 10 = 3 THEN NULL ELSE date_trunc('day', modified) + interval '7 days' END,
       CASE WHEN id % 10 = 3 THEN 2 ELSE 5 END, online, 'SO' || id,
       CASE WHEN online THEN NULL ELSE 'PO' || (id::bigint * 7919) % 10000000000 END,
       '10-4030-' || lpad((11000 + id % 19119)::text, 6, '0'), 11000 + id % 19119,
       CASE WHEN online THEN NULL ELSE 274 + id % 17 END, 1 + id % 10,
       1 + (id * 31) % 29000, 1 + (id * 31) % 29000, CASE WHEN online THEN 1 ELSE 5 END,
       CASE WHEN id % 20 = 0 THEN NULL ELSE 1 + (id * 13) % 19237 END,
       CASE WHEN id % 20 = 0 THEN NULL ELSE (100000 + id % 900000) || 'Vi' || (10000 + id % 90000)
       END,
       CASE WHEN id % 5 = 0 THEN 1 + id % 13532 ELSE NULL END,
       subtotal, round(subtotal * 0.08, 4), round(subtotal * 0.025, 4),
       subtotal + round(subtotal * 0.08, 4) + round(subtotal * 0.025, 4),
       CASE WHEN id % 11 = 5 THEN 'Leave at the loading dock' ELSE NULL END,
       md5('soh' || id)::uuid, modified
FROM (
    SELECT "SalesOrderID" AS id, ("SalesOrderID" % 2 = 1) AS online,
           round(sum("LineTotal"), 4)::numeric(19, 4) AS subtotal, min("ModifiedDate") AS modified
    FROM {s}."SalesOrderDetail" GROUP BY "SalesOrderID"
) AS orders
"""

# Line i belongs to purchase order (i * 2) / 5: orders alternate 2 and 3 lines
_FILL_PURCHASE_ORDER_DETAIL = """
INSERT INTO {s}."PurchaseOrderDetail"
SELECT 1 + o, i + 1, date_trunc('day', modified) + interval '14 days', qty, product,
       price, round(price * qty, 4), qty, CASE WHEN h % 10 = 0 THEN 1 ELSE 0 END,
       qty - CASE WHEN h % 10 = 0 THEN 1 ELSE 0 END, modified
FROM (
    SELECT i, o, h, (3 + h % 598)::smallint AS qty, 1 + (h / 7) % 300 AS product,
           round(((h / 7) % 300000)::numeric / 100 + 0.5, 4) AS price,
           timestamp '{start}' + make_interval(secs => o * {step}) AS modified
    FROM (SELECT i, (i * 2) / 5 AS o, (i * 2654435761) % 4294967296 AS h
          FROM generate_series(0::bigint, {rows} - 1) AS i) AS lines
) AS detail
"""

_FILL_PURCHASE_ORDER_HEADER = """
INSERT INTO {s}."PurchaseOrderHeader"
SELECT id, 1 + id % 30, CASE WHEN id % 10 = 3 THEN 2 ELSE 4 END, 250 + id % 12,
       1492 + id % 100, 1 + id % 5, date_trunc('day', modified),
       CASE WHEN id % 10 = 3 THEN NULL ELSE date_trunc('day', modified) + interval '9 days' END,
       subtotal, round(subtotal * 0.08, 4), round(subtotal * 0.025, 4),
       subtotal + round(subtotal * 0.08, 4) + round(subtotal * 0.025, 4), modified
FROM (
    SELECT "PurchaseOrderID" AS id, sum("LineTotal")::numeric(19, 4) AS subtotal,
           min("ModifiedDate") AS modified
    FROM {s}."PurchaseOrderDetail" GROUP BY "PurchaseOrderID"
) AS orders
"""

_KEYS = """
ALTER TABLE {s}."SalesOrderDetail" ADD PRIMARY KEY ("SalesOrderID", "SalesOrderDetailID");
ALTER TABLE {s}."SalesOrderHeader" ADD PRIMARY KEY ("SalesOrderID");
ALTER TABLE {s}."PurchaseOrderHeader" ADD PRIMARY KEY ("PurchaseOrderID");
ALTER TABLE {s}."PurchaseOrderDetail" ADD PRIMARY KEY ("PurchaseOrderID", "PurchaseOrderDetailID");
CREATE INDEX ON {s}."SalesOrderDetail" ("ModifiedDate");
CREATE INDEX ON {s}."SalesOrderHeader" ("ModifiedDate");
CREATE INDEX ON {s}."PurchaseOrderHeader" ("ModifiedDate");
CREATE INDEX ON {s}."PurchaseOrderDetail" ("ModifiedDate");
ANALYZE {s}."SalesOrderDetail";
ANALYZE {s}."SalesOrderHeader";
ANALYZE {s}."PurchaseOrderHeader";
ANALYZE {s}."PurchaseOrderDetail";
"""


@dataclass(frozen=True)
class PostgresSource:
    """The benchmark schema in PostgreSQL and the size of its SalesOrderDetail table."""

    schema: str
    rows: int
    days: int

    @property
    def first_day(self) -> datetime.date:
        """The first partition day."""
        return START_DATE

    @property
    def last_day(self) -> datetime.date:
        """The last partition day (the table's rows end on it)."""
        return START_DATE + datetime.timedelta(days=self.days - 1)

    @property
    def qualified_table(self) -> str:
        """`"bench_x"."SalesOrderDetail"`, quoted for SQL."""
        return f'"{self.schema}"."{TABLE}"'

    def table_counts(self) -> dict[str, int]:
        """Rows per table, counted by the server."""
        with psycopg2.connect(POSTGRES_DSN) as connection, connection.cursor() as cursor:
            counts = {}
            for table in (
                "SalesOrderDetail",
                "SalesOrderHeader",
                "PurchaseOrderHeader",
                "PurchaseOrderDetail",
            ):
                cursor.execute(f'SELECT count(*) FROM "{self.schema}"."{table}"')
                row = cursor.fetchone()
                counts[table] = int(row[0]) if row else 0
        connection.close()
        return counts


def new_schema_name() -> str:
    """A fresh schema name, `bench_<random>`."""
    return f"bench_{uuid.uuid4().hex[:10]}"


def build_postgres_source(schema: str, rows: int, days: int) -> PostgresSource:
    """Create `schema` with the four order tables, filled by the server with generate_series.

    SalesOrderDetail gets `rows` rows over `days` days from START_DATE; the other tables are
    scaled alike (a header per 3.5 lines, a purchase order per four sales orders)."""
    if rows < 1 or days < 1:
        raise ValueError(f"--rows and --days must be >= 1, got {rows} and {days}")
    sales_orders = (rows - 1) * 2 // 7 + 1
    purchase_orders = max(1, sales_orders // SALES_PER_PURCHASE)
    purchase_lines = purchase_orders * 5 // 2
    seconds = days * 86_400
    quoted = f'"{schema}"'
    statements = [
        f"CREATE SCHEMA {quoted}",
        _DDL.format(s=quoted),
        _FILL_SALES_ORDER_DETAIL.format(
            s=quoted, start=START_DATE.isoformat(), rows=rows, step=seconds / sales_orders
        ),
        _FILL_SALES_ORDER_HEADER.format(s=quoted),
        _FILL_PURCHASE_ORDER_DETAIL.format(
            s=quoted,
            start=START_DATE.isoformat(),
            rows=purchase_lines,
            step=seconds / purchase_orders,
        ),
        _FILL_PURCHASE_ORDER_HEADER.format(s=quoted),
        _KEYS.format(s=quoted),
    ]
    connection = psycopg2.connect(POSTGRES_DSN)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()
    return PostgresSource(schema, rows, days)


def drop_postgres_source(schema: str) -> None:
    """Drop the benchmark schema (and everything in it); a missing schema is fine."""
    connection = psycopg2.connect(POSTGRES_DSN)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '60s'")
            cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        connection.close()


def export_parquet(source: PostgresSource, path: pathlib.Path) -> pa.Table:
    """SalesOrderDetail as Arrow (this project's column types) through COPY CSV, saved as Parquet."""
    csv_path = path.with_suffix(".csv")
    connection = psycopg2.connect(POSTGRES_DSN)
    try:
        with connection.cursor() as cursor, csv_path.open("wb") as out:
            cursor.copy_expert(
                f"COPY (SELECT * FROM {source.qualified_table} "
                '  ORDER BY "SalesOrderID", "SalesOrderDetailID") TO STDOUT WITH (FORMAT csv)',
                out,
            )
    finally:
        connection.close()
    table = pacsv.read_csv(
        csv_path,
        read_options=pacsv.ReadOptions(column_names=SALES_ORDER_DETAIL_SCHEMA.names),
        convert_options=pacsv.ConvertOptions(
            column_types=SALES_ORDER_DETAIL_SCHEMA, strings_can_be_null=True
        ),
    ).cast(SALES_ORDER_DETAIL_SCHEMA)
    csv_path.unlink()
    pq.write_table(table, path)
    return table


def export_sqlite(table: pa.Table, directory: pathlib.Path) -> dict[str, str]:
    """Write SalesOrderDetail into `Sales.db` with the demo's schema and value storage.

    Returns the `sqlite_attach` mapping; `main.db` is created next to it."""
    directory.mkdir(parents=True, exist_ok=True)
    sales_path = directory / "Sales.db"
    engine = sa.create_engine(f"sqlite:///{directory / 'main.db'}")

    @sa.event.listens_for(engine, "connect")
    def _attach(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.execute('ATTACH DATABASE ? AS "Sales"', (str(sales_path),))

    try:
        metadata = demo_metadata()
        metadata.create_all(engine, tables=[table_for(metadata, "Sales.SalesOrderDetail")])
    finally:
        engine.dispose()
    # the values stored as SQLAlchemy stores them: decimals as REAL, uuid as 32 hex characters,
    # timestamps as ISO text with microseconds
    columns: list[list[object]] = []
    converted = {
        "UnitPrice": pc.cast(table["UnitPrice"], pa.float64()),
        "UnitPriceDiscount": pc.cast(table["UnitPriceDiscount"], pa.float64()),
        "LineTotal": pc.cast(table["LineTotal"], pa.float64()),
        "rowguid": pc.replace_substring(table["rowguid"], "-", ""),
        "ModifiedDate": pc.strftime(table["ModifiedDate"], "%Y-%m-%d %H:%M:%S"),
    }
    # the demo table's LoadedAt (when a row was written) is its ModifiedDate, as generated
    converted["LoadedAt"] = converted["ModifiedDate"]
    names = [*table.column_names, "LoadedAt"]
    listed = ", ".join(f'"{name}"' for name in names)
    placeholders = ", ".join("?" for _ in names)
    insert = f'INSERT INTO "SalesOrderDetail" ({listed}) VALUES ({placeholders})'
    connection = sqlite3.connect(sales_path)
    try:
        for start in range(0, table.num_rows, 100_000):
            chunk_length = min(100_000, table.num_rows - start)
            columns = [
                (converted[name] if name in converted else table[name])
                .slice(start, chunk_length)
                .to_pylist()
                for name in names
            ]
            connection.executemany(insert, zip(*columns, strict=True))
        connection.commit()
    finally:
        connection.close()
    return {"Sales": str(sales_path)}


@dataclass(frozen=True)
class RestSource:
    """A demo SQLite database whose SalesOrderDetail has exactly `records` rows."""

    directory: pathlib.Path
    records: int
    first_day: datetime.date
    last_day: datetime.date


def build_rest_source(directory: pathlib.Path, records: int) -> RestSource:
    """A demo database sized for `records` SalesOrderDetail rows (cut to exactly that many)."""
    days = 365
    counts: dict[str, int] = {}
    # orders have 3.5 lines on average; generate a margin more and cut the surplus
    for margin in (1.08, 1.25, 1.6):
        orders_per_day = max(1, round(records / LINES_PER_ORDER / days * margin))
        counts = create_demo_sqlite(directory, DemoScale(days=days, orders_per_day=orders_per_day))
        if counts["Sales.SalesOrderDetail"] >= records:
            break
    else:
        raise RuntimeError(
            f"the demo database has {counts['Sales.SalesOrderDetail']:,} SalesOrderDetail rows, "
            f"fewer than the {records:,} asked for"
        )
    connection = sqlite3.connect(directory / "Sales.db")
    try:
        connection.execute(
            'DELETE FROM "SalesOrderDetail" WHERE "SalesOrderDetailID" > ?', (records,)
        )
        connection.commit()
        connection.execute("VACUUM")
        row = connection.execute('SELECT max("ModifiedDate") FROM "SalesOrderDetail"').fetchone()
    finally:
        connection.close()
    last_day = datetime.date.fromisoformat(str(row[0])[:10])
    return RestSource(directory, records, DemoScale().start_date, last_day)


def rest_arrow_bytes_per_row(rest: RestSource) -> float:
    """Arrow bytes per record of the served stream, typed as the project declares its fields."""
    names = SALES_ORDER_DETAIL_SCHEMA.names
    decimals = {"UnitPrice", "UnitPriceDiscount", "LineTotal"}
    select = ", ".join(
        f'CAST("{name}" AS TEXT)' if name in decimals else f'"{name}"' for name in names
    )
    connection = sqlite3.connect(rest.directory / "Sales.db")
    try:
        rows = connection.execute(f'SELECT {select} FROM "SalesOrderDetail"').fetchall()
    finally:
        connection.close()
    if not rows:
        raise RuntimeError(f"the demo database in {rest.directory} has no SalesOrderDetail rows")
    columns = list(zip(*rows, strict=True))
    arrays = [
        pa.array(values).cast(field.type, safe=False)
        for values, field in zip(columns, SALES_ORDER_DETAIL_SCHEMA, strict=True)
    ]
    table = pa.Table.from_arrays(arrays, names=names)
    return float(table.nbytes / table.num_rows)
