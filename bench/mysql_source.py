"""The benchmark's SalesOrderDetail rows in MariaDB, for the MySQL/MariaDB cases.

A fresh database `bench_<random>` on 127.0.0.1:3306 (user root, no password) gets the table with
MySQL's spelling of the PostgreSQL types (DECIMAL(19,4), DECIMAL(38,6), CHAR(36) for the uuid,
DATETIME(6)), the same keys and index, and the very rows of the Parquet export, loaded by
`LOAD DATA LOCAL INFILE` from a CSV Arrow writes. Dropped at the end of the run."""

from __future__ import annotations

import pathlib
import uuid

import pyarrow as pa
import pyarrow.csv as pacsv
import pymysql

MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306
MARIADB_USER = "root"

_DDL = """
CREATE TABLE `{d}`.`SalesOrderDetail` (
    `SalesOrderID` int NOT NULL,
    `SalesOrderDetailID` int NOT NULL,
    `CarrierTrackingNumber` varchar(25),
    `OrderQty` smallint NOT NULL,
    `ProductID` int NOT NULL,
    `SpecialOfferID` int NOT NULL,
    `UnitPrice` decimal(19, 4) NOT NULL,
    `UnitPriceDiscount` decimal(19, 4) NOT NULL,
    `LineTotal` decimal(38, 6) NOT NULL,
    `rowguid` char(36) NOT NULL,
    `ModifiedDate` datetime(6) NOT NULL,
    PRIMARY KEY (`SalesOrderID`, `SalesOrderDetailID`),
    KEY (`ModifiedDate`)
) CHARACTER SET utf8mb4
"""


def new_database_name() -> str:
    """A fresh database name, `bench_<random>`."""
    return f"bench_{uuid.uuid4().hex[:10]}"


def mariadb_url(database: str) -> str:
    """The SQLAlchemy URL of the benchmark database (as a project file names it)."""
    return (
        f"mysql+pymysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{database}?charset=utf8mb4"
    )


def _connect(**options: object) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
    return pymysql.connect(
        host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, charset="utf8mb4", **options
    )


def build_mariadb_source(database: str, table: pa.Table, work_dir: pathlib.Path) -> int:
    """Create `database` with SalesOrderDetail holding `table`'s rows; returns the row count."""
    csv_path = work_dir / "SalesOrderDetail-mariadb.csv"
    pacsv.write_csv(table, csv_path, pacsv.WriteOptions(include_header=False))
    names = table.column_names
    columns = ", ".join(
        "@tracking" if name == "CarrierTrackingNumber" else f"`{name}`" for name in names
    )
    connection = _connect(local_infile=True, autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
            cursor.execute(_DDL.format(d=database))
            cursor.execute(
                f"LOAD DATA LOCAL INFILE %s INTO TABLE `{database}`.`SalesOrderDetail` "
                "CHARACTER SET utf8mb4 FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' "
                f"LINES TERMINATED BY '\\n' ({columns}) "
                "SET `CarrierTrackingNumber` = NULLIF(@tracking, '')",
                (str(csv_path),),
            )
            cursor.execute(f"ANALYZE TABLE `{database}`.`SalesOrderDetail`")
            cursor.fetchall()
            cursor.execute(f"SELECT count(*) FROM `{database}`.`SalesOrderDetail`")
            row = cursor.fetchone()
    finally:
        connection.close()
        csv_path.unlink(missing_ok=True)
    return int(row[0]) if row else 0


def drop_mariadb_source(database: str) -> None:
    """Drop the benchmark database; a missing one is fine."""
    connection = _connect(autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        connection.close()
