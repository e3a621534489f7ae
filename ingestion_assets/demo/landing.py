"""The demo's landing zone (`.data/landing`, the project's `landing` source): daily currency-rate
files in AdventureWorks' own TAB-delimited `Sales.CurrencyRate` export format (no header), and the
product table exported once as Parquet and as NDJSON.

The rate files carry their day in their name (`currency_rates/2024-01-05.tsv`), the day they land
in. The exports' modification time is set to the demo's last day at noon UTC, so they land in that
partition whatever the clock says. Rates are seeded per day: a day's file is the same on every
run and does not depend on the days around it.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import random
from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from ingestion_assets.demo.api import demo_engine
from ingestion_assets.demo.generate import DEFAULT_SCALE, DemoScale
from ingestion_assets.demo.schema import demo_metadata, table_for

RATES_FOLDER = "currency_rates"
EXPORTS_FOLDER = "exports"
PRODUCT = "Production.Product"
# Sales.CurrencyRate's columns, in the export's order
RATE_COLUMNS = (
    "CurrencyRateID",
    "CurrencyRateDate",
    "FromCurrencyCode",
    "ToCurrencyCode",
    "AverageRate",
    "EndOfDayRate",
    "ModifiedDate",
)
# US dollars into each, around the rate of early 2024
DAILY_CURRENCIES = {
    "EUR": Decimal("0.9150"),
    "GBP": Decimal("0.7870"),
    "JPY": Decimal("146.2000"),
    "CAD": Decimal("1.3450"),
    "AUD": Decimal("1.5120"),
}
# the currencies whose rates `make demo-change` delivers late, in a second file of a day
LATE_CURRENCIES = {"CHF": Decimal("0.8650"), "MXN": Decimal("17.0800")}
_RATE = Decimal("0.0001")
# a day's rates move by at most this share of the base rate
_DAILY_SWING = 0.01
# Production.Product's columns as Arrow types: the types the project file declares
PRODUCT_SCHEMA = pa.schema(
    [
        ("ProductID", pa.int32()),
        ("Name", pa.string()),
        ("ProductNumber", pa.string()),
        ("MakeFlag", pa.bool_()),
        ("FinishedGoodsFlag", pa.bool_()),
        ("Color", pa.string()),
        ("SafetyStockLevel", pa.int16()),
        ("ReorderPoint", pa.int16()),
        ("StandardCost", pa.decimal128(19, 4)),
        ("ListPrice", pa.decimal128(19, 4)),
        ("Size", pa.string()),
        ("Weight", pa.decimal128(8, 2)),
        ("DaysToManufacture", pa.int32()),
        ("ProductLine", pa.string()),
        ("SellStartDate", pa.timestamp("us")),
        ("SellEndDate", pa.timestamp("us")),
        ("rowguid", pa.string()),
        ("ModifiedDate", pa.timestamp("us")),
    ]
)


@dataclass(frozen=True)
class LandedFile:
    """One file written to the landing zone: its path below the root, its rows and its day."""

    path: str
    rows: int
    day: datetime.date


def last_day(scale: DemoScale = DEFAULT_SCALE) -> datetime.date:
    """The demo's newest day (its end date is the day after)."""
    return scale.start_date + datetime.timedelta(days=scale.days - 1)


def _rate_rows(
    day: datetime.date, currencies: dict[str, Decimal], first_id: int, seed: int
) -> list[tuple[str, ...]]:
    """A day's rates from US dollars, one row per currency, keys from `first_id`."""
    rng = random.Random(f"{seed}:{day.isoformat()}:{','.join(currencies)}")
    stamp = f"{day.isoformat()} 00:00:00"
    rows: list[tuple[str, ...]] = []
    for offset, (code, base) in enumerate(currencies.items()):
        average = base * Decimal(1 + rng.uniform(-_DAILY_SWING, _DAILY_SWING))
        end_of_day = average * Decimal(1 + rng.uniform(-_DAILY_SWING / 4, _DAILY_SWING / 4))
        rows.append(
            (
                str(first_id + offset),
                stamp,
                "USD",
                code,
                str(average.quantize(_RATE)),
                str(end_of_day.quantize(_RATE)),
                stamp,
            )
        )
    return rows


def _write_rates(path: pathlib.Path, rows: list[tuple[str, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")


def _product_table(demo_dir: pathlib.Path) -> pa.Table:
    """Production.Product from the demo database, typed as the project file declares it."""
    product = table_for(demo_metadata(), PRODUCT)
    engine = demo_engine(demo_dir)
    try:
        with engine.connect() as connection:
            result = connection.execute(sa.select(product).order_by(product.c.ProductID))
            rows = [dict(row) for row in result.mappings()]
    finally:
        engine.dispose()
    for row in rows:
        row["rowguid"] = str(row["rowguid"])
    return pa.Table.from_pylist(rows, schema=PRODUCT_SCHEMA)


def _json_value(value: object) -> object:
    """Decimals as text (exact), times as ISO text: what JSON has no type for."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    return value


def write_landing_files(
    landing_dir: pathlib.Path, demo_dir: pathlib.Path, scale: DemoScale = DEFAULT_SCALE
) -> list[LandedFile]:
    """Replace the landing zone: a rates file per demo day and the product exports (read from
    the demo database in `demo_dir`); what was written."""
    for old in [*landing_dir.glob(f"{RATES_FOLDER}/*"), *landing_dir.glob(f"{EXPORTS_FOLDER}/*")]:
        old.unlink()
    landed = []
    for index in range(scale.days):
        day = scale.start_date + datetime.timedelta(days=index)
        rows = _rate_rows(day, DAILY_CURRENCIES, index * len(DAILY_CURRENCIES) + 1, scale.seed)
        name = f"{RATES_FOLDER}/{day.isoformat()}.tsv"
        _write_rates(landing_dir / name, rows)
        landed.append(LandedFile(name, len(rows), day))
    table = _product_table(demo_dir)
    exports = landing_dir / EXPORTS_FOLDER
    exports.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, exports / "product.parquet")
    lines = [
        json.dumps({key: _json_value(value) for key, value in row.items()}, ensure_ascii=False)
        for row in table.to_pylist()
    ]
    (exports / "product.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    newest = last_day(scale)
    noon = datetime.datetime.combine(newest, datetime.time(12), tzinfo=datetime.UTC).timestamp()
    for name in ("product.parquet", "product.ndjson"):
        os.utime(exports / name, (noon, noon))
        landed.append(LandedFile(f"{EXPORTS_FOLDER}/{name}", table.num_rows, newest))
    return landed


def require_landing_zone(landing_dir: pathlib.Path) -> None:
    """Raise FileNotFoundError, naming the fix, unless the demo's landing zone is there."""
    if not (landing_dir / RATES_FOLDER).is_dir():
        raise FileNotFoundError(
            f"no landing zone in {landing_dir}: build it first with `make demo`"
        )


def deliver_late_rates(landing_dir: pathlib.Path, scale: DemoScale = DEFAULT_SCALE) -> LandedFile:
    """A second rates file for the newest day, of the currencies the daily file lacks: the new
    file the sensor finds. Its keys follow the daily files'; delivered twice, it is replaced."""
    require_landing_zone(landing_dir)
    newest = last_day(scale)
    first_id = scale.days * len(DAILY_CURRENCIES) + 1
    rows = _rate_rows(newest, LATE_CURRENCIES, first_id, scale.seed)
    name = f"{RATES_FOLDER}/{newest.isoformat()}_late.tsv"
    _write_rates(landing_dir / name, rows)
    return LandedFile(name, len(rows), newest)
