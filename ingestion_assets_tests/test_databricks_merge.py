"""Merge tables in Unity Catalog (`io_managers/databricks_merge.py`) against the local fake of the
workspace made a real engine: its volume a local folder, its warehouse DuckDB running each
statement as sqlglot transpiles it. The table it leaves is held row for row to the one the Delta
path (`lake/merge.py`) leaves for the same batches."""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize
from deltalake import DeltaTable
from pytest_httpserver import HTTPServer
from sqlglot import exp
from werkzeug import Request, Response

from ingestion_assets.errors import ConfigError, IngestionError
from ingestion_assets.io_managers.databricks import DatabricksIOManager
from ingestion_assets.io_managers.databricks_merge import DatabricksMergeOutcome
from ingestion_assets.lake import merge as lake_merge
from ingestion_assets.lake.rows import INGESTED_AT
from ingestion_assets.modes.merge import DELETED, DELETED_AT, Deletes, MergeRules
from ingestion_assets_tests.conftest import SourceDatabase, build_project
from ingestion_assets_tests.test_databricks import (
    FILES,
    STATEMENTS,
    FakeWorkspace,
    databricks_lake,
    parse,
    read_files_path,
)

pytestmark = pytest.mark.databricks

TOKEN = f"dapi{uuid.uuid4().hex}"
ASSET = ["src", "orders"]
TABLE = "`main`.`ingest`.`src__orders`"
STAGING = "/Volumes/main/ingest/landing/_staging/src__orders"
LABEL = "table src.orders"
KEYS = ("store", "id")
SCHEMA = pa.schema(
    [
        ("store", pa.int32()),
        ("id", pa.int64()),
        ("price", pa.decimal128(10, 2)),
        ("note", pa.string()),
        ("seq", pa.timestamp("us", "UTC")),
        ("gone", pa.bool_()),
    ]
)
BASE = datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC)
MERGE_COUNTS = ["num_affected_rows", "num_updated_rows", "num_deleted_rows", "num_inserted_rows"]


@dataclass
class WarehouseWorkspace(FakeWorkspace):
    """The fake workspace with its volume mirrored to a local folder and a warehouse that runs
    each statement in DuckDB, answering as the Statement Execution API does (a MERGE with its
    one row of counts)."""

    root: pathlib.Path = field(default_factory=pathlib.Path)
    database: duckdb.DuckDBPyConnection = field(default_factory=duckdb.connect)

    def __post_init__(self) -> None:
        self.database.execute("SET TimeZone = 'UTC'")

    def handle(self, request: Request) -> Response:
        response = super().handle(request)
        with self.lock:
            if request.path.startswith(FILES) and response.status_code == 204:
                local = self.local(request.path.removeprefix(FILES))
                if request.method == "PUT":
                    local.parent.mkdir(parents=True, exist_ok=True)
                    local.write_bytes(request.get_data())
                else:
                    local.unlink()
            elif request.path == STATEMENTS and request.method == "POST":
                self.run(json.loads(response.get_data())["statement_id"])
            elif request.path.startswith(STATEMENTS) and request.method == "GET":
                statement_id = request.path.removeprefix(STATEMENTS)
                entry = self.statements[statement_id]
                answer = {k: entry[k] for k in ("status", "manifest", "result") if k in entry}
                return Response(
                    json.dumps({"statement_id": statement_id, **answer}),
                    content_type="application/json",
                )
        return response

    def local(self, path: str) -> pathlib.Path:
        return self.root / path.lstrip("/")

    def run(self, statement_id: str) -> None:
        """Execute a statement the base fake accepted; DuckDB's error fails it."""
        entry = self.statements[statement_id]
        if entry["status"]["state"] != "SUCCEEDED":
            return
        tree = parse(entry["statement"])
        try:
            cursor = self.database.execute(self.duckdb_sql(tree))
            rows = cursor.fetchall()
        except duckdb.Error as error:
            entry["status"] = {
                "state": "FAILED",
                "error": {"error_code": "BAD_REQUEST", "message": str(error)},
            }
            return
        if isinstance(tree, exp.Merge):
            actions = Counter(action for (action,) in rows)
            counts = [len(rows), actions["UPDATE"], actions["DELETE"], actions["INSERT"]]
            entry.update(result(MERGE_COUNTS, [counts]))
        elif isinstance(tree, exp.Select):
            entry.update(result([column[0] for column in cursor.description], rows))

    def duckdb_sql(self, tree: exp.Expression) -> str:
        """The statement for DuckDB: the volume folder read from disk, the table by its name."""
        for call in list(tree.find_all(exp.Anonymous)):
            if call.name.lower() == "read_files":
                folder = self.local(read_files_path(call))
                call.replace(
                    exp.Anonymous(
                        this="read_parquet", expressions=[exp.Literal.string(f"{folder}/*.parquet")]
                    )
                )
        for table in tree.find_all(exp.Table):
            table.set("catalog", None)
            table.set("db", None)
        sql = tree.sql("duckdb")
        return sql + " RETURNING merge_action" if isinstance(tree, exp.Merge) else sql

    def table(self) -> pa.Table:
        return self.database.execute('SELECT * FROM "src__orders"').fetch_arrow_table()


def result(names: list[str], rows: list[Any]) -> dict[str, Any]:
    """A statement's result in the JSON_ARRAY shape: every value as text."""
    return {
        "manifest": {
            "format": "JSON_ARRAY",
            "schema": {
                "column_count": len(names),
                "columns": [{"name": name, "position": i} for i, name in enumerate(names)],
            },
            "total_row_count": len(rows),
        },
        "result": {
            "chunk_index": 0,
            "row_offset": 0,
            "row_count": len(rows),
            "data_array": [[None if v is None else str(v) for v in row] for row in rows],
        },
    }


@pytest.fixture
def warehouse(httpserver: HTTPServer, tmp_path: pathlib.Path) -> Iterator[WarehouseWorkspace]:
    fake = WarehouseWorkspace(root=tmp_path / "volume")
    httpserver.expect_request(re.compile(".*")).respond_with_handler(fake.handle)
    yield fake
    fake.database.close()


@pytest.fixture
def manager(httpserver: HTTPServer) -> DatabricksIOManager:
    """The IO manager on the fake; two rows a file, so a batch stages several."""
    return DatabricksIOManager(
        host=httpserver.url_for("/").rstrip("/"),
        token=TOKEN,
        warehouse_id="wh-123",
        catalog="main",
        schema_name="ingest",
        volume="landing",
        rows_per_file=2,
        poll_interval_seconds=0.01,
    )


def change(
    store: int, key: int, price: str | None, note: str | None, minute: int, gone: bool = False
) -> dict[str, Any]:
    return {
        "store": store,
        "id": key,
        "price": None if price is None else Decimal(price),
        "note": note,
        "seq": BASE + datetime.timedelta(minutes=minute),
        "gone": gone,
    }


def rules_for(deletes: Deletes) -> MergeRules:
    return MergeRules(keys=KEYS, sequence="seq", deletes=deletes, delete_column="gone")


def comparable(table: pa.Table) -> list[dict[str, Any]]:
    """The rows by key, times of this run left out: whether a row is flagged at all, and
    whether at the time it was written (a matched delete) or later (gone from a full read)."""
    rows = []
    for row in table.to_pylist():
        ingested = row.pop(INGESTED_AT)
        if DELETED_AT in row:
            deleted_at = row.pop(DELETED_AT)
            row["deleted_at_set"] = deleted_at is not None
            row["deleted_when_written"] = deleted_at == ingested
        rows.append(row)
    return sorted(rows, key=lambda row: (row["store"], row["id"]))


@dataclass
class Pair:
    """The same batches applied to the fake's table and to a local Delta table."""

    manager: DatabricksIOManager
    warehouse: WarehouseWorkspace
    uri: str
    rules: MergeRules
    runs: int = 0

    def apply(
        self, batch: list[dict[str, Any]], full_read: bool = False
    ) -> tuple[DatabricksMergeOutcome, lake_merge.MergeOutcome]:
        """Merge on both; afterwards the two tables hold the same rows."""
        self.runs += 1
        run_id = f"run-{self.runs}"
        changes = pa.Table.from_pylist(batch, schema=SCHEMA)
        outcome = self.manager.merge_changes(
            ASSET, changes, self.rules, run_id=run_id, label=LABEL, log=print, full_read=full_read
        )
        reference = lake_merge.merge_changes(
            self.uri,
            None,
            changes,
            self.rules,
            full_read=full_read,
            run_id=run_id,
            label=LABEL,
            log=print,
        )
        delta = DeltaTable(self.uri).to_pyarrow_table()
        assert self.warehouse.table().schema.names == delta.schema.names
        assert comparable(self.warehouse.table()) == comparable(delta)
        counts = (outcome.inserted, outcome.updated, outcome.deleted)
        assert counts == (reference.inserted, reference.updated, reference.deleted)
        assert self.warehouse.files == {}, "the staged files are removed"
        return outcome, reference

    def held(self) -> dict[tuple[int, int], dict[str, Any]]:
        """The fake's table by key."""
        return {(row["store"], row["id"]): row for row in self.warehouse.table().to_pylist()}


@pytest.fixture
def pair(
    request: pytest.FixtureRequest,
    manager: DatabricksIOManager,
    warehouse: WarehouseWorkspace,
    tmp_path: pathlib.Path,
) -> Pair:
    return Pair(manager, warehouse, str(tmp_path / "delta"), rules_for(request.param))


INSERTS = [
    change(1, 1, "10.00", "a", 0),
    change(1, 2, "20.50", "b", 0),
    change(2, 1, "5.25", "c", 0),
    change(2, 2, "7.00", None, 0),
]
UPDATES = [
    change(1, 1, "11.00", "a", 2),
    # older than the row held: arrived late, left out
    change(1, 2, "99.99", "stale", -1),
    # a key twice in one batch: the higher sequence wins, and the last read among equal ones
    change(2, 1, "6.00", "first", 2),
    change(2, 1, "6.50", "second", 1),
    change(2, 2, "8.00", "tie-1", 1),
    change(2, 2, "8.10", "tie-2", 1),
    change(2, 3, "1.00", "new", 1),
]
DELETES = [
    # a delete that carries the key alone
    change(1, 1, None, None, 3, gone=True),
    change(2, 3, "1.00", "new", 2, gone=True),
    # a key the table does not hold, and a delete older than the row held
    change(1, 9, "0.00", "never", 3, gone=True),
    change(2, 1, "0.00", "late", 0, gone=True),
    change(2, 2, "8.20", "kept", 3),
    # the sequence of the row held: not late, so it applies
    change(1, 2, "20.75", "same time", 0),
]


def test_statements_are_pinned_and_read_as_databricks_sql(
    manager: DatabricksIOManager, warehouse: WarehouseWorkspace
) -> None:
    """A soft-delete table with a two-column key: the CREATE and the MERGE, word for word."""
    outcome = manager.merge_changes(
        ASSET,
        pa.Table.from_pylist(INSERTS, schema=SCHEMA),
        rules_for("soft"),
        run_id="run-1",
        label=LABEL,
        log=print,
        full_read=False,
    )
    create, merge = outcome.statements
    assert create == (
        f"CREATE TABLE IF NOT EXISTS {TABLE} (`store` INT, `id` BIGINT, "
        "`price` DECIMAL(10,2), `note` STRING, `seq` TIMESTAMP, `gone` BOOLEAN, "
        "`_deleted` BOOLEAN, `_deleted_at` TIMESTAMP, `_ingested_at` TIMESTAMP, "
        "`_run_id` STRING) USING DELTA"
    )
    fresh = "(t.`seq` IS NULL OR s.`seq` IS NULL OR s.`seq` >= t.`seq`)"
    lineage = "`_ingested_at` = s.`_ingested_at`, `_run_id` = s.`_run_id`"
    assert merge == " ".join(
        [
            f"MERGE INTO {TABLE} AS t USING (SELECT * FROM read_files('{STAGING}/run-1', "
            "format => 'parquet')) AS s ON t.`store` = s.`store` AND t.`id` = s.`id`",
            f"WHEN MATCHED AND s.`_merge_delete` AND {fresh} AND (t.`_deleted` IS DISTINCT "
            "FROM TRUE OR t.`seq` IS DISTINCT FROM s.`seq` OR t.`gone` IS DISTINCT FROM "
            "s.`gone`) THEN UPDATE SET `seq` = s.`seq`, `gone` = s.`gone`, `_deleted` = TRUE, "
            f"`_deleted_at` = s.`_ingested_at`, {lineage}",
            f"WHEN MATCHED AND NOT s.`_merge_delete` AND {fresh} AND (t.`price` IS DISTINCT "
            "FROM s.`price` OR t.`note` IS DISTINCT FROM s.`note` OR t.`seq` IS DISTINCT FROM "
            "s.`seq` OR t.`gone` IS DISTINCT FROM s.`gone` OR t.`_deleted` IS DISTINCT FROM "
            "FALSE) THEN UPDATE SET `price` = s.`price`, `note` = s.`note`, `seq` = s.`seq`, "
            f"`gone` = s.`gone`, `_deleted` = FALSE, `_deleted_at` = NULL, {lineage}",
            "WHEN NOT MATCHED AND NOT s.`_merge_delete` THEN INSERT (`store`, `id`, `price`, "
            "`note`, `seq`, `gone`, `_deleted`, `_deleted_at`, `_ingested_at`, `_run_id`) "
            "VALUES (s.`store`, s.`id`, s.`price`, s.`note`, s.`seq`, s.`gone`, FALSE, NULL, "
            "s.`_ingested_at`, s.`_run_id`)",
        ]
    )
    assert isinstance(parse(create), exp.Create)
    parsed = parse(merge)
    assert isinstance(parsed, exp.Merge)
    assert read_files_path(parsed) == f"{STAGING}/run-1"
    assert (outcome.inserted, outcome.updated, outcome.deleted) == (4, 0, 0)
    assert outcome.committed
    assert outcome.rows_read == 4
    staged = warehouse.uploaded_rows()
    assert len(warehouse.uploads()) == 2
    assert staged.schema.names == [*SCHEMA.names, "_ingested_at", "_run_id", "_merge_delete"]


@pytest.mark.parametrize("pair", ["hard", "soft"], indirect=True)
def test_batches_leave_the_table_the_delta_path_leaves(pair: Pair) -> None:
    """Inserts, then updates (one late, keys twice), then deletes, then a deleted key back: after
    each the two tables are the same; a batch applied again changes nothing."""
    pair.apply(INSERTS)
    pair.apply(UPDATES)
    assert pair.held()[1, 2]["note"] == "b", "the late change is left out"
    outcome, _ = pair.apply(DELETES)
    assert (outcome.inserted, outcome.updated, outcome.deleted) == (0, 2, 2)
    held = pair.held()
    assert (held[2, 1]["note"], held[2, 1]["price"]) == ("first", Decimal("6.00"))
    assert (held[2, 2]["note"], held[1, 2]["note"]) == ("kept", "same time")
    if pair.rules.deletes == "soft":
        # the delete that carried the key alone flagged the row, which keeps its values
        assert (held[1, 1][DELETED], held[1, 1]["price"]) == (True, Decimal("11.00"))
        assert held[1, 1]["seq"] == BASE + datetime.timedelta(minutes=3)
    else:
        assert {(1, 1), (2, 3)}.isdisjoint(held)
    again, _ = pair.apply(DELETES)
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    # a deleted key back at the source: inserted again, or its flag cleared
    pair.apply([change(1, 1, "12.00", "back", 4)])
    assert pair.held()[1, 1]["note"] == "back"


@pytest.mark.parametrize("pair", ["hard", "soft"], indirect=True)
def test_a_full_read_removes_or_flags_the_keys_gone_from_the_source(pair: Pair) -> None:
    """Then the same read again changes nothing, and a key back with the values it had is
    inserted again (hard) or has its flag cleared (soft)."""
    pair.apply(INSERTS, full_read=True)
    remaining = [change(1, 1, "10.00", "a", 0), change(2, 1, "5.50", "c", 1)]
    outcome, _ = pair.apply(remaining, full_read=True)
    assert "WHEN NOT MATCHED BY SOURCE" in outcome.statements[1]
    assert isinstance(parse(outcome.statements[1]), exp.Merge)
    assert (outcome.inserted, outcome.updated, outcome.deleted) == (0, 1, 2)
    held = pair.held()
    if pair.rules.deletes == "soft":
        assert {key for key, row in held.items() if row[DELETED]} == {(1, 2), (2, 2)}
    else:
        assert set(held) == {(1, 1), (2, 1)}
    again, _ = pair.apply(remaining, full_read=True)
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    back, _ = pair.apply([*remaining, INSERTS[1]], full_read=True)
    assert (back.inserted, back.updated) == ((1, 0) if pair.rules.deletes == "hard" else (0, 1))


def test_history_is_refused_before_anything_is_sent(
    manager: DatabricksIOManager, warehouse: WarehouseWorkspace
) -> None:
    rules = MergeRules(keys=KEYS, sequence="seq", history=True)
    with pytest.raises(
        IngestionError, match="SCD type 2 is kept by the Delta Lake IO manager only"
    ):
        manager.merge_changes(
            ASSET,
            pa.Table.from_pylist(INSERTS, schema=SCHEMA),
            rules,
            run_id="run-1",
            label=LABEL,
            log=print,
            full_read=False,
        )
    assert warehouse.calls == []


def test_a_failing_merge_leaves_the_table_and_nothing_staged(
    manager: DatabricksIOManager, warehouse: WarehouseWorkspace
) -> None:
    rules = rules_for("hard")
    first = pa.Table.from_pylist(INSERTS, schema=SCHEMA)
    manager.merge_changes(
        ASSET, first, rules, run_id="run-1", label=LABEL, log=print, full_read=False
    )
    before = warehouse.table()
    warehouse.failing = ("MERGE INTO", "[DELTA_CONCURRENT_APPEND] boom")
    with pytest.raises(IngestionError) as raised:
        manager.merge_changes(
            ASSET,
            pa.Table.from_pylist(UPDATES, schema=SCHEMA),
            rules,
            run_id="run-2",
            label=LABEL,
            log=print,
            full_read=False,
        )
    message = str(raised.value)
    for part in (TABLE, "boom", "FAILED"):
        assert part in message
    assert TOKEN not in message
    uploaded = {call.path for call in warehouse.uploads() if "run-2" in call.path}
    assert len(uploaded) == 3
    assert uploaded <= {call.path for call in warehouse.calls if call.method == "DELETE"}
    assert warehouse.files == {}
    assert list(warehouse.root.rglob("*.parquet")) == []
    assert warehouse.table() == before


def test_counts_are_unknown_when_the_warehouse_reports_none(
    httpserver: HTTPServer, manager: DatabricksIOManager
) -> None:
    recorder = FakeWorkspace()
    httpserver.expect_request(re.compile(".*")).respond_with_handler(recorder.handle)
    outcome = manager.merge_changes(
        ASSET,
        pa.Table.from_pylist(INSERTS, schema=SCHEMA),
        rules_for("soft"),
        run_id="run-1",
        label=LABEL,
        log=print,
        full_read=False,
    )
    assert (outcome.inserted, outcome.updated, outcome.deleted) == (None, None, None)
    assert outcome.committed
    assert recorder.files == {}


def test_soft_deletes_that_cannot_be_counted_leave_the_counts_unknown(
    manager: DatabricksIOManager, warehouse: WarehouseWorkspace
) -> None:
    """The MERGE is committed whatever the count after it does: the run reports no counts
    rather than soft deletes as updates."""
    rules = rules_for("soft")
    lines: list[str] = []
    manager.merge_changes(
        ASSET,
        pa.Table.from_pylist(INSERTS, schema=SCHEMA),
        rules,
        run_id="run-1",
        label=LABEL,
        log=lines.append,
        full_read=False,
    )
    warehouse.failing = ("AS flagged", "warehouse stopped")
    outcome = manager.merge_changes(
        ASSET,
        pa.Table.from_pylist(DELETES, schema=SCHEMA),
        rules,
        run_id="run-2",
        label=LABEL,
        log=lines.append,
        full_read=False,
    )
    assert outcome.committed
    assert (outcome.inserted, outcome.updated, outcome.deleted) == (None, None, None)
    assert "warehouse stopped" in lines[-1]
    assert TOKEN not in lines[-1]
    flagged = {(row["store"], row["id"]) for row in warehouse.table().to_pylist() if row[DELETED]}
    assert flagged == {(1, 1), (2, 1)}


def test_a_merge_table_of_a_project_on_databricks_is_kept_equal_to_its_source(
    sqlite_database: SourceDatabase,
    tmp_path: pathlib.Path,
    httpserver: HTTPServer,
    warehouse: WarehouseWorkspace,
    monkeypatch: pytest.MonkeyPatch,
    instance: DagsterInstance,
) -> None:
    """`mode: merge` with `io_manager: databricks`, end to end: the asset reads the rows changed
    since its cursor and the warehouse merges them (here DuckDB); no check is declared (the
    table is judged on the warehouse); history is a load-time error."""
    monkeypatch.setenv("DATABRICKS_HOST", httpserver.url_for("/").rstrip("/"))
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("DATABRICKS_WAREHOUSE_ID", "wh-123")
    engine = sqlite_database.engine()
    schema = sqlite_database.schema("Sales")
    customers = sa.Table(
        "Customer",
        sa.MetaData(),
        sa.Column("CustomerID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("Name", sa.String(50)),
        sa.Column("ModifiedDate", sa.DateTime),
        schema=schema,
    )
    moment = datetime.datetime(2024, 3, 1, 8)
    with engine.begin() as connection:
        customers.create(connection)
        connection.execute(
            customers.insert().values(
                [{"CustomerID": k, "Name": f"c{k}", "ModifiedDate": moment} for k in (1, 2, 3)]
            )
        )
    entry = {
        "schema": schema,
        "name": "Customer",
        "primary_key": ["CustomerID"],
        "mode": "merge",
        "cursor_column": "ModifiedDate",
    }
    project = build_project(
        sqlite_database, tmp_path / "lake", [entry], lake_options=databricks_lake()
    )
    asset = project.defs.get_assets_def(AssetKey(["src", "customer"]))
    assert not list(asset.check_specs)

    def run() -> dict[str, Any]:
        result = materialize([asset], instance=instance, resources=project.defs.resources)
        metadata = result.asset_materializations_for_node("src__customer")[0].metadata
        return {name: getattr(value, "value", value) for name, value in metadata.items()}

    def held() -> dict[int, str]:
        rows = warehouse.database.execute('SELECT * FROM "src__customer"').fetchall()
        return {row[0]: row[1] for row in rows}

    first = run()
    assert (first["rows_read"], first["rows_inserted"]) == (3, 3)
    assert held() == {1: "c1", 2: "c2", 3: "c3"}
    later = moment + datetime.timedelta(hours=1)
    with engine.begin() as connection:
        connection.execute(
            customers.update()
            .where(customers.c.CustomerID == 2)
            .values(Name="two", ModifiedDate=later)
        )
        connection.execute(customers.insert().values(CustomerID=4, Name="c4", ModifiedDate=later))
    engine.dispose()
    second = run()
    assert (second["rows_read"], second["rows_inserted"], second["rows_updated"]) == (4, 1, 1)
    assert held() == {1: "c1", 2: "two", 3: "c3", 4: "c4"}
    assert second["ingest/cursor"] == later.isoformat()
    assert warehouse.files == {}

    with pytest.raises(ConfigError, match=r"SCD type 2 history .* Delta Lake IO manager only"):
        build_project(
            sqlite_database,
            tmp_path / "lake",
            [{**entry, "history": True}],
            lake_options=databricks_lake(),
        )
