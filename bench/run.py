"""`make bench`: this project's ingestion against the hardware's limits and against its peers.

Builds an AdventureWorks-shaped schema in the local PostgreSQL (generate_series, a fresh
`bench_<random>` schema, dropped at the end, also on Ctrl-C or failure), exports its
SalesOrderDetail once to Parquet and SQLite, serves a larger demo database through the demo REST
API, then runs every case in processes of its own, `--runs` times, and prints one table of median
figures with their ratios to the pipeline limit and to the best peer. See bench/README.md.

    python bench/run.py                      # 2,000,000 rows over 1,096 days, 3 runs per case
    python bench/run.py --quick              # smoke run: 200,000 rows, 20,000 records, 1 run
    python bench/run.py --only limit-read,project-backfill --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from types import FrameType

import psycopg2
from cases import CASES, CASES_BY_NAME, TAP_POSTGRES_PASSWORD, Bench, Case, Group, child_environment
from measure import CaseError, Sample, median_figures, run_processes
from peer_envs import ENVIRONMENTS, PeerSetupError, ensure, lock
from report import Outcome, build_table, render_markdown, render_text
from source import (
    POSTGRES_DSN,
    build_postgres_source,
    build_rest_source,
    drop_postgres_source,
    export_parquet,
    export_sqlite,
    new_schema_name,
    rest_arrow_bytes_per_row,
)

from ingestion_assets.demo.api import DemoApi

BENCH_DIR = pathlib.Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / ".results"
DISCOVER_TIMEOUT_SECONDS = 600


@dataclasses.dataclass(frozen=True)
class Options:
    """The command line."""

    rows: int
    days: int
    runs: int
    rest_records: int
    page_size: int
    latency_ms: float
    parallel_requests: int
    timeout_seconds: float
    only: tuple[str, ...]


def parse_options(argv: Sequence[str] | None = None) -> Options | None:
    """Options for a benchmark run; None when the peers' lock files were re-resolved instead."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases: " + ", ".join(case.name for case in CASES),
    )
    parser.add_argument("--rows", type=int, help="SalesOrderDetail rows (default 2,000,000)")
    parser.add_argument(
        "--days",
        type=int,
        default=1096,
        help="days the rows spread over, from 2021-01-01 (default 1096)",
    )
    parser.add_argument("--runs", type=int, help="runs per case, figures are medians (default 3)")
    parser.add_argument(
        "--rest-records", type=int, help="records the REST stream serves (default 200,000)"
    )
    parser.add_argument(
        "--page-size", type=int, default=1000, help="REST records per page (default 1000)"
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=50.0,
        help="delay the demo API adds per response (default 50)",
    )
    parser.add_argument(
        "--parallel-requests",
        type=int,
        default=4,
        help="this project's parallel REST requests (default 4)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds one run of a case may take (default 1800)",
    )
    parser.add_argument("--only", default="", help="comma-separated case names (default: all)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --rows 200000 --rest-records 20000 --runs 1 (explicit values win)",
    )
    parser.add_argument(
        "--lock-peers",
        action="store_true",
        help="re-resolve bench/peers/requirements-*.txt (pinned peer versions) and exit",
    )
    args = parser.parse_args(argv)
    if args.lock_peers:
        for environment in ENVIRONMENTS.values():
            lock(environment)
            print(f"pinned {environment.lock_file.relative_to(BENCH_DIR.parent)}")
        return None
    defaults = (200_000, 20_000, 1) if args.quick else (2_000_000, 200_000, 3)
    args.rows = args.rows if args.rows is not None else defaults[0]
    args.rest_records = args.rest_records if args.rest_records is not None else defaults[1]
    args.runs = args.runs if args.runs is not None else defaults[2]
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = [name for name in only if name not in CASES_BY_NAME]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(CASES_BY_NAME)}")
    if args.rows < 1 or args.days < 1 or args.runs < 1 or args.rest_records < 1:
        parser.error("--rows, --days, --runs and --rest-records must be at least 1")
    last_day = datetime.date(2021, 1, 1) + datetime.timedelta(days=args.days - 1)
    if last_day >= datetime.date.today():
        parser.error(f"--days {args.days} reaches {last_day}: partitions must be in the past")
    return Options(
        rows=args.rows,
        days=args.days,
        runs=args.runs,
        rest_records=args.rest_records,
        page_size=args.page_size,
        latency_ms=args.latency_ms,
        parallel_requests=args.parallel_requests,
        timeout_seconds=args.timeout,
        only=only,
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _terminate(_signal_number: int, _frame: FrameType | None) -> None:
    # the same clean-up as Ctrl-C: case processes stopped, schema dropped, files removed
    raise KeyboardInterrupt


def _discover_tap_postgres(bench: Bench) -> None:
    """tap-postgres's catalog of the benchmark schema with only SalesOrderDetail selected."""
    source = bench.require_postgres()
    config = bench.work_dir / "tap-postgres-config.json"
    config.write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": 5432,
                "user": "postgres",
                "password": TAP_POSTGRES_PASSWORD,
                "database": "postgres",
                "filter_schemas": [source.schema],
            }
        ),
        encoding="utf-8",
    )
    tap = ENVIRONMENTS["tap-postgres"].executable("tap-postgres")
    try:
        discovered = subprocess.run(
            [str(tap), "--config", str(config), "--discover"],
            capture_output=True,
            text=True,
            timeout=DISCOVER_TIMEOUT_SECONDS,
            check=False,
            env=child_environment(),
        )
    except subprocess.TimeoutExpired:
        raise CaseError(
            f"tap-postgres --discover: no answer in {DISCOVER_TIMEOUT_SECONDS} s"
        ) from None
    if discovered.returncode != 0:
        lines = discovered.stderr.strip().splitlines() or ["no error output"]
        raise CaseError(f"tap-postgres --discover failed: {lines[-1][:300]}")
    catalog = json.loads(discovered.stdout)
    wanted = f"{source.schema}-SalesOrderDetail"
    if wanted not in {stream["tap_stream_id"] for stream in catalog["streams"]}:
        raise CaseError(f"tap-postgres --discover found no stream {wanted}")
    for stream in catalog["streams"]:
        for entry in stream["metadata"]:
            if entry["breadcrumb"] == []:
                entry["metadata"]["selected"] = stream["tap_stream_id"] == wanted
    bench.tap_postgres_config = config
    bench.tap_postgres_catalog = bench.work_dir / "tap-postgres-catalog.json"
    bench.tap_postgres_catalog.write_text(json.dumps(catalog), encoding="utf-8")


def _one_day_rows(bench: Bench) -> int:
    source = bench.require_postgres()
    connection = psycopg2.connect(POSTGRES_DSN)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT count(*) FROM {source.qualified_table} WHERE "ModifiedDate" >= %s '
                '  AND "ModifiedDate" < %s::date + 1',
                (bench.one_day, bench.one_day),
            )
            row = cursor.fetchone()
    finally:
        connection.close()
    return int(row[0]) if row else 0


def prepare(
    bench: Bench, needs: set[str], options: Options, stack: contextlib.ExitStack
) -> dict[str, str]:
    """Build what the selected cases need, untimed; returns what is unavailable and why."""
    unavailable: dict[str, str] = {}
    for need in sorted(need for need in needs if need.startswith("peer:")):
        try:
            ensure(ENVIRONMENTS[need.removeprefix("peer:")])
        except PeerSetupError as error:
            unavailable[need] = str(error)
            _say(f"peer unavailable: {error}")
    steps: list[tuple[str, Callable[[], None]]] = [
        ("postgres", lambda: _prepare_postgres(bench, needs, options, stack)),
        ("catalog", lambda: _discover_tap_postgres(bench)),
        ("rest", lambda: _prepare_rest(bench, options, stack)),
        ("mysql", lambda: _prepare_mysql(bench, stack)),
    ]
    blocked_by = {"catalog": ("postgres", "peer:tap-postgres"), "mysql": ("postgres",)}
    for need, step in steps:
        if need not in needs or any(other in unavailable for other in blocked_by.get(need, ())):
            continue
        try:
            step()
        except Exception as error:
            # not swallowed: every case that needs this step reports it as its reason
            unavailable[need] = f"preparing {need} failed: {type(error).__name__}: {error}"
            _say(unavailable[need])
    for need in ("parquet", "sqlite"):
        if "postgres" in unavailable:
            unavailable[need] = unavailable["postgres"]
    return unavailable


def _prepare_postgres(
    bench: Bench, needs: set[str], options: Options, stack: contextlib.ExitStack
) -> None:
    schema = new_schema_name()
    stack.callback(_drop_schema, schema)
    started = time.monotonic()
    _say(f"building {options.rows:,} rows over {options.days:,} days in schema {schema} ...")
    bench.postgres = build_postgres_source(schema, options.rows, options.days)
    counts = ", ".join(f"{n} {c:,}" for n, c in bench.postgres.table_counts().items())
    _say(f"  {counts} ({time.monotonic() - started:.0f} s)")
    bench.parquet_path = bench.work_dir / "SalesOrderDetail.parquet"
    table = export_parquet(bench.postgres, bench.parquet_path)
    bench.sql_arrow_bytes_per_row = table.nbytes / table.num_rows
    _say(f"  exported to Parquet: {table.nbytes / 1e6:,.1f} MB of Arrow data")
    if "sqlite" in needs:
        bench.sqlite_dir = bench.work_dir / "sqlite"
        bench.sqlite_attach = export_sqlite(table, bench.sqlite_dir)
        _say(f"  exported to SQLite: {bench.sqlite_attach['Sales']}")


def _prepare_mysql(bench: Bench, stack: contextlib.ExitStack) -> None:
    """The Parquet export's rows in a fresh MariaDB database, dropped at the end."""
    import pyarrow.parquet as pq
    from mysql_source import (
        build_mariadb_source,
        drop_mariadb_source,
        mariadb_url,
        new_database_name,
    )

    if bench.parquet_path is None:
        raise RuntimeError("the Parquet export is missing")
    database = new_database_name()
    stack.callback(_drop_mariadb, drop_mariadb_source, database)
    started = time.monotonic()
    rows = build_mariadb_source(database, pq.read_table(bench.parquet_path), bench.work_dir)
    bench.mysql_database, bench.mysql_url = database, mariadb_url(database)
    _say(
        f"  loaded into MariaDB database {database}: {rows:,} rows "
        f"({time.monotonic() - started:.0f} s)"
    )


def _drop_mariadb(drop: Callable[[str], None], database: str) -> None:
    try:
        drop(database)
        _say(f"dropped MariaDB database {database}")
    except Exception as error:
        _say(f"could not drop MariaDB database {database}: {error}")


def _prepare_rest(bench: Bench, options: Options, stack: contextlib.ExitStack) -> None:
    started = time.monotonic()
    bench.rest = build_rest_source(bench.work_dir / "rest", options.rest_records)
    bench.rest_arrow_bytes_per_row = rest_arrow_bytes_per_row(bench.rest)
    bench.api_password = secrets.token_urlsafe(16)
    api = DemoApi(
        bench.rest.directory,
        "demo",
        bench.api_password,
        latency_seconds=options.latency_ms / 1000,
        max_limit=max(options.page_size, 1000),
    )
    stack.enter_context(api)
    bench.api_url = api.url
    _say(
        f"demo API at {api.url}: {options.rest_records:,} SalesOrderDetail records, "
        f"{options.latency_ms:.0f} ms added per response ({time.monotonic() - started:.0f} s)"
    )


def _drop_schema(schema: str) -> None:
    try:
        drop_postgres_source(schema)
        _say(f"dropped schema {schema}")
    except psycopg2.Error as error:
        _say(f"could not drop schema {schema} ({error}); drop it by hand")


def run_case(
    case: Case,
    bench: Bench,
    options: Options,
    unavailable: dict[str, str],
    expected_rows: dict[Group, int],
    log_dir: pathlib.Path,
) -> Outcome:
    """Run one case `--runs` times, each in a fresh folder; its medians, or why it has none."""
    missing = [need for need in sorted(case.needs) if need in unavailable]
    if missing:
        return Outcome(case, reason=unavailable[missing[0]])
    bytes_per_row = (
        bench.rest_arrow_bytes_per_row if case.group == "rest" else bench.sql_arrow_bytes_per_row
    )
    samples: list[Sample] = []
    for run in range(1, options.runs + 1):
        run_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{case.name}-", dir=bench.work_dir))
        try:
            invocation = case.invocation(bench, run_dir)
            finished = run_processes(
                case.name,
                invocation.commands,
                log_dir / case.name / f"run-{run}",
                options.timeout_seconds,
                env=child_environment(),
                stdin_text=invocation.stdin_text,
            )
            sample = invocation.read(finished)
        except CaseError as error:
            _say(f"  {case.name}: {error}")
            return Outcome(case, reason=str(error))
        except OSError as error:
            _say(f"  {case.name}: {error}")
            return Outcome(case, reason=f"{case.name}: could not start: {error}")
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        expected = case.expected_rows(bench) if case.expected_rows else expected_rows[case.group]
        if sample.rows != expected:
            note = f"landed {sample.rows:,} rows, expected {expected:,}"
            sample = dataclasses.replace(sample, note="; ".join(filter(None, [sample.note, note])))
        samples.append(sample)
        rate = sample.rows / sample.seconds if sample.seconds else 0.0
        _say(
            f"  {case.name} run {run}/{options.runs}: {sample.rows:,} rows in "
            f"{sample.seconds:.2f} s ({rate:,.0f} rows/s), peak RSS {sample.peak_rss_mb:,.0f} MB"
            + (f"; {sample.note}" if sample.note else "")
        )
    return Outcome(case, median_figures(samples, bytes_per_row), samples=tuple(samples))


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the sources, run the selected cases, print and save the table."""
    options = parse_options(argv)
    if options is None:
        return 0
    selected = [case for case in CASES if not options.only or case.name in options.only]
    needs = set().union(*(case.needs for case in selected))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS_DIR / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    outcomes: list[Outcome] = []
    with contextlib.ExitStack() as stack:
        work_dir = pathlib.Path(tempfile.mkdtemp(prefix="ingestion-bench-"))
        stack.callback(shutil.rmtree, work_dir, ignore_errors=True)
        bench = Bench(
            work_dir=work_dir,
            page_size=options.page_size,
            parallel_requests=options.parallel_requests,
        )
        unavailable = prepare(bench, needs, options, stack)
        day_rows = _one_day_rows(bench) if bench.postgres else 0
        expected_rows: dict[Group, int] = {
            "sql": options.rows,
            "day": day_rows,
            "rest": options.rest_records,
        }
        for case in selected:
            _say(f"{case.name}: {case.label.strip()}")
            outcomes.append(run_case(case, bench, options, unavailable, expected_rows, log_dir))
    titles: dict[Group, str] = {
        "sql": (
            f"SQL full load: {options.rows:,} SalesOrderDetail rows over {options.days:,} days "
            f"(Arrow {bench.sql_arrow_bytes_per_row:.0f} B/row)"
        ),
        "day": (f"SQL one day: {bench.one_day if bench.postgres else '-'} ({day_rows:,} rows)"),
        "rest": (
            f"REST: {options.rest_records:,} records, pages of {options.page_size:,}, "
            f"{options.latency_ms:.0f} ms added per response "
            f"(Arrow {bench.rest_arrow_bytes_per_row:.0f} B/record)"
        ),
    }
    table = build_table(outcomes, titles)
    minutes = (time.monotonic() - started) / 60
    footer = (
        f"\n{options.runs} run(s) per case, medians. L and P columns: the row's figure divided "
        f"by the pipeline limit's (L) and by the best peer's (P). Whole benchmark: {minutes:.1f} min."
    )
    _say("\n" + render_text(table) + footer)
    (log_dir / "results.md").write_text(render_markdown(table) + footer + "\n", encoding="utf-8")
    (log_dir / "results.json").write_text(
        json.dumps(
            {
                "options": dataclasses.asdict(options),
                "outcomes": [
                    {
                        "case": outcome.case.name,
                        "figures": dataclasses.asdict(outcome.figures) if outcome.figures else None,
                        "reason": outcome.reason,
                        "runs": [dataclasses.asdict(sample) for sample in outcome.samples],
                    }
                    for outcome in outcomes
                ],
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    _say(f"results and logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
