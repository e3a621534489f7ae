"""AdventureWorks-shaped table definitions used by the demo database."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql

if TYPE_CHECKING:
    import datetime
    import decimal
    import uuid
    from collections.abc import Mapping

DEMO_SCHEMAS: tuple[str, ...] = ("Sales", "Purchasing", "Production")

ORDER_TABLES: tuple[str, ...] = (
    "Sales.SalesOrderHeader",
    "Sales.SalesOrderDetail",
    "Purchasing.PurchaseOrderHeader",
    "Purchasing.PurchaseOrderDetail",
)

SNAPSHOT_TABLES: tuple[str, ...] = (
    "Production.Product",
    "Purchasing.Vendor",
    "Sales.Customer",
)

ALL_TABLES: tuple[str, ...] = SNAPSHOT_TABLES + ORDER_TABLES

# the order tables' change column (see `_loaded_at`)
LOADED_AT = "LoadedAt"

# Without utf8mb4 a latin1 server default would reject the non-ASCII demo values.
_MYSQL_CHARSET = "utf8mb4"


def _money() -> sa.Numeric[decimal.Decimal]:
    return sa.Numeric(19, 4)


def _tinyint() -> sa.SmallInteger:
    return sa.SmallInteger().with_variant(mysql.TINYINT(unsigned=True), "mysql", "mariadb")


def _bit() -> sa.Boolean:
    return sa.Boolean(create_constraint=False)


def _datetime() -> sa.DateTime:
    # MySQL/MariaDB DATETIME silently truncates fractional seconds unless fsp is set; SQL Server's
    # DATETIME rounds them to 1/300 s (12:00:00.001 becomes 12:00:00.000).
    return (
        sa.DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
        .with_variant(mssql.DATETIME2(precision=6), "mssql")  # type: ignore[no-untyped-call]
    )


def _uuid() -> sa.Uuid[uuid.UUID]:
    return sa.Uuid(as_uuid=True)


def _loaded_at() -> sa.Column[datetime.datetime]:
    # when the row was last written (UTC): moves on every insert and update, unlike ModifiedDate,
    # the business day the row is partitioned by; the demo's new-data sensor watches it
    return sa.Column(LOADED_AT, _datetime(), nullable=False)


def _pk(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), primary_key=True, autoincrement=False)


def resolve_schema(logical_schema: str, schemas: Mapping[str, str] | None = None) -> str:
    """Return the database schema name used for a logical schema name."""
    return (schemas or {}).get(logical_schema, logical_schema)


def demo_metadata(schemas: Mapping[str, str] | None = None) -> sa.MetaData:
    """Build fresh metadata holding every demo table, placed in the mapped schemas."""
    metadata = sa.MetaData()
    sales = resolve_schema("Sales", schemas)
    purchasing = resolve_schema("Purchasing", schemas)
    production = resolve_schema("Production", schemas)

    sa.Table(
        "SalesOrderHeader",
        metadata,
        _pk("SalesOrderID"),
        sa.Column("RevisionNumber", _tinyint(), nullable=False),
        sa.Column("OrderDate", _datetime(), nullable=False),
        sa.Column("DueDate", _datetime(), nullable=False),
        sa.Column("ShipDate", _datetime(), nullable=True),
        sa.Column("Status", _tinyint(), nullable=False),
        sa.Column("OnlineOrderFlag", _bit(), nullable=False),
        sa.Column("SalesOrderNumber", sa.Unicode(25), nullable=False),
        sa.Column("PurchaseOrderNumber", sa.Unicode(25), nullable=True),
        sa.Column("AccountNumber", sa.Unicode(15), nullable=True),
        sa.Column("CustomerID", sa.Integer(), nullable=False),
        sa.Column("SalesPersonID", sa.Integer(), nullable=True),
        sa.Column("TerritoryID", sa.Integer(), nullable=True),
        sa.Column("BillToAddressID", sa.Integer(), nullable=False),
        sa.Column("ShipToAddressID", sa.Integer(), nullable=False),
        sa.Column("ShipMethodID", sa.Integer(), nullable=False),
        sa.Column("CreditCardID", sa.Integer(), nullable=True),
        sa.Column("CreditCardApprovalCode", sa.String(15), nullable=True),
        sa.Column("CurrencyRateID", sa.Integer(), nullable=True),
        sa.Column("SubTotal", _money(), nullable=False),
        sa.Column("TaxAmt", _money(), nullable=False),
        sa.Column("Freight", _money(), nullable=False),
        sa.Column("TotalDue", _money(), nullable=False),
        sa.Column("Comment", sa.Unicode(128), nullable=True),
        sa.Column("rowguid", _uuid(), nullable=False),
        sa.Column("ModifiedDate", _datetime(), nullable=False),
        _loaded_at(),
        schema=sales,
        mysql_charset=_MYSQL_CHARSET,
    )

    sa.Table(
        "SalesOrderDetail",
        metadata,
        _pk("SalesOrderID"),
        _pk("SalesOrderDetailID"),
        sa.Column("CarrierTrackingNumber", sa.Unicode(25), nullable=True),
        sa.Column("OrderQty", sa.SmallInteger(), nullable=False),
        sa.Column("ProductID", sa.Integer(), nullable=False),
        sa.Column("SpecialOfferID", sa.Integer(), nullable=False),
        sa.Column("UnitPrice", _money(), nullable=False),
        sa.Column("UnitPriceDiscount", _money(), nullable=False),
        sa.Column("LineTotal", sa.Numeric(38, 6), nullable=False),
        sa.Column("rowguid", _uuid(), nullable=False),
        sa.Column("ModifiedDate", _datetime(), nullable=False),
        _loaded_at(),
        schema=sales,
        mysql_charset=_MYSQL_CHARSET,
    )

    sa.Table(
        "PurchaseOrderHeader",
        metadata,
        _pk("PurchaseOrderID"),
        sa.Column("RevisionNumber", _tinyint(), nullable=False),
        sa.Column("Status", _tinyint(), nullable=False),
        sa.Column("EmployeeID", sa.Integer(), nullable=False),
        sa.Column("VendorID", sa.Integer(), nullable=False),
        sa.Column("ShipMethodID", sa.Integer(), nullable=False),
        sa.Column("OrderDate", _datetime(), nullable=False),
        sa.Column("ShipDate", _datetime(), nullable=True),
        sa.Column("SubTotal", _money(), nullable=False),
        sa.Column("TaxAmt", _money(), nullable=False),
        sa.Column("Freight", _money(), nullable=False),
        sa.Column("TotalDue", _money(), nullable=False),
        sa.Column("ModifiedDate", _datetime(), nullable=False),
        _loaded_at(),
        schema=purchasing,
        mysql_charset=_MYSQL_CHARSET,
    )

    sa.Table(
        "PurchaseOrderDetail",
        metadata,
        _pk("PurchaseOrderID"),
        _pk("PurchaseOrderDetailID"),
        sa.Column("DueDate", _datetime(), nullable=False),
        sa.Column("OrderQty", sa.SmallInteger(), nullable=False),
        sa.Column("ProductID", sa.Integer(), nullable=False),
        sa.Column("UnitPrice", _money(), nullable=False),
        sa.Column("LineTotal", _money(), nullable=False),
        sa.Column("ReceivedQty", sa.Numeric(8, 2), nullable=False),
        sa.Column("RejectedQty", sa.Numeric(8, 2), nullable=False),
        sa.Column("StockedQty", sa.Numeric(9, 2), nullable=False),
        sa.Column("ModifiedDate", _datetime(), nullable=False),
        _loaded_at(),
        schema=purchasing,
        mysql_charset=_MYSQL_CHARSET,
    )

    sa.Table(
        "Product",
        metadata,
        _pk("ProductID"),
        sa.Column("Name", sa.Unicode(50), nullable=False),
        sa.Column("ProductNumber", sa.Unicode(25), nullable=False),
        sa.Column("MakeFlag", _bit(), nullable=False),
        sa.Column("FinishedGoodsFlag", _bit(), nullable=False),
        sa.Column("Color", sa.Unicode(15), nullable=True),
        sa.Column("SafetyStockLevel", sa.SmallInteger(), nullable=False),
        sa.Column("ReorderPoint", sa.SmallInteger(), nullable=False),
        sa.Column("StandardCost", _money(), nullable=False),
        sa.Column("ListPrice", _money(), nullable=False),
        sa.Column("Size", sa.Unicode(5), nullable=True),
        sa.Column("Weight", sa.Numeric(8, 2), nullable=True),
        sa.Column("DaysToManufacture", sa.Integer(), nullable=False),
        sa.Column("ProductLine", sa.Unicode(2), nullable=True),
        sa.Column("SellStartDate", _datetime(), nullable=False),
        sa.Column("SellEndDate", _datetime(), nullable=True),
        sa.Column("rowguid", _uuid(), nullable=False),
        sa.Column("ModifiedDate", _datetime(), nullable=False),
        schema=production,
        mysql_charset=_MYSQL_CHARSET,
    )

    sa.Table(
        "Vendor",
        metadata,
        _pk("BusinessEntityID"),
        sa.Column("AccountNumber", sa.Unicode(15), nullable=False),
        sa.Column("Name", sa.Unicode(50), nullable=False),
        sa.Column("CreditRating", _tinyint(), nullable=False),
        sa.Column("PreferredVendorStatus", _bit(), nullable=False),
        sa.Column("ActiveFlag", _bit(), nullable=False),
        sa.Column("PurchasingWebServiceURL", sa.Unicode(1024), nullable=True),
        sa.Column("ModifiedDate", _datetime(), nullable=False),
        schema=purchasing,
        mysql_charset=_MYSQL_CHARSET,
    )

    sa.Table(
        "Customer",
        metadata,
        _pk("CustomerID"),
        sa.Column("PersonID", sa.Integer(), nullable=True),
        sa.Column("StoreID", sa.Integer(), nullable=True),
        sa.Column("TerritoryID", sa.Integer(), nullable=True),
        sa.Column("AccountNumber", sa.String(10), nullable=False),
        sa.Column("rowguid", _uuid(), nullable=False),
        sa.Column("ModifiedDate", _datetime(), nullable=False),
        schema=sales,
        mysql_charset=_MYSQL_CHARSET,
    )

    return metadata


def table_for(
    metadata: sa.MetaData, logical_name: str, schemas: Mapping[str, str] | None = None
) -> sa.Table:
    """Look up a logical ``Schema.Table`` name in metadata built with ``schemas``."""
    logical_schema, _, table_name = logical_name.partition(".")
    if not table_name:
        msg = f"expected a 'Schema.Table' name, got {logical_name!r}"
        raise ValueError(msg)
    return metadata.tables[f"{resolve_schema(logical_schema, schemas)}.{table_name}"]
