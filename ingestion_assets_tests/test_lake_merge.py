"""Changes applied to a real Delta table by key (lake/merge.py over modes/merge.py), held to a
pure-Python model of the same rules: out-of-order and duplicated changes resolved by the
sequence, SCD type 1 (soft and hard deletes) and type 2, deletes that carry the key alone, and
two writers at once."""

from __future__ import annotations

import datetime
import pathlib
import threading
import uuid
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion_assets.lake.merge import MergeConflictError, MergeOutcome, merge_changes
from ingestion_assets.modes.merge import (
    DELETED,
    DELETED_AT,
    IS_CURRENT,
    VALID_FROM,
    VALID_TO,
    MergeRules,
    overlapping_versions,
)

BASE = datetime.datetime(2024, 1, 1)
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("price", pa.decimal128(10, 2)),
        pa.field("note", pa.string()),
        pa.field("seq", pa.timestamp("us")),
        pa.field("gone", pa.bool_()),
    ]
)
UTC = datetime.UTC


def _change(
    key: int, price: int, note: str, seq: int, gone: bool, bare: bool = False
) -> dict[str, Any]:
    """One change; a `bare` delete carries the key alone, as change feeds deliver it (Change
    Tracking, logical decoding with the default replica identity): its other columns null."""
    blank = gone and bare
    return {
        "id": key,
        "price": None if blank else price,
        "note": None if blank else note,
        "seq": BASE + datetime.timedelta(minutes=seq),
        "gone": gone,
    }


changes_strategy = st.lists(
    st.builds(
        _change,
        st.integers(1, 4),
        st.integers(0, 2),
        st.sampled_from(["a", "b"]),
        st.integers(0, 8),
        st.booleans(),
        st.booleans(),
    ),
    min_size=0,
    max_size=8,
)


def _sorted_rows(table: pa.Table) -> list[tuple[str, ...]]:
    return sorted(tuple(str(v) for v in row.values()) for row in table.to_pylist())


def _apply(uri: str, batch: list[dict[str, Any]], rules: MergeRules) -> MergeOutcome:
    """Merge one batch; the table the audit was shown before the commit is the table the
    commit left (its key, flag and validity columns), row for row."""
    table = pa.Table.from_pylist(batch, schema=SCHEMA)
    shown: list[pa.Table] = []

    def audit(planned: pa.Table) -> bool:
        shown[:] = [planned]
        return True

    outcome = merge_changes(
        uri,
        None,
        table,
        rules,
        full_read=False,
        run_id="run",
        label="table t",
        log=lambda _: None,
        audit=audit,
    )
    committed = DeltaTable(uri).to_pyarrow_table(columns=shown[0].schema.names)
    assert _sorted_rows(shown[0]) == _sorted_rows(committed)
    return outcome


def _latest(batch: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The model's latest change per key: the highest sequence, the last to arrive on a tie."""
    latest: dict[int, dict[str, Any]] = {}
    for change in batch:
        held = latest.get(change["id"])
        if held is None or change["seq"] >= held["seq"]:
            latest[change["id"]] = change
    return latest


def _model_scd1(batches: list[list[dict[str, Any]]], deletes: str) -> dict[int, dict[str, Any]]:
    """Rows by the rules; a soft delete flags the row and keeps its values, taking only the
    delete's sequence and flag column (so a change older than the delete stays late)."""
    rows: dict[int, dict[str, Any]] = {}
    for batch in batches:
        for key, change in _latest(batch).items():
            held = rows.get(key)
            if held is not None and held["seq"] > change["seq"]:
                continue  # late: the table keeps the newer row
            if change["gone"] and deletes == "hard":
                rows.pop(key, None)
            elif change["gone"] and deletes == "soft":
                if held is not None:
                    rows[key] = {**held, "seq": change["seq"], "gone": True, DELETED: True}
            else:
                rows[key] = {**change, DELETED: False} if deletes == "soft" else dict(change)
    return rows


def _in_order(batch: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Every change of a batch, by key, then sequence, then arrival."""
    ordered = sorted(enumerate(batch), key=lambda item: (item[1]["id"], item[1]["seq"], item[0]))
    return [(change["id"], change) for _, change in ordered]


def _model_scd2(
    batches: list[list[dict[str, Any]]], every_change: bool = False
) -> list[dict[str, Any]]:
    """Versions by the rules: `price` tracked, the rest updated in place; a delete closes the
    current version, which keeps its values. A feed (`every_change`) applies each change of a
    batch in order, a table only its latest."""
    versions: dict[int, list[dict[str, Any]]] = {}
    for batch in batches:
        changes = _in_order(batch) if every_change else list(_latest(batch).items())
        for key, change in changes:
            start = change["seq"].replace(tzinfo=UTC)
            line = versions.setdefault(key, [])
            current = next((v for v in line if v[IS_CURRENT]), None)
            if current is not None and start <= current[VALID_FROM]:
                continue  # stale
            if any(v[VALID_TO] is not None and start < v[VALID_TO] for v in line):
                continue  # older than a closed version's end
            if change["gone"]:
                if current is not None:
                    current.update({VALID_TO: start, IS_CURRENT: False, DELETED: True})
                continue
            opened = {**change, VALID_FROM: start, VALID_TO: None, IS_CURRENT: True, DELETED: False}
            if current is None:
                line.append(opened)
            elif current["price"] != change["price"]:
                current.update({VALID_TO: start, IS_CURRENT: False})
                line.append(opened)
            elif any(current[name] != change[name] for name in ("note", "seq", "gone")):
                current.update({name: change[name] for name in ("note", "seq", "gone")})
    return [version for line in versions.values() for version in line]


def _table_rows(uri: str, columns: list[str]) -> list[dict[str, Any]]:
    table = DeltaTable(uri).to_pyarrow_table(columns=columns)
    return table.to_pylist()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(changes_strategy, min_size=1, max_size=4),
    deletes=st.sampled_from(["hard", "soft"]),
)
def test_out_of_order_and_duplicated_changes_give_the_scd1_table_of_the_reference_model(
    tmp_path: pathlib.Path, batches: list[list[dict[str, Any]]], deletes: str
) -> None:
    uri = str(tmp_path / uuid.uuid4().hex)
    rules = MergeRules(keys=("id",), sequence="seq", deletes=deletes, delete_column="gone")  # type: ignore[arg-type]
    for batch in batches:
        _apply(uri, batch, rules)
    expected = _model_scd1(batches, deletes)
    columns = ["id", "price", "note", "seq", "gone", *([DELETED] if deletes == "soft" else [])]
    rows = {row["id"]: row for row in _table_rows(uri, columns)}
    assert set(rows) == set(expected)
    for key, row in rows.items():
        # the table's decimal price equals the model's int
        assert row == {name: expected[key][name] for name in columns}, key


def test_a_soft_delete_carrying_the_key_alone_flags_the_row_and_keeps_its_values(
    tmp_path: pathlib.Path,
) -> None:
    """A reader of a soft-deleted row sees the last values the table held, not the delete's
    nulls; the same delete again is nothing to do; a re-insert brings the row back."""
    uri = str(tmp_path / "soft")
    rules = MergeRules(keys=("id",), sequence="seq", deletes="soft", delete_column="gone")
    columns = ["id", "price", "note", "seq", "gone", DELETED]
    _apply(uri, [_change(1, 5, "x", 0, False)], rules)
    delete = _change(1, 0, "a", 1, True, bare=True)
    assert (delete["price"], delete["note"]) == (None, None)

    outcome = _apply(uri, [delete], rules)
    assert (outcome.inserted, outcome.updated, outcome.deleted, outcome.unchanged) == (0, 0, 1, 0)
    [row] = _table_rows(uri, [*columns, DELETED_AT])
    assert {name: row[name] for name in columns} == {
        **_change(1, 5, "x", 1, True),
        DELETED: True,
    }
    assert row[DELETED_AT] is not None

    again = _apply(uri, [delete], rules)
    assert (again.deleted, again.unchanged, again.committed) == (0, 1, False)

    outcome = _apply(uri, [_change(1, 7, "y", 2, False)], rules)
    assert (outcome.inserted, outcome.updated, outcome.deleted) == (0, 1, 0)
    assert _table_rows(uri, columns) == [{**_change(1, 7, "y", 2, False), DELETED: False}]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(changes_strategy, min_size=1, max_size=4), every_change=st.booleans())
def test_out_of_order_and_duplicated_changes_give_the_scd2_history_of_the_reference_model(
    tmp_path: pathlib.Path, batches: list[list[dict[str, Any]]], every_change: bool
) -> None:
    uri = str(tmp_path / uuid.uuid4().hex)
    rules = MergeRules(
        keys=("id",),
        sequence="seq",
        deletes="hard",
        delete_column="gone",
        history=True,
        tracked=("price",),
        every_change=every_change,
    )
    for batch in batches:
        _apply(uri, batch, rules)
    columns = ["id", "price", "note", "seq", "gone", VALID_FROM, VALID_TO, IS_CURRENT, DELETED]

    def ordered(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(
            (
                row["id"],
                row[VALID_FROM],
                str(row[VALID_TO]),
                row[IS_CURRENT],
                row[DELETED],
                int(row["price"]),
                row["note"],
                row["seq"],
                row["gone"],
            )
            for row in rows
        )

    assert ordered(_table_rows(uri, columns)) == ordered(_model_scd2(batches, every_change))
    if DeltaTable(uri).version() > 0:
        history = DeltaTable(uri).to_pyarrow_table()
        assert overlapping_versions(history, ["id"]).num_rows == 0


def test_a_price_changed_on_day_3_and_back_on_day_5_gives_three_contiguous_versions(
    tmp_path: pathlib.Path,
) -> None:
    uri = str(tmp_path / "product")
    rules = MergeRules(keys=("id",), sequence="seq", history=True, tracked=("price",))
    prices = {1: 10, 2: 10, 3: 12, 4: 12, 5: 10, 6: 10}
    for day, price in prices.items():
        # each day's snapshot of the product, the day its sequence
        snapshot = [_change(1, price, "a", (day - 1) * 1440, False)]
        _apply(uri, snapshot, rules)
    rows = sorted(
        _table_rows(uri, ["price", VALID_FROM, VALID_TO, IS_CURRENT]), key=lambda r: r[VALID_FROM]
    )
    day = [(BASE + datetime.timedelta(days=n)).replace(tzinfo=UTC) for n in range(6)]
    assert [(int(r["price"]), r[VALID_FROM], r[VALID_TO], r[IS_CURRENT]) for r in rows] == [
        (10, day[0], day[2], False),
        (12, day[2], day[4], False),
        (10, day[4], None, True),
    ]


def test_two_writers_merging_into_one_table_at_once_lose_no_change_and_duplicate_no_key(
    tmp_path: pathlib.Path,
) -> None:
    uri = str(tmp_path / "customers")
    rules = MergeRules(keys=("id",), sequence="seq")
    _apply(uri, [_change(key, 0, "start", 0, False) for key in range(1, 41)], rules)
    # both writers touch keys 11..30; each key's newest change is written by one of them
    first = [_change(key, 1, "first", 2 if key <= 20 else 1, False) for key in range(1, 31)]
    second = [_change(key, 2, "second", 2 if key > 20 else 1, False) for key in range(11, 41)]
    failures: list[BaseException] = []

    def write(batch: list[dict[str, Any]]) -> None:
        try:
            for offset in range(0, len(batch), 10):
                _apply(uri, batch[offset : offset + 10], rules)
        except BaseException as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=write, args=(batch,)) for batch in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    rows = {row["id"]: row for row in _table_rows(uri, ["id", "note"])}
    assert len(DeltaTable(uri).to_pyarrow_table()) == 40
    assert {key: row["note"] for key, row in rows.items()} == {
        key: "first" if key <= 20 else "second" for key in range(1, 41)
    }


def test_a_full_read_planned_in_chunks_lands_as_one_commit_equal_to_the_source(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingestion_assets.lake import merge as lake_merge

    uri = str(tmp_path / "chunked")
    rules = MergeRules(keys=("id",), sequence="seq", deletes="soft")
    _apply(uri, [_change(key, 1, "a", 0, False) for key in range(1, 11)], rules)
    monkeypatch.setattr(lake_merge, "CHUNK_ROWS", 3)
    # the source now: 3 and 8 gone, 5 changed, 11 new; read whole, in chunks of three rows
    source = [
        _change(key, 2 if key == 5 else 1, "a", 1 if key == 5 else 0, False)
        for key in (*range(1, 11), 11)
        if key not in (3, 8)
    ]
    version = DeltaTable(uri).version()
    outcome = merge_changes(
        uri,
        None,
        pa.Table.from_pylist(source, schema=SCHEMA),
        rules,
        full_read=True,
        run_id="run",
        label="table t",
        log=lambda _: None,
    )
    assert (outcome.inserted, outcome.updated, outcome.deleted) == (1, 1, 2)
    assert DeltaTable(uri).version() == version + 1
    rows = {
        r["id"]: (int(r["price"]), r[DELETED]) for r in _table_rows(uri, ["id", "price", DELETED])
    }
    assert rows == {
        **{key: (1, False) for key in (1, 2, 4, 6, 7, 9, 10, 11)},
        5: (2, False),
        3: (1, True),
        8: (1, True),
    }


def test_a_merge_the_audit_refuses_commits_nothing(tmp_path: pathlib.Path) -> None:
    uri = str(tmp_path / "refused")
    rules = MergeRules(keys=("id",), sequence="seq")
    _apply(uri, [_change(1, 1, "a", 0, False)], rules)
    version = DeltaTable(uri).version()
    shown: list[pa.Table] = []

    def audit(planned: pa.Table) -> bool:
        shown[:] = [planned]
        return False

    outcome = merge_changes(
        uri,
        None,
        pa.Table.from_pylist(
            [_change(1, 2, "a", 1, False), _change(2, 1, "a", 1, False)], schema=SCHEMA
        ),
        rules,
        full_read=False,
        run_id="run",
        label="table t",
        log=lambda _: None,
        audit=audit,
    )
    assert not outcome.accepted
    assert not outcome.committed
    assert (outcome.inserted, outcome.updated) == (1, 1)
    assert DeltaTable(uri).version() == version
    assert sorted(shown[0].column("id").to_pylist()) == [1, 2]
    assert DeltaTable(uri).to_pyarrow_table(columns=["id", "price"]).to_pylist() == [
        {"id": 1, "price": 1}
    ]


def test_a_key_the_table_holds_twice_stops_the_merge_with_the_fix(tmp_path: pathlib.Path) -> None:
    """Rows kept by a finer key before: a change of the coarser key cannot say which it
    replaces; the run says so, names the key and the fix, and writes nothing."""
    uri = str(tmp_path / "twice")
    finer = MergeRules(keys=("id", "note"), sequence="seq")
    _apply(uri, [_change(1, 1, "a", 0, False), _change(1, 1, "b", 0, False)], finer)
    version = DeltaTable(uri).version()
    with pytest.raises(
        MergeConflictError, match=r"table t: .*1 of the changed keys.*'id': '1'.*full_refresh"
    ):
        _apply(uri, [_change(1, 2, "a", 1, False)], MergeRules(keys=("id",), sequence="seq"))
    assert DeltaTable(uri).version() == version


def test_a_table_kept_by_a_text_and_binary_key_merges_again_and_again(
    tmp_path: pathlib.Path,
) -> None:
    """A MERGE writes text and binary columns as Arrow views; the next run's lookup of the
    current rows by those keys must still find them (it failed on the statistics before)."""
    uri = str(tmp_path / "text_keys")
    rules = MergeRules(keys=("code", "tag"))
    expected: dict[tuple[str, bytes], int] = {}
    for run, batch in enumerate(
        [
            [("a", b"\x01", 1), ("b", b"\x02", 2)],
            [("b", b"\x02", 20), ("c", b"\x03", 3)],
            [("a", b"\x01", 10), ("c", b"\x03", 3), ("ä", b"", 4)],
        ]
    ):
        table = pa.table(
            {
                "code": pa.array([c for c, _, _ in batch], pa.string()),
                "tag": pa.array([t for _, t, _ in batch], pa.binary()),
                "value": pa.array([v for _, _, v in batch], pa.int64()),
            }
        )
        merge_changes(
            uri, None, table, rules, full_read=False, run_id=f"r{run}", label="t", log=print
        )
        expected.update({(c, t): v for c, t, v in batch})
        rows = DeltaTable(uri).to_pyarrow_table(columns=["code", "tag", "value"]).to_pylist()
        assert {(r["code"], r["tag"]): r["value"] for r in rows} == expected
        assert len(rows) == len(expected)
