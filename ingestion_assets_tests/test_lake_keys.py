"""The key ledger finds exactly the null and repeated keys of a window, whether it holds every
key in memory or spills them to bucket files and splits the buckets again."""

from __future__ import annotations

import datetime
import pathlib
import tempfile
from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion_assets.lake.keys import KeyLedger
from ingestion_assets.lake.rows import PARTITION_DATE

FIRST = datetime.date(2024, 1, 1)
KEY_FIELDS = [pa.field("order", pa.int32()), pa.field("code", pa.string())]


@settings(max_examples=120, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-3, 3)),
            st.sampled_from(["a", "b", "a much longer code than eight bytes", ""]),
            st.integers(0, 3),
        ),
        max_size=60,
    ),
    kept=st.lists(st.tuples(st.integers(-3, 5), st.sampled_from(["a", "b"])), max_size=8),
    buffer_rows=st.sampled_from([1, 3, 10_000]),
    batch_rows=st.sampled_from([1, 7, 100]),
)
def test_every_day_with_a_null_or_shared_key_is_found_however_the_keys_are_spilled(
    rows: list[tuple[int | None, str, int]],
    kept: list[tuple[int, str]],
    buffer_rows: int,
    batch_rows: int,
) -> None:
    staged = pa.table(
        {
            "order": pa.array([order for order, _, _ in rows], pa.int32()),
            "code": pa.array([code for _, code, _ in rows], pa.string()),
            PARTITION_DATE: pa.array(
                [FIRST + datetime.timedelta(days=day) for _, _, day in rows], pa.date32()
            ),
        }
    )
    ledger = KeyLedger(KEY_FIELDS, PARTITION_DATE, buffer_rows=buffer_rows)
    for batch in staged.to_batches(max_chunksize=batch_rows):
        ledger.add(batch)
    ledger.add_kept(
        pa.table(
            {
                "order": pa.array([order for order, _ in kept], pa.int64()),
                "code": [code for _, code in kept],
            }
        )
    )
    firsts = set(ledger.first_values().to_pylist())
    findings = ledger.judge()

    copies = Counter([(o, c) for o, c, _ in rows if o is not None] + kept)
    assert firsts == {o for o, _, _ in rows if o is not None} | {o for o, _ in kept}
    for offset in range(4):
        day = FIRST + datetime.timedelta(days=offset)
        on_day = [(o, c) for o, c, d in rows if d == offset]
        found = findings.day(day)
        assert found.null_keys == sum(1 for o, _ in on_day if o is None)
        repeated = {key for key in on_day if key[0] is not None and copies[key] > 1}
        assert found.duplicate_keys == len(repeated)
        assert {(s["order"], s["code"]) for s in found.duplicate_sample} <= repeated
        assert all(s["copies"] == copies[(s["order"], s["code"])] for s in found.duplicate_sample)
    assert findings.total.duplicate_keys == sum(1 for count in copies.values() if count > 1)


def test_a_spilled_ledger_leaves_no_file_behind(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    days = pa.array([FIRST] * 50, pa.date32())
    rows = pa.table({"order": pa.array(range(50), pa.int32()), "code": ["x"] * 50})
    judged, dropped = (KeyLedger(KEY_FIELDS, PARTITION_DATE, buffer_rows=4) for _ in range(2))
    for ledger in (judged, dropped):
        ledger.add(rows.append_column(PARTITION_DATE, days))
        assert ledger.spilled
        assert list(tmp_path.iterdir())

    assert judged.judge().total.duplicate_keys == 0
    dropped.close()

    assert list(tmp_path.iterdir()) == []
