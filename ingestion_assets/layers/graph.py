"""The layers of a project as a graph over its tables: what each layer reads, in which order they
build, how each is partitioned, and which columns each table is known to have, all from the
project file. Checked while the project loads (unknown input, SQL that does not parse, a column an
input lacks, a cycle); no data is read and nothing connects.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp

from ingestion_assets.errors import ConfigError
from ingestion_assets.lake.rows import INGESTED_AT, PARTITION_DATE, RUN_ID
from ingestion_assets.layers.sql import (
    ColumnSource,
    LayerSqlError,
    check_columns,
    check_expectation,
    check_inputs,
    column_lineage,
    output_columns,
    parse_select,
    sql_type,
)

if TYPE_CHECKING:
    from ingestion_assets.specs import (
        DatasetSpec,
        IoManagerName,
        LayerSpec,
        ProjectSpec,
        SourceSpecBase,
    )

# the columns the writer adds to every table it writes, as SQL types
LINEAGE_SQL_TYPES = {PARTITION_DATE: "DATE", INGESTED_AT: "TIMESTAMPTZ", RUN_ID: "VARCHAR"}


@dataclass(frozen=True)
class Days:
    """The daily partitioning of a table: first day, end (exclusive, None: up to today), zone."""

    start: datetime.date
    end: datetime.date | None
    timezone: str


@dataclass(frozen=True)
class GraphTable:
    """A table layers may read: an ingested dataset or a layer."""

    key: str
    days: Days | None
    # {column: SQL type ("" unknown)}; None when the project file does not name every column
    columns: Mapping[str, str] | None
    writer: IoManagerName
    layer: LayerSpec | None = None


@dataclass
class Layer:
    """One layer resolved against the graph: its parsed query, inputs, days and columns."""

    spec: LayerSpec
    where: str
    query: exp.Query
    inputs: dict[str, GraphTable]
    days: Days | None
    writer: IoManagerName
    columns: list[tuple[str, str]] | None = None
    lineage: dict[str, list[ColumnSource]] = field(default_factory=dict)

    @property
    def input_schemas(self) -> dict[str, Mapping[str, str]]:
        """The inputs whose columns are known, by input name."""
        return {name: table.columns for name, table in self.inputs.items() if table.columns}


class LayerGraph:
    """Every table of a project and every layer over them, in build order."""

    def __init__(self, project: ProjectSpec) -> None:
        self.tables: dict[str, GraphTable] = {}
        for source_name, source in project.sources.items():
            for dataset in source.datasets:
                key = f"{source_name}/{dataset.key_name}"
                days = (
                    Days(source.start_date_of(dataset), source.end_date, source.timezone)
                    if dataset.partition_column is not None
                    else None
                )
                self.tables[key] = GraphTable(
                    key, days, _dataset_columns(source, dataset), project.io_manager_of(source_name)
                )
        specs: dict[str, tuple[int, LayerSpec]] = {}
        for index, declared in enumerate(project.layers):
            where = f"layers[{index}] ({declared.key})"
            if declared.key in self.tables or declared.key in specs:
                raise LayerSqlError(
                    f"{where}: the key {declared.key} is already "
                    + ("an ingested table's" if declared.key in self.tables else "another layer's")
                    + "; give the layer its own key"
                )
            specs[declared.key] = (index, declared)
        self.layers: list[Layer] = []
        for key in _build_order(specs, set(self.tables)):
            index, layer_spec = specs[key]
            layer = self._resolve(index, layer_spec, project)
            self.layers.append(layer)
            self.tables[key] = GraphTable(
                key,
                layer.days,
                _with_lineage(layer.columns),
                layer.writer,
                layer_spec,
            )

    def layer(self, key: str) -> Layer:
        """The resolved layer of an asset key (`silver/sales_orders`)."""
        return next(layer for layer in self.layers if layer.spec.key == key)

    def _resolve(self, index: int, spec: LayerSpec, project: ProjectSpec) -> Layer:
        where = f"layers[{index}] ({spec.key})"
        inputs = {name: self.tables[key] for name, key in spec.inputs.items()}
        query = parse_select(spec.sql, where)
        check_inputs(query, spec.inputs, where)
        writer = project.layer_writer(spec)
        if writer not in ("delta", "databricks"):
            raise LayerSqlError(
                f"{where}: layers run over Delta tables (delta-rs or Unity Catalog), not "
                f"{writer}; set the layer's `io_manager: delta` and keep its inputs on delta"
            )
        for name, table in inputs.items():
            if table.writer != writer:
                fix = (
                    f"Set the layer's `io_manager: {table.writer}`."
                    if table.writer in ("delta", "databricks")
                    else f"Write the input's source with `io_manager: {writer}`."
                )
                raise LayerSqlError(
                    f"{where}: input {name} ({table.key}) is written by {table.writer}, the "
                    f"layer by {writer}; a layer reads inputs of its own writer. {fix}"
                )
        days = _layer_days(spec, inputs, where)
        layer = Layer(spec, where, query, inputs, days, writer)
        check_columns(query, layer.input_schemas, spec.inputs, where)
        layer.columns = output_columns(query, layer.input_schemas)
        if layer.columns is not None:
            names = [name for name, _ in layer.columns]
            if days is not None and spec.partition_column not in names:
                raise LayerSqlError(
                    f"{where}: the SQL does not select {spec.partition_column}, the column that "
                    f"holds each row's day; select it (e.g. `h.{PARTITION_DATE}`) or set "
                    "`partition_column` to the output column that holds the day."
                )
            for key_column in spec.primary_key:
                if key_column not in names:
                    raise LayerSqlError(
                        f"{where}: primary key column {key_column} is not an output column; "
                        f"the SQL selects {', '.join(names)}"
                    )
            layer.lineage = column_lineage(query, layer.input_schemas, names)
        output = [name for name, _ in layer.columns] if layer.columns is not None else None
        for expectation in spec.expect:
            check_expectation(expectation.name, expectation.sql, output, where)
        return layer


def _dataset_columns(source: SourceSpecBase, dataset: DatasetSpec) -> dict[str, str] | None:
    """An ingested table's columns when the project file names every one (with the lineage
    columns), else None: checked against the Delta table when a layer runs."""
    from ingestion_assets.sources.base import source_kind

    if not dataset.declares_every_column:
        return None
    declared = source_kind(source.type).resource_class().declared_columns(dataset)
    columns = {column.name: sql_type(column.type) for column in declared}
    return {**columns, **LINEAGE_SQL_TYPES}


def _with_lineage(columns: list[tuple[str, str]] | None) -> dict[str, str] | None:
    """A layer's table columns: its output, then the lineage columns the writer sets."""
    if columns is None:
        return None
    written = {name: kind for name, kind in columns if name not in LINEAGE_SQL_TYPES}
    return {**written, **LINEAGE_SQL_TYPES}


def _layer_days(spec: LayerSpec, inputs: Mapping[str, GraphTable], where: str) -> Days | None:
    """A daily layer's days: those all its daily inputs have, in their zone."""
    if spec.partitioning == "unpartitioned":
        return None
    daily = [table.days for table in inputs.values() if table.days is not None]
    if not daily:
        raise LayerSqlError(
            f"{where}: partitioning is daily but no input is partitioned by day; set "
            "`partitioning: unpartitioned`, or read a daily table."
        )
    zones = sorted({days.timezone for days in daily})
    if len(zones) > 1:
        raise LayerSqlError(
            f"{where}: the daily inputs' days begin in different zones ({', '.join(zones)}); "
            "a layer's day must be the same day in each input."
        )
    ends = [days.end for days in daily if days.end is not None]
    return Days(max(days.start for days in daily), min(ends) if ends else None, zones[0])


def _build_order(specs: Mapping[str, tuple[int, LayerSpec]], tables: set[str]) -> list[str]:
    """The layers' keys, each after every layer it reads; an unknown input or a cycle is an
    error naming the layers."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(key: str, path: list[str]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            cycle = [*path[path.index(key) :], key]
            raise LayerSqlError(
                f"layers: {' -> '.join(cycle)} is a cycle; a layer cannot read itself, directly "
                "or through other layers"
            )
        state[key] = "visiting"
        index, spec = specs[key]
        for name, input_key in spec.inputs.items():
            if input_key in specs:
                visit(input_key, [*path, key])
            elif input_key not in tables:
                known = sorted(tables | set(specs) - {key})
                raise LayerSqlError(
                    f"layers[{index}] ({key}): input {name} is {input_key}, which is no asset of "
                    f"the project; use one of: {', '.join(known)}"
                )
        state[key] = "done"
        order.append(key)

    for key in specs:
        visit(key, [])
    return order


def check_layers(project: ProjectSpec) -> None:
    """Resolve the project's layers; a ValueError (which the project file's errors report)
    for the first one that is wrong."""
    try:
        LayerGraph(project)
    except ConfigError as error:
        raise ValueError(str(error)) from None
