"""The files source on one large CSV: a seeded file of order lines (1 GiB by default) read by
`read_batches` with declared types, the same file gzip-compressed, the whole `FilesSource.read`
path (decoded into a local Arrow spill file, then replayed), and pyarrow's own CSV readers on
the same file for contrast. Each read runs in a process of its own, started through
`rss_launcher.py`, so that its peak RSS is its own; every read's row count and exact LineTotal
sum must equal the generator's. Figures are printed, never asserted.

    .venv/bin/python bench/files.py [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import gzip
import json
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
from measure import json_result, run_processes

if TYPE_CHECKING:
    from ingestion_assets.sources.files.source import FilesSource
    from ingestion_assets.sources.files.spec import FileDatasetSpec

CHUNK_ROWS = 100_000
COPY_BYTES = 1 << 20
SEED = 20_261_203
FIRST_DAY = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
DAYS = 1_096
COLUMNS = {
    "SalesOrderID": "int32",
    "SalesOrderDetailID": "int32",
    "ProductID": "int32",
    "OrderQty": "int32",
    "UnitPrice": "decimal(19,4)",
    "LineTotal": "decimal(38,6)",
    "ModifiedDate": "timestamp",
    "ProductName": "string",
}
# COLUMNS as this project types them (sources/rest/records.py's arrow_field_type)
SCHEMA = pa.schema(
    [
        pa.field("SalesOrderID", pa.int32()),
        pa.field("SalesOrderDetailID", pa.int32()),
        pa.field("ProductID", pa.int32()),
        pa.field("OrderQty", pa.int32()),
        pa.field("UnitPrice", pa.decimal128(19, 4)),
        pa.field("LineTotal", pa.decimal128(38, 6)),
        pa.field("ModifiedDate", pa.timestamp("us")),
        pa.field("ProductName", pa.string()),
    ]
)
# AdventureWorks' UnitPriceDiscount, in percent: LineTotal = OrderQty * UnitPrice * (1 - it)
DISCOUNT_PERCENTS = [0, 0, 0, 0, 0, 0, 2, 5, 10, 15]
PRODUCT_NAMES = [
    "Mountain-100 Silver, 38",
    "Road-150 Red, 62",
    "Vélo de route Écarlate",
    "Fahrradschloß „Sicher“",
    "Casque de vélo, taille M",
    "Maillot manches longues, XL",
    'Sport-100 Helmet "Blue"',
    "Bicicleta de montaña Ñandú",
    "Cykelhjälm Blå",
    "自転車用ヘルメット",
    "Горный велосипед",
    "Ποδήλατο δρόμου",
    "Touring Tire Tube",
    "Water Bottle - 30 oz.",
    "Chaîne de vélo",
    "Pédales sans clip ☆",
]
CASES = {
    "read_batches": "`read_batches`, declared types",
    "read_batches_gzip": "`read_batches`, the `.csv.gz`",
    "files_source": "`FilesSource.read` (spill, then replay)",
    "open_csv": "pyarrow `open_csv` (streaming)",
    "read_csv": "pyarrow `read_csv` (whole file)",
}


# ---- the file --------------------------------------------------------------------------------


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _fixed_point(units: pa.Array, scale: int) -> pa.Array:
    """Non-negative integers of 10**-scale as decimal text (`1234.5600`)."""
    whole = pc.divide(units, 10**scale)
    fraction = pc.subtract(units, pc.multiply(whole, 10**scale))
    return pc.binary_join_element_wise(
        pc.cast(whole, pa.string()),
        pc.utf8_lpad(pc.cast(fraction, pa.string()), width=scale, padding="0"),
        ".",
    )


def _chunk(first_row: int, rows: int, seed: int) -> tuple[pa.Buffer, int]:
    """Lines `first_row` to `first_row + rows` of the file, and the sum of their LineTotal in
    millionths; built column by column in Arrow."""
    chunk = first_row // CHUNK_ROWS

    def draws(column: int) -> pa.Array:
        return pc.random(rows, initializer=seed * 1_000_003 + chunk * 16 + column)

    def whole(values: pa.Array, high: int) -> pa.Array:
        return pc.cast(pc.floor(pc.multiply(values, high)), pa.int64())

    def uniform(column: int, high: int) -> pa.Array:
        return whole(draws(column), high)

    row = pc.add(pa.array(range(rows), pa.int64()), first_row)
    order_id = pc.add(pc.divide(pc.multiply(row, 2), 7), 43_659)  # an order every 3.5 lines
    product_id = pc.add(uniform(0, 293), 707)
    quantity = pc.add(whole(pc.power(draws(1), 3), 40), 1)  # mostly 1 to 5, up to 40
    price_units = pc.add(uniform(2, 35_769_418), 13_282)  # 1.3282 to 3578.2700
    discount = pc.take(pa.array(DISCOUNT_PERCENTS, pa.int64()), uniform(3, len(DISCOUNT_PERCENTS)))
    # 10**-4 * 10**-2 = 10**-6: LineTotal exact, in millionths
    line_total_units = pc.multiply(pc.multiply(quantity, price_units), pc.subtract(100, discount))
    seconds = pc.add(uniform(4, DAYS * 86_400), int(FIRST_DAY.timestamp()))
    modified = pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.string())
    # the row's last field carries its line break
    names = pa.array([_quoted(name) + "\n" for name in PRODUCT_NAMES], pa.string())
    lines = pc.binary_join_element_wise(
        pc.cast(order_id, pa.string()),
        pc.cast(pc.add(row, 1), pa.string()),
        pc.cast(product_id, pa.string()),
        pc.cast(quantity, pa.string()),
        _fixed_point(price_units, 4),
        _fixed_point(line_total_units, 6),
        modified,
        pc.take(names, uniform(5, len(PRODUCT_NAMES))),
        ",",
    )
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, rows], pa.int32()), lines), "")
    return joined[0].as_buffer(), pc.sum(line_total_units).as_py()


def write_orders(path: pathlib.Path, size_bytes: int, seed: int) -> tuple[int, int]:
    """A CSV of order lines of at least `size_bytes`; its rows and LineTotal sum in millionths."""
    rows = line_total = written = 0
    with path.open("wb") as out:
        written += out.write((",".join(COLUMNS) + "\n").encode())
        while written < size_bytes:
            block, block_total = _chunk(rows, CHUNK_ROWS, seed)
            written += out.write(block)
            rows += CHUNK_ROWS
            line_total += block_total
    return rows, line_total


def gzipped(path: pathlib.Path, target: pathlib.Path) -> None:
    """`path` compressed as gzip at its default level."""
    with path.open("rb") as source, gzip.open(target, "wb", compresslevel=6) as out:
        shutil.copyfileobj(source, out, COPY_BYTES)


# ---- one read, in its own process ------------------------------------------------------------


class AnonymousPeak:
    """The process's peak anonymous RSS (its own heap, not mapped files), sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _millionths(sums: Iterable[decimal.Decimal | None]) -> int:
    with decimal.localcontext() as context:
        context.prec = 80
        return sum(int(value * 10**6) for value in sums if value is not None)


def _child(case: str, csv_path: str, gzip_path: str, folder: str) -> dict[str, Any]:
    """One read of the file, timed from its first batch asked to its last one summed."""
    figures: dict[str, Any] = {}
    batches = READS[case](csv_path, gzip_path, folder, figures)
    figures["rss_before_mb"] = _current_rss_mb()
    anonymous = AnonymousPeak()
    started = time.monotonic()
    rows = 0
    sums: list[decimal.Decimal | None] = []
    for batch in batches:
        rows += batch.num_rows
        sums.append(pc.sum(batch.column("LineTotal")).as_py())
    figures["seconds"] = time.monotonic() - started
    figures["peak_anonymous_mb"] = anonymous.stop()
    figures["rows"] = rows
    figures["line_total_millionths"] = str(_millionths(sums))
    return figures


Batches = Iterator[pa.RecordBatch | pa.Table]


def _read_batches(csv_path: str, gzip_path: str, folder: str, figures: dict[str, Any]) -> Batches:
    return _project_reader(csv_path, figures)


def _read_batches_gzip(
    csv_path: str, gzip_path: str, folder: str, figures: dict[str, Any]
) -> Batches:
    return _project_reader(gzip_path, figures)


def _project_reader(path: str, figures: dict[str, Any]) -> Batches:
    from ingestion_assets.sources.files.formats import CsvFormat, ReadReport
    from ingestion_assets.sources.files.read import read_batches

    report = ReadReport()

    def batches() -> Batches:
        yield from read_batches(path, os.path.basename(path), CsvFormat(), SCHEMA, report=report)
        figures["rescued_rows"] = report.rescued_rows

    return batches()


def _files_source(csv_path: str, gzip_path: str, folder: str, figures: dict[str, Any]) -> Batches:
    from ingestion_assets.project import parse_project
    from ingestion_assets.sources.files.source import FilesSource, declared_schema
    from ingestion_assets.sources.files.spec import FileDatasetSpec

    project = parse_project(_project_yaml(csv_path, folder), "bench-files.yaml")
    spec = project.sources["landing"]
    (dataset,) = spec.datasets
    if not isinstance(dataset, FileDatasetSpec) or declared_schema(dataset) != SCHEMA:
        raise ValueError(f"the project's dataset {dataset!r} is not typed as {SCHEMA}")
    source = FilesSource("landing", os.path.dirname(csv_path), {}, spec.timezone)
    return _decoded_then_replayed(source, dataset, figures)


def _decoded_then_replayed(
    source: FilesSource, dataset: FileDatasetSpec, figures: dict[str, Any]
) -> Batches:
    started = time.monotonic()
    stream = source.read(dataset, None)  # decodes every file into its spill before returning
    figures["decode_seconds"] = time.monotonic() - started
    spills = pathlib.Path(tempfile.gettempdir()).glob("landing-*.arrow")
    figures["spill_bytes"] = sum(spill.stat().st_size for spill in spills)
    yield from stream.reader


def _open_csv(csv_path: str, gzip_path: str, folder: str, figures: dict[str, Any]) -> Batches:
    yield from pv.open_csv(csv_path, convert_options=pv.ConvertOptions(column_types=SCHEMA))


def _read_csv(csv_path: str, gzip_path: str, folder: str, figures: dict[str, Any]) -> Batches:
    yield pv.read_csv(csv_path, convert_options=pv.ConvertOptions(column_types=SCHEMA))


READS: dict[str, Callable[[str, str, str, dict[str, Any]], Batches]] = {
    "read_batches": _read_batches,
    "read_batches_gzip": _read_batches_gzip,
    "files_source": _files_source,
    "open_csv": _open_csv,
    "read_csv": _read_csv,
}


def _project_yaml(csv_path: str, folder: str) -> str:
    """One files source over the CSV's folder; one dataset, partitioned by ModifiedDate."""
    dataset = {
        "name": "SalesOrderDetail",
        "glob": os.path.basename(csv_path),
        "format": {"type": "csv"},
        "partitioning": {"by": "column", "column": "ModifiedDate"},
        "primary_key": ["SalesOrderDetailID"],
        "columns": COLUMNS,
    }
    source = {
        "type": "files",
        "root": os.path.dirname(csv_path),
        "start_date": FIRST_DAY.date().isoformat(),
        "files": [dataset],
    }
    return json.dumps(
        {"lake": {"root": os.path.join(folder, "lake")}, "sources": {"landing": source}}
    )


# ---- the harness -----------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="the CSV's size (MiB)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--timeout", type=float, default=900, help="seconds one read may take")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-files-") as temporary:
        return _bench(pathlib.Path(temporary), args.size_mb, args.seed, args.timeout)


def _bench(folder: pathlib.Path, size_mb: int, seed: int, timeout: float) -> int:
    landing, compressed, spill = folder / "landing", folder / "compressed", folder / "spill"
    for directory in (landing, compressed, spill):
        directory.mkdir()
    csv_path, gzip_path = landing / "orders.csv", compressed / "orders.csv.gz"
    started = time.monotonic()
    rows, line_total = write_orders(csv_path, size_mb << 20, seed)
    size = csv_path.stat().st_size
    print(
        f"files bench: {rows:,} order lines, {size / 1e6:,.0f} MB of CSV in "
        f"{time.monotonic() - started:.1f} s (in {folder})"
    )
    started = time.monotonic()
    gzipped(csv_path, gzip_path)
    print(f"  gzip: {gzip_path.stat().st_size / 1e6:,.0f} MB in {time.monotonic() - started:.1f} s")
    # the spill files go to the child's temporary folder: its own, to measure and remove
    environment = dict(os.environ, TMPDIR=str(spill))
    results: dict[str, dict[str, Any]] = {}
    for case in CASES:
        run = run_processes(
            case,
            [
                [
                    sys.executable,
                    __file__,
                    "--child",
                    case,
                    str(csv_path),
                    str(gzip_path),
                    str(folder),
                ]
            ],
            folder / "logs" / case,
            timeout,
            env=environment,
        )
        figures = json_result(case, run)
        figures["peak_rss_mb"] = run.peak_rss_mb
        results[case] = figures
        print(f"  {case}: {figures['seconds']:.1f} s, peak RSS {run.peak_rss_mb:,.0f} MB")
        if case == "read_batches_gzip":
            gzip_path.unlink()  # keeps the disk in use below the CSV plus its spill
    _print_table(results, size)
    return _check(results, rows, line_total)


def _print_table(results: dict[str, dict[str, Any]], size: int) -> None:
    print()
    print(
        "| case | seconds | MB/s | rows | peak RSS MB | RSS before the read MB "
        "| peak anonymous RSS MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case, figures in results.items():
        print(
            f"| {CASES[case]} | {figures['seconds']:.1f} | {size / 1e6 / figures['seconds']:.0f} "
            f"| {figures['rows']:,} | {figures['peak_rss_mb']:,.0f} "
            f"| {figures['rss_before_mb']:,.0f} | {figures['peak_anonymous_mb']:,.0f} |"
        )
    source = results.get("files_source")
    if source:
        print(
            f"\nFilesSource: decoded into the spill in {source['decode_seconds']:.1f} s, replayed "
            f"in {source['seconds'] - source['decode_seconds']:.1f} s; spill "
            f"{source['spill_bytes'] / 1e6:,.0f} MB ({source['spill_bytes'] / size:.2f}x the CSV)"
        )
    print("MB/s: the uncompressed CSV's bytes (1 MB = 10**6 bytes) over the read's seconds")


def _check(results: dict[str, dict[str, Any]], rows: int, line_total: int) -> int:
    """0 when every read found the generator's rows and LineTotal sum, 1 otherwise."""
    expected = decimal.Decimal(line_total).scaleb(-6)
    wrong = [
        f"{case}: {figures['rows']:,} rows, LineTotal "
        f"{decimal.Decimal(int(figures['line_total_millionths'])).scaleb(-6)}"
        for case, figures in results.items()
        if figures["rows"] != rows
        or int(figures["line_total_millionths"]) != line_total
        or figures.get("rescued_rows", 0)
    ]
    if wrong:
        print(f"MISMATCH: expected {rows:,} rows, LineTotal {expected}; " + "; ".join(wrong))
        return 1
    print(f"checks: every read gave {rows:,} rows and LineTotal {expected} exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
