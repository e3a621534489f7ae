"""The Delta IO manager on object storage: an S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import datetime
import json
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import boto3
import pyarrow as pa
import pytest
from dagster import AssetIn, AssetSpec, DagsterInstance, asset, materialize
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.lake.compaction import maintain_table
from ingestion_assets_tests.conftest import RANGE_END_TAG, RANGE_START_TAG
from ingestion_assets_tests.memory_source import FIRST_DAY, ROWS, memory_kind
from ingestion_assets_tests.test_concurrency import RACE_DAYS, _assert_table_is, _race
from ingestion_assets_tests.test_destinations import _landed_ids, _materialize, _memory_defs
from ingestion_assets_tests.writer_process import DAYS, STORAGE_OPTIONS_VARIABLE, main

pytestmark = pytest.mark.s3
__all__ = ["memory_kind"]  # the fixture, used by name

BUCKET = "lake"
START_SECONDS = 30


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in its own process (in this process it would wait on the GIL that a
    delta-rs call holds while it waits for the server)."""
    port = _free_port()
    server = subprocess.Popen(
        [
            str(pathlib.Path(sys.executable).parent / "moto_server"),
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert server.poll() is None, "moto_server exited"
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=START_SECONDS)


@pytest.fixture
def s3_lake(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> tuple[str, dict[str, str]]:
    """A fresh prefix in the bucket and the storage options to reach it (also for subprocesses)."""
    options = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        # commits are put-if-absent (S3 conditional writes): no lock table needed
        "conditional_put": "etag",
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    if BUCKET not in {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    monkeypatch.setenv(STORAGE_OPTIONS_VARIABLE, json.dumps(options))
    return f"s3://{BUCKET}/{request.node.name[:40]}-{time.time_ns()}", options


def _write(lake: str, day: datetime.date, tag: str, last: datetime.date | None = None) -> None:
    arguments = [lake, day.isoformat(), (last or day).isoformat(), tag, "--rows-per-day", "500"]
    assert main(arguments) == 0


def test_partition_replace_read_back_and_maintenance_on_s3(
    s3_lake: tuple[str, dict[str, str]],
) -> None:
    lake, options = s3_lake
    uri = f"{lake}/t/events"
    first, second = datetime.date(2024, 2, 3), datetime.date(2024, 2, 10)
    _write(lake, first, "first", datetime.date(2024, 2, 5))
    _write(lake, second, "second")
    _write(lake, first, "rerun")
    days = {first: {"rerun"}, first + datetime.timedelta(1): {"first"}}
    days |= {first + datetime.timedelta(2): {"first"}, second: {"second"}}
    _assert_table_is(lake, days, options)
    table = DeltaTable(uri, storage_options=options)
    assert [entry["operation"] for entry in table.history()][:3] == ["WRITE"] * 3

    report = maintain_table(uri, options, compact=True, vacuum_retention_hours=0, checkpoint=True)
    assert report.files_after == 1  # February in one file again
    assert report.files_vacuumed >= 2
    assert report.checkpoint_version == DeltaTable(uri, storage_options=options).version()
    _assert_table_is(lake, days, options)


def test_concurrent_writers_on_s3_leave_one_copy_and_all_land(
    s3_lake: tuple[str, dict[str, str]], tmp_path: pathlib.Path
) -> None:
    lake, options = s3_lake
    expected: dict[datetime.date, set[str]] = {}
    for race in range(3):
        day = RACE_DAYS[race % 2]
        tags = [f"s3-{race}-a", f"s3-{race}-b"]
        _race(lake, tmp_path, [(day, tag) for tag in tags])
        _assert_table_is(lake, {**expected, day: set(tags)}, options)
        expected[day] = set(tags)
    # different days of one month at once
    windows = [(day, f"day{day.day}") for day in RACE_DAYS[2:4]]
    _race(lake, tmp_path, windows)
    tables = DeltaTable(f"{lake}/t/events", storage_options=options)
    assert len([e for e in tables.history() if e["operation"] == "WRITE"]) == 8
    _assert_table_is(lake, {**expected, **{day: {tag} for day, tag in windows}}, options)


def test_two_commits_planned_on_one_version_cannot_both_land_on_s3(
    s3_lake: tuple[str, dict[str, str]],
) -> None:
    # what the writers' retry relies on: S3 puts the log entry only if absent (conditional put)
    lake, options = s3_lake
    _write(lake, RACE_DAYS[0], "base")
    uri = f"{lake}/t/events"
    first = DeltaTable(uri, storage_options=options)
    second = DeltaTable(uri, storage_options=options)
    schema = pa.schema(first.schema().to_arrow())
    strict = CommitProperties(max_commit_retries=0)
    first.create_write_transaction([], mode="append", schema=schema, commit_properties=strict)
    with pytest.raises(CommitFailedError):
        second.create_write_transaction([], mode="append", schema=schema, commit_properties=strict)
    assert DeltaTable(uri, storage_options=options).version() == second.version() + 1


def test_a_downstream_asset_loads_its_days_from_s3(s3_lake: tuple[str, dict[str, str]]) -> None:
    lake, options = s3_lake
    _write(lake, RACE_DAYS[0], "first", RACE_DAYS[1])
    received: list[pa.Table] = []

    @asset(
        key=["t", "downstream"], partitions_def=DAYS, ins={"events": AssetIn(key=["t", "events"])}
    )
    def downstream(events: pa.Table) -> None:
        received.append(events)

    upstream = AssetSpec(key=["t", "events"], partitions_def=DAYS)
    result = materialize(
        [upstream, downstream],
        selection=[downstream],
        instance=DagsterInstance.ephemeral(),
        resources={"io_manager": DeltaLakeIOManager(root_uri=lake, storage_options=options)},
        partition_key=RACE_DAYS[1].isoformat(),
    )
    assert result.success
    (table,) = received
    # the IO manager read exactly the run's day from S3
    assert set(table.column("_partition_date").to_pylist()) == {RACE_DAYS[1]}
    assert sorted(table.column("id").to_pylist()) == list(range(500))


def test_iceberg_tables_on_s3_land_replace_and_are_maintained_with_the_lakes_options(
    memory_kind: None,
    s3_lake: tuple[str, dict[str, str]],
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    warehouse, options = s3_lake
    lake_options = {
        "io_manager": "iceberg",
        "storage_options": options,
        "iceberg": {"catalog_uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": warehouse},
        "maintenance": {"vacuum_retention_hours": 0},
    }
    defs = _memory_defs(tmp_path / "lake", lake_options)
    first, last = FIRST_DAY.isoformat(), (FIRST_DAY + datetime.timedelta(days=1)).isoformat()
    assert _materialize(defs, instance, tags={RANGE_START_TAG: first, RANGE_END_TAG: last}).success
    ROWS[100] = {"id": 100, "day": FIRST_DAY, "changed": 2}  # a late row: the day runs again
    assert _materialize(defs, instance, partition_key=first).success
    assert _landed_ids(defs, "iceberg") == {first: [0, 1, 2, 3, 100], last: [4, 5, 6, 7]}

    bucket, prefix = warehouse.removeprefix("s3://").split("/", 1)
    client = boto3.client(
        "s3",
        endpoint_url=options["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )

    def stored() -> set[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    before = stored()
    assert any(key.endswith(".parquet") for key in before)
    result = defs.resolve_job_def("maintain_tables").execute_in_process(
        instance=instance, resources=defs.resources
    )
    assert result.success
    removed = before - stored()
    # the first snapshot's file of the first day, and what only expired snapshots named
    assert any(key.endswith(".parquet") for key in removed)
    assert _landed_ids(defs, "iceberg") == {first: [0, 1, 2, 3, 100], last: [4, 5, 6, 7]}
