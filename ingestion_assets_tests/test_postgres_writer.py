"""The PostgreSQL writer against a real server: exact types, day replaces, atomic failures."""

from __future__ import annotations

import datetime
import decimal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2  # type: ignore[import-untyped]
import pyarrow as pa
import pytest

from ingestion_assets.errors import SchemaDriftError
from ingestion_assets.io_managers import postgres as postgres_writer
from ingestion_assets.io_managers.contract import WriteRequest
from ingestion_assets.io_managers.postgres import PostgresIOManager
from ingestion_assets.sources.window import PartitionWindow

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PATH = ("erp", "sales_order_header")


class _Log:
    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass


@pytest.fixture
def manager() -> Iterator[PostgresIOManager]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield PostgresIOManager(url=SERVER, db_schema=schema)
    connection = psycopg2.connect(SERVER)
    connection.autocommit = True
    connection.cursor().execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    connection.close()


def _request(first: str, last: str, policy: str = "evolve") -> WriteRequest:
    window = PartitionWindow.of_days(
        datetime.date.fromisoformat(first), datetime.date.fromisoformat(last)
    )
    return WriteRequest(PATH, window, "run-1", "order_date", _Log(), schema_policy=policy)


def _orders(days: list[str], tag: str = "a") -> pa.Table:
    return pa.table(
        {
            "order_date": pa.array([datetime.date.fromisoformat(d) for d in days], pa.date32()),
            "tag": pa.array([tag] * len(days), pa.string()),
        }
    )


def _write(manager: PostgresIOManager, request: WriteRequest, data: Any) -> dict[str, Any]:
    return manager.stage(request, data).commit()


def test_every_type_round_trips_exactly_with_nulls(
    manager: PostgresIOManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = uuid.uuid4()
    table = pa.table(
        {
            "order_date": pa.array([datetime.date(2024, 1, 2)] * 3, pa.date32()),
            "amount": pa.array(
                [decimal.Decimal("123456789012345.6789"), None, decimal.Decimal("-0.0001")],
                pa.decimal128(19, 4),
            ),
            "zoned": pa.array(
                [
                    datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, datetime.UTC),
                    None,
                    datetime.datetime(1, 1, 1, tzinfo=datetime.UTC),
                ],
                pa.timestamp("us", "UTC"),
            ),
            "naive": pa.array(
                [
                    datetime.datetime(2024, 1, 2, 23, 59, 59, 999999),
                    None,
                    datetime.datetime(1970, 1, 1),
                ],
                pa.timestamp("us"),
            ),
            "key": pa.array([key.bytes, None, bytes(16)], pa.binary(16)),
            "payload": pa.array([b"\x00\xff\x10", None, b""], pa.binary()),
            "flag": pa.array([True, None, False]),
            "small": pa.array([-32768, None, 32767], pa.int16()),
            "big": pa.array([2**63 - 1, None, -(2**63)], pa.int64()),
            "ratio": pa.array([0.1, None, float("-inf")], pa.float64()),
            "text": pa.array(['a,"b"\n', "", "\\N NULL \u00e9\U0001f600\r\n"]),
        }
    )
    metadata = _write(manager, _request("2024-01-02", "2024-01-02"), table)
    assert metadata["rows_written"] == 3
    copied = []
    original = postgres_writer.copy_batches

    def counted(*args: Any) -> Any:
        copied.append(args[1])
        return original(*args)

    monkeypatch.setattr(postgres_writer, "copy_batches", counted)
    # with the binary columns the rows are fetched one by one; without them through COPY
    back = manager.committed_rows(PATH, None, table.column_names)
    assert back is not None
    assert back.select(table.column_names).equals(table)
    assert not copied
    text_columns = [name for name in table.column_names if name not in ("key", "payload")]
    copied_back = manager.committed_rows(PATH, None, text_columns)
    assert copied_back is not None
    assert copied_back.select(text_columns).equals(table.select(text_columns))
    assert len(copied) == 1
    assert copied[0].startswith("COPY (SELECT")
    schema = manager.committed_schema(PATH)
    assert schema is not None
    assert schema.field("amount").type == pa.decimal128(19, 4)


def test_rewriting_a_day_replaces_exactly_that_day(manager: PostgresIOManager) -> None:
    _write(
        manager,
        _request("2024-01-01", "2024-01-03"),
        _orders(["2024-01-01", "2024-01-02", "2024-01-02", "2024-01-03"]),
    )
    _write(manager, _request("2024-01-02", "2024-01-02"), _orders(["2024-01-02"], "b"))
    back = manager.committed_rows(PATH, None, ["order_date", "tag"])
    assert back is not None
    rows = sorted(
        zip(back.column("order_date").to_pylist(), back.column("tag").to_pylist(), strict=True)
    )
    assert rows == [
        (datetime.date(2024, 1, 1), "a"),
        (datetime.date(2024, 1, 2), "b"),
        (datetime.date(2024, 1, 3), "a"),
    ]
    window = PartitionWindow.of_days(datetime.date(2024, 1, 2), datetime.date(2024, 1, 2))
    one_day = manager.committed_rows(PATH, window, ["tag"])
    assert one_day is not None
    assert one_day.num_rows == 1


def test_kept_rows_are_the_rows_outside_the_window_matched_by_the_first_key_column(
    manager: PostgresIOManager,
) -> None:
    days = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-03"]
    first = _orders(days).append_column("id", pa.array([1, 2, 3, 4], pa.int64()))
    _write(manager, _request("2024-01-01", "2024-01-03"), first)
    staged = manager.stage(
        _request("2024-01-02", "2024-01-02"),
        _orders(["2024-01-02"], "b").append_column("id", pa.array([9], pa.int64())),
    )
    try:
        kept = staged.kept_rows(["id", "tag"])
        assert kept.schema.names == ["id", "tag"]
        assert sorted(kept.column("id").to_pylist()) == [1, 3, 4]
        among = staged.kept_rows(["id"], pa.array([3, 2, 9], pa.int64()))
        assert among.column("id").to_pylist() == [3]
        # a column the table does not have yet comes back as nulls
        staged.plan.target = staged.plan.target.append(pa.field("extra", pa.string()))
        assert staged.kept_rows(["id", "extra"]).column("extra").null_count == 3
    finally:
        staged.abort()


def test_abort_and_a_failure_mid_stream_leave_the_previous_rows(manager: PostgresIOManager) -> None:
    _write(manager, _request("2024-01-01", "2024-01-02"), _orders(["2024-01-01", "2024-01-02"]))
    manager.stage(_request("2024-01-01", "2024-01-02"), _orders(["2024-01-01"], "b")).abort()

    def failing() -> Iterator[pa.RecordBatch]:
        yield from _orders(["2024-01-01"], "c").to_batches()
        raise RuntimeError("source broke")

    reader = pa.RecordBatchReader.from_batches(_orders([]).schema, failing())
    with pytest.raises(RuntimeError, match="source broke"):
        manager.stage(_request("2024-01-01", "2024-01-02"), reader)
    back = manager.committed_rows(PATH, None, ["tag"])
    assert back is not None
    assert sorted(back.column("tag").to_pylist()) == ["a", "a"]


def test_staged_rows_are_invisible_until_commit(manager: PostgresIOManager) -> None:
    _write(manager, _request("2024-01-01", "2024-01-01"), _orders(["2024-01-01"]))
    staged = manager.stage(_request("2024-01-01", "2024-01-01"), _orders(["2024-01-01"] * 3, "b"))
    assert staged.plan.rows_by_day == {datetime.date(2024, 1, 1): 3}
    before = manager.committed_rows(PATH, None, ["tag"])
    assert before is not None
    assert before.column("tag").to_pylist() == ["a"]
    staged.commit()
    after = manager.committed_rows(PATH, None, ["tag"])
    assert after is not None
    assert after.column("tag").to_pylist() == ["b", "b", "b"]


def test_an_added_column_evolves_or_is_refused_under_freeze(manager: PostgresIOManager) -> None:
    _write(manager, _request("2024-01-01", "2024-01-01"), _orders(["2024-01-01"]))
    wider = _orders(["2024-01-02"]).append_column("extra", pa.array([7], pa.int32()))
    with pytest.raises(SchemaDriftError, match=r"added column extra.*freeze"):
        manager.stage(_request("2024-01-02", "2024-01-02", "freeze"), wider)
    _write(manager, _request("2024-01-02", "2024-01-02"), wider)
    back = manager.committed_rows(PATH, None, ["order_date", "extra"])
    assert back is not None
    assert sorted(back.column("extra").to_pylist(), key=str) == [7, None]


def test_two_first_writes_that_both_create_the_schema_both_commit(
    manager: PostgresIOManager,
) -> None:
    # the second CREATE SCHEMA IF NOT EXISTS waits on the first's uncommitted row, then fails on
    # pg_namespace's unique index: losing that race must not fail the write
    first, second = psycopg2.connect(SERVER), psycopg2.connect(SERVER)
    outcome: list[BaseException | None] = []
    try:
        postgres_writer._ensure_schema(first.cursor(), manager.db_schema)
        waiter = threading.Thread(
            target=lambda: outcome.append(_ensure_schema_or_error(second, manager.db_schema))
        )
        waiter.start()
        watcher = first.cursor()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            watcher.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                (second.get_backend_pid(),),
            )
            if watcher.fetchone()[0] == "Lock":
                break
            time.sleep(0.02)
        else:
            pytest.fail("the second CREATE SCHEMA never waited on the first")
        first.commit()
        waiter.join(10)
        assert outcome == [None]
        second.commit()
    finally:
        first.close()
        second.close()
    _write(manager, _request("2024-01-01", "2024-01-01"), _orders(["2024-01-01"]))
    back = manager.committed_rows(PATH, None, ["tag"])
    assert back is not None
    assert back.column("tag").to_pylist() == ["a"]


def _ensure_schema_or_error(connection: Any, schema: str) -> BaseException | None:
    try:
        postgres_writer._ensure_schema(connection.cursor(), schema)
    except BaseException as error:  # handed to the test's thread
        return error
    return None
