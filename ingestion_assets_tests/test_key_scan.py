"""The key scan's comparison (lake/key_scan.py) held to Python's set difference: keys of every
hashed type, composite keys, both sides spilled to bucket files in many small pieces."""

from __future__ import annotations

import datetime
import decimal
import pathlib
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion_assets.lake import key_scan
from ingestion_assets.lake.key_scan import gone_keys
from ingestion_assets.lake.merge import merge_changes, remove_keys
from ingestion_assets.modes.merge import (
    DELETED,
    IS_CURRENT,
    VALID_TO,
    MergeRules,
    current_rows,
    overlapping_versions,
)

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("code", pa.string()),
        pa.field("amount", pa.decimal128(12, 2)),
        pa.field("at", pa.timestamp("us")),
    ]
)


def _key(number: int, code: str, cents: int, minutes: int) -> tuple[Any, ...]:
    return (
        number,
        code,
        decimal.Decimal(cents).scaleb(-2),
        datetime.datetime(2024, 1, 1) + datetime.timedelta(minutes=minutes),
    )


keys_strategy = st.lists(
    st.builds(
        _key,
        st.integers(-3, 3),
        st.sampled_from(["", "a", "ä", "a" * 20, "b" * 9]),
        st.integers(-2, 2),
        st.integers(0, 2),
    ),
    max_size=60,
)


def _batches(keys: list[tuple[Any, ...]], size: int) -> list[pa.Table]:
    rows = [dict(zip(SCHEMA.names, key, strict=True)) for key in keys]
    return [
        pa.Table.from_pylist(rows[i : i + size], schema=SCHEMA) for i in range(0, len(rows), size)
    ]


@settings(max_examples=60, deadline=None)
@given(source=keys_strategy, held=keys_strategy, size=st.integers(1, 7), columns=st.integers(1, 4))
def test_the_gone_keys_are_the_held_keys_the_source_does_not_hold(
    source: list[tuple[Any, ...]], held: list[tuple[Any, ...]], size: int, columns: int
) -> None:
    names = SCHEMA.names[:columns]
    schema = pa.schema([SCHEMA.field(n) for n in names])
    held = list(dict.fromkeys(key[:columns] for key in held))
    source = [key[:columns] for key in source]
    with pytest.MonkeyPatch.context() as patch:
        # spill every few rows: the buckets are written in many pieces
        patch.setattr(key_scan, "BUFFER_ROWS", 3)
        scan = gone_keys(
            [
                b.select(names)
                for b in _batches([(*k, *([None] * (4 - columns))) for k in source], size)
            ],
            [
                b.select(names)
                for b in _batches([(*k, *([None] * (4 - columns))) for k in held], size)
            ],
            list(names),
            schema,
        )
    found = [tuple(row.values()) for row in scan.gone.to_pylist()]
    assert sorted(map(repr, found)) == sorted(map(repr, set(held) - set(source)))
    assert (scan.source_keys, scan.table_keys) == (len(source), len(held))


def test_source_keys_of_another_type_are_compared_as_the_tables() -> None:
    """An int32 key at the source against the table's int64: cast first, so equal keys hash
    alike and nothing is wrongly gone."""
    source = pa.table({"id": pa.array(range(1000), pa.int32())})
    held = pa.table({"id": pa.array(range(1005), pa.int64())})
    scan = gone_keys([source], [held], ["id"], held.schema)
    assert sorted(scan.gone.column("id").to_pylist()) == [1000, 1001, 1002, 1003, 1004]


@pytest.mark.parametrize(("deletes", "history"), [("hard", False), ("soft", False), ("hard", True)])
def test_removing_gone_keys_deletes_flags_or_closes_their_rows_in_one_commit(
    tmp_path: pathlib.Path, deletes: str, history: bool
) -> None:
    uri = str(tmp_path / "table")
    rules = MergeRules(keys=("id",), sequence="seq", deletes=deletes, history=history)  # type: ignore[arg-type]
    rows = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "price": pa.array([10, 20, 30], pa.int64()),
            "seq": pa.array([datetime.datetime(2024, 1, 1)] * 3, pa.timestamp("us")),
        }
    )
    merge_changes(uri, None, rows, rules, full_read=False, run_id="r1", label="t", log=print)
    if history:
        # a second version of key 2, so that only its current one is closed
        changed = rows.slice(1, 1).set_column(1, "price", pa.array([21], pa.int64()))
        changed = changed.set_column(
            2, "seq", pa.array([datetime.datetime(2024, 1, 2)], pa.timestamp("us"))
        )
        merge_changes(uri, None, changed, rules, full_read=False, run_id="r2", label="t", log=print)
    version = DeltaTable(uri).version()
    outcome = remove_keys(
        uri,
        None,
        pa.table({"id": pa.array([2], pa.int64())}),
        rules,
        run_id="scan",
        label="t",
        log=print,
    )
    assert outcome.committed
    assert outcome.deleted == 1
    assert DeltaTable(uri).version() == version + 1
    table = DeltaTable(uri).to_pyarrow_table()
    assert sorted(current_rows(table, rules).column("id").to_pylist()) == [1, 3]
    kept = {r["price"]: r for r in table.to_pylist() if r["id"] == 2}
    if deletes == "soft":
        assert kept[20][DELETED] is True
    if history:
        # the current version closed by the scan, flagged; the one before it untouched
        assert kept[21][DELETED] is True
        assert kept[21][IS_CURRENT] is False
        assert kept[21][VALID_TO] is not None
        assert not kept[20][DELETED]
        assert overlapping_versions(table, ["id"]).num_rows == 0
    if deletes == "hard" and not history:
        assert kept == {}
    # nothing left to remove: no commit
    again = remove_keys(
        uri,
        None,
        pa.table({"id": pa.array([], pa.int64())}),
        rules,
        run_id="s2",
        label="t",
        log=print,
    )
    assert not again.committed
