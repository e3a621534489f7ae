"""A layer's SELECT run in the run's own process by DuckDB, over Arrow scans of its input Delta
tables, streamed out as record batches with one verdict column per expectation.

Why DuckDB (bench/layers.py, 2 cores, 2,000,000 order lines): the silver join with three
expectations takes 0.6-1.1 s and the gold aggregate 0.3 s, streaming its result in batches at the
lowest peak memory of the engines measured (237-292 MB against 386-821 MB); it spills to disk past
its memory limit, its SQL is what analysts write, and sqlglot speaks its dialect. Polars SQL and
DataFusion ran silver up to 0.3 s faster but collect results whole or hold more memory.

Each input is only the files whose `_partition_date` bounds meet the run's days (the Delta log's
statistics, no file opened to decide): DuckDB reads them with its own Parquet reader when the lake
is on this machine, or through a pyarrow dataset of them on object storage; the view the SQL
reads filters to those days, and DuckDB pushes the filter and the needed columns into the scan.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

from ingestion_assets.lake.files import delta_dataset, local_root
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import ExpectationSpec

HELD_PREFIX = "__held_"
FAILED = "__failed"
BATCH_ROWS = 65_536


@dataclass(frozen=True)
class InputScan:
    """What a run reads of one input: the files of its days, as a pyarrow dataset."""

    name: str
    key: str
    dataset: ds.Dataset
    files: tuple[str, ...]
    # the days read; None: the whole table (an unpartitioned input or layer)
    window: PartitionWindow | None
    files_in_table: int = 0
    # the files' local paths when the table is on this machine: DuckDB reads them itself
    local_paths: tuple[str, ...] | None = None

    @property
    def schema(self) -> pa.Schema:
        """The input table's columns."""
        return self.dataset.schema


def scan_days(name: str, key: str, table: DeltaTable, window: PartitionWindow | None) -> InputScan:
    """The input's files that may hold rows of `window` (by their `_partition_date` statistics;
    every file without a window or without the column)."""
    dataset = delta_dataset(table)
    every = list(dataset.get_fragments())
    if window is None or PARTITION_DATE not in dataset.schema.names:
        fragments = every
        window = None
    else:
        fragments = list(dataset.get_fragments(filter=days_filter(window)))
    pruned = ds.FileSystemDataset(
        fragments, dataset.schema, dataset.format, filesystem=dataset.filesystem
    )
    root = local_root(table.table_uri)
    local_paths = (
        None if root is None else tuple(str(root / fragment.path) for fragment in fragments)
    )
    return InputScan(
        name,
        key,
        pruned,
        tuple(fragment.path for fragment in fragments),
        window,
        files_in_table=len(every),
        local_paths=local_paths,
    )


def days_filter(window: PartitionWindow) -> pc.Expression:
    """`_partition_date` within the window's days."""
    day = pc.field(PARTITION_DATE)
    return (day >= pa.scalar(window.first_day)) & (day <= pa.scalar(window.last_day))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def judged_sql(sql: str, expectations: Sequence[ExpectationSpec]) -> str:
    """The layer's SELECT with a `__held_<i>` column per expectation (false only where the
    expression is false: NULL passes) and `__failed`, the names of the expectations a row
    violates (NULL when it violates none)."""
    body = sql.strip().rstrip(";").strip()
    if not expectations:
        return body
    held = [
        f"coalesce(({expectation.sql}), TRUE) AS {_quoted(HELD_PREFIX + str(index))}"
        for index, expectation in enumerate(expectations)
    ]
    names = ", ".join(
        f"CASE WHEN NOT {_quoted(HELD_PREFIX + str(index))} THEN {_literal(expectation.name)} END"
        for index, expectation in enumerate(expectations)
    )
    every = " AND ".join(_quoted(HELD_PREFIX + str(index)) for index in range(len(expectations)))
    return (
        f"SELECT *, CASE WHEN NOT ({every}) THEN "
        f"list_filter([{names}], name -> name IS NOT NULL) END AS {_quoted(FAILED)} "
        f"FROM (SELECT *, {', '.join(held)} FROM ({body}) AS __layer) AS __judged"
    )


@dataclass
class LayerQuery:
    """One execution of a layer's SELECT over its input scans."""

    sql: str
    inputs: Sequence[InputScan]
    expectations: Sequence[ExpectationSpec] = ()
    _connection: duckdb.DuckDBPyConnection | None = field(default=None, repr=False)
    _registered: bool = field(default=False, repr=False)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with each input registered as the view the SQL names."""
        connection = duckdb.connect()
        for scan in self.inputs:
            scanned = f"__scan_{scan.name}"
            if scan.local_paths:
                # DuckDB's own Parquet reader: its threads, no pyarrow scanner left running;
                # files written before a column was added read it as NULL (union_by_name)
                files = ", ".join(_literal(path) for path in scan.local_paths)
                connection.execute(
                    f"CREATE TEMP VIEW {_quoted(scanned)} AS SELECT * FROM "
                    f"read_parquet([{files}], union_by_name = true)"
                )
            else:
                connection.register(scanned, scan.dataset)
                self._registered = True
            where = ""
            if scan.window is not None:
                where = (
                    f" WHERE {_quoted(PARTITION_DATE)} BETWEEN "
                    f"DATE {_literal(scan.window.first_day.isoformat())} AND "
                    f"DATE {_literal(scan.window.last_day.isoformat())}"
                )
            connection.execute(
                f"CREATE TEMP VIEW {_quoted(scan.name)} AS SELECT * FROM {_quoted(scanned)}{where}"
            )
        self._connection = connection
        return connection

    def reader(self, batch_rows: int = BATCH_ROWS) -> pa.RecordBatchReader:
        """The judged rows, streamed in batches as DuckDB produces them."""
        connection = self._connection or self.connect()
        result = connection.execute(judged_sql(self.sql, self.expectations))
        return result.to_arrow_reader(batch_rows)

    def close(self) -> None:
        """Release the connection (and DuckDB's memory)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._registered:
            # a pyarrow scan DuckDB did not read to its end keeps background threads until it
            # is collected; collected now, not while the interpreter exits (which aborts)
            self._registered = False
            gc.collect()


def held_columns(count: int) -> list[str]:
    """The verdict columns of `count` expectations."""
    return [HELD_PREFIX + str(index) for index in range(count)]
