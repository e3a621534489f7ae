"""Layers: the embedded SQL engine a silver/gold layer runs on, measured before choosing.

AdventureWorks-shaped inputs are generated with pyarrow (seeded, vectorized) and written as Delta
tables, one commit per 10 days of 120: order headers (lines / 3.5, TerritoryID ~2% NULL),
order lines (`--lines`, 2,000,000 by default) and 20,000 customers (unpartitioned; 2.4% of the
orders name a customer that is not there, for the LEFT JOIN). Three
queries, each engine each query in a process of its own (its peak RSS is its own, started
through bench/rss_launcher.py so that it does not begin at this harness's size):

- `silver`: headers JOIN lines LEFT JOIN customers, 12 columns, three expectations (drop: the
  territory is known; warn: UnitPrice < 3000; fail: LineTotal >= 0), all 120 days;
- `gold`: per day and TerritoryID, count(DISTINCT SalesOrderID) and sum(LineTotal) over the
  silver table (materialized as Delta beforehand by the project's path, not timed);
- `silver, one day`: the silver query for one day, reading only that day's files.

Engines: `duckdb` is the project's own path (`scan_days` scans, `LayerQuery`, for silver the
judged SQL streamed through `ExpectationSplit`, quarantine spill included); then DuckDB without
the split (`judged_sql`'s result only), DuckDB over the same scans running the SQL the peers run
(the three verdicts as boolean columns, no `__failed` list), and DuckDB reading the same files
with its own Parquet reader (`read_parquet` of the scans' files, no pyarrow dataset). Peers,
when importable (`BENCH_PEERS_PATH` names a `pip install --target` folder, else "not
installed"): DataFusion's `SessionContext` over the same pyarrow datasets and over delta-rs's
own table provider; Polars SQL over `scan_pyarrow_dataset` of the same datasets and over `scan_delta`;
pyarrow's Acero (`Table.join`, `Table.group_by`), no SQL. Each engine's result is checked
against the project path's: silver by rows and violations per expectation, gold row for row
(the decimal sums exactly).

Seconds run from opening the Delta tables to the last result batch (imports excluded); rows/s is
the rows the query reads of its driving table (the order lines; the silver rows for gold) per
second; RSS growth is the process's peak minus its size after the imports. Figures are medians
of `--runs`, printed, never asserted.

    .venv/bin/python bench/layers.py [--lines 2000000] [--runs 3]
    BENCH_PEERS_PATH=/tmp/bench-peers .venv/bin/python bench/layers.py
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from deltalake import DeltaTable, write_deltalake

from ingestion_assets.lake.rows import PARTITION_DATE, partition_dates
from ingestion_assets.layers.engine import (
    BATCH_ROWS,
    HELD_PREFIX,
    InputScan,
    LayerQuery,
    days_filter,
    held_columns,
    scan_days,
)
from ingestion_assets.layers.expectations import ExpectationSplit
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import ExpectationSpec

LAUNCHER = pathlib.Path(__file__).resolve().parent / "rss_launcher.py"
PEERS_VARIABLE = "BENCH_PEERS_PATH"
FIRST_DAY = datetime.date(2024, 1, 1)
DAYS = 120
DAYS_PER_COMMIT = 10
ONE_DAY = FIRST_DAY + datetime.timedelta(days=60)
CUSTOMERS = 20_000
LINES_PER_ORDER = 3.5
SEED = 20240101
CHILD_TIMEOUT_SECONDS = 1800.0

SILVER_SQL = """
SELECT h."SalesOrderID", l."SalesOrderDetailID", h."CustomerID", c."AccountNumber",
       h."TerritoryID", h."OrderDate", h."ShipDate", l."ProductID", l."OrderQty",
       l."UnitPrice", l."LineTotal", h."_partition_date"
FROM headers AS h
JOIN lines AS l ON l."SalesOrderID" = h."SalesOrderID"
LEFT JOIN customers AS c ON c."CustomerID" = h."CustomerID"
"""
GOLD_SQL = """
SELECT "_partition_date", "TerritoryID", count(DISTINCT "SalesOrderID") AS "orders",
       sum("LineTotal") AS "line_total"
FROM silver
GROUP BY "_partition_date", "TerritoryID"
"""
EXPECTATIONS = (
    ExpectationSpec(name="territory_known", sql='"TerritoryID" IS NOT NULL', on_violation="drop"),
    ExpectationSpec(name="price_in_range", sql='"UnitPrice" < 3000', on_violation="warn"),
    ExpectationSpec(name="line_total_not_negative", sql='"LineTotal" >= 0', on_violation="fail"),
)
# what the peers run for silver: the verdicts as judged_sql computes them, without DuckDB's
# list_filter of the failed names (the split needs only the booleans)
FLAGS_SQL = (
    "SELECT *, "
    + ", ".join(
        f'coalesce(({expectation.sql}), TRUE) AS "{HELD_PREFIX}{index}"'
        for index, expectation in enumerate(EXPECTATIONS)
    )
    + f" FROM ({SILVER_SQL}) AS __layer"
)
PARTITIONED = ("headers", "lines", "silver")
GOLD_SCHEMA = pa.schema(
    [
        pa.field(PARTITION_DATE, pa.date32()),
        pa.field("TerritoryID", pa.int32()),
        pa.field("orders", pa.int64()),
        pa.field("line_total", pa.decimal128(38, 6)),
    ]
)
QUERIES = ("silver", "gold", "silver-day")
QUERY_TITLES = {"silver": "silver, 120 days", "gold": "gold", "silver-day": "silver, one day"}


# ---- the data -------------------------------------------------------------------------------


def _uniform(count: int, seed: int, low: int, high: int) -> pa.Array:
    """Seeded integers in [low, high)."""
    scaled = pc.floor(pc.multiply(pc.random(count, initializer=seed), float(high - low)))
    return pc.add(pc.cast(scaled, pa.int64()), low)


def _decimal(units: pa.Array, decimal_type: pa.DataType) -> pa.Array:
    """Integers read as unscaled decimals (12345 at scale 4: 1.2345), without a division."""
    unscaled = pc.cast(units, pa.decimal128(38, 0))
    return pa.Array.from_buffers(decimal_type, len(unscaled), unscaled.buffers())


def _days_since_epoch(day: datetime.date) -> int:
    return (day - datetime.date(1970, 1, 1)).days


def order_tables(lines: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Headers, lines and customers: orders evenly over the days, 3 or 4 lines an order."""
    headers = int(lines / LINES_PER_ORDER)
    order = pa.arange(0, headers)
    day = pc.divide(pc.multiply(order, DAYS), headers)
    first_day = _days_since_epoch(FIRST_DAY)
    order_micros = pc.add(
        pc.multiply(pc.add(day, first_day), 86_400_000_000),
        pc.multiply(_uniform(headers, SEED, 0, 86_400), 1_000_000),
    )
    territory = pc.cast(_uniform(headers, SEED + 1, 1, 11), pa.int32())
    unknown = pc.less(pc.random(headers, initializer=SEED + 2), 0.02)
    order_days = pc.cast(pc.cast(pc.add(day, first_day), pa.int32()), pa.date32())
    order_ids = pc.cast(pc.add(order, 43_659), pa.int32())
    header_table = pa.table(
        {
            "SalesOrderID": order_ids,
            "CustomerID": pc.cast(_uniform(headers, SEED + 3, 11_000, 11_000 + 20_500), pa.int32()),
            "TerritoryID": pc.if_else(unknown, pa.scalar(None, pa.int32()), territory),
            "OrderDate": pc.cast(order_micros, pa.timestamp("us")),
            "ShipDate": pc.cast(pc.add(order_micros, 7 * 86_400_000_000), pa.timestamp("us")),
            PARTITION_DATE: order_days,
        }
    )
    line = pa.arange(0, lines)
    line_order = pc.divide(pc.multiply(line, headers), lines)
    quantity = _uniform(lines, SEED + 4, 1, 11)
    price_units = _uniform(lines, SEED + 5, 1_3280, 3578_2700)  # 1.3280 .. 3578.2699
    line_table = pa.table(
        {
            "SalesOrderID": pc.take(order_ids, line_order),
            "SalesOrderDetailID": pc.cast(pc.add(line, 1), pa.int32()),
            "ProductID": pc.cast(_uniform(lines, SEED + 6, 707, 707 + 266), pa.int32()),
            "OrderQty": pc.cast(quantity, pa.int16()),
            "UnitPrice": _decimal(price_units, pa.decimal128(19, 4)),
            "LineTotal": _decimal(
                pc.multiply(pc.multiply(price_units, 100), quantity), pa.decimal128(38, 6)
            ),
            PARTITION_DATE: pc.take(order_days, line_order),
        }
    )
    customer = pc.add(pa.arange(0, CUSTOMERS), 11_000)
    customer_table = pa.table(
        {
            "CustomerID": pc.cast(customer, pa.int32()),
            "StoreID": pc.cast(_uniform(CUSTOMERS, SEED + 7, 292, 2_000), pa.int32()),
            "TerritoryID": pc.cast(_uniform(CUSTOMERS, SEED + 8, 1, 11), pa.int32()),
            "AccountNumber": pc.binary_join_element_wise(
                "AW", pc.utf8_lpad(pc.cast(customer, pa.string()), 8, "0"), ""
            ),
        }
    )
    return header_table, line_table, customer_table


def _commit_windows() -> list[PartitionWindow]:
    """The 10-day windows of the 120 days: one commit each."""
    return [
        PartitionWindow.of_days(
            FIRST_DAY + datetime.timedelta(days=first),
            FIRST_DAY + datetime.timedelta(days=min(first + DAYS_PER_COMMIT, DAYS) - 1),
        )
        for first in range(0, DAYS, DAYS_PER_COMMIT)
    ]


def write_inputs(lake: str, lines: int) -> dict[str, int]:
    """The three input tables as Delta, a commit per 10 days; their rows."""
    headers, order_lines, customers = order_tables(lines)
    for name, table in (("headers", headers), ("lines", order_lines)):
        for window in _commit_windows():
            write_deltalake(f"{lake}/{name}", table.filter(days_filter(window)), mode="append")
    write_deltalake(f"{lake}/customers", customers)
    return {"headers": headers.num_rows, "lines": order_lines.num_rows, "customers": CUSTOMERS}


def _day_of(batch: pa.RecordBatch) -> pa.Array:
    return partition_dates(batch.column(PARTITION_DATE), "UTC")


def write_silver(lake: str) -> int:
    """The silver table by the project's path (the `drop` rows left out), a commit per 10 days,
    as ten-day runs of the layer would write it; its rows."""
    rows = 0
    for window in _commit_windows():
        scans = [
            scan_days(name, name, DeltaTable(f"{lake}/{name}"), window)
            for name in ("headers", "lines", "customers")
        ]
        query = LayerQuery(SILVER_SQL, scans, EXPECTATIONS)
        split = ExpectationSplit(EXPECTATIONS, _day_of)
        try:
            judged = query.reader()
            schema = pa.schema(
                [field for field in judged.schema if not field.name.startswith("__")]
            )
            kept = pa.Table.from_batches(list(split.kept(judged)), schema)
        finally:
            split.close()
            query.close()
        write_deltalake(f"{lake}/silver", kept, mode="append")
        rows += kept.num_rows
    return rows


# ---- one case, in its own process ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One engine running one query over the lake."""

    engine: str
    query: str
    lake: str

    @property
    def window(self) -> PartitionWindow:
        """The days the query reads."""
        if self.query == "silver-day":
            return PartitionWindow.of_days(ONE_DAY, ONE_DAY)
        return PartitionWindow.of_days(FIRST_DAY, FIRST_DAY + datetime.timedelta(days=DAYS - 1))

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tables the query names."""
        return ("silver",) if self.query == "gold" else ("headers", "lines", "customers")

    @property
    def sql(self) -> str:
        """What a peer runs: the gold aggregate, or silver with its verdict columns."""
        return GOLD_SQL if self.query == "gold" else FLAGS_SQL

    def window_of(self, name: str) -> PartitionWindow | None:
        """The days read of an input; None: all of it."""
        return self.window if name in PARTITIONED else None

    def uri(self, name: str) -> str:
        """An input's Delta table."""
        return f"{self.lake}/{name}"


@dataclasses.dataclass
class Outcome:
    """What a case produced: silver's rows and violations per expectation, or gold's table."""

    rows: int = 0
    violations: list[int] = dataclasses.field(default_factory=list)
    gold: pa.Table | None = None
    files: str = ""


def _scans(case: Case, outcome: Outcome) -> list[InputScan]:
    scans = [
        scan_days(name, name, DeltaTable(case.uri(name)), case.window_of(name))
        for name in case.inputs
    ]
    outcome.files = ", ".join(
        f"{scan.name} {len(scan.files)}/{scan.files_in_table}" for scan in scans
    )
    return scans


def _take(case: Case, batches: Iterable[pa.RecordBatch], outcome: Outcome) -> None:
    """Consume a result: count silver's rows and false verdicts, or keep gold's table."""
    if case.query == "gold":
        outcome.gold = pa.Table.from_batches(list(batches))
        return
    violations = [0] * len(EXPECTATIONS)
    for batch in batches:
        outcome.rows += batch.num_rows
        for index, column in enumerate(held_columns(len(EXPECTATIONS))):
            violations[index] += pc.sum(pc.invert(batch.column(column))).as_py() or 0
    outcome.violations = violations


def _where(window: PartitionWindow | None) -> str:
    """The filter of an input's view, as LayerQuery writes it."""
    if window is None:
        return ""
    return (
        f" WHERE \"{PARTITION_DATE}\" BETWEEN DATE '{window.first_day.isoformat()}' "
        f"AND DATE '{window.last_day.isoformat()}'"
    )


def _duckdb(case: Case, outcome: Outcome) -> None:
    scans = _scans(case, outcome)
    if case.query == "gold":
        query = LayerQuery(GOLD_SQL, scans)
        try:
            _take(case, query.reader(), outcome)
        finally:
            query.close()
        return
    query = LayerQuery(SILVER_SQL, scans, EXPECTATIONS)
    split = ExpectationSplit(EXPECTATIONS, _day_of)
    try:
        for _batch in split.kept(query.reader()):
            pass
    finally:
        split.close()
        query.close()
    outcome.rows = sum(split.tally.rows_by_day.values())
    outcome.violations = [
        sum(split.tally.violations[expectation.name].values()) for expectation in EXPECTATIONS
    ]


def _duckdb_judged(case: Case, outcome: Outcome) -> None:
    query = LayerQuery(
        GOLD_SQL if case.query == "gold" else SILVER_SQL,
        _scans(case, outcome),
        () if case.query == "gold" else EXPECTATIONS,
    )
    try:
        _take(case, query.reader(), outcome)
    finally:
        query.close()


def _duckdb_sql(case: Case, outcome: Outcome) -> None:
    query = LayerQuery(case.sql, _scans(case, outcome))
    try:
        _take(case, query.reader(), outcome)
    finally:
        query.close()


def _duckdb_parquet(case: Case, outcome: Outcome) -> None:
    import duckdb

    connection = duckdb.connect()
    try:
        for scan in _scans(case, outcome):
            files = ", ".join(f"'{case.uri(scan.name)}/{path}'" for path in scan.files)
            connection.execute(
                f"CREATE VIEW {scan.name} AS SELECT * FROM read_parquet([{files}])"
                f"{_where(scan.window)}"
            )
        _take(case, connection.execute(case.sql).to_arrow_reader(BATCH_ROWS), outcome)
    finally:
        connection.close()


def _datafusion_dataset(case: Case, outcome: Outcome) -> None:
    import datafusion

    context = datafusion.SessionContext()
    for scan in _scans(case, outcome):
        context.register_dataset(f"__scan_{scan.name}", scan.dataset)
        context.sql(
            f'CREATE VIEW {scan.name} AS SELECT * FROM "__scan_{scan.name}"{_where(scan.window)}'
        )
    _take(case, pa.RecordBatchReader.from_stream(context.sql(case.sql)), outcome)


def _datafusion_delta(case: Case, outcome: Outcome) -> None:
    import datafusion

    context = datafusion.SessionContext()
    for name in case.inputs:
        context.register_table(f"__scan_{name}", DeltaTable(case.uri(name)))
        context.sql(
            f'CREATE VIEW {name} AS SELECT * FROM "__scan_{name}"{_where(case.window_of(name))}'
        )
    outcome.files = "delta-rs's own pruning"
    _take(case, pa.RecordBatchReader.from_stream(context.sql(case.sql)), outcome)


def _polars_frames(case: Case, frames: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    for name in list(frames):
        window = case.window_of(name)
        if window is not None:
            frames[name] = frames[name].filter(
                pl.col(PARTITION_DATE).is_between(window.first_day, window.last_day)
            )
    return frames


def _polars_dataset(case: Case, outcome: Outcome) -> None:
    import polars as pl

    frames = {scan.name: pl.scan_pyarrow_dataset(scan.dataset) for scan in _scans(case, outcome)}
    result = pl.SQLContext(frames=_polars_frames(case, frames)).execute(case.sql).collect()
    _take(case, result.to_arrow().to_batches(), outcome)


def _polars_delta(case: Case, outcome: Outcome) -> None:
    import polars as pl

    frames = {name: pl.scan_delta(case.uri(name)) for name in case.inputs}
    outcome.files = "Polars' own pruning"
    result = pl.SQLContext(frames=_polars_frames(case, frames)).execute(case.sql).collect()
    _take(case, result.to_arrow().to_batches(), outcome)


def _acero(case: Case, outcome: Outcome) -> None:
    scans = {scan.name: scan for scan in _scans(case, outcome)}
    window_filter = days_filter(case.window)
    if case.query == "gold":
        silver = scans["silver"].dataset.to_table(
            columns=[PARTITION_DATE, "TerritoryID", "SalesOrderID", "LineTotal"],
            filter=window_filter,
        )
        outcome.gold = (
            silver.group_by([PARTITION_DATE, "TerritoryID"])
            .aggregate([("SalesOrderID", "count_distinct"), ("LineTotal", "sum")])
            .rename_columns([PARTITION_DATE, "TerritoryID", "orders", "line_total"])
        )
        return
    headers = scans["headers"].dataset.to_table(
        columns=[
            "SalesOrderID",
            "CustomerID",
            "TerritoryID",
            "OrderDate",
            "ShipDate",
            PARTITION_DATE,
        ],
        filter=window_filter,
    )
    lines = scans["lines"].dataset.to_table(
        columns=[
            "SalesOrderID",
            "SalesOrderDetailID",
            "ProductID",
            "OrderQty",
            "UnitPrice",
            "LineTotal",
        ],
        filter=window_filter,
    )
    customers = scans["customers"].dataset.to_table(columns=["CustomerID", "AccountNumber"])
    joined = headers.join(lines, "SalesOrderID", join_type="inner").join(
        customers, "CustomerID", join_type="left outer"
    )
    price_limit = pa.scalar(Decimal("3000"), pa.decimal128(19, 4))
    verdicts = [
        pc.is_valid(joined.column("TerritoryID")),
        pc.fill_null(pc.less(joined.column("UnitPrice"), price_limit), True),
        pc.fill_null(pc.greater_equal(joined.column("LineTotal"), pa.scalar(Decimal(0))), True),
    ]
    for column, verdict in zip(held_columns(len(EXPECTATIONS)), verdicts, strict=True):
        joined = joined.append_column(column, verdict)
    _take(case, joined.to_batches(), outcome)


ENGINES: dict[str, Callable[[Case, Outcome], None]] = {
    "duckdb": _duckdb,
    "duckdb judged": _duckdb_judged,
    "duckdb sql": _duckdb_sql,
    "duckdb read_parquet": _duckdb_parquet,
    "datafusion, pyarrow datasets": _datafusion_dataset,
    "datafusion, delta-rs provider": _datafusion_delta,
    "polars, pyarrow datasets": _polars_dataset,
    "polars, scan_delta": _polars_delta,
    "pyarrow acero": _acero,
}
ENGINE_MODULES = {
    "datafusion, pyarrow datasets": "datafusion",
    "datafusion, delta-rs provider": "datafusion",
    "polars, pyarrow datasets": "polars",
    "polars, scan_delta": "polars",
}
ENGINE_TITLES = {
    "duckdb": "duckdb (the project's path)",
    "duckdb judged": "duckdb, judged SQL, no split",
    "duckdb sql": "duckdb, the peers' SQL",
    "duckdb read_parquet": "duckdb, read_parquet of the files",
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: Case, gold_path: str) -> dict[str, Any]:
    """Run one case in this process: its seconds, RSS and result summary."""
    module = ENGINE_MODULES.get(case.engine)
    if module:
        importlib.import_module(module)
    baseline = _peak_mb()
    outcome = Outcome()
    started = time.monotonic()
    ENGINES[case.engine](case, outcome)
    seconds = time.monotonic() - started
    peak = _peak_mb()
    if outcome.gold is not None:
        with pa.OSFile(gold_path, "wb") as sink, ipc.new_file(sink, outcome.gold.schema) as out:
            out.write_table(outcome.gold)
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "growth_mb": peak - baseline,
        "rows": outcome.rows,
        "violations": outcome.violations,
        "files": outcome.files,
    }


# ---- the harness ---------------------------------------------------------------------------


def _add_peers_path() -> None:
    folder = os.environ.get(PEERS_VARIABLE)
    # appended, not prepended: the venv's pyarrow must win over any the peers' folder holds
    if folder and folder not in sys.path:
        sys.path.append(folder)


def _missing(engine: str) -> str | None:
    module = ENGINE_MODULES.get(engine)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"{module} not installed" + (
        "" if os.environ.get(PEERS_VARIABLE) else f" (set {PEERS_VARIABLE})"
    )


def _child(case: Case, gold_path: str, usage_path: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-I",
        "-S",
        str(LAUNCHER),
        usage_path,
        sys.executable,
        __file__,
        "--child",
        json.dumps([case.engine, case.query, case.lake, gold_path]),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS, check=False
    )
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or ["no error output"]
        return {"error": lines[-1][:200]}
    figures: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return figures


def _gold_difference(reference: pa.Table, other: pa.Table) -> str:
    """`equal`, or how the two gold results differ."""
    order = [(PARTITION_DATE, "ascending"), ("TerritoryID", "ascending")]
    expected = reference.select(GOLD_SCHEMA.names).cast(GOLD_SCHEMA).sort_by(order)
    try:
        actual = other.select(GOLD_SCHEMA.names).cast(GOLD_SCHEMA).sort_by(order)
    except (pa.ArrowInvalid, KeyError) as error:
        return f"not comparable: {error}"
    if actual.equals(expected):
        return "equal"
    if actual.num_rows != expected.num_rows:
        return f"{actual.num_rows:,} rows, not {expected.num_rows:,}"
    differing = [
        (left, right)
        for left, right in zip(expected.to_pylist(), actual.to_pylist(), strict=True)
        if left != right
    ]
    return f"{len(differing)} rows differ, e.g. {differing[0][1]} for {differing[0][0]}"


def _silver_difference(reference: dict[str, Any], other: dict[str, Any]) -> str:
    if (reference["rows"], reference["violations"]) == (other["rows"], other["violations"]):
        return "equal"
    return (
        f"{other['rows']:,} rows, violations {other['violations']} (not {reference['violations']})"
    )


def _reference_summary(query: str, figures: dict[str, Any]) -> str:
    """What the other engines' results are compared with."""
    if query == "gold":
        return f"the reference: {figures['gold'].num_rows:,} groups"
    violations = ", ".join(
        f"{expectation.name} {count:,}"
        for expectation, count in zip(EXPECTATIONS, figures["violations"], strict=True)
    )
    return f"the reference: {figures['rows']:,} rows; violations: {violations}"


def _driving_rows(query: str, rows: dict[str, int], day_lines: int) -> int:
    return {"silver": rows["lines"], "gold": rows["silver"], "silver-day": day_lines}[query]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=2_000_000, help="order lines generated")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; figures are medians")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _add_peers_path()
    if args.child:
        engine, query, lake, gold_path = json.loads(args.child)
        print(json.dumps(run_case(Case(engine, query, lake), gold_path)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-layers-") as folder:
        lake = f"{folder}/lake"
        started = time.monotonic()
        rows = write_inputs(lake, args.lines)
        written = time.monotonic() - started
        started = time.monotonic()
        rows["silver"] = write_silver(lake)
        day_lines = sum(
            fragment.count_rows(filter=days_filter(Case("", "silver-day", lake).window))
            for fragment in DeltaTable(f"{lake}/lines").to_pyarrow_dataset().get_fragments()
        )
        print(
            f"layers bench: {rows['lines']:,} lines, {rows['headers']:,} headers, "
            f"{rows['customers']:,} customers over {DAYS} days, a commit per {DAYS_PER_COMMIT} "
            f"days, written in {written:.1f} s; silver {rows['silver']:,} rows in "
            f"{time.monotonic() - started:.1f} s; one day ({ONE_DAY}) {day_lines:,} lines; "
            f"{args.runs} run(s) per case, a process each, {os.cpu_count()} cores"
        )
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for query in QUERIES:
            print(f"\n{QUERY_TITLES[query]}:")
            for engine in ENGINES:
                title = ENGINE_TITLES.get(engine, engine)
                reason = _missing(engine)
                if reason:
                    print(f"  {title:<34} skipped: {reason}")
                    results[engine, query] = {"error": reason}
                    continue
                gold_path = f"{folder}/gold-{len(results)}.arrow"
                runs = [
                    _child(Case(engine, query, lake), gold_path, f"{folder}/usage")
                    for _ in range(args.runs)
                ]
                failed = [run for run in runs if "error" in run]
                if failed:
                    print(f"  {title:<34} failed: {failed[0]['error']}")
                    results[engine, query] = failed[0]
                    continue
                figures = {
                    key: statistics.median(run[key] for run in runs)
                    for key in ("seconds", "peak_mb", "growth_mb")
                }
                figures.update({key: runs[0][key] for key in ("rows", "violations", "files")})
                reference = results.get(("duckdb", query))
                if query == "gold":
                    figures["gold"] = ipc.open_file(gold_path).read_all()
                if reference is None:
                    check = _reference_summary(query, figures)
                elif query == "gold":
                    check = "vs duckdb: " + _gold_difference(reference["gold"], figures["gold"])
                else:
                    check = "vs duckdb: " + _silver_difference(reference, figures)
                figures["check"] = check
                results[engine, query] = figures
                rate = _driving_rows(query, rows, day_lines) / figures["seconds"]
                files = f", files {figures['files']}" if query == "silver-day" else ""
                print(
                    f"  {title:<34} {figures['seconds']:6.2f} s {rate / 1e6:6.2f} M rows/s, "
                    f"peak RSS {figures['peak_mb']:5.0f} MB (+{figures['growth_mb']:4.0f}), "
                    f"{check}{files}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
