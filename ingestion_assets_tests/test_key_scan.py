"""The key scan's comparison (lake/key_scan.py) held to Python's set difference: keys of every
hashed type, composite keys, both sides spilled to bucket files in many small pieces."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion_assets.lake import key_scan
from ingestion_assets.lake.key_scan import gone_keys

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
