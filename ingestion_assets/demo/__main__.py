"""`python -m ingestion_assets.demo [run | ui [--port N] | change]`: build the demo database and
its landing zone and ingest every partition (a summary at the end), serve the Dagster UI over it,
or change rows of two days and drop a new file for the new-data sensors to find. A line is printed
before every stretch that takes a while."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import pathlib
import secrets
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    BetaWarning,
    DagsterInstance,
    Definitions,
    PreviewWarning,
    SupersessionWarning,
)
from deltalake import DeltaTable

from ingestion_assets.definitions import build_definitions
from ingestion_assets.demo.api import DemoApi
from ingestion_assets.demo.change import CHANGED_TABLES, change_demo_database
from ingestion_assets.demo.generate import DEFAULT_SCALE, create_demo_sqlite
from ingestion_assets.demo.landing import (
    deliver_late_rates,
    require_landing_zone,
    write_landing_files,
)
from ingestion_assets.lake.files import delta_dataset
from ingestion_assets.layers.asset import LAYER_JOB
from ingestion_assets.maintenance_job import MAINTENANCE_JOB
from ingestion_assets.preflight import CHECK_JOB
from ingestion_assets.project import DEMO_PROJECT_FILE, load_project, parse_project
from ingestion_assets.specs import ProjectSpec, SqlSourceSpec

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# telemetry off and a limit for the sources' pools; copied to $DAGSTER_HOME/dagster.yaml
DEMO_INSTANCE_FILE = pathlib.Path(__file__).with_name("dagster.yaml")
# `dagster dev` says it is superseded by `dg dev`: a notice for Dagster's developers, not the demo's
DEV_COMMAND_NOTICE = "ignore:Function `dev_command` is superseded:FutureWarning"
SQL_SOURCE = "adventureworks"
FILES_SOURCE = "landing"
# failed check results printed per check; the UI lists them all
FAILURES_SHOWN = 3


@dataclass
class AssetSummary:
    """One line of the summary's asset table."""

    asset: str
    partitions: int
    rows: int
    delta_version: int
    write_seconds: float
    checks_passed: int
    checks: int
    check_names: str


@dataclass
class JobSummary:
    """One line of the summary's job table, and its assets."""

    job: str
    run_id: str
    partitions: int
    wall_seconds: float
    assets: list[AssetSummary] = field(default_factory=list)
    # a layer's expectations: (asset, expectation) -> rows that violated it, over all days
    violations: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def checks_passed(self) -> int:
        """Check results that passed, over all the job's assets."""
        return sum(asset.checks_passed for asset in self.assets)

    @property
    def checks(self) -> int:
        """Check results recorded, over all the job's assets."""
        return sum(asset.checks for asset in self.assets)


def describe_checks(evaluations: Sequence[AssetCheckEvaluation]) -> str:
    """An asset's check names: those recorded once per partition, then the table-wide ones."""
    per_day: set[str] = set()
    names: set[str] = set()
    for evaluation in evaluations:
        names.add(evaluation.check_name)
        if evaluation.partition is not None:
            per_day.add(evaluation.check_name)
    parts = []
    if per_day:
        parts.append(", ".join(sorted(per_day)) + " per day")
    if names - per_day:
        parts.append(", ".join(sorted(names - per_day)))
    return "; ".join(parts)


def run_jobs(defs: Definitions, instance: DagsterInstance) -> list[JobSummary]:
    """Run every ingestion job over all its partitions (one run per job, as a single-run
    backfill); the maintenance job is left to its schedule."""
    summaries: list[JobSummary] = []
    repository = defs.get_repository_def()
    # the layers read what the ingestion jobs land: they run last
    jobs = sorted(repository.get_all_jobs(), key=lambda job: job.name.startswith(LAYER_JOB))
    for job in jobs:
        if job.name.startswith("__") or job.name in (MAINTENANCE_JOB, CHECK_JOB):
            continue
        partitions_def = job.partitions_def
        assets = len(job.asset_layer.selected_asset_keys)
        tags = {}
        keys: Sequence[str] = []
        if partitions_def is not None:
            keys = partitions_def.get_partition_keys()
            tags = {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
            print(
                f"running job {job.name}: {assets} assets over partitions {keys[0]}..{keys[-1]} "
                f"({len(keys)} days) in one run; Dagster first records the planned "
                "materializations",
                flush=True,
            )
        else:
            print(f"running job {job.name}: {assets} assets in one run", flush=True)
        started = time.monotonic()
        result = job.execute_in_process(
            instance=instance, tags=tags, run_config=QUIET_LOGS, raise_on_error=True
        )
        elapsed = time.monotonic() - started
        evaluations = result.get_asset_check_evaluations()
        failed = [e for e in evaluations if not e.passed]
        print(
            f"job {job.name}: run {result.run_id} succeeded in {elapsed:.1f} s; checks: "
            f"{len(evaluations) - len(failed)} passed, {len(failed)} failed",
            flush=True,
        )
        shown: collections.Counter[tuple[AssetKey, str]] = collections.Counter()
        for evaluation in failed:
            check = (evaluation.asset_key, evaluation.check_name)
            shown[check] += 1
            if shown[check] <= FAILURES_SHOWN:
                print(
                    f"  check {evaluation.check_name} of {evaluation.asset_key.to_user_string()} "
                    + (f"({evaluation.partition}) " if evaluation.partition else "")
                    + f"failed: {evaluation.description}",
                    flush=True,
                )
        for (key, name), count in shown.items():
            if count > FAILURES_SHOWN:
                print(
                    f"  ... and {count - FAILURES_SHOWN} more partition(s) where {name} of "
                    f"{key.to_user_string()} failed",
                    flush=True,
                )
        summary = JobSummary(job.name, result.run_id, len(keys), elapsed)
        for evaluation in evaluations:
            violations = evaluation.metadata.get("violations")
            if violations is not None:
                expectation = (evaluation.asset_key.to_user_string(), evaluation.check_name)
                counted = summary.violations.get(expectation, 0)
                summary.violations[expectation] = counted + int(str(violations.value))
        by_asset: dict[AssetKey, list[dict[str, Any]]] = {}
        for event in result.get_asset_materialization_events():
            materialization = event.materialization
            metadata = {key: value.value for key, value in materialization.metadata.items()}
            metadata["partition"] = event.partition
            by_asset.setdefault(materialization.asset_key, []).append(metadata)
        for key, events in sorted(by_asset.items(), key=lambda item: item[0].to_user_string()):
            uri = str(events[0]["dagster/uri"])
            judged = [e for e in evaluations if e.asset_key == key]
            summary.assets.append(
                AssetSummary(
                    asset=key.to_user_string(),
                    partitions=sum(1 for item in events if item["partition"] is not None),
                    # the run's rows (dagster/row_count is the table's total)
                    rows=int(str(events[0]["rows_written"])),
                    delta_version=DeltaTable(uri).version(),
                    write_seconds=float(str(events[0]["seconds"])),
                    checks_passed=sum(1 for e in judged if e.passed),
                    checks=len(judged),
                    check_names=describe_checks(judged),
                )
            )
        summaries.append(summary)
    return summaries


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> list[str]:
    """Aligned text columns under a rule; the columns in `left` are names, the others figures."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def format_summary(jobs: Sequence[JobSummary]) -> str:
    """The summary: a table of the assets, then one of the jobs (each one run)."""
    asset_rows = [
        (
            item.asset,
            str(item.partitions) if item.partitions else "snapshot",
            f"{item.rows:,}",
            str(item.delta_version),
            f"{item.write_seconds:.2f}",
            f"{item.checks_passed:,} of {item.checks:,}",
            item.check_names,
        )
        for job in jobs
        for item in job.assets
    ]
    assets = _table(
        (
            "asset",
            "partitions",
            "rows",
            "delta version",
            "write seconds",
            "checks passed",
            "checks",
        ),
        asset_rows,
        {0, 6},
    )
    job_rows = [
        (
            job.job,
            job.run_id,
            str(job.partitions) if job.partitions else "snapshot",
            f"{job.wall_seconds:.1f}",
            f"{job.checks_passed:,} of {job.checks:,}",
        )
        for job in jobs
    ]
    runs = _table(("job", "run", "partitions", "wall seconds", "checks passed"), job_rows, {0, 1})
    return "\n".join([*assets, "", *runs])


def format_layers(jobs: Sequence[JobSummary], project: ProjectSpec, lake: pathlib.Path) -> str:
    """The layers' expectations (violations over all days, and what each does with them), and
    the first rows of each gold table."""
    actions = {
        (layer.key, expectation.name): expectation.on_violation
        for layer in project.layers
        for expectation in layer.expect
    }
    rows = [
        (asset, name, actions.get((asset, name), "-"), f"{count:,}")
        for job in jobs
        for (asset, name), count in sorted(job.violations.items())
    ]
    lines = [
        "expectations of the layers (rows that violated each, over all days):",
        *_table(("layer", "expectation", "on violation", "violations"), rows, {0, 1, 2}),
    ]
    for layer in project.layers:
        if layer.group_name != "gold":
            continue
        uri = lake.joinpath(*layer.asset_path)
        if not uri.exists():
            continue
        table = delta_dataset(DeltaTable(str(uri))).to_table()
        columns = ["_partition_date"] + [
            name
            for name in table.column_names
            if name not in ("_partition_date", "_ingested_at", "_run_id")
        ]
        first = table.select(columns).sort_by([(name, "ascending") for name in columns[:2]])
        sample = [[str(value) for value in row.values()] for row in first.slice(0, 5).to_pylist()]
        lines += ["", f"{layer.key}: {table.num_rows:,} rows; the first five:"]
        lines += _table(columns, sample, set())
    return "\n".join(lines)


DEMO_API_USER = "demo"


@contextlib.contextmanager
def demo_api(demo_dir: pathlib.Path) -> Iterator[DemoApi]:
    """The demo API on a free port with a fresh password, named in the environment for Dagster."""
    password = secrets.token_urlsafe(16)
    with DemoApi(demo_dir, DEMO_API_USER, password) as api:
        os.environ["DEMO_API_URL"] = api.url
        os.environ["DEMO_API_PASSWORD"] = password
        yield api


def instance_file_text(home: pathlib.Path) -> str:
    """The demo's instance file for `home`, the event log's folder written into it (where
    Dagster's own storage keeps it), so that the instance opens without DAGSTER_HOME set too."""
    text = DEMO_INSTANCE_FILE.read_text(encoding="utf-8")
    storage_class = "  class: SqliteEventLogStorage\n"
    if storage_class not in text:
        raise ValueError(f"{DEMO_INSTANCE_FILE} no longer names the project's event log storage")
    base_dir = json.dumps(str(home.resolve() / "history" / "runs"))
    return text.replace(storage_class, f"{storage_class}  config:\n    base_dir: {base_dir}\n", 1)


def install_instance(home: pathlib.Path, own: bool) -> None:
    """The demo's instance file as `home`'s dagster.yaml: always in the demo's own home, elsewhere
    only where there is none (a DAGSTER_HOME of yours keeps its instance)."""
    target = home / "dagster.yaml"
    if own or not target.exists():
        target.write_text(instance_file_text(home), encoding="utf-8")
    else:
        print(
            f"keeping {target} (DAGSTER_HOME is yours); the demo's instance settings are in "
            f"{DEMO_INSTANCE_FILE}",
            flush=True,
        )


def _prepare(data_dir: pathlib.Path, regenerate: bool) -> pathlib.Path:
    demo_dir = data_dir / "demo"
    if regenerate or not (demo_dir / "Sales.db").exists():
        print(
            f"building the demo database in {demo_dir} ({DEFAULT_SCALE.days} days of orders)",
            flush=True,
        )
        counts = create_demo_sqlite(demo_dir, DEFAULT_SCALE)
        print(
            "demo database: "
            + ", ".join(f"{name} {count:,} rows" for name, count in counts.items()),
            flush=True,
        )
        landing_dir = data_dir / FILES_SOURCE
        landed = write_landing_files(landing_dir, demo_dir, DEFAULT_SCALE)
        rates = [item for item in landed if item.path.endswith(".tsv")]
        exports = [item for item in landed if not item.path.endswith(".tsv")]
        print(
            f"landing zone {landing_dir}: {len(rates)} daily currency-rate files "
            f"({sum(item.rows for item in rates):,} rows, {rates[0].day}..{rates[-1].day}); "
            + ", ".join(f"{item.path} {item.rows:,} rows" for item in exports)
            + f" (arrived {exports[0].day})",
            flush=True,
        )
    own_home = (data_dir / "dagster").resolve()
    os.environ.setdefault("DAGSTER_HOME", str(own_home))
    home = pathlib.Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    install_instance(home, own=home.resolve() == own_home)
    return demo_dir


def _shown(path: pathlib.Path) -> str:
    """A path relative to the working directory when it is below it."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(pathlib.Path.cwd()))
    return str(path)


def run(data_dir: pathlib.Path) -> int:
    """Build the demo database, ingest every job over all its partitions, print the summary."""
    demo_dir = _prepare(data_dir, regenerate=True)
    with demo_api(demo_dir), DagsterInstance.get() as instance:
        print(f"loading definitions from {_shown(DEMO_PROJECT_FILE)}", flush=True)
        project = load_project(DEMO_PROJECT_FILE)
        defs = build_definitions(project)
        jobs = run_jobs(defs, instance)
    print()
    print(format_summary(jobs))
    if project.layers:
        print()
        print(format_layers(jobs, project, data_dir / "lake"))
    print(
        f"\nDelta tables under {(data_dir / 'lake').resolve()}; `make ui` shows these runs, and "
        "`make demo-change` then changes rows of two days and drops a file for the new-data "
        "sensors."
    )
    return 0


def serve_ui(data_dir: pathlib.Path, port: int) -> int:
    """The demo API and `dagster dev` over the demo instance, until Ctrl-C."""
    demo_dir = _prepare(data_dir, regenerate=False)
    with demo_api(demo_dir) as api:
        print(f"demo API at {api.url}", flush=True)
        print(
            f"starting the Dagster UI on http://127.0.0.1:{port}: its code server loads the "
            "definitions first (about a minute); the UI answers once Dagster logs "
            "'Serving dagster-webserver'",
            flush=True,
        )
        ui = subprocess.run(
            [
                *(sys.executable, "-W", DEV_COMMAND_NOTICE, "-m", "dagster", "dev"),
                *("-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)),
            ],
            check=False,
        )
    return ui.returncode


def _sql_side_of_the_demo_project() -> ProjectSpec:
    """The demo project file, read for its SQL source: the demo API's URL and password exist only
    while `make demo` or `make ui` serve it, so stand-ins fill them (nothing calls the API)."""
    environ = {"DEMO_API_URL": "http://127.0.0.1:9", "DEMO_API_PASSWORD": "unused", **os.environ}
    text = DEMO_PROJECT_FILE.read_text(encoding="utf-8")
    return parse_project(text, str(DEMO_PROJECT_FILE), environ)


def change(data_dir: pathlib.Path, project: ProjectSpec) -> int:
    """Change rows of an old and the newest day and drop a late rates file; print them and what
    the sensors should request."""
    demo_dir = data_dir / "demo"
    try:
        # both parts are there before either changes: a refused change leaves the demo as it was
        require_landing_zone(data_dir / FILES_SOURCE)
        changed = change_demo_database(demo_dir)
        late = deliver_late_rates(data_dir / FILES_SOURCE, DEFAULT_SCALE)
    except (FileNotFoundError, LookupError) as error:
        print(error, file=sys.stderr)
        return 1
    print(f"changed {demo_dir}, LoadedAt {changed.loaded_at.isoformat(sep=' ')} (UTC):")
    for line in changed.describe():
        print(f"  {line}")
    spec = project.sources[SQL_SOURCE]
    assert isinstance(spec, SqlSourceSpec)
    tables = {table.qualified_name: table.key_name for table in spec.tables}
    assets = " and ".join(f"{SQL_SOURCE}/{tables[name]}" for name in CHANGED_TABLES)
    days = " and ".join(day.isoformat() for day in changed.days)
    print(
        f"the sensor {SQL_SOURCE}_new_data should request partitions {days} of {assets} at its "
        f"next tick (every {spec.sensor.interval_seconds} s while `make ui` runs; Automation "
        "in the UI shows its ticks)"
    )
    files = project.sources[FILES_SOURCE]
    print(
        f"dropped {data_dir / FILES_SOURCE / late.path} ({late.rows} late currency rates of "
        f"{late.day}): the sensor {FILES_SOURCE}_new_data should request partition {late.day} of "
        f"{FILES_SOURCE}/currency_rate at its next tick (every {files.sensor.interval_seconds} s)"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ingestion_assets.demo", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="build the demo database and ingest it (the default)")
    ui = commands.add_parser("ui", help="serve the Dagster UI over the demo instance")
    ui.add_argument("--port", type=int, default=3000, help="the UI's port (default 3000)")
    commands.add_parser(
        "change",
        help="correct and add orders of an old and the newest day, drop a late rates file "
        "(the sensors' demo)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`run` (default): build the demo data and ingest it; `ui`: serve the Dagster UI over it;
    `change`: change rows of two days in the demo database and drop a file in its landing zone."""
    # Dagster's notices about its own APIs' maturity say nothing to a demo's user
    for category in (BetaWarning, PreviewWarning, SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    arguments = _parser().parse_args(argv)
    # the demo project file names .data/... relative to the working directory
    data_dir = pathlib.Path(".data")
    if arguments.command == "ui":
        return serve_ui(data_dir, arguments.port)
    if arguments.command == "change":
        return change(data_dir, _sql_side_of_the_demo_project())
    return run(data_dir)


if __name__ == "__main__":
    sys.exit(main())
