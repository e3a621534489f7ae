"""`make bench-layout`: the Delta table layout, month clusters against Hive partitions by month.

Both layouts get the same rows (bench/source.py's SalesOrderDetail, exported to Parquet once and
streamed back in batches of 50,000, in day order as a windowed query returns them) through the
same conversion (`WritePlan`: casts, lineage columns, `_partition_date`):

- `month`: this project's layout (`ingestion_assets.lake`): no partition column, files that each
  hold one month of days, replaced through add and remove actions in one commit, compacted by
  `maintain_table`.
- `hive`: a `_partition_month` partition column (`YYYY-MM`) written by delta-rs's own
  `write_deltalake`, a window replaced with `mode="overwrite", predicate=...` (the month bounds
  and the days), compacted by `DeltaTable.optimize.compact()`.

Scenarios, each in a process of its own (peak RSS is the process's): a full backfill as one
write; re-running one day inside a full month; compaction after 30 daily runs (the backfill of
every day but the last 30, then one run per day, untimed but their median reported); DuckDB
queries filtered on non-partition columns, through the delta extension (`delta_scan`) and
through the table's current files (`read_parquet`). Figures are medians of `--runs`.

    .venv/bin/python bench/layout.py             # 2,000,000 rows over 1,096 days, 3 runs
    .venv/bin/python bench/layout.py --quick     # 200,000 rows, 1 run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BENCH_DIR = pathlib.Path(__file__).resolve().parent
LAYOUTS = ("month", "hive")
PARTITION_MONTH = "_partition_month"
BATCH_ROWS = 50_000
DAILY_RUNS = 30
# the steps of a fraction of a second are run at least this often: their medians steady
SHORT_RUNS = 5
CHILD_TIMEOUT_SECONDS = 1800.0
# the non-partition filters of the query scenario: one correlated with time (an order id range,
# a few hours of one day), one that is not (a product, spread over every file)
QUERIES = {
    "orders": 'SELECT count(*), sum("LineTotal") FROM {t} WHERE "SalesOrderID" BETWEEN {a} AND {b}',
    "product": 'SELECT count(*), sum("LineTotal") FROM {t} WHERE "ProductID" = 870',
}


@dataclasses.dataclass(frozen=True)
class Step:
    """What one child process does, written by the harness as JSON."""

    step: str
    layout: str
    parquet: str
    uri: str
    first_day: str
    last_day: str
    days: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------- the two layouts (child side)


def _source(parquet: str, days: tuple[datetime.date, datetime.date]) -> Iterator[pa.RecordBatch]:
    """The exported rows of `days`, streamed in batches as a windowed query would send them
    (row groups outside the days are skipped, as an index on the date column would)."""
    start = datetime.datetime.combine(days[0], datetime.time())
    end = datetime.datetime.combine(days[1] + datetime.timedelta(days=1), datetime.time())
    source = pq.ParquetFile(parquet)
    column = source.schema_arrow.get_field_index("ModifiedDate")
    groups = []
    for index in range(source.num_row_groups):
        stats = source.metadata.row_group(index).column(column).statistics
        if stats.max >= start and stats.min < end:
            groups.append(index)
    low, high = pa.scalar(start, pa.timestamp("us")), pa.scalar(end, pa.timestamp("us"))
    for batch in source.iter_batches(batch_size=BATCH_ROWS, row_groups=groups):
        modified = batch.column("ModifiedDate")
        rows = batch.filter(pc.and_(pc.greater_equal(modified, low), pc.less(modified, high)))
        if rows.num_rows:
            yield rows


def _plan(schema: pa.Schema, first: datetime.date, last: datetime.date) -> Any:
    from ingestion_assets.lake.rows import WritePlan, lake_schema
    from ingestion_assets.sources.window import PartitionWindow

    return WritePlan(
        table_label="table bench.sales_order_detail",
        window=PartitionWindow.of_days(first, last, "UTC"),
        target=lake_schema(schema, "error"),
        partition_column="ModifiedDate",
        ingested_at=datetime.datetime.now(datetime.UTC),
        run_id="bench",
        nanoseconds="error",
    )


def _replace_month(step: Step, first: datetime.date, last: datetime.date) -> None:
    from ingestion_assets.lake.replace import fit_schema, open_table, write_partitions

    plan = _plan(pq.read_schema(step.parquet), first, last)
    existing = open_table(step.uri, None)
    plan.target, schema_mode = fit_schema(existing, plan.target, "evolve", "bench", step.uri)
    write_partitions(
        step.uri,
        None,
        existing,
        _source(step.parquet, (first, last)),
        plan,
        schema_mode,
        None,
        lambda _message: None,
    )


def _zstd() -> Any:
    """zstd, as this project's files are compressed: the layouts then differ in layout only."""
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD")


def _replace_hive(step: Step, first: datetime.date, last: datetime.date) -> None:
    from deltalake import write_deltalake

    from ingestion_assets.lake.files import read_ahead
    from ingestion_assets.lake.replace import open_table
    from ingestion_assets.lake.rows import PARTITION_DATE, replace_predicate

    plan = _plan(pq.read_schema(step.parquet), first, last)
    schema = plan.target.append(pa.field(PARTITION_MONTH, pa.string()))

    def with_month() -> Iterator[pa.RecordBatch]:
        batches = plan.stream(read_ahead(_source(step.parquet, (first, last))), lambda _: None)
        try:
            for batch in batches:
                days = batch.column(PARTITION_DATE).cast(pa.timestamp("s"))
                months = pc.strftime(days, "%Y-%m")
                yield pa.RecordBatch.from_arrays([*batch.columns, months], schema=schema)
        finally:
            batches.close()

    reader = pa.RecordBatchReader.from_batches(schema, with_month())
    if open_table(step.uri, None) is None:
        write_deltalake(
            step.uri,
            reader,
            partition_by=[PARTITION_MONTH],
            mode="append",
            writer_properties=_zstd(),
        )
        return
    # the month bounds let delta-rs prune by partition before it reads any file's statistics
    months = f"{PARTITION_MONTH} >= '{first:%Y-%m}' AND {PARTITION_MONTH} <= '{last:%Y-%m}'"
    predicate = f"{months} AND {replace_predicate(first, last)}"
    write_deltalake(
        step.uri,
        reader,
        partition_by=[PARTITION_MONTH],
        mode="overwrite",
        predicate=predicate,
        writer_properties=_zstd(),
    )


def _replace(step: Step, first: datetime.date, last: datetime.date) -> None:
    (_replace_month if step.layout == "month" else _replace_hive)(step, first, last)


def _table_figures(uri: str) -> dict[str, int]:
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
    return {
        "rows": int(pc.sum(actions["num_records"]).as_py() or 0),
        "files": actions.num_rows,
        "bytes": int(pc.sum(actions["size_bytes"]).as_py() or 0),
    }


def _stored_bytes(uri: str) -> int:
    return sum(
        path.stat().st_size for path in pathlib.Path(uri).rglob("*.parquet") if path.is_file()
    )


def run_step(step: Step) -> dict[str, Any]:
    """One scenario step of one layout, timed; its figures."""
    # imported before the clock starts (the package's import loads Dagster, seconds of it)
    import deltalake  # noqa: F401

    import ingestion_assets.lake.compaction  # noqa: F401

    first = datetime.date.fromisoformat(step.first_day)
    last = datetime.date.fromisoformat(step.last_day)
    result: dict[str, Any] = {}
    if step.step == "replace":
        stored = _stored_bytes(step.uri) if pathlib.Path(step.uri).exists() else 0
        started = time.perf_counter()
        _replace(step, first, last)
        result["seconds"] = time.perf_counter() - started
        result["bytes_written"] = _stored_bytes(step.uri) - stored
    elif step.step == "daily":
        seconds = []
        for text in step.days:
            day = datetime.date.fromisoformat(text)
            started = time.perf_counter()
            _replace(step, day, day)
            seconds.append(time.perf_counter() - started)
        result["seconds"] = statistics.median(seconds)
    elif step.step == "compact":
        from deltalake import DeltaTable

        from ingestion_assets.lake.compaction import maintain_table
        from ingestion_assets.lake.files import DEFAULT_MAX_FILE_BYTES

        stored = _stored_bytes(step.uri)
        result["files_before"] = _table_figures(step.uri)["files"]
        started = time.perf_counter()
        if step.layout == "month":
            maintain_table(
                step.uri, None, compact=True, vacuum_retention_hours=None, checkpoint=False
            )
        else:
            DeltaTable(step.uri).optimize.compact(
                target_size=DEFAULT_MAX_FILE_BYTES, writer_properties=_zstd()
            )
        result["seconds"] = time.perf_counter() - started
        result["bytes_written"] = _stored_bytes(step.uri) - stored
    else:
        raise SystemExit(f"unknown step {step.step}")
    return {**result, **_table_figures(step.uri)}


# ---------------------------------------------------------------------------- the harness


@dataclasses.dataclass
class Figure:
    """One row of the printed table: medians of one scenario on one layout."""

    scenario: str
    layout: str
    seconds: float | None = None
    files: int | None = None
    table_mb: float | None = None
    written_mb: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""


def _child(
    command: list[str], name: str, work: pathlib.Path, stdin: str | None = None
) -> tuple[dict[str, Any], float]:
    from measure import json_result, run_processes

    run = run_processes(
        name, [command], work / "logs" / name, CHILD_TIMEOUT_SECONDS, stdin_text=stdin
    )
    return json_result(name, run), run.peak_rss_mb


Sample = tuple[dict[str, Any], float]


def _step(step: Step, work: pathlib.Path, name: str) -> Sample:
    settings = work / f"{name}.json"
    settings.write_text(json.dumps(dataclasses.asdict(step)), encoding="utf-8")
    return _child([sys.executable, __file__, "child", str(settings)], name, work)


def _median_figure(scenario: str, layout: str, samples: list[Sample]) -> Figure:
    def median(key: str) -> float:
        return statistics.median(float(result[key]) for result, _ in samples)

    first = samples[0][0]
    return Figure(
        scenario,
        layout,
        seconds=median("seconds"),
        files=int(median("files")) if "files" in first else None,
        table_mb=median("bytes") / 1e6 if "bytes" in first else None,
        written_mb=median("bytes_written") / 1e6 if "bytes_written" in first else None,
        peak_rss_mb=statistics.median(rss for _, rss in samples),
        note=f"{first['files_before']} files before" if "files_before" in first else "",
    )


def _fresh(work: pathlib.Path, name: str, base: pathlib.Path | None = None) -> pathlib.Path:
    target = work / name
    shutil.rmtree(target, ignore_errors=True)
    if base is not None:
        shutil.copytree(base, target)
    # the copy's write-back would otherwise land in the next timed step
    os.sync()
    return target


def _say(text: str) -> None:
    print(text, flush=True)


def measure(
    parquet: pathlib.Path, days: list[datetime.date], runs: int, work: pathlib.Path
) -> list[Figure]:
    """Every scenario on both layouts, the layouts' runs taking turns (a load on the machine
    then weighs on both alike); the figures."""
    first, last = days[0], days[-1]
    # the 15th of the month in the middle of the table: a day with a full month around it
    rerun = days[len(days) // 2].replace(day=15)

    def step(
        kind: str,
        layout: str,
        uri: pathlib.Path,
        low: datetime.date,
        high: datetime.date,
        *daily: datetime.date,
    ) -> Step:
        return Step(
            kind,
            layout,
            str(parquet),
            str(uri),
            low.isoformat(),
            high.isoformat(),
            [day.isoformat() for day in daily],
        )

    def turns(count: int, run_one: Callable[[str, int], Sample]) -> dict[str, list[Sample]]:
        samples: dict[str, list[Sample]] = {layout: [] for layout in LAYOUTS}
        for run in range(count):
            for layout in LAYOUTS:
                samples[layout].append(run_one(layout, run))
        return samples

    def backfill(layout: str, run: int) -> Sample:
        name = f"{layout}-backfill-{run}"
        return _step(step("replace", layout, _fresh(work, name), first, last), work, name)

    def rerun_day(layout: str, run: int) -> Sample:
        uri = _fresh(work, f"{layout}-rerun", work / f"{layout}-backfill-0")
        return _step(step("replace", layout, uri, rerun, rerun), work, f"{layout}-rerun-{run}")

    def compact(layout: str, run: int) -> Sample:
        uri = _fresh(work, f"{layout}-compact", work / f"{layout}-nightly")
        return _step(step("compact", layout, uri, first, last), work, f"{layout}-compact-{run}")

    def nightly(layout: str, _run: int) -> Sample:
        uri = _fresh(work, f"{layout}-nightly")
        _step(step("replace", layout, uri, first, days[-DAILY_RUNS - 1]), work, f"{layout}-base")
        daily = step("daily", layout, uri, first, last, *days[-DAILY_RUNS:])
        return _step(daily, work, f"{layout}-daily")

    scenarios: list[tuple[str, int, Callable[[str, int], Sample]]] = [
        (f"backfill, {len(days):,} days", runs, backfill),
        (f"re-run {rerun} (month full)", max(runs, SHORT_RUNS), rerun_day),
        (f"one daily run (median of {DAILY_RUNS})", 1, nightly),
        (f"compaction after {DAILY_RUNS} daily runs", max(runs, SHORT_RUNS), compact),
    ]
    figures = []
    for scenario, count, run_one in scenarios:
        for layout, samples in turns(count, run_one).items():
            figures.append(_median_figure(scenario, layout, samples))
            _say(f"  {layout}: {scenario}: {figures[-1].seconds:.3f} s (load {_load()})")
    bases = {layout: work / f"{layout}-backfill-0" for layout in LAYOUTS}
    figures.extend(_queries(parquet, bases, runs, work))
    return figures


def _load() -> str:
    """The machine's 1-minute load average: other work on it shows in the figures."""
    return f"{os.getloadavg()[0]:.1f}"


def _queries(
    parquet: pathlib.Path, bases: dict[str, pathlib.Path], runs: int, work: pathlib.Path
) -> list[Figure]:
    """The DuckDB scenario, in the `duckdb` peer venv (duckdb + its delta extension)."""
    from deltalake import DeltaTable
    from peer_envs import ENVIRONMENTS, PeerSetupError, ensure

    order_ids = pq.read_table(parquet, columns=["SalesOrderID"]).column("SalesOrderID")
    middle = int(pc.min_max(order_ids)["min"].as_py()) + len(order_ids) // 7
    bounds = {"a": middle, "b": middle + 500}
    try:
        environment = ensure(ENVIRONMENTS["duckdb"])
    except PeerSetupError as error:
        return [Figure("DuckDB queries", layout, note=f"n/a: {error}") for layout in LAYOUTS]
    figures = []
    for name, template in QUERIES.items():
        for reader in ("delta_scan", "read_parquet"):
            for layout in LAYOUTS:
                files = DeltaTable(str(bases[layout])).file_uris()
                request = {
                    "sql": template.replace("{a}", str(bounds["a"])).replace(
                        "{b}", str(bounds["b"])
                    ),
                    "reader": reader,
                    "table": str(bases[layout]),
                    "files": files,
                    "runs": max(3, runs),
                }
                command = [str(environment.python), str(BENCH_DIR / "peers" / "duckdb_query.py")]
                result, rss = _child(
                    command, f"query-{name}-{reader}-{layout}", work, stdin=json.dumps(request)
                )
                figures.append(
                    Figure(
                        f"DuckDB {name} filter, {reader}",
                        layout,
                        seconds=float(result["seconds"]),
                        files=len(files),
                        peak_rss_mb=rss,
                        note=f"{result['rows']:,} rows matched",
                    )
                )
    return figures


def _render(figures: list[Figure]) -> str:
    def cell(value: float | int | None, digits: int = 2) -> str:
        if value is None:
            return "-"
        return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"

    lines = [
        "| scenario | layout | wall s | files | table MB | written MB | peak RSS MB | |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for figure in sorted(figures, key=lambda item: item.scenario):
        lines.append(
            f"| {figure.scenario} | {figure.layout} | {cell(figure.seconds, 3)} | "
            f"{cell(figure.files)} | {cell(figure.table_mb, 1)} | {cell(figure.written_mb, 1)} | "
            f"{cell(figure.peak_rss_mb, 0)} | {figure.note} |"
        )
    return "\n".join(lines)


def _checkpoint() -> None:
    """Have PostgreSQL write its dirty pages now, and the kernel its dirty files."""
    import psycopg2
    from source import POSTGRES_DSN

    connection = psycopg2.connect(POSTGRES_DSN)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
    finally:
        connection.close()
    os.sync()


def main(argv: list[str] | None = None) -> int:
    """The harness: build the rows, run every scenario on both layouts, print the table."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["child"]:
        settings = json.loads(pathlib.Path(arguments[1]).read_text(encoding="utf-8"))
        print(json.dumps(run_step(Step(**settings))), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="SalesOrderDetail rows (default 2,000,000)")
    parser.add_argument("--days", type=int, default=1096, help="days they spread over")
    parser.add_argument("--runs", type=int, help="runs per scenario, medians (default 3)")
    parser.add_argument("--quick", action="store_true", help="--rows 200000 --runs 1")
    options = parser.parse_args(arguments)
    rows = options.rows or (200_000 if options.quick else 2_000_000)
    runs = options.runs or (1 if options.quick else 3)
    sys.path.insert(0, str(BENCH_DIR))
    from source import build_postgres_source, drop_postgres_source, export_parquet, new_schema_name

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        work = pathlib.Path(tempfile.mkdtemp(prefix="layout-bench-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        schema = new_schema_name()
        stack.callback(drop_postgres_source, schema)
        _say(f"building {rows:,} rows over {options.days:,} days in schema {schema} ...")
        source = build_postgres_source(schema, rows, options.days)
        parquet = work / "SalesOrderDetail.parquet"
        # row groups of one batch, in day order: a day's rows are read without the others
        exported = export_parquet(source, parquet).sort_by("ModifiedDate")
        pq.write_table(exported, parquet, row_group_size=BATCH_ROWS)
        del exported
        # the measured steps read the Parquet file only: the server's write-back of the schema
        # it just built is not left to run during them
        drop_postgres_source(schema)
        _checkpoint()
        days = [
            source.first_day + datetime.timedelta(days=offset)
            for offset in range((source.last_day - source.first_day).days + 1)
        ]
        figures = measure(parquet, days, runs, work)
    minutes = (time.monotonic() - started) / 60
    _say("\n" + _render(figures))
    _say(f"\n{rows:,} rows, {runs} run(s) per scenario, medians; {minutes:.1f} min in all.")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    sys.exit(main())
