"""`python -m ingestion_assets.demo`: build the demo database, ingest every partition, print a summary."""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
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
from ingestion_assets.demo.generate import DEFAULT_SCALE, create_demo_sqlite
from ingestion_assets.maintenance_job import MAINTENANCE_JOB
from ingestion_assets.preflight import CHECK_JOB
from ingestion_assets.project import DEMO_PROJECT_FILE, load_project

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class AssetSummary:
    """One line of the summary table."""

    asset: str
    partitions: int
    rows: int
    delta_version: int
    write_seconds: float
    checks_passed: int
    checks: int


def run_jobs(defs: Definitions, instance: DagsterInstance) -> list[AssetSummary]:
    """Run every ingestion job over all its partitions (one run per job, as a single-run
    backfill); the maintenance job is left to its schedule."""
    summaries: list[AssetSummary] = []
    repository = defs.get_repository_def()
    for job in repository.get_all_jobs():
        if job.name.startswith("__") or job.name in (MAINTENANCE_JOB, CHECK_JOB):
            continue
        partitions_def = job.partitions_def
        tags = {}
        if partitions_def is not None:
            keys = partitions_def.get_partition_keys()
            tags = {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
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
        for evaluation in failed:
            print(
                f"  check {evaluation.check_name} of {evaluation.asset_key.to_user_string()} "
                f"failed: {evaluation.description}",
                flush=True,
            )
        by_asset: dict[AssetKey, list[dict[str, Any]]] = {}
        for event in result.get_asset_materialization_events():
            materialization = event.materialization
            metadata = {key: value.value for key, value in materialization.metadata.items()}
            metadata["partition"] = event.partition
            by_asset.setdefault(materialization.asset_key, []).append(metadata)
        for key, events in sorted(by_asset.items(), key=lambda item: item[0].to_user_string()):
            uri = str(events[0]["dagster/uri"])
            judged = [e for e in evaluations if e.asset_key == key]
            summaries.append(
                AssetSummary(
                    asset=key.to_user_string(),
                    partitions=sum(1 for item in events if item["partition"] is not None),
                    # the run's rows (dagster/row_count is the table's total)
                    rows=int(str(events[0]["rows_written"])),
                    delta_version=DeltaTable(uri).version(),
                    write_seconds=float(str(events[0]["seconds"])),
                    checks_passed=sum(1 for e in judged if e.passed),
                    checks=len(judged),
                )
            )
    return summaries


def format_summary(summaries: Sequence[AssetSummary]) -> str:
    """The summary as an aligned text table."""
    header = ("asset", "partitions", "rows", "delta version", "write seconds", "checks passed")
    rows = [
        (
            item.asset,
            str(item.partitions) if item.partitions else "snapshot",
            f"{item.rows:,}",
            str(item.delta_version),
            f"{item.write_seconds:.2f}",
            f"{item.checks_passed:,} of {item.checks:,}",
        )
        for item in summaries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
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


def _prepare(data_dir: pathlib.Path, regenerate: bool) -> pathlib.Path:
    demo_dir = data_dir / "demo"
    if regenerate or not (demo_dir / "Sales.db").exists():
        counts = create_demo_sqlite(demo_dir, DEFAULT_SCALE)
        print(
            "demo database: "
            + ", ".join(f"{name} {count:,} rows" for name, count in counts.items()),
            flush=True,
        )
    os.environ.setdefault("DAGSTER_HOME", str((data_dir / "dagster").resolve()))
    home = pathlib.Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    # the default local instance (without Dagster's notice about a missing file), telemetry off,
    # freshness policies evaluated (Dagster 1.13's default, written out so that it stays on)
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nfreshness:\n  enabled: true\n"
    )
    return demo_dir


def main(argv: Sequence[str] | None = None) -> int:
    """`run` (default): build the demo data and ingest it; `ui`: serve the Dagster UI over it."""
    # Dagster's notices about its own APIs' maturity say nothing to a demo's user
    for category in (BetaWarning, PreviewWarning, SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    command = (list(argv) if argv is not None else sys.argv[1:]) or ["run"]
    # the demo project file names .data/... relative to the working directory
    data_dir = pathlib.Path(".data")
    if command[:1] == ["ui"]:
        port = command[2] if command[1:2] == ["--port"] and len(command) == 3 else "3000"
        if not port.isdigit() or len(command) not in (1, 3):
            print("usage: python -m ingestion_assets.demo ui [--port N]", file=sys.stderr)
            return 2
        demo_dir = _prepare(data_dir, regenerate=False)
        with demo_api(demo_dir) as api:
            print(f"demo API at {api.url}; starting the Dagster UI on http://127.0.0.1:{port}")
            ui = subprocess.run(
                ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port],
                check=False,
            )
        return ui.returncode
    if command != ["run"]:
        print("usage: python -m ingestion_assets.demo [run | ui [--port N]]", file=sys.stderr)
        return 2
    demo_dir = _prepare(data_dir, regenerate=True)
    with demo_api(demo_dir), DagsterInstance.get() as instance:
        print("loading the demo's definitions", flush=True)
        defs = build_definitions(load_project(DEMO_PROJECT_FILE))
        summaries = run_jobs(defs, instance)
    print()
    print(format_summary(summaries))
    print(f"\nDelta tables under {(data_dir / 'lake').resolve()}; `make ui` shows these runs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
