"""The `files` source end to end: a landing folder (and a bucket on moto S3) ingested into Delta by
day. Files are written by the test; the Delta table is read back value by value. Re-running a
day changes nothing, a changed or a new file re-lands its day with all of the day's files, a
malformed file is set aside with its reason while the others land, and the new-data sensor asks
for exactly the days of the new files."""

from __future__ import annotations

import datetime
import decimal
import gzip
import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    build_sensor_context,
    materialize,
)
from deltalake import DeltaTable

from ingestion_assets.definitions import build_definitions
from ingestion_assets.project import parse_project
from ingestion_assets.sources.files.source import FilesSource
from ingestion_assets.specs import ProjectSpec
from ingestion_assets_tests.conftest import RANGE_END_TAG, RANGE_START_TAG, failure_message
from ingestion_assets_tests.test_s3 import s3_endpoint  # noqa: F401 - the moto server fixture

HEADER = "CurrencyRateID\tCurrencyRateDate\tFromCurrencyCode\tToCurrencyCode\tAverageRate\n"
COLUMNS = {
    "CurrencyRateID": "int32",
    "CurrencyRateDate": "timestamp",
    "FromCurrencyCode": "string",
    "ToCurrencyCode": "string",
    "AverageRate": "decimal(10,4)",
}
KEY = AssetKey(["landing", "currency_rate"])


def _rates(
    directory: pathlib.Path, day: str, rows: list[tuple[int, str, str]], name: str = ""
) -> pathlib.Path:
    """A TAB-delimited daily rates file (AdventureWorks' Sales.CurrencyRate export)."""
    path = directory / "rates" / f"rates_{day}{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}\t{day} 00:00:00\tUSD\t{to}\t{rate}\n" for key, to, rate in rows]
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    return path


def _project(
    landing: str, lake: pathlib.Path, dataset: dict[str, Any] | None = None, **source: Any
) -> ProjectSpec:
    return parse_project(_project_text(landing, lake, dataset, **source), "files.yaml")


def _project_text(
    landing: str, lake: pathlib.Path, dataset: dict[str, Any] | None = None, **source: Any
) -> str:
    entry = {
        "name": "CurrencyRate",
        "glob": "rates/*.tsv*",
        "format": {"type": "tsv"},
        "partitioning": {"by": "arrival", "day_from": "path"},
        "primary_key": ["CurrencyRateID"],
        "columns": COLUMNS,
        **(dataset or {}),
    }
    return yaml.safe_dump(
        {
            "lake": {"root": str(lake)},
            "sources": {
                "landing": {
                    "type": "files",
                    "root": landing,
                    "start_date": "2024-01-01",
                    "files": [entry],
                    **source,
                }
            },
        }
    )


def _run(
    project: ProjectSpec,
    instance: DagsterInstance,
    first: str,
    last: str | None = None,
    raise_on_error: bool = True,
) -> Any:
    defs = build_definitions(project)
    return materialize(
        [defs.get_assets_def(KEY)],
        instance=instance,
        resources=defs.resources,
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last or first},
        raise_on_error=raise_on_error,
    )


def _rows(lake: pathlib.Path) -> list[tuple[Any, ...]]:
    table = DeltaTable(str(lake / "landing" / "currency_rate")).to_pyarrow_table()
    return sorted(
        (
            row["CurrencyRateID"],
            row["ToCurrencyCode"],
            row["AverageRate"],
            row["_source_file"],
            row["_partition_date"],
        )
        for row in table.to_pylist()
    )


def test_each_days_files_land_once_and_a_rerun_changes_nothing(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    _rates(landing, "2024-01-01", [(1, "EUR", "0.9123"), (2, "GBP", "0.7801")])
    _rates(landing, "2024-01-02", [(3, "EUR", "0.9200")])
    project = _project(str(landing), lake)
    _run(project, instance, "2024-01-01", "2024-01-02")
    day1, day2 = datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)
    expected = [
        (1, "EUR", decimal.Decimal("0.9123"), "rates/rates_2024-01-01.tsv", day1),
        (2, "GBP", decimal.Decimal("0.7801"), "rates/rates_2024-01-01.tsv", day1),
        (3, "EUR", decimal.Decimal("0.9200"), "rates/rates_2024-01-02.tsv", day2),
    ]
    assert _rows(lake) == expected
    table = DeltaTable(str(lake / "landing" / "currency_rate")).to_pyarrow_table()
    assert table.schema.field("CurrencyRateDate").type == pa.timestamp("us")
    assert table.schema.field("AverageRate").type == pa.decimal128(10, 4)
    _run(project, instance, "2024-01-01")
    assert _rows(lake) == expected
    # a new file for an old day: the day again, with all of its files
    _rates(landing, "2024-01-01", [(4, "JPY", "141.2500")], name="_late")
    _run(project, instance, "2024-01-01")
    assert _rows(lake) == sorted(
        [
            *expected,
            (4, "JPY", decimal.Decimal("141.2500"), "rates/rates_2024-01-01_late.tsv", day1),
        ]
    )
    # a corrected file: its rows replaced, the other file's and day's unchanged
    _rates(landing, "2024-01-02", [(3, "EUR", "0.9300")])
    _run(project, instance, "2024-01-02")
    assert (3, "EUR", decimal.Decimal("0.9300"), "rates/rates_2024-01-02.tsv", day2) in _rows(lake)
    assert len(_rows(lake)) == 4


def test_a_malformed_file_is_set_aside_with_its_reason_and_the_others_land(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    _rates(landing, "2024-01-01", [(1, "EUR", "0.9123")])
    good = _rates(landing, "2024-01-01", [(2, "GBP", "0.7801")], name="_b")
    # a gzip cut in the middle
    packed = gzip.compress(good.read_bytes() * 50)
    (landing / "rates" / "rates_2024-01-01_c.tsv.gz").write_bytes(packed[: len(packed) // 2])
    project = _project(str(landing), lake)
    result = _run(project, instance, "2024-01-01")
    assert [row[0] for row in _rows(lake)] == [1, 2]
    rejected = DeltaTable(str(lake / "landing" / "currency_rate_rejected")).to_pyarrow_table()
    assert rejected.column("record").to_pylist() == ["rates/rates_2024-01-01_c.tsv.gz"]
    assert "rates_2024-01-01_c.tsv.gz" in rejected.column("reason")[0].as_py()
    metadata = result.asset_materializations_for_node("landing__currency_rate")[0].metadata
    assert metadata["files_read"].value == 2
    assert metadata["files_rejected"].value == 1


def test_the_sensor_asks_for_exactly_the_days_of_new_and_changed_files(
    tmp_path: pathlib.Path,
) -> None:
    landing = tmp_path / "landing"
    _rates(landing, "2024-01-01", [(1, "EUR", "0.9123")])
    project = _project(str(landing), tmp_path / "lake")
    spec = project.sources["landing"]
    (dataset,) = spec.datasets
    source = FilesSource("landing", str(landing), {})
    first = source.changed_days(dataset, None)
    assert first.days == []
    assert first.newest is not None
    # nothing new: nothing asked
    assert source.changed_days(dataset, first.newest).days == []
    _rates(landing, "2024-01-03", [(5, "EUR", "0.9001")])
    late = _rates(landing, "2024-01-02", [(6, "EUR", "0.9002")])
    changed = source.changed_days(dataset, first.newest)
    assert changed.days == [datetime.date(2024, 1, 2), datetime.date(2024, 1, 3)]
    assert source.changed_days(dataset, changed.newest).days == []
    # a file rewritten later: its day again
    stamp = time.time() + 5
    os.utime(late, (stamp, stamp))
    assert source.changed_days(dataset, changed.newest).days == [datetime.date(2024, 1, 2)]


def test_the_new_data_sensor_requests_the_days_of_a_file_added_later(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing = tmp_path / "landing"
    _rates(landing, "2024-01-01", [(1, "EUR", "0.9123")])
    project = _project(
        str(landing), tmp_path / "lake", sensor={"enabled": True, "interval_seconds": 30}
    )
    defs = build_definitions(project)
    sensor = defs.get_sensor_def("landing_new_data")

    def tick(cursor: str | None) -> Any:
        with build_sensor_context(
            instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
        ) as context:
            return sensor.evaluate_tick(context)

    first = tick(None)
    assert not first.run_requests
    _rates(landing, "2024-01-05", [(9, "CHF", "0.8700")])
    second = tick(first.cursor)
    requested = {
        request.tags.get(RANGE_START_TAG) or request.partition_key
        for request in second.run_requests
    }
    assert not tick(second.cursor).run_requests
    assert requested == {"2024-01-05"}


def test_arrival_by_modification_time_and_partitioning_by_a_column(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    orders = landing / "exports"
    orders.mkdir(parents=True)
    table = pa.table(
        {
            "OrderID": pa.array([1, 2, 3, 4], pa.int32()),
            "OrderDate": pa.array(
                [
                    datetime.date(2024, 1, 1),
                    datetime.date(2024, 1, 2),
                    datetime.date(2024, 1, 2),
                    datetime.date(2024, 1, 3),
                ]
            ),
            "Total": pa.array(
                [
                    decimal.Decimal("10.50"),
                    decimal.Decimal("3.25"),
                    decimal.Decimal("7.00"),
                    decimal.Decimal("1.99"),
                ],
                pa.decimal128(12, 2),
            ),
        }
    )
    pq.write_table(table.slice(0, 2), orders / "part-1.parquet")
    pq.write_table(table.slice(2, 2), orders / "part-2.parquet")
    project = _project(
        str(landing),
        lake,
        {
            "name": "Orders",
            "glob": "exports/*.parquet",
            "format": {"type": "parquet"},
            "partitioning": {"by": "column", "column": "OrderDate"},
            "primary_key": ["OrderID"],
            "columns": {"OrderID": "int32", "OrderDate": "date", "Total": "decimal(12,2)"},
        },
    )
    defs = build_definitions(project)
    asset = defs.get_assets_def(AssetKey(["landing", "orders"]))
    materialize([asset], instance=instance, resources=defs.resources, partition_key="2024-01-02")
    landed = DeltaTable(str(lake / "landing" / "orders")).to_pyarrow_table().sort_by("OrderID")
    # the day's rows of both files, and nothing of the other days
    assert landed.column("OrderID").to_pylist() == [2, 3]
    assert landed.column("_source_file").to_pylist() == [
        "exports/part-1.parquet",
        "exports/part-2.parquet",
    ]
    assert landed.column("Total").to_pylist() == [decimal.Decimal("3.25"), decimal.Decimal("7.00")]
    # by modification time: a file's day is the day it was written, in the source's zone
    stamp = datetime.datetime(2024, 1, 7, 23, 30, tzinfo=datetime.UTC).timestamp()
    rates = _rates(landing, "2024-01-07", [(1, "EUR", "0.9123")])
    os.utime(rates, (stamp, stamp))
    project = _project(
        str(landing), lake, {"partitioning": {"by": "arrival"}}, timezone="Europe/Paris"
    )
    result = _run(project, instance, "2024-01-08")
    assert [row[4] for row in _rows(lake)] == [datetime.date(2024, 1, 8)]
    assert result.success


def test_a_run_over_more_files_than_max_files_per_run_fails_naming_the_fix(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        _rates(landing, day, [(int(day[-1]), "EUR", "0.9")])
    project = _project(str(landing), lake, max_files_per_run=2)
    result = _run(project, instance, "2024-01-01", "2024-01-03", raise_on_error=False)
    assert "3 files to read, more than max_files_per_run (2)" in failure_message(result)
    assert _run(project, instance, "2024-01-01", "2024-01-02").success


@pytest.mark.s3
def test_a_landing_bucket_on_s3(
    s3_endpoint: str,  # noqa: F811 - the imported fixture
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    bucket = "landing"
    if bucket not in {item["Name"] for item in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    prefix = f"zone-{time.time_ns()}"
    for day, rows in (
        ("2024-01-01", [(1, "EUR", "0.9123")]),
        ("2024-01-02", [(2, "GBP", "0.7801")]),
    ):
        body = HEADER + "".join(
            f"{key}\t{day} 00:00:00\tUSD\t{to}\t{rate}\n" for key, to, rate in rows
        )
        client.put_object(Bucket=bucket, Key=f"{prefix}/rates/rates_{day}.tsv", Body=body.encode())
    options = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    lake = tmp_path / "lake"
    project = _project(f"s3://{bucket}/{prefix}", lake, storage_options=options)
    _run(project, instance, "2024-01-01", "2024-01-02")
    assert [(row[0], row[3], row[4]) for row in _rows(lake)] == [
        (1, "rates/rates_2024-01-01.tsv", datetime.date(2024, 1, 1)),
        (2, "rates/rates_2024-01-02.tsv", datetime.date(2024, 1, 2)),
    ]


def _ledger(lake: pathlib.Path) -> list[tuple[Any, ...]]:
    table = DeltaTable(str(lake / "landing" / "currency_rate_files")).to_pyarrow_table()
    return sorted(
        (row["path"], row["_partition_date"].isoformat(), row["rows"], row["status"])
        for row in table.to_pylist()
    )


@pytest.mark.parametrize("deleted_files", ["keep", "remove"])
def test_the_ledger_holds_each_file_once_and_a_deleted_file_is_reported(
    tmp_path: pathlib.Path, instance: DagsterInstance, deleted_files: str
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    _rates(landing, "2024-01-01", [(1, "EUR", "0.9123"), (2, "GBP", "0.7801")])
    late = _rates(landing, "2024-01-01", [(4, "JPY", "141.2500")], name="_late")
    _rates(landing, "2024-01-02", [(3, "EUR", "0.9200")])
    project = _project(str(landing), lake, {"deleted_files": deleted_files})
    first = _run(project, instance, "2024-01-01", "2024-01-02")
    assert _ledger(lake) == [
        ("rates/rates_2024-01-01.tsv", "2024-01-01", 2, "ingested"),
        ("rates/rates_2024-01-01_late.tsv", "2024-01-01", 1, "ingested"),
        ("rates/rates_2024-01-02.tsv", "2024-01-02", 1, "ingested"),
    ]
    ledger = DeltaTable(str(lake / "landing" / "currency_rate_files")).to_pyarrow_table()
    assert set(ledger.column("_run_id").to_pylist()) == {first.run_id}
    # the same days again: the same ledger, each file once
    _run(project, instance, "2024-01-01", "2024-01-02")
    assert len(_ledger(lake)) == 3
    late.unlink()
    result = _run(project, instance, "2024-01-01")
    metadata = result.asset_materializations_for_node("landing__currency_rate")[0].metadata
    assert metadata["files_gone"].value == 1
    assert metadata["files_gone_paths"].value == ["rates/rates_2024-01-01_late.tsv"]
    status = "gone, rows kept" if deleted_files == "keep" else "gone, rows removed"
    assert _ledger(lake) == [
        ("rates/rates_2024-01-01.tsv", "2024-01-01", 2, "ingested"),
        ("rates/rates_2024-01-01_late.tsv", "2024-01-01", 1, status),
        ("rates/rates_2024-01-02.tsv", "2024-01-02", 1, "ingested"),
    ]
    ids = [row[0] for row in _rows(lake)]
    assert ids == ([1, 2, 3, 4] if deleted_files == "keep" else [1, 2, 3])


def test_two_runs_over_the_same_new_files_at_once_land_each_file_once(
    tmp_path: pathlib.Path,
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    for index in range(6):
        _rates(
            landing,
            "2024-01-01",
            [(index * 100 + k, "EUR", "0.9") for k in range(50)],
            name=f"_{index}",
        )
    project_file = tmp_path / "files.yaml"
    project_file.write_text(_project_text(str(landing), lake), encoding="utf-8")
    # two run workers, as Dagster starts them: processes of their own
    command = [
        sys.executable,
        "-m",
        "ingestion_assets_tests.project_process",
        str(project_file),
        "currency_rate",
        "2024-01-01",
        "2024-01-01",
        "--source",
        "landing",
    ]
    workers = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = []
    for worker in workers:
        try:
            _, errors = worker.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            # its threads' stacks (project_process registers SIGUSR1), then it is stopped
            worker.send_signal(signal.SIGUSR1)
            time.sleep(1)
            worker.kill()
            _, errors = worker.communicate()
            pytest.fail(f"a run outlived 300 s:\n{errors[-4000:]}")
        outcomes.append((worker.returncode, errors[-2000:]))
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    ids = [row[0] for row in _rows(lake)]
    assert len(ids) == 300
    assert len(set(ids)) == 300
    assert [entry[0] for entry in _ledger(lake)] == [
        f"rates/rates_2024-01-01_{i}.tsv" for i in range(6)
    ]


def test_touching_one_file_reads_only_it_again_and_the_others_rows_are_carried(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    _rates(landing, "2024-01-01", [(1, "EUR", "0.9123")], name="_a")
    touched = _rates(landing, "2024-01-01", [(2, "GBP", "0.7801")], name="_b")
    _rates(landing, "2024-01-01", [(3, "JPY", "141.0000")], name="_c")
    project = _project(str(landing), lake)

    def files_read() -> tuple[int, int]:
        result = _run(project, instance, "2024-01-01")
        metadata = result.asset_materializations_for_node("landing__currency_rate")[0].metadata
        return metadata["files_read"].value, metadata["files_unchanged"].value

    assert files_read() == (3, 0)
    before = _rows(lake)
    # nothing changed: nothing read, every row carried
    assert files_read() == (0, 3)
    assert _rows(lake) == before
    _rates(landing, "2024-01-01", [(2, "GBP", "0.7900")], name="_b")
    stamp = time.time() + 5
    os.utime(touched, (stamp, stamp))
    assert files_read() == (1, 2)
    assert [(row[0], row[2]) for row in _rows(lake)] == [
        (1, decimal.Decimal("0.9123")),
        (2, decimal.Decimal("0.7900")),
        (3, decimal.Decimal("141.0000")),
    ]
    assert [entry[2] for entry in _ledger(lake)] == [1, 1, 1]


def test_without_declared_columns_the_files_columns_are_inferred_and_widened(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    exports = landing / "exports"
    exports.mkdir(parents=True)
    (exports / "2024-01-01-a.ndjson").write_text(
        '{"id": 1, "name": "Łódź"}\n{"id": 2, "name": "Müller"}\n', encoding="utf-8"
    )
    (exports / "2024-01-01-b.ndjson").write_text(
        '{"id": 3, "name": "日本", "score": 1.5}\n', encoding="utf-8"
    )
    project = _project(
        str(landing),
        lake,
        {
            "name": "CurrencyRate",
            "glob": "exports/*.ndjson",
            "format": {"type": "ndjson"},
            "partitioning": {"by": "arrival", "day_from": "path"},
            "primary_key": ["id"],
            "columns": None,
        },
    )
    _run(project, instance, "2024-01-01")
    table = DeltaTable(str(lake / "landing" / "currency_rate")).to_pyarrow_table().sort_by("id")
    assert table.column("name").to_pylist() == ["Łódź", "Müller", "日本"]
    assert table.column("score").to_pylist() == [None, None, 1.5]
    # every file unchanged: none read again, the inferred columns kept
    result = _run(project, instance, "2024-01-01")
    metadata = result.asset_materializations_for_node("landing__currency_rate")[0].metadata
    assert (metadata["files_read"].value, metadata["files_unchanged"].value) == (0, 2)
    again = DeltaTable(str(lake / "landing" / "currency_rate")).to_pyarrow_table().sort_by("id")
    assert again.select(["id", "name", "score"]).equals(table.select(["id", "name", "score"]))


def test_a_file_copied_again_with_the_same_bytes_is_not_read_and_its_hash_is_in_the_ledger(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    path = _rates(landing, "2024-01-01", [(1, "EUR", "0.9123"), (2, "GBP", "0.7801")])
    project = _project(str(landing), lake)

    def run() -> dict[str, Any]:
        result = _run(project, instance, "2024-01-01")
        metadata = result.asset_materializations_for_node("landing__currency_rate")[0].metadata
        return {name: value.value for name, value in metadata.items()}

    assert run()["files_read"] == 1
    ledger = DeltaTable(str(lake / "landing" / "currency_rate_files")).to_pyarrow_table()
    assert ledger.column("sha256").to_pylist() == [hashlib.sha256(path.read_bytes()).hexdigest()]
    assert ledger.column("file_days").to_pylist() == [[datetime.date(2024, 1, 1)]]
    # delivered again, byte for byte, with a new modification time: not read, rows kept
    stamp = time.time() + 60
    os.utime(path, (stamp, stamp))
    again = run()
    assert (again["files_read"], again["files_unchanged"]) == (0, 1)
    assert [row[0] for row in _rows(lake)] == [1, 2]
    # the ledger took the new time: the next run does not hash the file again
    ledger = DeltaTable(str(lake / "landing" / "currency_rate_files")).to_pyarrow_table()
    assert ledger.column("modified").to_pylist()[0].timestamp() == pytest.approx(stamp, abs=1e-3)
    # the same size, other bytes: read again
    path.write_text(path.read_text().replace("0.7801", "0.7802"))
    os.utime(path, (stamp + 60, stamp + 60))
    assert run()["files_read"] == 1
    assert [row[2] for row in _rows(lake)] == [decimal.Decimal("0.9123"), decimal.Decimal("0.7802")]


def test_by_column_an_unchanged_file_is_read_only_for_days_the_ledger_does_not_know(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    exports = landing / "exports"
    exports.mkdir(parents=True)

    def orders(ids: list[int], days: list[int]) -> pa.Table:
        return pa.table(
            {
                "OrderID": pa.array(ids, pa.int32()),
                "OrderDate": pa.array([datetime.date(2024, 1, day) for day in days]),
            }
        )

    pq.write_table(orders([1, 2], [1, 2]), exports / "part-1.parquet")
    pq.write_table(orders([3, 4], [2, 3]), exports / "part-2.parquet")
    project = _project(
        str(landing),
        lake,
        {
            "name": "Orders",
            "glob": "exports/*.parquet",
            "format": {"type": "parquet"},
            "partitioning": {"by": "column", "column": "OrderDate"},
            "primary_key": ["OrderID"],
            "columns": {"OrderID": "int32", "OrderDate": "date"},
        },
    )
    defs = build_definitions(project)
    asset = defs.get_assets_def(AssetKey(["landing", "orders"]))

    def run(first: str, last: str | None = None) -> tuple[int, int, int]:
        result = materialize(
            [asset],
            instance=instance,
            resources=defs.resources,
            tags={RANGE_START_TAG: first, RANGE_END_TAG: last or first},
        )
        metadata = result.asset_materializations_for_node("landing__orders")[0].metadata
        return (
            metadata["files_read"].value,
            metadata["files_unchanged"].value,
            metadata["files_without_rows_of_these_days"].value,
        )

    def landed() -> list[tuple[int, int]]:
        table = DeltaTable(str(lake / "landing" / "orders")).to_pyarrow_table()
        return sorted((row["OrderID"], row["_partition_date"].day) for row in table.to_pylist())

    assert run("2024-01-02") == (2, 0, 0)
    assert landed() == [(2, 2), (3, 2)]
    assert run("2024-01-02") == (0, 2, 0)
    # the ledger knows part-1 has no rows on the 3rd: only part-2 is read
    assert run("2024-01-03") == (1, 0, 1)
    assert landed() == [(2, 2), (3, 2), (4, 3)]
    # a window wider than the runs that read part-1 (its 1st unknown): part-1 is read again
    assert run("2024-01-01", "2024-01-03") == (1, 1, 0)
    assert landed() == [(1, 1), (2, 2), (3, 2), (4, 3)]
    assert run("2024-01-01", "2024-01-03") == (0, 2, 0)
    assert landed() == [(1, 1), (2, 2), (3, 2), (4, 3)]
