"""`python -m ingestion_assets.demo`: build the demo database, ingest every partition, print a summary."""

from __future__ import annotations

import os
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dagster import AssetKey, DagsterInstance, Definitions
from deltalake import DeltaTable

from ingestion_assets.definitions import build_definitions
from ingestion_assets.demo.generate import DEFAULT_SCALE, create_demo_sqlite
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
    seconds: float


def run_jobs(defs: Definitions, instance: DagsterInstance) -> list[AssetSummary]:
    """Run every job over all its partitions (one run per job, as a single-run backfill)."""
    summaries: list[AssetSummary] = []
    repository = defs.get_repository_def()
    for job in repository.get_all_jobs():
        if job.name.startswith("__"):
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
        print(f"job {job.name}: run {result.run_id} succeeded in {elapsed:.1f} s", flush=True)
        by_asset: dict[AssetKey, list[dict[str, Any]]] = {}
        for event in result.get_asset_materialization_events():
            materialization = event.materialization
            metadata = {key: value.value for key, value in materialization.metadata.items()}
            metadata["partition"] = event.partition
            by_asset.setdefault(materialization.asset_key, []).append(metadata)
        for key, events in sorted(by_asset.items(), key=lambda item: item[0].to_user_string()):
            uri = str(events[0]["dagster/uri"])
            summaries.append(
                AssetSummary(
                    asset=key.to_user_string(),
                    partitions=sum(1 for item in events if item["partition"] is not None),
                    rows=sum(int(str(item["dagster/row_count"])) for item in events),
                    delta_version=DeltaTable(uri).version(),
                    seconds=float(str(events[0]["seconds"])),
                )
            )
    return summaries


def format_summary(summaries: Sequence[AssetSummary]) -> str:
    """The summary as an aligned text table."""
    header = ("asset", "partitions", "rows", "delta version", "seconds")
    rows = [
        (
            item.asset,
            str(item.partitions) if item.partitions else "snapshot",
            f"{item.rows:,}",
            str(item.delta_version),
            f"{item.seconds:.2f}",
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


def main() -> int:
    """Generate the demo SQLite database under .data/demo and ingest it into .data/lake."""
    # the demo project file names .data/... relative to the working directory
    data_dir = pathlib.Path(".data")
    counts = create_demo_sqlite(data_dir / "demo", DEFAULT_SCALE)
    print(
        "demo database: " + ", ".join(f"{name} {count:,} rows" for name, count in counts.items()),
        flush=True,
    )
    os.environ.setdefault("DAGSTER_HOME", str((data_dir / "dagster").resolve()))
    pathlib.Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    defs = build_definitions(load_project(DEMO_PROJECT_FILE))
    with DagsterInstance.get() as instance:
        summaries = run_jobs(defs, instance)
    print()
    print(format_summary(summaries))
    print(f"\nDelta tables under {(data_dir / 'lake').resolve()}; `make ui` shows these runs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
